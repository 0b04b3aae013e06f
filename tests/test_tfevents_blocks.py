"""The event-file reader's block decoder against the events it was given, on files long enough for every fast path:
records framed by a repeating pattern of lengths, CRCs and layouts checked for whole blocks at once, many tags of
one length, steps of every varint width, a tag filter, and records of other kinds in between.

Events are serialised with the protobuf classes tensorboardX writes with and framed as TFRecords; the oracle is the
list of values written. Every way of reading (one pass, small batches, a file that grows mid-record, damage in the
middle of a long regular run) must give exactly those points in file order.
"""

from __future__ import annotations

import io
import math
import random
import struct

import google_crc32c
import numpy as np
import pytest
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import HistogramProto, Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.types_pb2 import DataType

from trainscope.collector.sources import crc32c_rows, tfevents
from trainscope.collector.sources.sink import ColumnSink
from trainscope.collector.sources.tfevents import EventScanner, frame, read_file

from tbfixtures import tensor_summary

Row = tuple[str, int, float, float]


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def _key(row: tuple) -> tuple:
    return tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in row)


def build(steps: list[int]) -> tuple[bytes, list[Row], list[int]]:
    """A file of the given steps: per step 9 tags of one length (`layer_<i>/gn`), `loss`, `lr`, a filtered tag, every
    50th step `eval/acc` (a break in the pattern), a histogram, an image-less text tensor and a tensor scalar now
    and then, and an event of two values. Returns (file bytes, the points the reader must give, record offsets)."""
    rng = random.Random(7)
    data = bytearray(frame(Event(wall_time=1.0, step=0, file_version="brain.Event:2").SerializeToString()))
    offsets = [0]
    want: list[Row] = []

    def put(wall: float, step: int, summary: Summary, points: list[tuple[str, float]]) -> None:
        offsets.append(len(data))
        data.extend(frame(Event(wall_time=wall, step=step, summary=summary).SerializeToString()))
        want.extend((tag, step, wall, value) for tag, value in points)

    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0]
    for i, step in enumerate(steps):
        wall = 1_700_000_000.0 + i * 0.25 + rng.random() * 1e-3
        tags = [f"layer_{k}/gn" for k in range(9)] + ["loss", "lr", "skip/me"]
        for tag in tags:
            v = specials[i % 5] if tag == "loss" and i % 17 == 3 else f32(rng.uniform(-1e6, 1e6))
            put(wall, step, Summary(value=[Summary.Value(tag=tag, simple_value=v)]),
                [] if tag.startswith("skip/") else [(tag, v)])
        if i % 50 == 49:
            v = f32(rng.random())
            put(wall, step, Summary(value=[Summary.Value(tag="eval/acc", simple_value=v)]), [("eval/acc", v)])
        if i % 97 == 5:
            put(wall, step, Summary(value=[Summary.Value(tag="w", histo=HistogramProto(min=0, max=1, num=3))]), [])
        if i % 131 == 7:
            v = f32(rng.random())
            put(wall, step, tensor_summary("tensor/acc", "DT_FLOAT", v), [("tensor/acc", v)])
        if i % 211 == 11:
            a, b = f32(rng.random()), f32(rng.random())
            put(wall, step, Summary(value=[Summary.Value(tag="pair/a", simple_value=a),
                                           Summary.Value(tag="pair/b", simple_value=b)]),
                [("pair/a", a), ("pair/b", b)])
    return bytes(data), want, offsets


# steps of every varint width the layouts meet: 1-3 bytes, 2**40 (6 bytes), 2**62 (9), negative (10: one by one)
STEPS = list(range(0, 300)) + list(range(16_300, 16_500)) + [2**40 + i for i in range(40)] + \
    [2**62 + i for i in range(20)] + [-5, -4]
DATA, WANT, OFFSETS = build(STEPS)


def scanner() -> EventScanner:
    return EventScanner(lambda tag: not tag.startswith("skip/"))


def read_batches(data: bytes, limit: int, chunk: int | None = None) -> tuple[list[list[Row]], dict[str, int]]:
    """Read the whole file as the source does: batches of at most `limit` points, each from the last offset."""
    sc, batches, skipped, offset = scanner(), [], {}, 0
    if chunk is not None:
        old, tfevents.CHUNK_BYTES = tfevents.CHUNK_BYTES, chunk
    try:
        while True:
            out: list = []
            offset, full = read_file(io.BytesIO(data), offset, len(data), sc, "r", out, limit, skipped)
            assert all(p[4] == "r" for p in out)
            batches.append([(p.metric, p.step, p.ts, p.value) for p in out])
            assert offset in OFFSETS or offset == len(data)
            if not full:
                return batches, skipped
    finally:
        if chunk is not None:
            tfevents.CHUNK_BYTES = old


def test_crc_rows_equal_crc32c_for_every_length():
    rng = np.random.default_rng(3)
    for size in range(crc32c_rows.MAX_ROW_BYTES + 1):
        rows = rng.integers(0, 256, (5, size), dtype=np.uint8)
        got = crc32c_rows.crc32c_rows(rows)
        assert got.tolist() == [google_crc32c.value(r.tobytes()) for r in rows], size
        assert crc32c_rows.masked_crcs(got).tolist() == [tfevents.masked_crc(r.tobytes()) for r in rows]


def test_one_read_gives_every_point_in_file_order():
    (points,), skipped = read_batches(DATA, 10**9)
    assert len(WANT) > 6000
    assert [_key(p) for p in points] == [_key(p) for p in WANT]
    assert skipped == {"histogram": sum(1 for i in range(len(STEPS)) if i % 97 == 5)}


@pytest.mark.parametrize("limit", [1, 7, 1000, 4096])
def test_batches_of_any_size_add_up_to_one_read(limit: int):
    batches, _ = read_batches(DATA, limit, chunk=64 * 1024)
    assert all(len(b) <= limit or len(b) == 2 for b in batches)  # an event of two values is never split
    assert all(len(b) == limit or len(b) >= limit - 1 for b in batches[:-1])  # full batches stop only when full
    assert [_key(p) for b in batches for p in b] == [_key(p) for p in WANT]


def test_a_file_growing_mid_record_loses_and_repeats_nothing():
    rng = random.Random(5)
    for cut in [*sorted(rng.sample(range(len(DATA)), 12)), len(DATA)]:
        sc, got, offset = scanner(), [], 0
        for end in (cut, len(DATA)):
            out: list = []
            offset, _ = read_file(io.BytesIO(DATA[:end]), offset, end, sc, "r", out, 10**9, {})
            got += [(p.metric, p.step, p.ts, p.value) for p in out]
            assert offset <= end
        assert [_key(p) for p in got] == [_key(p) for p in WANT], cut


@pytest.mark.parametrize("where", ["payload", "header"])
def test_damage_inside_a_long_regular_run_loses_only_that_record(where: str):
    # a `layer_4/gn` record deep inside a run of identical layouts
    victim = next(o for o in OFFSETS[len(OFFSETS) // 2:] if b"layer_4/gn" in DATA[o:o + 48])
    at = victim + (30 if where == "payload" else 3)
    data = bytearray(DATA)
    data[at] ^= 0x5A
    (points,), skipped = read_batches(bytes(data), 10**9)
    got = {_key(q) for q in points}
    lost = [p for p in WANT if _key(p) not in got]
    assert len(lost) == 1 and len(points) == len(WANT) - 1
    assert skipped.get("bad_crc" if where == "payload" else "bad_length_crc") == 1


def _tensor_file(steps: int) -> tuple[bytes, list[Row]]:
    """TF2-style scalars: tensors whose scalars-plugin metadata comes with a tag's first event only, in float_val,
    double_val and tensor_content, three tags per step."""
    data = bytearray(frame(Event(wall_time=1.0, step=0, file_version="brain.Event:2").SerializeToString()))
    want: list[Row] = []
    kinds = [("f32", "DT_FLOAT", False), ("f64", "DT_DOUBLE", False), ("content", "DT_FLOAT", True)]
    for step in range(steps):
        wall = 1_700_000_000.0 + step
        for tag, dtype, content in kinds:
            value = 1.0 / (step + 3) + len(tag)
            if dtype == "DT_FLOAT":
                value = f32(value)
            summary = tensor_summary(tag, dtype, value, content=content, shape=(1,) if content else (),
                                     metadata=step == 0)
            data.extend(frame(Event(wall_time=wall, step=step, summary=summary).SerializeToString()))
            want.append((tag, step, wall, value))
    return bytes(data), want


def test_tensor_scalars_without_metadata_after_the_first_are_read_by_layout():
    data, want = _tensor_file(3000)
    sc, out, skipped = scanner(), [], {}
    offset, _ = read_file(io.BytesIO(data), 0, len(data), sc, "r", out, 10**9, skipped)
    assert offset == len(data) and skipped == {}
    assert [(p.metric, p.step, p.ts, p.value) for p in out] == want
    assert {e[5] for entries in sc._tensor_templates.values() for e in entries} == {"f32", "f64", "content"}


def test_a_learnt_bare_tensor_layout_yields_to_another_plugins_metadata():
    """A metadata-less tensor is a scalar until an event says its tag belongs to another plugin (here `text`),
    in that run only: the layout learnt from the early events must not read the later ones."""
    text_md = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
    text = Summary(value=[Summary.Value(tag="t", metadata=text_md,
                                        tensor=TensorProto(dtype=DataType.DT_STRING, string_val=[b"hi"]))])

    def bare(step: int) -> bytes:
        return frame(Event(wall_time=float(step), step=step,
                           summary=tensor_summary("t", "DT_FLOAT", 0.5, metadata=False)).SerializeToString())

    before = b"".join(bare(s) for s in range(1, 3000))
    after = b"".join(bare(s) for s in range(3000, 6000))
    marker = frame(Event(wall_time=1.0, step=1, summary=text).SerializeToString())
    sc = scanner()
    for run, data, n_points, n_skipped in (("a", before, 2999, 0), ("a", marker + after, 0, 3001),
                                           ("b", before, 2999, 0)):
        out: list = []
        skipped: dict[str, int] = {}
        read_file(io.BytesIO(data), 0, len(data), sc, run, out, 10**9, skipped)
        assert len(out) == n_points and sum(skipped.values()) == n_skipped, (run, skipped)
        assert skipped.get("non_scalar", 0) == n_skipped


def test_empty_and_oversized_layout_records_between_scalars_are_stepped_over():
    """Records of no payload and records longer than the block decoder's rows (a 2 KB text event) sit between
    scalar events: the scalars all arrive, the text is counted as non-scalar."""
    text = Summary(value=[Summary.Value(tag="notes", metadata=SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name="text")),
        tensor=TensorProto(dtype=DataType.DT_STRING, string_val=[b"x" * 2000]))])
    data = frame(b"") * 40
    want = []
    for step in range(1, 200):
        data += frame(Event(wall_time=float(step), step=step,
                            summary=Summary(value=[Summary.Value(tag="a", simple_value=0.5)])).SerializeToString())
        want.append(("a", step, float(step), 0.5))
        if step % 10 == 0:
            data += frame(b"") + frame(Event(wall_time=1.0, step=step, summary=text).SerializeToString())
    out: list = []
    skipped: dict[str, int] = {}
    offset, _ = read_file(io.BytesIO(data), 0, len(data), scanner(), "r", out, 10**9, skipped)
    assert offset == len(data) and [(p.metric, p.step, p.ts, p.value) for p in out] == want
    assert skipped == {"non_scalar": 19}


@pytest.mark.parametrize("limit", [7, 10**9])
def test_a_column_sink_holds_exactly_what_a_list_of_points_does(limit: int):
    """Read into ColumnSinks batch by batch (blocks as arrays, one-by-one events as Points): the same points,
    order, offsets and skip counts as reading into lists."""
    for data in (DATA, _tensor_file(500)[0]):
        ways = []
        for sink in (list, ColumnSink):
            sc, offset, batches, skipped = scanner(), 0, [], {}
            while True:
                out = sink()
                offset, full = read_file(io.BytesIO(data), offset, len(data), sc, "r", out, limit, skipped)
                points = out if isinstance(out, list) else out.points()
                assert len(points) == len(out) <= max(limit, 2)
                batches.append((offset, [_key(p) for p in points]))
                if not full:
                    break
            ways.append((batches, skipped))
        assert ways[0] == ways[1]
        keys, key, step, wall, value = ColumnSink().columns()
        assert keys == [] and len(key) == len(step) == len(wall) == len(value) == 0


def test_column_sink_columns_name_each_series_once():
    sink = ColumnSink()
    read_file(io.BytesIO(DATA), 0, len(DATA), scanner(), "r", sink, 10**9, {})
    keys, key, step, wall, value = sink.columns()
    assert sorted(keys) == sorted({("r", tag) for tag, *_ in WANT}) and len(set(keys)) == len(keys)
    assert key.dtype == np.intp and step.dtype == np.int64 and wall.dtype == value.dtype == np.float64
    assert [_key((keys[k][1], s, w, v)) for k, s, w, v in zip(key.tolist(), step.tolist(), wall.tolist(),
                                                             value.tolist(), strict=True)] == \
        [_key(p) for p in WANT]
