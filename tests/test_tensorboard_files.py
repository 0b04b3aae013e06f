"""TensorBoard source, logDir mode: real event files written by tensorboardX, checked against TensorBoard's reader."""

from __future__ import annotations

import asyncio
import math
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary
from tensorboardX.proto.tensor_pb2 import TensorProto

from trainscope.collector.sources import REGISTRY, SourceContext, SourceError, tfevents
from trainscope.collector.sources.tensorboard import TensorBoardSource
from trainscope.collector.sources.tfevents import frame

from tbfixtures import (
    OpenWriter,
    add_summary,
    drain,
    event_files,
    key,
    keys,
    oracle,
    records,
    tensor_summary,
    write_mixed_run,
    write_scalars,
)


def source(logdir: Path | str, max_points: int = 50_000, base: Path | None = None, **config: Any) -> TensorBoardSource:
    ctx = SourceContext(max_batch_points=max_points, base_dir=base or Path.cwd())
    return TensorBoardSource({"logDir": str(logdir), **config}, ctx)


def test_registered():
    assert REGISTRY["tensorboard"] is TensorBoardSource


async def test_every_point_matches_tensorboard(tmp_path: Path):
    write_mixed_run(tmp_path)
    points, _, batches = await drain(source(tmp_path))
    expected = oracle(tmp_path)
    assert keys(points) == expected  # step, wall_time and value of every point, exactly
    assert len(set(map(key, points))) == len(points)
    runs = {p.run for p in points}
    assert runs == {".", "train", "train/grp/a", "train/grp/b", "eval/deep"}  # TensorBoard's run names
    assert batches[-1].info["runs"] == sorted(runs)
    train = {(p.metric, p.step): p.value for p in points if p.run == "train"}
    assert math.isnan(train[("loss", 3)]) and train[("loss", 10)] == math.inf and train[("loss", 17)] == -math.inf
    assert train[("half", 1)] == 0.5 + 1 / 64 and train[("lr", 2)] == 1e-3 / 3  # half and double kept exactly
    assert train[("big_step", 2**40)] == 2.5 and train[("step0", 0)] == 7.0
    assert {m for m, _ in train} == {"loss", "acc", "lr", "half", "content", "dcontent", "big_step", "step0"}
    assert batches[0].skipped == {"histogram": 1, "image": 1, "non_scalar": 2}  # + text, the 2-element tensor


async def test_bfloat16_negative_steps_and_metadata_less_tensors(tmp_path: Path):
    # bfloat16 lives in half_val like float16; TensorBoard's reader cannot convert it without TensorFlow,
    # so this oracle is by hand: 0x3FC0 is 1.5, 0xC2F7 is -123.5.
    with SummaryWriter(str(tmp_path)) as w:
        bf = TensorProto(dtype="DT_BFLOAT16", half_val=[0x3FC0])
        add_summary(w, Summary(value=[Summary.Value(tag="bf", tensor=bf)]), 1, 10.0)
        add_summary(w, Summary(value=[Summary.Value(tag="bf", tensor=TensorProto(
            dtype="DT_BFLOAT16", tensor_content=struct.pack("<H", 0xC2F7)))]), 2, 11.0)
        add_summary(w, tensor_summary("nomd", "DT_FLOAT", 0.25, metadata=False), -5, 12.0)
        add_summary(w, Summary(value=[Summary.Value(tag="ints", tensor=TensorProto(dtype="DT_INT32", int_val=[3]))]),
                    3, 13.0)
        w.add_text("txt", "x", 1)
    points, _, batches = await drain(source(tmp_path))
    assert [tuple(p) for p in points] == [("bf", 1, 10.0, 1.5, "."), ("bf", 2, 11.0, -123.5, "."),
                                          ("nomd", -5, 12.0, 0.25, ".")]
    assert batches[0].skipped == {"non_scalar": 2}


async def test_tag_filters(tmp_path: Path):
    write_mixed_run(tmp_path, steps=5)
    points, _, _ = await drain(source(tmp_path, tags={"include": ["*loss*", "eval/*"], "exclude": ["root/*"]}))
    assert {p.metric for p in points} == {"loss", "eval/acc"}
    assert keys(points) == [k for k in oracle(tmp_path) if k[1] in ("loss", "eval/acc")]


async def test_incremental_with_the_writer_open(tmp_path: Path):
    src = source(tmp_path)
    w = OpenWriter(tmp_path / "run")
    try:
        for i in range(10):
            w.add_scalar("loss", i / 10, i)
        w.flush()
        first, cursor, _ = await drain(src)
        assert [(p.step, p.value) for p in first] == [(i, pytest.approx(i / 10, rel=1e-7)) for i in range(10)]
        again, cursor, _ = await drain(src, cursor)
        assert again == []
        for i in range(10, 25):
            w.add_scalar("loss", i / 10, i)
        w.flush()
        second, cursor, _ = await drain(src, cursor)
        assert [p.step for p in second] == list(range(10, 25))
    finally:
        w.close()
    assert keys(first + second) == oracle(tmp_path)


async def test_file_cut_at_every_byte_is_read_once_complete(tmp_path: Path):
    write_mixed_run(tmp_path / "src", steps=3)
    full = (event_files(tmp_path / "src" / "train")[0]).read_bytes()
    expected = oracle(tmp_path / "src" / "train", only_run=".")
    bounds = {end for _, end in records(full)}
    # every byte of the first and last records (headers, payloads, CRCs of each kind), every 5th in between
    cuts = [c for c in range(len(full) + 1) if c < 700 or c > len(full) - 300 or c % 5 == 0]
    logdir = tmp_path / "cut"
    logdir.mkdir()
    path = logdir / "events.out.tfevents.1.host"
    for cut in cuts:
        path.write_bytes(full[:cut])
        src = source(logdir)
        before, cursor, batches = await drain(src)
        done = max([b for b in bounds if b <= cut], default=0)
        assert cursor["files"].get(path.name, 0) == done  # never past the partial record
        assert batches[0].skipped.get("bad_crc", 0) == 0 and "bad_length_crc" not in batches[0].skipped
        path.write_bytes(full)
        after, cursor, _ = await drain(src, cursor)
        assert keys(before + after) == expected, cut
        assert cursor["files"][path.name] == len(full)


async def test_growing_file_in_odd_increments(tmp_path: Path):
    write_mixed_run(tmp_path / "src", steps=40)
    full = event_files(tmp_path / "src" / "train")[0].read_bytes()
    logdir = tmp_path / "grow"
    (logdir / "train").mkdir(parents=True)
    path = logdir / "train" / "events.out.tfevents.1.host"
    src = source(logdir, max_points=13)
    got, cursor, size = [], None, 0
    with path.open("wb") as f:
        while size < len(full):
            size = min(len(full), size + 97 + size % 61)
            f.write(full[f.tell():size])
            f.flush()
            points, cursor, _ = await drain(src, cursor)
            got += points
    assert keys(got) == oracle(tmp_path / "src" / "train", only_run=".", label="train")


def _corrupt(path: Path, offset: int, xor: int = 0x5A) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= xor
    path.write_bytes(bytes(data))


async def test_bad_payload_crc_skips_that_record_only(tmp_path: Path):
    write_scalars(tmp_path, {"loss": [(i, float(i)) for i in range(50)]})
    path = event_files(tmp_path)[0]
    recs = records(path.read_bytes())
    _, end = recs[21]  # record 0 is the file_version event: this is step 20
    _corrupt(path, end - 6)  # inside the payload (its float)
    points, _, batches = await drain(source(tmp_path))
    assert [p.step for p in points] == [i for i in range(50) if i != 20]
    assert batches[0].skipped == {"bad_crc": 1}


@pytest.mark.parametrize("where", ["length", "length_crc", "garbage"])
async def test_bad_length_resynchronises(tmp_path: Path, where: str):
    write_scalars(tmp_path, {"loss": [(i, float(i)) for i in range(50)]})
    path = event_files(tmp_path)[0]
    data = path.read_bytes()
    start, _ = records(data)[21]
    if where == "length":
        _corrupt(path, start + 5, 0x80)  # a high length byte: a huge length, caught by the length CRC
        lost = [20]
    elif where == "length_crc":
        _corrupt(path, start + 9)
        lost = [20]
    else:  # junk between records, with runs of zero bytes that look like the start of a header
        path.write_bytes(data[:start] + b"\x00" * 40 + os.urandom(300) + b"\x00\x00\x00\x00\x07" + data[start:])
        lost = []
    points, cursor, batches = await drain(source(tmp_path))
    assert [p.step for p in points] == [i for i in range(50) if i not in lost]
    assert batches[0].skipped == {"bad_length_crc": 1}
    assert cursor["files"][path.name] == path.stat().st_size


async def test_damage_at_the_tail_waits_then_resumes(tmp_path: Path):
    # A network filesystem may show a grown file as zeros before the data lands: not corruption to skip past.
    write_scalars(tmp_path / "src", {"loss": [(i, float(i)) for i in range(20)]})
    full = event_files(tmp_path / "src")[0].read_bytes()
    recs = records(full)
    cut = recs[11][0]
    path = tmp_path / "run" / "events.out.tfevents.1.host"
    path.parent.mkdir()
    path.write_bytes(full[:cut] + b"\x00" * 100)
    src = source(tmp_path / "run")
    first, cursor, _ = await drain(src)
    assert [p.step for p in first] == list(range(10)) and cursor["files"]["events.out.tfevents.1.host"] == cut
    again, cursor, _ = await drain(src, cursor)
    assert again == []
    path.write_bytes(full)
    rest, cursor, batches = await drain(src, cursor)
    assert [p.step for p in rest] == list(range(10, 20)) and batches[0].skipped == {}


async def test_huge_length_with_valid_crc_neither_allocates_nor_spins(tmp_path: Path):
    write_scalars(tmp_path, {"loss": [(i, float(i)) for i in range(5)]})
    path = event_files(tmp_path)[0]
    size = path.stat().st_size
    head = struct.pack("<Q", 1 << 40)
    with path.open("ab") as f:
        f.write(head + struct.pack("<I", tfevents.masked_crc(head)) + b"x" * 100)
    points, cursor, _ = await drain(source(tmp_path))
    assert [p.step for p in points] == list(range(5)) and cursor["files"][path.name] == size


async def test_oversized_complete_record_is_stepped_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(tfevents, "MAX_RECORD_BYTES", 1000)
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("a", 1.0, 1)
        w.add_image("img", (255 * np.random.rand(3, 64, 64)).astype("uint8"), 1)  # > 1000 bytes
        w.add_scalar("a", 2.0, 2)
    points, _, batches = await drain(source(tmp_path))
    assert [(p.step, p.value) for p in points] == [(1, 1.0), (2, 2.0)]
    assert batches[0].skipped == {"oversized": 1}


async def test_bounded_batches_union_is_everything(tmp_path: Path):
    write_mixed_run(tmp_path, steps=20)
    points, _, batches = await drain(source(tmp_path, max_points=7))
    assert len(batches) > 10 and all(b.more for b in batches[:-1]) and not batches[-1].more
    assert all(len(b.points) == 7 for b in batches[:-1])
    assert keys(points) == oracle(tmp_path)
    assert len(set(map(key, points))) == len(points)


async def test_event_larger_than_the_batch_is_returned_alone(tmp_path: Path):
    # One Event may carry several values; a batch never splits an event, so a 3-value event comes out whole.
    summary = Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in (("a", 1), ("b", 2), ("c", 3))])
    with SummaryWriter(str(tmp_path)) as w:
        w.add_scalar("x", 0.0, 1)
        add_summary(w, summary, 2)
    points, _, batches = await drain(source(tmp_path, max_points=2), one_event_over=True)
    assert [len(b.points) for b in batches] == [1, 3]
    assert [(p.metric, p.step) for p in points] == [("x", 1), ("a", 2), ("b", 2), ("c", 2)]


async def test_restart_adds_a_file_and_rotation_drops_one(tmp_path: Path):
    write_scalars(tmp_path / "run", {"loss": [(i, 1.0) for i in range(10)]}, suffix=".1")
    src = source(tmp_path)
    first, cursor, _ = await drain(src)
    assert len(first) == 10 and len(cursor["files"]) == 1
    write_scalars(tmp_path / "run", {"loss": [(i, 2.0) for i in range(5, 15)]}, suffix=".2")  # resumed at step 5
    second, cursor, _ = await drain(src, cursor)
    assert [(p.step, p.value) for p in second] == [(i, 2.0) for i in range(5, 15)]
    assert len(cursor["files"]) == 2
    old = sorted(event_files(tmp_path))[0]
    old.unlink()
    third, cursor, _ = await drain(src, cursor)
    assert third == [] and list(cursor["files"]) == [f"run/{sorted(event_files(tmp_path))[0].name}"]


async def test_replaced_file_is_read_again(tmp_path: Path):
    write_scalars(tmp_path, {"loss": [(i, 1.0) for i in range(10)]})
    src = source(tmp_path)
    _, cursor, _ = await drain(src)
    path = event_files(tmp_path)[0]
    data = path.read_bytes()
    path.write_bytes(data[: records(data)[4][1]])  # same name, shorter: steps 0..3
    points, cursor, batches = await drain(src, cursor)
    assert [p.step for p in points] == [0, 1, 2, 3] and "shrank" in batches[0].notes[0]


async def test_relative_logdir_and_errors(tmp_path: Path):
    write_scalars(tmp_path / "logs" / "r", {"loss": [(1, 1.0)]})
    points, _, _ = await drain(source("logs", base=tmp_path))
    assert [(p.run, p.step) for p in points] == [("r", 1)]

    with pytest.raises(SourceError) as err:
        await source("nope", base=tmp_path).poll(None)
    assert err.value.reason == "LogDirMissing" and str(tmp_path / "nope") in str(err.value)

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SourceError) as err:
        await source(tmp_path / "afile").poll(None)
    assert err.value.reason == "LogDirMissing" and "not a directory" in str(err.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    batch = await source(empty).poll(None)
    assert batch.points == [] and batch.cursor == {"files": {}} and not batch.more


async def test_poll_runs_off_the_event_loop(tmp_path: Path):
    write_scalars(tmp_path, {"loss": [(i, 1.0) for i in range(20_000)]})
    src = source(tmp_path)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        points, _, _ = await drain(src)
    finally:
        task.cancel()
    assert len(points) == 20_000 and ticks > 1  # the loop kept running while the file was read


def test_frame_matches_what_writers_write(tmp_path: Path):
    write_scalars(tmp_path, {"loss": [(1, 0.5)]})
    data = event_files(tmp_path)[0].read_bytes()
    for start, end in records(data):
        assert frame(data[start + 12:end - 4]) == data[start:end]
