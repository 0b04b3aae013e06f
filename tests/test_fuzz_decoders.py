"""Hostile input for every decoder of source data, with hypothesis: random bytes, mutated real event files,
truncations, random log text, SwanLab metric lines, W&B history rows.

Each decoder must only return (or raise its documented errors), and stay bounded per input. Bounds are counted
resources, never wall time: tracemalloc's peak per input, and for the event-file reader the bytes it reads and the
CRCs it computes (a reader that went quadratic on garbage would show here, at any machine speed).
"""

from __future__ import annotations

import io
import json
import math
import struct
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy.ma  # noqa: F401  np.unique imports it on first use: a one-time import, not the reader's memory
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainscope.collector.points import Point
from trainscope.collector.sources import SourceContext, logparsers, swanlab_files, tfevents
from trainscope.collector.sources.sink import PointSink
from trainscope.collector.sources.tfevents import DecodeError, EventScanner, decode_event, read_file
from trainscope.collector.sources.wandb import WandbSource
from trainscope.demo import encode_event, frame

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
KB = 1024


@contextmanager
def peak_bytes() -> Iterator[list[int]]:
    """The peak of Python allocations inside the block (tracemalloc), appended to the yielded list."""
    out: list[int] = []
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield out
    finally:
        out.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()


class CountingFile(io.BytesIO):
    """An in-memory event file that counts the bytes the reader asked for."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.bytes_read = 0
        self.reads = 0

    def read(self, n: int | None = -1) -> bytes:  # type: ignore[override]
        chunk = super().read(n)
        self.bytes_read += len(chunk)
        self.reads += 1
        return chunk


@pytest.fixture
def crc_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the CRC computations of the reader (each over at most one record)."""
    calls = [0]
    real = tfevents._crc

    def counting(data: bytes) -> int:
        calls[0] += 1
        return real(data)
    monkeypatch.setattr(tfevents, "_crc", counting)
    return calls


def _read_all(data: bytes, limit: int = 10_000) -> tuple[list[Point], int, dict[str, int], CountingFile]:
    f = CountingFile(data)
    out: list[Point] = []
    skipped: dict[str, int] = {}
    offset, full = read_file(f, 0, len(data), EventScanner(lambda _t: True), ".", out, limit, skipped)
    while full:  # keep reading from where a full batch stopped, as the collector does
        batch: list[Point] = []
        offset, full = read_file(f, offset, len(data), EventScanner(lambda _t: True), ".", batch, limit, skipped)
        out += batch
    return out, offset, skipped, f


def _real_file(n: int, tags: tuple[str, ...] = ("loss", "lr")) -> tuple[bytes, list[tuple[str, int, float]]]:
    """A real event file (the layout tensorboardX writes) and what it holds."""
    data = frame(encode_event(1.0, 0, file_version="brain.Event:2"))
    want = []
    for step in range(1, n + 1):
        for tag in tags:
            value = float(struct.unpack("<f", struct.pack("<f", 1.0 / step))[0])
            data += frame(encode_event(1000.0 + step, step, {tag: value}))
            want.append((tag, step, value))
    return data, want


def _check_bounded(data: bytes, f: CountingFile, crcs: int, peak: int) -> None:
    size = len(data)
    assert f.bytes_read <= 3 * size + 64, (f.bytes_read, size)
    assert crcs <= 2 * size + 16, (crcs, size)  # at most one per candidate offset, two per record
    assert peak <= 256 * KB + 64 * size, (peak, size)


# ---- the event-file reader ------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_crash_the_event_reader(data: bytes, crc_calls: list[int]) -> None:
    crc_calls[0] = 0
    with peak_bytes() as peak:
        points, offset, _skipped, f = _read_all(data)
    assert 0 <= offset <= len(data)
    assert all(isinstance(p.step, int) and isinstance(p.value, float) for p in points)
    _check_bounded(data, f, crc_calls[0], peak[0])


REAL, REAL_POINTS = _real_file(60)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(REAL) - 1), st.sampled_from(["flip", "zero", "drop", "dup"]),
                                st.integers(1, 64)), min_size=1, max_size=8))
def test_mutated_real_files_lose_only_the_damaged_records(edits: list[tuple[int, str, int]],
                                                          crc_calls: list[int]) -> None:
    data = bytearray(REAL)
    for pos, op, n in edits:
        pos = min(pos, len(data) - 1)
        if op == "flip":
            data[pos] ^= 0xFF
        elif op == "zero":
            data[pos:pos + n] = bytes(len(data[pos:pos + n]))
        elif op == "drop":
            del data[pos:pos + n]
        else:
            data[pos:pos] = data[pos:pos + n]
    data = bytes(data)
    crc_calls[0] = 0
    with peak_bytes() as peak:
        points, offset, _skipped, f = _read_all(data)
    _check_bounded(data, f, crc_calls[0], peak[0])
    # CRCs guard every record: whatever survives is a point that was written, never a mangled one.
    # (A duplicated whole record may appear twice; the store's key makes that harmless.)
    written = set(REAL_POINTS)
    assert {(p.metric, p.step, p.value) for p in points} <= written
    assert 0 <= offset <= len(data)


@FUZZ
@given(cut=st.integers(0, len(REAL)), chunk=st.integers(1, 4096))
def test_truncated_then_resumed_reads_equal_one_whole_read(cut: int, chunk: int) -> None:
    """A file read while its writer is mid-record, then read on from the returned offset once complete, gives
    exactly the points of one read of the whole file: nothing lost, nothing twice, whatever the cut."""
    scanner = EventScanner(lambda _t: True)
    first: list[Point] = []
    offset, _ = read_file(io.BytesIO(REAL[:cut]), 0, cut, scanner, ".", first, 10_000, {})
    assert offset <= cut
    rest: list[Point] = []
    end, _ = read_file(io.BytesIO(REAL), offset, len(REAL), scanner, ".", rest, 10_000, {})
    assert end == len(REAL)
    assert [(p.metric, p.step, p.value) for p in first + rest] == REAL_POINTS


@FUZZ
@given(payload=st.binary(max_size=512))
def test_event_decoder_raises_only_what_the_scanner_handles(payload: bytes) -> None:
    try:
        wall, step, values = decode_event(payload)
    except (DecodeError, struct.error, IndexError):
        return
    assert isinstance(wall, float) and isinstance(step, int)
    assert all(isinstance(tag, str) and (v is None or isinstance(v, float)) for tag, v, _ in values)


# ---- training-log parsers ------------------------------------------------------------------------------------------

LOG_WORDS = st.sampled_from([
    "{'loss': 0.5, 'learning_rate': 1e-05, 'epoch': 0.1}", "iteration 10/ 100 | lm loss: 1.5E+00 |",
    "step=3 loss=nan lr=inf", '{"step": 4, "loss": 1e309}', "Epoch 1:  50%|#| 5/10 [00:01<00:01, loss=0.3]",
    "[Rank 0] step=5, skipped=0, lr=[0.1]", "loss", "=", ":", "{", "}", "[", "]", "|", ",", " ", "\n", "\r",
    "1e-9999", "-0", "NaN", "\x00", "\ud800", "é", "\U0001d6fc", '"', "'", "\\",
])


@FUZZ
@given(text=st.one_of(st.text(max_size=2000), st.lists(LOG_WORDS, max_size=200).map("".join)),
       fmt=st.sampled_from(logparsers.FORMATS))
def test_log_parsers_take_any_text(text: str, fmt: str) -> None:
    with peak_bytes() as peak:
        got = list(logparsers.parse_text(text, fmt))
    assert all(isinstance(m, str) and isinstance(v, float) and isinstance(s, int) for m, v, s in got)
    size = len(text.encode("utf-8", "surrogatepass"))
    assert peak[0] <= 512 * KB + 64 * size, (peak[0], size)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=300), max_size=30), max_line=st.integers(1, 64))
def test_line_splitter_holds_at_most_one_line(chunks: list[bytes], max_line: int) -> None:
    """What the splitter holds between chunks is at most max_line bytes, whatever arrives; no line it returns is
    longer than what was held plus the chunk it completed in (that is in memory already, so it is passed on
    whole), and with no long line at all, the lines are exactly the input."""
    splitter = logparsers.LineSplitter(max_line=max_line)
    lines = []
    for chunk in chunks:
        lines += splitter.feed(chunk)
        assert splitter.pending <= max_line
    lines += splitter.flush()
    longest_chunk = max((len(c) for c in chunks), default=0)
    for blob, _n in lines:  # what was held (<= max_line) plus the chunk in hand: already in memory, passed on whole
        assert all(len(line) <= max_line + longest_chunk for line in blob.split(b"\n"))
    text = b"".join(chunks)
    if all(len(line) <= max_line for line in text.split(b"\n")):
        assert b"".join(blob for blob, _ in lines) == (text + b"\n" if text and not text.endswith(b"\n") else text)
    assert sum(n for _, n in lines) == len(text)


# ---- SwanLab metric lines ------------------------------------------------------------------------------------------

SWAN_LINE = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda i, d, t: json.dumps({"index": i, "data": d, "create_time": t}).encode(),
              st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=5)),
              st.one_of(st.floats(allow_nan=True), st.integers(-2**70, 2**70), st.text(max_size=5), st.none()),
              st.one_of(st.text(max_size=30), st.just("2025-03-21T12:58:06.123456"), st.integers())),
)


@FUZZ
@given(lines=st.lists(SWAN_LINE, max_size=40), tail=st.binary(max_size=50))
def test_swanlab_metric_lines_take_anything(lines: list[bytes], tail: bytes) -> None:
    data = b"\n".join(line.replace(b"\n", b" ") for line in lines) + b"\n" + tail
    reader = swanlab_files.FileReader(10_000, [], {}, [])
    with peak_bytes() as peak:
        offset, _newest = reader._read(io.BytesIO(data), 0, len(data), "loss", "run")
    assert offset <= len(data)
    assert all(type(step) is int and type(ts) is float and type(value) is float
               for _, step, ts, value, _ in reader.points)
    assert peak[0] <= 256 * KB + 64 * len(data)


# ---- W&B history rows ----------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**80, 2**80), st.floats(), st.text(max_size=10)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=30)
ROWS = st.dictionaries(st.one_of(st.sampled_from(["_step", "_timestamp", "_runtime", "loss", "eval"]),
                                 st.text(max_size=12)), JSON_VALUES, max_size=12)


@FUZZ
@given(row=ROWS, step=st.integers(0, 2**40), ts=st.one_of(st.floats(), st.integers(), st.none(), st.text()))
def test_wandb_history_rows_take_anything(row: dict[str, Any], step: int, ts: Any) -> None:
    source = WandbSource({"entity": "e", "project": "p", "runId": "r"}, SourceContext())
    row = {**row, "_step": step, "_timestamp": ts}
    skipped: dict[str, int] = {}
    with peak_bytes() as peak:
        points = source._rows.row_points(row, "r", skipped)
    assert all(isinstance(p.value, float) and p.step == step for p in points)
    if points:
        assert isinstance(ts, int | float) and math.isfinite(ts)
    assert peak[0] <= 256 * KB + 64 * len(json.dumps(row, default=str))


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**1030, 2**1030), st.floats(), st.text(max_size=4),
                    st.dictionaries(st.sampled_from(["x", "_type"]), st.floats(), max_size=2))


@FUZZ
@given(keys=st.lists(st.sampled_from(["loss", "lr", "_runtime", "eval", "b"]), min_size=1, max_size=5, unique=True),
       cells=st.lists(st.lists(SCALARS, min_size=6, max_size=6), min_size=1, max_size=24),
       times=st.lists(st.one_of(st.floats(), st.integers(-10, 10**10)), min_size=24, max_size=24),
       limit=st.integers(1, 200))
def test_wandb_rows_of_one_layout_read_as_the_rows_one_by_one(keys: list[str], cells: list[list[Any]],
                                                              times: list[Any], limit: int) -> None:
    """RowReader.read (stretches of one layout as columns) gives the points, order and skip counts that reading
    the same rows one by one gives, up to the same row when the batch fills."""
    rows = [{"_step": i, "_timestamp": times[i], **dict(zip(keys, c, strict=False))} for i, c in enumerate(cells)]
    reader = WandbSource({"entity": "e", "project": "p", "runId": "r", "keys": {"exclude": ["b"]}},
                         SourceContext())._rows
    sink, skipped = PointSink(), {}
    taken = reader.read(rows, "r", sink, limit, skipped)
    want, want_skipped, n = [], {}, 0
    for n, row in enumerate(rows):  # noqa: B007
        pts = reader.row_points(row, "r", want_skipped)
        if want and len(want) + len(pts) > limit:
            break
        want += pts
    else:
        n = len(rows)
    if n < len(rows):  # the row that did not fit was counted; read() stops before counting it
        want_skipped = {}
        for row in rows[:n]:
            reader.row_points(row, "r", want_skipped)
    got = sink.result()
    assert taken == n
    assert [(*p[:3], repr(p[3]), p[4]) for p in got] == [(*p[:3], repr(p[3]), p[4]) for p in want]
    assert skipped == want_skipped


