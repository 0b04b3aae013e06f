"""Parsing training logs: lines/s per format against two read-and-split ceilings and the naive every-pattern way.

Run: python bench/bench_logs.py [--lines 200000 --repeat 5 --batch 50000] [--cpu] [--anatomy]
Writes one large realistic log per format (HF Trainer dicts, Megatron iteration lines, DeepSpeed, Lightning
progress bars, key=value, JSON lines; "+noise" variants mix in the info lines, warnings and tracebacks real jobs
print) and times, in this one process, on the same file:

- split (ceiling a): read in 1 MiB chunks, decode, split into lines (LineSplitter + decode_lines, as the source
  does) and loop over the lines in Python doing nothing else. Every step runs in C but the loop: a lower bound on
  the cost of any reader, not a parser's ceiling (no parser can look at a line for less than nothing).
- tokenize (ceiling b): the same, plus `line.split()` on every line (the tokens dropped): the cost of merely
  splitting each line into its words in Python, the least a parser that reads each line's contents pays. The 40%
  goal of issue 5 ("the speed of merely reading and splitting the same lines in Python") is judged on this one.
- ours: the logs source's file reader (LogsSource._read_file: LineSplitter, LogParser with format=auto, Points)
  in batches of at most --batch points, as polls take them (default: SourceContext.max_batch_points); each
  batch's points are dropped before the next, as the store does after writing them. No thread, no asyncio.
- pods: the same lines as the Kubernetes API serves them (`timestamps=true`: each line after its kubelet
  timestamp), through the pod reader's position (podlogs.Position.take: per-line time, skip, second bookkeeping) and
  the parser; points dropped after each 1 MiB chunk.
- peer: one compiled regex per format, written for that exact line layout (as a user who knows the format writes
  it: one match per line, fixed metric names, the step from its group or counted), the same reading; points as
  plain tuples. In turns with ours (ABAB..., medians of --repeat rounds). Ours and the peer must give the same
  points, compared point for point on an untimed run of each before the rounds; every timed run must give the
  expected line and point counts.
- naive (old baseline): the same reading, then every format's regexes tried on every line (search, then findall
  of the pairs on a match), as a straightforward implementation would.
- poll(): LogsSource.poll end to end (asyncio.to_thread), polled until `more` is false, default batch size.
- --before FILE: a copy of an earlier logparsers.py (e.g. `git show main:collector/sources/logparsers.py`),
  loaded under another name, read the same way as "ours", in turns with it (ABAB..., medians): what a change to
  the parsers costs on HF and Megatron lines, the same run, the same load.
- --anatomy: for an HF and a Megatron line, each step of the bulk path timed alone (GC off) against the 40%
  budget (2.5x ceiling (b)): what one line's regex, floats and points cost at the least.

All of them run under the garbage-collector thresholds the collecting processes set (trainscope.gc_tuning, as
`trainscope operator` and `trainscope local` do); "ours @gc700" repeats "ours" under CPython's default thresholds
(700, 10, 10), to show what that setting is worth. Best of `repeat` runs; figures are printed, never asserted.
`--cpu` times with this process's CPU time instead of the wall clock (steadier when other work shares the cores;
the ratios are the same kind of figure either way). Other processes on the machine move wall-clock figures (the
load average is printed before and after); every way must give the same points (asserted).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainscope.collector.points import Point
from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.logparsers import LineSplitter, LogParser, decode_lines
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.sources.podlogs import Feed, Position
from trainscope.gc_tuning import tune_for_ingest

CHUNK = 1 << 20
NOISE = [
    "[INFO|trainer.py:3705] 2024-05-01 12:00:09,510 >> Saving model checkpoint to /out/checkpoint-500",
    "[rank3]:[W501 12:00:00.000000000 ProcessGroupNCCL.cpp:4115] Warning: TORCH_NCCL_AVOID_RECORD_STREAMS=1",
    "  File \"/opt/conda/lib/python3.10/site-packages/torch/nn/modules/module.py\", line 1532, in _wrapped_call_impl",
    "NCCL INFO comm 0x55d5 rank 0 nranks 16 cudaDev 0 busId 1b000 - Init COMPLETE",
]


def line_of(fmt: str, i: int) -> str:
    if fmt == "hf":
        return (f"{{'loss': {2.0 / math.sqrt(i):.4f}, 'grad_norm': {0.5 + (i % 13) / 100:.6f}, "
                f"'learning_rate': {5e-05 * (1 - i / 1e7)!r}, 'epoch': {i / 625:.2f}}}")
    if fmt == "megatron":
        return (f" [2024-05-01 12:00:00] iteration {i:8d}/{10**7:8d} | consumed samples: {i * 256:12d} | elapsed time "
                f"per iteration (ms): {1234.5 + i % 10:.1f} | learning rate: {1.5e-4:.6E} | global batch size:   256 |"
                f" lm loss: {10 / math.sqrt(i):.6E} | loss scale: 1.0 | grad norm: {1 + 1 / i:.3f} | number of "
                f"skipped iterations:   0 | number of nan iterations:   0 |")
    if fmt == "deepspeed":
        return f"steps: {i} loss: {3 / math.log(i + 2):0.4f} iter time (s): 0.512 samples/sec: {62.5 - i % 7:0.3f}"
    if fmt == "lightning":
        b = i % 100 or 100
        return "".join(f"\rEpoch {i // 100}: {k:3d}%|{'#' * (k // 10):<10}| {k}/100 [00:{k % 60:02d}<00:10, 8.70it/s, "
                       f"v_num=0, train_loss={1 / (i + k):.4f}]" for k in (b,))
    if fmt == "keyvalue":
        return f"2024-05-01 12:00:00 INFO step={i} loss={2.5 / i:.5e} lr=3.0e-04 tokens/s={15000 + i % 100}"
    return json.dumps({"current_steps": i, "total_steps": 10**7, "loss": round(1.8 - i / 1e7, 4), "lr": 4.9e-05,
                       "epoch": round(i / 125, 2), "elapsed_time": "0:01:02"})


def write(path: Path, fmt: str, lines: int, noise: bool) -> int:
    with path.open("w") as f:
        for i in range(1, lines + 1):
            if noise and i % 2 == 0:
                f.write(NOISE[i % len(NOISE)] + "\n")
            else:
                f.write(line_of(fmt, i) + "\n")
    return lines


def split(path: Path) -> tuple[int, int]:
    n = 0
    with path.open("rb") as f:
        splitter = LineSplitter()
        while chunk := f.read(CHUNK):
            for blob, _ in splitter.feed(chunk):
                for _line in decode_lines(blob):
                    n += 1
    return n, 0


def tokenize(path: Path) -> tuple[int, int]:
    n = 0
    with path.open("rb") as f:
        splitter = LineSplitter()
        while chunk := f.read(CHUNK):
            for blob, _ in splitter.feed(chunk):
                for line in decode_lines(blob):
                    line.split()
                    n += 1
    return n, 0


BATCH = 50_000
CLOCK = time.perf_counter


def ours(path: Path) -> tuple[int, int]:
    parser = LogParser("auto")
    points = offset = 0
    with path.open("rb") as f:
        while True:  # one poll per batch, its points dropped once counted (written to the store, in real life)
            out: list[Point] = []
            feed = Feed(parser, "run", out, BATCH)
            offset, _ = LogsSource._read_file(f, offset, 0.0, feed)
            points += len(out)
            if COLLECT is not None:
                COLLECT.extend(out)
            if not feed.full:
                break
    return parser.lines, points


def reader(parser_class: type) -> Callable[[Path], tuple[int, int]]:
    """`ours` with another parser class (an earlier version of LogParser)."""

    def read(path: Path) -> tuple[int, int]:
        parser = parser_class("auto")
        points = offset = 0
        with path.open("rb") as f:
            while True:
                out: list[Point] = []
                feed = Feed(parser, "run", out, BATCH)
                offset, _ = LogsSource._read_file(f, offset, 0.0, feed)
                points += len(out)
                if not feed.full:
                    break
        return parser.lines, points

    return read


def before_after(before: str, lines: int, repeat: int) -> None:
    """The earlier parser and ours on the same HF and Megatron logs, in turns; medians and bests."""
    import importlib.util
    import statistics

    spec = importlib.util.spec_from_file_location("logparsers_before", before)
    assert spec is not None and spec.loader is not None
    old = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(old)
    print(f"\nbefore ({before}) / after, in turns (ABAB..., {repeat} each), lines/s, {load()}")
    print(f"{'log':<16}{'before med':>12}{'after med':>12}{'after/before':>14}{'before best':>13}{'after best':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, noise in (("hf", False), ("megatron", False), ("hf", True), ("megatron", True)):
            path = Path(tmp) / f"{fmt}.log"
            n = write(path, fmt, lines, noise)
            ways = {"before": reader(old.LogParser), "after": ours}
            times: dict[str, list[float]] = {"before": [], "after": []}
            got = {}
            for _ in range(repeat):
                for way, fn in ways.items():
                    gc.collect()
                    t0 = CLOCK()
                    got[way] = fn(path)
                    times[way].append(CLOCK() - t0)
            assert got["before"] == got["after"], got  # the same lines and points either way
            med = {w: n / statistics.median(t) for w, t in times.items()}
            top = {w: n / min(t) for w, t in times.items()}
            name = fmt + (" +noise" if noise else "")
            print(f"{name:<16}{med['before']:>12,.0f}{med['after']:>12,.0f}{med['after'] / med['before']:>14.1%}"
                  f"{top['before']:>13,.0f}{top['after']:>12,.0f}")
    print(load())


def pods(path: Path) -> tuple[int, int]:
    """`path` holds kubelet-timestamped lines (see `stamped`)."""
    parser = LogParser("auto")
    pos = Position({})
    points = lines = 0
    with path.open("rb") as f:
        splitter = LineSplitter()
        while chunk := f.read(CHUNK):
            for blob, _ in splitter.feed(chunk):
                out: list[Point] = []
                text = decode_lines(blob)
                assert pos.take(text, Feed(parser, "pod-0", out, 10**9))
                points += len(out)
                lines += len(text)
    return lines, points


def stamped(src: Path, dst: Path) -> None:
    """The log as `GET pods/{name}/log?timestamps=true` serves it: RFC 3339 nanosecond time, a space, the line."""
    with src.open("rb") as f, dst.open("wb") as g:  # bytes: a carriage return is not a newline here
        for i, line in enumerate(f):
            g.write(f"2024-05-01T12:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}{i % 999983:06d}Z "
                    .encode() + line)


NAIVE = [re.compile(p) for p in (
    r"'([^']+)': ([^,}]+)",  # HF dict pairs
    r"iteration\s+(\d+)/\s*(\d+)", r"\|\s*([^|:]+?)\s*:\s*([^|\s]+)",  # Megatron
    r"steps: (\d+) loss: (\S+)", r"step=(\d+), skipped=(\d+)", r"global_step=(\d+)",  # DeepSpeed
    r"Epoch (\d+):.*?(\d+)/(\d+)", r"(\w+)=([-+\d.eE]+)",  # Lightning, key=value
    r"\"(\w+)\": ([-+\d.eE]+)",  # JSON
)]


def naive(path: Path) -> tuple[int, int]:
    n = points = 0
    with path.open("rb") as f:
        splitter = LineSplitter()
        while chunk := f.read(CHUNK):
            for blob, _ in splitter.feed(chunk):
                for line in decode_lines(blob):
                    n += 1
                    line = line.rsplit("\r", 1)[-1]
                    for rx in NAIVE:
                        if rx.search(line):
                            for pair in rx.findall(line):
                                try:
                                    points += bool(Point(pair[0], n, 0.0, float(pair[1]), "run"))
                                except ValueError:
                                    pass
    return n, points


# One regex per known format, for the layout these logs print, and what its groups are: (step group or None,
# metric names of the value groups). HF and Lightning lines carry no step: HF's is the count of logging lines,
# Lightning's is epoch * batches + batch - 1 (the progress bar's global index), as the logs source numbers them.
PEER = {
    "hf": (re.compile(r"\{'loss': (\S+), 'grad_norm': (\S+), 'learning_rate': (\S+), 'epoch': ([^}]+)\}"),
           None, ("loss", "grad_norm", "learning_rate", "epoch")),
    "megatron": (re.compile(
        r" \[[^\]]*\] iteration\s+(\d+)/\s*\d+ \| consumed samples:\s+(\S+) "
        r"\| elapsed time per iteration \(ms\): (\S+) \| learning rate: (\S+) \| global batch size:\s+(\S+) "
        r"\| lm loss: (\S+) \| loss scale: (\S+) \| grad norm: (\S+) "
        r"\| number of skipped iterations:\s+(\S+) \| number of nan iterations:\s+(\S+) \|"), 1,
        ("consumed samples", "elapsed time per iteration (ms)", "learning rate", "global batch size", "lm loss",
         "loss scale", "grad norm", "number of skipped iterations", "number of nan iterations")),
    "deepspeed": (re.compile(r"steps: (\d+) loss: (\S+) iter time \(s\): (\S+) samples/sec: (\S+)"), 1,
                  ("loss", "iter time (s)", "samples/sec")),
    "lightning": (re.compile(r"Epoch (\d+):\s+\d+%\|[^|]*\| (\d+)/(\d+) \[[^\]]*?, v_num=\S+, train_loss=([^\]]+)\]"),
                  None, ("train_loss",)),
    "keyvalue": (re.compile(r"\S+ \S+ INFO step=(\d+) loss=(\S+) lr=(\S+) tokens/s=(\S+)"), 1,
                 ("loss", "lr", "tokens/s")),
    "json": (re.compile(r'\{"current_steps": (\d+), "total_steps": \d+, "loss": (\S+), "lr": (\S+), "epoch": (\S+), '
                        r'"elapsed_time": "[^"]*"\}'), 1, ("loss", "lr", "epoch")),
}
COLLECT: list | None = None  # set to a list to keep the points of an untimed run (for the comparison)


def peer(fmt: str) -> Callable[[Path], tuple[int, int]]:
    rx, step_group, names = PEER[fmt]
    match = rx.match

    def read(path: Path) -> tuple[int, int]:
        n = points = counted = 0
        with path.open("rb") as f:
            splitter = LineSplitter()
            while chunk := f.read(CHUNK):
                for blob, _ in splitter.feed(chunk):
                    out: list[tuple] = []
                    for line in decode_lines(blob):
                        n += 1
                        if fmt == "lightning":
                            line = line.rsplit("\r", 1)[-1]
                        m = match(line)
                        if m is None:
                            continue
                        g = m.groups()
                        if fmt == "lightning":
                            step, vals = int(g[0]) * int(g[2]) + int(g[1]) - 1, g[3:]
                        elif step_group is None:
                            counted += 1
                            step, vals = counted, g
                        else:
                            step, vals = int(g[0]), g[1:]
                        out += [(name, step, 0.0, float(v), "run") for name, v in zip(names, vals, strict=True)]
                    points += len(out)
                    if COLLECT is not None:
                        COLLECT.extend(out)
        return n, points

    return read


def collected(fn: Callable[[Path], tuple[int, int]], path: Path) -> list[tuple]:
    """The points of one untimed run of `fn` (ours or the peer), sorted."""
    global COLLECT
    COLLECT = []
    try:
        fn(path)
        return sorted(tuple(p) for p in COLLECT)
    finally:
        COLLECT = None


def poll(path: Path) -> tuple[int, int]:
    import asyncio

    async def go() -> int:
        src = LogsSource({"path": str(path)}, SourceContext(max_batch_points=BATCH))
        points = 0
        cursor = None
        while True:
            batch = await src.poll(cursor)
            points += len(batch.points)
            cursor = batch.cursor
            if not batch.more:
                return points
    return 0, asyncio.run(go())


def best(fn: Callable[[Path], tuple[int, int]], path: Path, repeat: int,
         thresholds: tuple[int, ...] | None = None) -> tuple[float, int, int]:
    """Best wall time of `repeat` runs of fn(path) and its (lines, points); under `thresholds` if given."""
    times = []
    result = (0, 0)
    before = gc.get_threshold()
    if thresholds:
        gc.set_threshold(*thresholds)
    try:
        for _ in range(repeat):
            gc.collect()
            t0 = CLOCK()
            result = fn(path)
            times.append(CLOCK() - t0)
    finally:
        gc.set_threshold(*before)
    return min(times), *result


def in_turns(ways: dict[str, Callable[[Path], tuple[int, int]]], path: Path, repeat: int,
             want: tuple[int, int]) -> list[float]:
    """Median time of each way, run in turns (ABAB..., the order swapped every round); each run must give `want`
    (lines, points)."""
    import statistics

    times: dict[str, list[float]] = {w: [] for w in ways}
    for rnd in range(repeat):
        for way in list(ways) if rnd % 2 == 0 else list(reversed(ways)):
            gc.collect()
            t0 = CLOCK()
            got = ways[way](path)
            times[way].append(CLOCK() - t0)
            if got != want:
                raise SystemExit(f"VERIFY FAILED: {way} gave (lines, points) {got}, expected {want}")
    return [statistics.median(t) for t in times.values()]


def load() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def anatomy(fmt: str, lines: int, repeat: int) -> None:
    """Where one line's time goes (GC off, CPU time, ns per line), against the 40% budget: 2.5x the time of
    ceiling (b). Each step runs alone on the same lines, as feed_lines does it: the regex that recognises the
    learned layout (with its match objects), the value groups into floats, the points as plain tuples."""
    from itertools import chain, compress, cycle
    from itertools import repeat as rep

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.log"
        write(path, fmt, lines, False)
        text = decode_lines(path.read_bytes())
        global CLOCK
        was, clock_was = gc.isenabled(), CLOCK
        gc.disable()
        CLOCK = time.process_time
        try:
            read = best(split, path, repeat)[0] * 1e9 / lines
            ceiling = best(tokenize, path, repeat)[0] * 1e9 / lines
        finally:
            CLOCK = clock_was
            if was:
                gc.enable()
    parser = LogParser(fmt)
    parser.feed_lines(text[:10], 0.0, "r", [], 10**9)  # learns the layout
    lay = parser._fast()
    assert lay is not None and lay.whole is not None
    keep = lay.keep

    def clock(fn: Callable[[], object]) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.process_time()
            fn()
            times.append(time.process_time() - t0)
        return min(times) * 1e9 / len(text)

    def values() -> list[float]:
        return list(map(float, compress(chain.from_iterable(map(re.Match.groups, matches)), cycle(mask))))

    def points() -> list[tuple]:
        steps = chain.from_iterable(map(rep, range(len(text)), rep(len(keep))))
        return list(zip(cycle(keep), steps, rep(0.0), vals, rep("r")))

    was = gc.isenabled()
    gc.disable()
    try:
        matches = list(map(lay.whole, text))
        mask = lay.mask or (True,) * len(matches[0].groups())
        vals = values()
        costs = {
            "ceiling (b): read, split, tokenize": ceiling,
            "read, decode, split (a)": read,
            "layout regex (fullmatch)": clock(lambda: list(map(lay.whole, text))),
            "value strings -> floats": clock(values),
            "points as plain tuples": clock(points),
            "ours: (a) + feed_lines": read + clock(lambda: parser.feed_lines(text, 0.0, "r", [], 10**9)),
        }
    finally:
        if was:
            gc.enable()
    budget = 2.5 * ceiling
    print(f"\n{fmt}: ns per line (CPU time, GC off, best of {repeat}); the 40% goal allows {budget:,.0f} ns "
          "for everything")
    for name, ns in costs.items():
        print(f"  {name:<36}{ns:>8,.0f} ns  {ns / budget:>6.0%} of the budget")


def main() -> None:
    global BATCH, CLOCK
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--batch", type=int, default=SourceContext().max_batch_points,
                        help="points per poll (default: SourceContext.max_batch_points)")
    parser.add_argument("--only", default="", help="comma-separated cases, e.g. hf,megatron")
    parser.add_argument("--cpu", action="store_true", help="time with process CPU time, not the wall clock")
    parser.add_argument("--anatomy", action="store_true", help="also time each step of an HF and a Megatron line")
    parser.add_argument("--before", default="", help="an earlier logparsers.py to compare with, in turns")
    args = parser.parse_args()
    BATCH = args.batch
    CLOCK = time.process_time if args.cpu else time.perf_counter
    cases = [("hf", False), ("megatron", False), ("hf", True), ("megatron", True), ("deepspeed", False),
             ("lightning", False), ("keyvalue", False), ("json", False)]
    if args.only:
        cases = [c for c in cases if (c[0] + ("+noise" if c[1] else "")) in args.only.split(",")]
    default_gc = gc.get_threshold()
    daemon_gc = tune_for_ingest()
    if args.before:
        before_after(args.before, args.lines, args.repeat)
        if not args.only:
            return
    print(f"{args.lines:,} lines per log; peer and ours in turns, medians of {args.repeat}; the others best of "
          f"{args.repeat}; batches of {BATCH:,} points; lines/s; Python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, {'CPU' if args.cpu else 'wall'} time, gc "
          f"thresholds {daemon_gc} (the daemon's; @gc700: {default_gc}), {load()}\n")
    print(f"{'log':<16}{'split (a)':>12}{'tokenize (b)':>13}{'peer med':>11}{'ours med':>11}{'ours/peer':>10}"
          f"{'pt/line':>8}{'of (b)':>8}{'naive':>10}{'ours/naive':>11}{'pods':>11}{'poll()':>11}{'ours @gc700':>13}"
          f"{'load':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, noise in cases:
            path = Path(tmp) / f"{fmt}{'-noise' if noise else ''}.log"
            n = write(path, fmt, args.lines, noise)
            pod_path = path.with_suffix(".pod")
            stamped(path, pod_path)
            theirs = peer(fmt)
            mine, other = collected(ours, path), collected(theirs, path)
            if mine != other or not mine:
                bad = next((a, b) for a, b in zip([*mine, None], [*other, None], strict=False) if a != b)
                raise SystemExit(f"VERIFY FAILED ({fmt}): ours {len(mine):,} points, peer {len(other):,}; "
                                 f"first difference {bad}")
            t_peer, t_ours = in_turns({"peer": theirs, "ours": ours}, path, args.repeat, (n, len(mine)))
            t_split, _, _ = best(split, path, args.repeat)
            t_tok, _, _ = best(tokenize, path, args.repeat)
            t_naive, _, _ = best(naive, path, args.repeat)
            t_pods, pod_lines, pod_points = best(pods, pod_path, args.repeat)
            t_poll, _, poll_points = best(poll, path, args.repeat)
            t_default, _, _ = best(ours, path, args.repeat, default_gc)
            points = len(mine)
            assert pod_lines == n and poll_points == points == pod_points, (n, pod_lines, points, pod_points,
                                                                            poll_points)
            name = fmt + (" +noise" if noise else "")
            print(f"{name:<16}{n / t_split:>12,.0f}{n / t_tok:>13,.0f}{n / t_peer:>11,.0f}{n / t_ours:>11,.0f}"
                  f"{t_peer / t_ours:>9.2f}x{points / n:>8.1f}{t_tok / t_ours:>8.1%}{n / t_naive:>10,.0f}"
                  f"{t_naive / t_ours:>10.1f}x{n / t_pods:>11,.0f}{n / t_poll:>11,.0f}{n / t_default:>13,.0f}"
                  f"{os.getloadavg()[0]:>7.2f}", flush=True)
    if args.anatomy:
        for fmt in ("hf", "megatron"):
            anatomy(fmt, args.lines, args.repeat)
    print(f"\n{load()}")


if __name__ == "__main__":
    main()
