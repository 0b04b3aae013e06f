"""Helpers for the TensorBoard source tests: real event files, an independent oracle, a real server to talk to."""

from __future__ import annotations

import contextlib
import json
import math
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from tensorboard.backend.event_processing import event_multiplexer
from tensorboard.util import tensor_util
from tensorboardX import SummaryWriter
from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

from trainscope.collector.points import Batch, Point
from trainscope.collector.sources.tensorboard import TensorBoardSource

from rawhttp import free_port, stop_process

SPECIALS = [math.nan, math.inf, -math.inf]
_SCALARS_MD = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))


def key(p: Point | tuple) -> tuple:
    """A comparable, hashable form of a point in which NaN equals NaN (its bit pattern is kept apart from inf)."""
    metric, step, ts, value, run = p
    return (run, metric, step, ts, "nan" if math.isnan(value) else value)


def keys(points: list) -> list[tuple]:
    return sorted(key(p) for p in points)


def tensor_summary(tag: str, dtype: str, value: float, *, content: bool = False, shape: tuple[int, ...] = (),
                   metadata: bool = True) -> Summary:
    """A Summary holding one scalar tensor the way torch/TF new-style scalars do (or with tensor_content)."""
    np_dtype = {"DT_FLOAT": "<f4", "DT_DOUBLE": "<f8", "DT_HALF": "<f2"}[dtype]
    arr = np.full(shape, value, dtype=np_dtype)
    tp = TensorProto(dtype=dtype, tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=s) for s in shape]))
    if content:
        tp.tensor_content = arr.tobytes()
    elif dtype == "DT_FLOAT":
        tp.float_val.extend(arr.ravel().tolist())
    elif dtype == "DT_DOUBLE":
        tp.double_val.extend(arr.ravel().tolist())
    else:
        tp.half_val.extend(int(b) for b in arr.ravel().view(np.uint16))
    md = _SCALARS_MD if metadata else None
    return Summary(value=[Summary.Value(tag=tag, tensor=tp, metadata=md)])


def add_summary(writer: SummaryWriter, summary: Summary, step: int, wall: float | None = None) -> None:
    """Write a hand-built Summary through tensorboardX's own event writer (real framing, real file)."""
    writer._get_file_writer().add_summary(summary, step, wall)


def write_mixed_run(logdir: Path, *, steps: int = 30, suffix: str = "") -> None:
    """Runs of every scalar kind we read, plus non-scalar summaries that must be skipped.

    Runs: "." (files in logdir itself), "train", "eval/deep" and add_scalars' "train/grp/a", "train/grp/b".
    """
    with SummaryWriter(str(logdir), filename_suffix=suffix) as w:
        for i in range(steps):
            w.add_scalar("root/loss", 1.0 / (i + 1), i, walltime=1_700_000_000.0 + i * 0.37)
    with SummaryWriter(str(logdir / "train"), filename_suffix=suffix) as w:
        for i in range(steps):
            w.add_scalar("loss", SPECIALS[i % 3] if i % 7 == 3 else 0.1 * i - 1.3, i)
            add_summary(w, tensor_summary("acc", "DT_FLOAT", 0.01 * i), i)
            add_summary(w, tensor_summary("lr", "DT_DOUBLE", 1e-3 / (i + 1)), i)
            add_summary(w, tensor_summary("half", "DT_HALF", 0.5 + i / 64), i)
            add_summary(w, tensor_summary("content", "DT_FLOAT", -i / 3, content=True, shape=(1,)), i)
            add_summary(w, tensor_summary("dcontent", "DT_DOUBLE", i / 3, content=True), i)
            w.add_scalars("grp", {"a": i, "b": -i}, i)
        w.add_histogram("weights", np.arange(10.0), 1)
        w.add_image("img", np.zeros((3, 4, 4)), 1)
        w.add_text("note", "hello", 1)
        add_summary(w, tensor_summary("vec", "DT_FLOAT", 1.0, shape=(2,)), 1)  # two elements: not a scalar
        w.add_scalar("big_step", 2.5, 2**40)
        w.add_scalar("step0", 7.0, 0)  # step 0 is omitted from the protobuf
    with SummaryWriter(str(logdir / "eval" / "deep"), filename_suffix=suffix) as w:
        for i in range(0, steps * 10, 10):
            w.add_scalar("eval/acc", i / 1000, i)


class OpenWriter:
    """tensorboardX's own synchronous events writer: unlike SummaryWriter, flush() really means "on disk now"."""

    def __init__(self, logdir: Path, suffix: str = ""):
        logdir.mkdir(parents=True, exist_ok=True)
        self._w = EventsWriter(str(logdir / "events"), suffix)

    def add_scalar(self, tag: str, value: float, step: int, wall: float | None = None) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value)])
        self._w.write_event(Event(wall_time=time.time() if wall is None else wall, step=step, summary=summary))

    def flush(self) -> None:
        self._w.flush()

    def close(self) -> None:
        self._w.close()


def write_scalars(path: Path, tags: dict[str, list[tuple[int, float]]], *, suffix: str = "") -> None:
    with SummaryWriter(str(path), filename_suffix=suffix) as w:
        for tag, series in tags.items():
            for step, value in series:
                w.add_scalar(tag, value, step)


def oracle(logdir: Path, only_run: str | None = None, label: str | None = None) -> list[tuple]:
    """Every scalar of logdir as TensorBoard's own EventMultiplexer reads it, as keys().

    only_run keeps one run (relabelled `label`), for files copied to another place in a test's logdir.
    """
    mux = event_multiplexer.EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0},
                                             purge_orphaned_data=False)
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    out = []
    for run, content in mux.Runs().items():
        acc = mux.GetAccumulator(run)
        for tag in content["scalars"]:
            out += [(tag, e.step, e.wall_time, e.value, run) for e in acc.Scalars(tag)]
        for tag in content["tensors"]:
            if acc.SummaryMetadata(tag).plugin_data.plugin_name != "scalars":
                continue
            for e in acc.Tensors(tag):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                if arr.size == 1:
                    out.append((tag, e.step, e.wall_time, float(arr.item()), run))
    if only_run is not None:
        out = [(*p[:4], label if label is not None else only_run) for p in out if p[4] == only_run]
    return keys(out)


async def drain(src: TensorBoardSource, cursor: Any = None, max_polls: int = 10_000,
                one_event_over: bool = False) -> tuple[list, Any, list[Batch]]:
    """Poll until more=False, passing the cursor through JSON like the store does; return points, cursor, batches.

    A batch holds at most max_batch_points, except one lone Event carrying more values (`one_event_over`).
    """
    points, batches = [], []
    for _ in range(max_polls):
        batch = await src.poll(cursor)
        if one_event_over and len(batch.points) > src.ctx.max_batch_points:
            assert len({(p.run, p.step, p.ts) for p in batch.points}) == 1
        else:
            assert len(batch.points) <= src.ctx.max_batch_points
        cursor = json.loads(json.dumps(batch.cursor))
        points += batch.points
        batches.append(batch)
        if not batch.more:
            return points, cursor, batches
    raise AssertionError("source never finished")


def event_files(logdir: Path) -> list[Path]:
    return sorted(logdir.rglob("*tfevents*"))


def records(data: bytes) -> list[tuple[int, int]]:
    """(start, end) byte ranges of the TFRecords in a well-formed event file."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        out.append((pos, pos + 16 + n))
        pos += 16 + n
    return out


@contextlib.contextmanager
def tensorboard_server(logdir: Path, *extra: str) -> Iterator[str]:
    """A real `tensorboard` subprocess on a free local port; yields its base URL."""
    port = free_port()
    exe = Path(sys.executable).with_name("tensorboard")
    proc = subprocess.Popen([str(exe), "--logdir", str(logdir), "--port", str(port), "--host", "127.0.0.1",
                             "--reload_interval", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)
        if proc.stderr:
            proc.stderr.close()


def wait_for(predicate: Callable[[], bool], deadline_s: float = 90.0, what: str = "condition") -> None:
    """Poll `predicate` until true (TensorBoard loads data seconds after start); fail after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        try:
            if predicate():
                return
        except (httpx.HTTPError, ValueError):  # not listening yet, or "Not found" text for a run not loaded yet
            pass
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def fetch_json(url: str, **params: Any) -> Any:
    return httpx.get(url, params=params or None, timeout=10).json()
