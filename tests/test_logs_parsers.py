"""Log parsers on realistic text (tests/logtexts/), line hygiene (chunks, \\r, ANSI, bytes that are not UTF-8, huge
lines) and hypothesis properties: hostile input never crashes a parser nor grows its memory."""

from __future__ import annotations

import json
import math
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainscope.collector.points import Point, RawPoint
from trainscope.collector.sources.logparsers import (
    FORMATS,
    NEAR_FULL,
    LineSplitter,
    LogParser,
    compile_katib,
    compile_patterns,
    decode_lines,
    parse_text,
)

TEXTS = Path(__file__).parent / "logtexts"


def run_file(name: str, fmt: str = "auto", **kw) -> tuple[dict[tuple[str, int], float], LogParser]:
    """(metric, step) -> value (the last one wins, as in the store) of a fixture, fed in 4 KiB chunks."""
    parser = LogParser(fmt, **kw)
    splitter = LineSplitter()
    data = (TEXTS / name).read_bytes()
    out: list[Point] = []
    for i in range(0, len(data), 4096):
        for blob, _ in splitter.feed(data[i:i + 4096]):
            for line in decode_lines(blob):
                parser.feed(line, 0.0, "r", out)
    return {(p.metric, p.step): p.value for p in map(Point._make, out)}, parser


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


# ---- each format on its real-looking log ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["auto", "hf"])
def test_hf_trainer_llamafactory(fmt: str):
    got, parser = run_file("hf_llamafactory.log", fmt, logging_steps=10)
    assert parser.total_steps == 1875  # "Total optimization steps = 1,875"
    steps = sorted({s for (m, s) in got if m == "loss"})
    assert steps == list(range(10, 310, 10))  # running count x logging_steps
    assert got[("loss", 10)] == 2.0 and got[("grad_norm", 10)] == 0.51
    assert got[("learning_rate", 20)] == 5e-05 * (1 - 20 / 1875)  # scientific notation as printed by repr
    assert math.isnan(got[("loss", 170)])  # {'loss': nan, ...}
    assert got[("num_input_tokens_seen", 300)] == 300 * 8192
    # eval dicts take the step of the last training log; the summary too
    assert {s for (m, s) in got if m == "eval_loss"} == {100, 200, 300}
    assert got[("train_loss", 300)] == 1.2345
    # tqdm bars and the traceback gave nothing (its {'loss': 'hidden'} looked like a metrics dict and did not
    # parse); the config dump is a Trainer log only when the format is named: auto wants 'epoch' or a loss key
    config = {"lora_rank", "cutoff_len"} if fmt == "hf" else set()
    assert {m for m, _ in got} == {"loss", "grad_norm", "learning_rate", "epoch", "num_input_tokens_seen",
                                   "eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second",
                                   "train_runtime", "train_samples_per_second", "train_steps_per_second",
                                   "train_loss"} | config
    assert parser.failed == 1 and parser.parsed == 34 + len(config) // 2


@pytest.mark.parametrize("fmt", ["auto", "megatron"])
def test_megatron(fmt: str):
    got, parser = run_file("megatron_gpt.log", fmt)
    assert parser.total_steps == 5000
    assert sorted({s for (m, s) in got if m == "lm loss"}) == list(range(10, 310, 10))
    for it in (10, 290):
        assert got[("lm loss", it)] == float(f"{10.5 * math.exp(-it / 120):.6E}")
        assert got[("learning rate", it)] == float(f"{1.5e-4 * min(1.0, it / 100):.6E}")
        assert got[("throughput per GPU (TFLOP/s/GPU)", it)] == float(f"{301.7 + it / 100:.1f}")
    assert math.isnan(got[("lm loss", 150)]) and got[("number of nan iterations", 150)] == 1
    assert got[("consumed samples", 300)] == 300 * 256
    assert got[("validation lm loss value", 100)] == 2.873
    assert len([k for k in got if k[1] == 10]) == 10  # every numeric field of an iteration line
    assert parser.failed == 1  # the rank-5 traceback's "iteration 200/ timeout"


@pytest.mark.parametrize("fmt", ["auto", "deepspeed"])
def test_deepspeed(fmt: str):
    got, parser = run_file("deepspeed.log", fmt)
    assert sorted({s for (m, s) in got if m == "loss"}) == list(range(10, 110, 10))
    assert got[("loss", 10)] == float(f"{3.0 / math.log(12):0.4f}")  # inside ANSI colour codes
    assert got[("lr", 50)] == 5e-05 and got[("skipped", 30)] == 1
    assert got[("MaxMemAllocated", 100)] == 20.1 and got[("CurrSamplesPerSec", 20)] == 61.9
    assert got[("iter time (s)", 100)] == 0.612 and got[("samples/sec", 100)] == 61.5
    assert parser.failed == 0


@pytest.mark.parametrize("fmt", ["auto", "lightning"])
def test_lightning_progress_bars(fmt: str):
    got, _ = run_file("lightning.log", fmt)
    # step = epoch * batches per epoch + batch - 1 (Lightning's loggers count from 0); every redraw is read
    assert sorted({s for (m, s) in got if m == "train_loss"}) == list(range(60))
    assert got[("train_loss", 0)] == 1.0 / 2 and got[("train_loss", 44)] == float(f"{1.0 / 46:.4f}")
    assert got[("train_loss", 26)] == math.inf  # epoch 1, batch 7
    # a validation value once, at the last step of the epoch it was computed in; not copied onto every batch
    assert {s: v for (m, s), v in got.items() if m == "val_loss"} == {19: 0.45, 39: float(f"{0.9 / 3:.3f}"),
                                                                        59: float(f"{0.9 / 4:.3f}")}
    assert "v_num" not in {m for m, _ in got}


def test_lightning_bar_of_unknown_length_counts_epochs():
    parser = LogParser("lightning")
    out: list[Point] = []
    for ep in range(2):
        line = "".join(f"\rEpoch {ep}: |          | {b}/? [00:0{b}<?, 2.00it/s, loss={b}.5]" for b in range(1, 4))
        parser.feed(line, 0.0, "", out)
    assert [(p.step, p.value) for p in map(Point._make, out)] == [
        (0, 1.5), (1, 2.5), (2, 3.5), (3, 1.5), (4, 2.5), (5, 3.5)]


@pytest.mark.parametrize("fmt", ["auto", "keyvalue"])
def test_key_value(fmt: str):
    got, _ = run_file("keyvalue.log", fmt)
    assert got[("loss", 4)] == float(f"{2.5 / 4:.5e}") and got[("tokens/s", 20)] == 15020
    assert got[("accuracy", 15)] == 0.65 and got[("perplexity", 5)] == float(f"{math.exp(0.5):.4f}")
    # the first line has pairs but no step: not a metrics line in auto; its own running count otherwise
    assert (("batch_size", 1) in got) == (fmt == "keyvalue")


@pytest.mark.parametrize("fmt", ["auto", "json"])
def test_json_lines(fmt: str):
    got, parser = run_file("trainer_log.jsonl", fmt)
    assert parser.total_steps == 375
    assert sorted({s for (m, s) in got if m == "loss"}) == [*range(5, 55, 5), 60]
    assert got[("loss", 60)] == 1.2 and got[("percentage", 5)] == round(100 * 5 / 375, 2)
    assert "elapsed_time" not in {m for m, _ in got}  # strings are not values
    assert parser.failed == 1  # the line cut short


def test_interleaved_ranks_and_rank_prefixes():
    text = "\n".join([
        "[rank0]: step=1 loss=2.0",
        "[rank1]: step=1 loss=2.1",
        "[rank1]: Traceback (most recent call last):",
        "[rank0]: step=2 loss=1.5",
        '[rank1]:   File "train.py", line 9, in <module>',
        "[default1]: step=2 loss=1.6",
        "[rank1]: RuntimeError: CUDA error: an illegal memory access was encountered",
    ])
    out: list[Point] = []
    parser = LogParser()
    for line in text.split("\n"):
        parser.feed(line, 1.0, "pod-0", out)
    assert sorted((p.run, p.step, p.value) for p in map(Point._make, out)) == [
        ("pod-0", 1, 2.0), ("pod-0", 2, 1.5), ("pod-0/rank1", 1, 2.1), ("pod-0/rank1", 2, 1.6)]


def test_special_values_and_notation():
    text = ("{'loss': inf, 'grad_norm': -inf, 'learning_rate': 1E-7, 'epoch': 1.0}\n"
            " iteration        1/      10 | lm loss: -INF | grad norm: 1.5e+300 | loss scale: 65536.0 |\n"
            "step=3 loss=NaN lr=.5 delta=-1e-3 big=+2E+2\n")
    got = {(m, s): v for m, v, s in parse_text(text)}
    assert got[("loss", 1)] == math.inf and got[("grad_norm", 1)] == -math.inf and got[("learning_rate", 1)] == 1e-7
    assert got[("lm loss", 1)] == -math.inf and got[("grad norm", 1)] == 1.5e300
    assert math.isnan(got[("loss", 3)]) and got[("lr", 3)] == 0.5 and got[("delta", 3)] == -1e-3
    assert got[("big", 3)] == 200.0


def test_patterns_and_katib_filter():
    named = compile_patterns([r"Step (?P<step>\d+)/\d+ - (?P<metric>[a-z_]+) is (?P<value>\S+)",
                              r"epoch (?<step>\d+): acc (?<acc>[\d.]+), f1 (?<f1>[\d.]+)"])  # Go-style groups
    katib = compile_katib([r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"])
    parser = LogParser("none", patterns=named, katib=katib)
    out: list[Point] = []
    for line in ["Step 7/100 - train_loss is 0.25", "epoch 2: acc 0.91, f1 0.88", "objective=0.5 other=2",
                 "objective=0.25", "Step 8/100 - train_loss is oops"]:
        parser.feed(line, 0.0, "", out)
    assert [(p.metric, p.step, p.value) for p in map(Point._make, out)] == [
        ("train_loss", 7, 0.25), ("acc", 2, 0.91), ("f1", 2, 0.88),
        ("objective", 1, 0.5), ("other", 1, 2.0), ("objective", 2, 0.25)]  # Katib lines: running count per name
    assert parser.failed == 1
    for bad in (["(unclosed"], [r"no groups \d+"], [r"(?P<metric>\w+)"]):
        with pytest.raises(ValueError):
            compile_patterns(bad)
    with pytest.raises(ValueError, match="two groups"):
        compile_katib([r"loss=(\d+)"])


def test_state_round_trip_continues_running_counts():
    lines = [f"{{'loss': {i / 10}, 'epoch': {i}}}" for i in range(1, 7)]
    whole: list[Point] = []
    one = LogParser(logging_steps=5)
    for line in lines:
        one.feed(line, 0.0, "", whole)
    parts: list[Point] = []
    first = LogParser(logging_steps=5)
    for line in lines[:3]:
        first.feed(line, 0.0, "", parts)
    second = LogParser(logging_steps=5, state=first.state())
    for line in lines[3:]:
        second.feed(line, 0.0, "", parts)
    assert parts == whole and [p.step for p in map(Point._make, whole) if p.metric == "loss"] == [5, 10, 15, 20, 25, 30]


def test_layout_change_is_followed():
    """Megatron prints extra fields on some iterations; the learned layout is relearned, nothing is lost."""
    a = " iteration {i:8d}/     100 | lm loss: {v:.6E} | grad norm: 1.000 |"
    b = " iteration {i:8d}/     100 | lm loss: {v:.6E} | params norm: 250.5 | grad norm: 1.000 |"
    parser = LogParser("megatron")
    out: list[Point] = []
    for i in range(1, 31):
        parser.feed((b if i % 7 == 0 else a).format(i=i, v=1 / i), 0.0, "", out)
    assert sorted(p.step for p in map(Point._make, out) if p.metric == "lm loss") == list(range(1, 31))
    assert sorted(p.step for p in map(Point._make, out) if p.metric == "params norm") == [7, 14, 21, 28]
    assert all(p.value == float(f"{1 / p.step:.6E}") for p in map(Point._make, out) if p.metric == "lm loss")


# ---- bytes, chunks and long lines ---------------------------------------------------------------------------------


def lines_of(data: bytes, sizes: list[int], max_line: int = 1 << 20) -> tuple[list[str], int, int]:
    splitter = LineSplitter(max_line)
    lines: list[str] = []
    covered = 0
    pos = 0
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        i += 1
        for blob, nbytes in splitter.feed(data[pos:pos + n]):
            lines += decode_lines(blob)
            covered += nbytes
        pos += n
    return lines, covered, splitter.cut


def test_chunk_boundaries_anywhere_and_non_utf8():
    data = ("ünïcode loss=1 step=1\n".encode() + b"bad \xff\xfe bytes step=2 loss=2\n"
            + "日本語 step=3 loss=3\n".encode())
    whole, covered, _ = lines_of(data, [len(data)])
    assert whole == ["ünïcode loss=1 step=1", "bad \ufffd\ufffd bytes step=2 loss=2", "日本語 step=3 loss=3"]
    assert covered == len(data)
    for sizes in ([1], [2, 3], [7], [5, 1, 11]):
        assert lines_of(data, sizes)[0] == whole  # multibyte characters split across chunks come out whole


def test_a_huge_line_is_cut_counted_and_never_held():
    bar = "".join(f"\rEpoch 0: |          | {i}/? [00:00<?, 9.0it/s, loss={i}.5]" for i in range(1, 40_000))
    data = b"step=1 loss=1\n" + bar.encode() + b"\nstep=2 loss=2\n"
    splitter = LineSplitter(max_line=64 * 1024)
    biggest = 0
    pieces = []
    for i in range(0, len(data), 8192):
        pieces += splitter.feed(data[i:i + 8192])
        biggest = max(biggest, splitter.pending)
    assert biggest <= 64 * 1024 and splitter.cut == 1
    assert sum(n for _, n in pieces) == len(data)  # byte accounting includes what was dropped
    lines = [line for blob, _ in pieces for line in decode_lines(blob)]
    assert lines[0] == "step=1 loss=1" and lines[-1] == "step=2 loss=2"
    head = lines[1]
    assert len(head) < 64 * 1024 and head.startswith("\rEpoch 0")
    parser = LogParser()
    out: list[Point] = []
    parser.feed(head, 0.0, "", out)
    # the cut-off, half-drawn segment is not read
    assert out and all(p.value == p.step + 1.5 for p in map(Point._make, out))


def test_parse_text_public_api():
    assert list(parse_text("{'loss': 0.5, 'epoch': 0.1}\n", "hf")) == [("loss", 0.5, 1), ("epoch", 0.1, 1)]
    with pytest.raises(ValueError):
        LogParser("xml")


# ---- properties ---------------------------------------------------------------------------------------------------

hostile = st.one_of(
    st.text(max_size=300),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace")),
    st.lists(st.sampled_from(["{'", "'loss'", ": ", "nan", "1e", "-", "|", " iteration ", "/", "Epoch 1:", "it/s",
                              ", ", "=", "step", "{\"", "\"step\"", "}", "]", "\r", "\x1b[", "[rank1]:", "9" * 30,
                              "steps: ", "skipped=", "lr=[", "SamplesPerSec=", "loss at iteration"]),
             max_size=40).map("".join),
)


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(hostile, max_size=20), st.sampled_from(FORMATS[:-1]))
def test_hostile_lines_never_crash_and_give_finite_steps(lines: list[str], fmt: str):
    parser = LogParser(fmt)
    out: list[Point] = []
    for line in lines:
        n = parser.feed(line, 1.0, "r", out)
        assert n >= 0
    for p in map(Point._make, out):
        assert isinstance(p.metric, str) and p.metric and isinstance(p.step, int) and isinstance(p.value, float)
    assert parser.lines == len(lines) and parser.parsed + parser.failed <= len(lines)
    LogParser(fmt, state=parser.state())  # the state always round-trips


@settings(max_examples=200, deadline=None, database=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_splitting_is_independent_of_chunking(data: bytes, sizes: list[int]):
    whole, covered, _ = lines_of(data, [max(1, len(data))], max_line=512)
    assert lines_of(data, sizes, max_line=512)[0] == whole
    assert covered == data.rfind(b"\n") + 1


def test_memory_stays_flat_on_endless_hostile_input():
    """A million hostile bytes without a newline, then metric lines with ever new names: the splitter holds at
    most its bound and the parser's running state stays capped."""
    splitter = LineSplitter(max_line=4096)
    parser = LogParser("keyvalue")
    out: list[Point] = []
    tracemalloc.start()
    try:
        for _ in range(250):
            splitter.feed(b"\r=={'x" * 700)
        base = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            parser.feed(f"m{i}=1.0", 0.0, "", out)
            out.clear()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert splitter.pending <= 4096
    assert len(parser.state().get("c", {})) == 256  # MAX_COUNTED_NAMES
    assert grown < 200_000


# ---- feed_lines: runs of learned layouts parsed in bulk, exactly as line by line ---------------------------------


def feed_one_by_one(parser: LogParser, lines: list[str], ts, run: str, out: list[Point], limit: int):
    """The reference: `feed` per line, a line that overflows a non-empty batch put back (state rolled back)."""
    for i, line in enumerate(lines):
        start = len(out)
        cp = parser.checkpoint() if start + NEAR_FULL >= limit else None
        parser.feed(line, ts if isinstance(ts, float) else ts[i], run, out)
        if len(out) >= limit:
            if len(out) > limit and cp is not None and start > 0:
                del out[start:]
                parser.rollback(cp)
                return i, True
            return i + 1, True
    return len(lines), False


def exact(p: RawPoint) -> tuple:
    metric, step, ts, value, run = p
    return metric, step, ts, repr(value), run  # NaN equals NaN, -0.0 differs from 0.0


def both_ways(lines: list[str], fmt: str, limit: int, per_line_ts: bool, **kw) -> None:
    """feed_lines and the reference, batch after batch (each batch a fresh list, as polls do): the same lines
    taken, the same points, counts and running state."""
    ts = [1000.0 + i / 7 for i in range(len(lines))] if per_line_ts else 5.0
    fast, slow = LogParser(fmt, **kw), LogParser(fmt, **kw)
    i = 0
    while i < len(lines):
        rest = lines[i:]
        rest_ts = ts if isinstance(ts, float) else ts[i:]
        a: list[Point] = []
        b: list[Point] = []
        got = fast.feed_lines(rest, rest_ts, "pod", a, limit)
        want = feed_one_by_one(slow, rest, rest_ts, "pod", b, limit)
        # and plain tuples, as RawPoint says
        assert got == want and list(map(exact, a)) == list(map(exact, b)) and {type(p) for p in a} <= {tuple}
        assert (fast.lines, fast.parsed, fast.failed, fast.detected) == (slow.lines, slow.parsed, slow.failed,
                                                                         slow.detected)
        assert json.dumps(fast.state(), sort_keys=True) == json.dumps(slow.state(), sort_keys=True)  # NaN too
        assert got[0] > 0 or got[1]
        i += max(got[0], 1)  # a line bigger than the limit is taken alone; nothing taken: a full batch


@pytest.mark.parametrize("name", sorted(p.name for p in TEXTS.iterdir()))
@pytest.mark.parametrize("fmt", ["auto", "hf", "megatron"])
def test_feed_lines_equals_feed_on_every_text(name: str, fmt: str):
    lines = decode_lines((TEXTS / name).read_bytes().rstrip(b"\n") + b"\n")
    for limit in (10**9, 37, 9, 1):
        both_ways(lines, fmt, limit, per_line_ts=limit == 37, logging_steps=10)
    # long runs of one layout, in several windows, with an eval dict and a changed layout in the middle
    many = [f"{{'loss': {i / 3:.4f}, 'learning_rate': {i}e-06, 'epoch': {i / 100}}}" for i in range(1, 700)]
    many[400:400] = ["{'eval_loss': 0.25, 'epoch': 4.0}", "{'loss': 1.0, 'step': 401, 'epoch': 4.01}"]
    meg = [f" [2024-05-01 12:00:00] iteration {i:8d}/    5000 | lm loss: {1 / i:.6E} | grad norm: {i % 5:.3f} |"
           for i in range(1, 700)]
    meg[300] = meg[300].replace("grad norm: 1.000", "grad norm: oops")
    for limit in (10**9, 1000, 64):
        both_ways(many + meg + many, fmt, limit, per_line_ts=True)


def test_feed_lines_runs_in_bulk(monkeypatch: pytest.MonkeyPatch):
    """The fast path is taken (not merely equal): a long Megatron log is parsed without calling `feed` per line."""
    lines = [f" iteration {i:8d}/    5000 | lm loss: {1 / i:.6E} | grad norm: 1.000 |" for i in range(1, 2001)]
    calls = []
    feed = LogParser.feed
    monkeypatch.setattr(LogParser, "feed", lambda self, line, *a: calls.append(line) or feed(self, line, *a))
    parser = LogParser()
    out: list[Point] = []
    assert parser.feed_lines(lines, 1.0, "r", out, 10**9) == (2000, False)
    assert calls == lines[:1] and len(out) == 4000 and parser.total_steps == 5000 and parser.parsed == 2000
    assert out[-1] == Point("grad norm", 2000, 1.0, 1.0, "r")


# a few layouts (so that they are learned, then met again) with hostile values, prefixes and suffixes
_HF_LAYOUTS = [("loss", "grad_norm", "learning_rate", "epoch"), ("eval_loss", "epoch"), ("loss", "step", "epoch"),
               ("loss", "max_steps"), ("train_runtime", "total_steps", "global_step"), ("a,b", "epoch"),
               ("x'y", "loss"), ("step",)]
_MEG_LAYOUTS = [("lm loss", "grad norm"), ("consumed samples", "lm loss", "loss scale"), ("a:b", "lm loss"),
                ("x|y",), ("lm loss", "grad norm", "params norm")]
_GOOD = ["0.5", "nan", "NaN", "inf", "-inf", "2e-05", "1", "10", "0", "-3", "2.5", "1e400", " 3", "1_0", "٣", "-0.0"]
_BAD = ["'x'", "1.0.0", "", "\x1b[0m1", "1\r2", "1 2", "{", "x|y"]
_PREFIXES = [" [2024-05-01 12:00:00]", "[rank0]: ", "[rank3]: ", " [default1]:", "\x1b[32m", "INFO ", "a {'b' ",
             "{x} ", "iteration ", "see iteration 3/ 4 | ", "\r", "{'loss': 1, 'epoch': 2} ", "x" * 30 + "]: "]
_SUFFIXES = [" ", " trailing", "\r", "\x1b[0m", "}", " | extra: 1.5 |", "{'loss': 2.0}",
             "\r{'loss': 2.0, 'epoch': 1.0}", "\r iteration 9/ 10 | lm loss: 1.0 | grad norm: 2.0 |", " extra: 2 |"]
_NOISE = ["Traceback (most recent call last):", "{'lora_rank': 8, 'cutoff_len': 1024}", "step=3 loss=0.5",
          " validation loss at iteration 100 | lm loss value: 2.8 |", "***** Running training *****",
          "  Total optimization steps = 1,875", "", "Epoch 1:  10%|#  | 10/100 [00:01<00:09, 9.0it/s, loss=0.3]",
          " iteration 200/ timeout"]

_values = st.lists(st.sampled_from(_GOOD * 2 + _BAD), min_size=3, max_size=3)
_prefix = st.sampled_from([""] * len(_PREFIXES) + _PREFIXES)
_suffix = st.sampled_from([""] * len(_SUFFIXES) + _SUFFIXES)


def _hf(pre: str, keys: tuple[str, ...], vals: list[str], suf: str) -> str:
    return pre + "{" + ", ".join(f"'{k}': {vals[i % 3]}" for i, k in enumerate(keys)) + "}" + suf


def _meg(pre: str, it: int, total: int, keys: tuple[str, ...], vals: list[str], suf: str) -> str:
    fields = "".join(f" {k}: {vals[i % 3]} |" for i, k in enumerate(keys))
    return pre + f" iteration {it:8d}/{total:8d} |" + fields + suf


_hf_line = st.builds(_hf, _prefix, st.sampled_from(_HF_LAYOUTS), _values, _suffix)
_meg_line = st.builds(_meg, _prefix, st.integers(0, 10**6), st.sampled_from([0, 5000, 10**7]),
                      st.sampled_from(_MEG_LAYOUTS), _values, _suffix)
# a mix: short runs of a line (so layouts are reused), other formats and noise between
_mix = st.lists(st.tuples(st.one_of(_hf_line, _meg_line, _hf_line, _meg_line, st.sampled_from(_NOISE)),
                          st.integers(1, 5)),
                max_size=40).map(lambda runs: [line for line, n in runs for _ in range(n)])


@pytest.mark.parametrize("fmt", ["auto", "hf", "megatron"])
def test_feed_lines_equals_feed_on_every_variant(fmt: str):
    """Each layout learned, then met again with each prefix, suffix and value: the bulk path takes a line exactly
    when `feed` would read it with the layout (else `feed` reads it)."""
    good = ["0.5", "2e-05", "10"]
    for keys in _HF_LAYOUTS + _MEG_LAYOUTS:
        def line(pre: str = "", vals: list[str] = good, suf: str = "", keys: tuple[str, ...] = keys) -> str:
            return _hf(pre, keys, vals, suf) if keys in _HF_LAYOUTS else _meg(pre, 7, 5000, keys, vals, suf)

        variants = ([line(pre=p) for p in _PREFIXES] + [line(suf=x) for x in _SUFFIXES]
                    + [line(vals=[v, *good[1:]]) for v in _GOOD + _BAD] + [line(vals=[*good[:2], v]) for v in _BAD])
        for v in variants:
            for limit in (10**9, 2 * len(keys) + 1):
                both_ways([line(), line(), v, line(), v, v, line()], fmt, limit, per_line_ts=True, logging_steps=2)


def test_feed_lines_keys_with_escapes_are_never_bulk():
    """Stripping ANSI codes can leave an ESC in a key (ESC ESC[0m X -> ESC X); the same bytes in a later line are
    stripped again, so a layout holding an ESC is never matched in bulk."""
    lines = ["{'a\x1b\x1b[0mXb': 1.0, 'epoch': 1}", "{'a\x1bXb': 2.0, 'epoch': 1}", "{'a\x1bXb': 3.0, 'epoch': 1}"]
    for fmt in ("auto", "hf"):
        both_ways(lines, fmt, 10**9, per_line_ts=False)


@settings(max_examples=500, deadline=None, database=None)
@given(_mix, st.sampled_from(["auto", "hf", "megatron"]), st.sampled_from([10**9, 1000, 50, 7, 1]), st.booleans(),
       st.sampled_from([1, 5]))
def test_feed_lines_equals_feed_on_random_mixes(lines: list[str], fmt: str, limit: int, per_line_ts: bool,
                                                 logging_steps: int):
    both_ways(lines, fmt, limit, per_line_ts, logging_steps=logging_steps)


@settings(max_examples=100, deadline=None, database=None)
@given(st.lists(st.tuples(st.one_of(_hf_line, _meg_line), st.integers(1, 300)), min_size=1, max_size=4)
       .map(lambda runs: [line.replace(" 1 ", f" {i} ") for line, n in runs for i in range(n)]),
       st.sampled_from(["auto", "hf", "megatron"]), st.sampled_from([10**9, 500, 64]))
def test_feed_lines_equals_feed_on_long_runs(lines: list[str], fmt: str, limit: int):
    both_ways(lines, fmt, limit, per_line_ts=True, logging_steps=3)


def test_a_megatron_field_that_appears_later_is_not_dropped_by_the_learned_layout() -> None:
    base = " iteration {i}/ 100 | lm loss: {l:.4E} | grad norm: 1.5 |"
    lines = [base.format(i=i, l=2.0 / i) for i in range(1, 4)]
    lines += [base.format(i=i, l=2.0 / i) + " params norm: 3.0E+02 |" for i in range(4, 6)]
    got = list(parse_text("\n".join(lines) + "\n", "megatron"))
    assert [(m, s) for m, _, s in got if m == "params norm"] == [("params norm", 4), ("params norm", 5)]
    assert len([m for m, _, _ in got if m == "lm loss"]) == 5
