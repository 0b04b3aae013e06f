"""Reading a TensorBoard event file: the tensorboard source's reader against TensorBoard's own, in turns, verified.

Run: python bench/bench_eventfiles.py [--steps 100000 --tags 2 --repeat 5]
Writes one event file of steps x tags scalar events with tensorboardX (add_scalar, the simple_value layout; with
--layout tf2 the float32 scalar tensors TF2 writes, metadata on a tag's first event only), then times, in turns
(ABAB..., medians), every way reading that file to completion:

- peer: rustboard, the Rust `tensorboard-data-server` installed with tensorboard, started as TensorBoard starts
  it (tensorboard/data/server_ingester.py: --logdir, --port 0 --port-file, --die-after-stdin, here --reload once
  and --samples-per-plugin scalars=all so that it keeps every point), until every scalar of the run is in this
  process through its gRPC API as TensorBoard's GrpcDataProvider asks for it (ListScalars, then ReadScalars with
  downsample = all points). Spawn to last point; its own "Finished load cycle" time is printed too. By default
  it checks a record's CRC only when parsing fails (`--no-checksum`); "peer --checksum" checks every record, as
  ours does. Its CPU seconds are its process's (all its threads) plus this process's gRPC client.
- ours, poll: TensorBoardSource.poll() in logDir mode with max_batch_points above the file's count (the public
  path: directory walk, 4 MiB chunk reads, every record's CRC checked, decoding, Point objects, in a worker
  thread).
- ours, reader: tfevents.read_file alone (no thread, no walk); "into columns": the same into a ColumnSink
  (numpy arrays, no Point per scalar: what a columnar catch-up batch can take).
- old baseline: tensorboard's EventAccumulator (size_guidance scalars=0, tensors=0), Reload() plus reading every
  scalar (and every tensor, for --layout tf2).

This process runs under the garbage-collector thresholds the collecting processes set (trainscope.gc_tuning, as
`trainscope operator` and `trainscope local` do); "ours, poll @gc700" repeats the poll under CPython's default
thresholds, to show what that setting is worth.

Each way is fresh each round (no cache of a previous round helps). After every timed run its points are compared
with the file's truth (tag, step, wall_time, value, read once with EventAccumulator before the rounds, and its
values checked against what was written); the bench stops with an error if any differs. Every figure is printed
with the 1-minute load average of its round. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.data.proto import data_provider_pb2
from tensorboard.data.proto.data_provider_pb2_grpc import TensorBoardDataProviderStub
from tensorboard.util import tensor_util
from tensorboard_data_server import server_binary
from tensorboardX import SummaryWriter
from tensorboardX.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboardX.proto.tensor_pb2 import TensorProto
from tensorboardX.proto.tensor_shape_pb2 import TensorShapeProto

from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.sink import ColumnSink
from trainscope.collector.sources.tensorboard import TensorBoardSource
from trainscope.collector.sources.tfevents import EventScanner, read_file
from trainscope.gc_tuning import tune_for_ingest

Rows = list[tuple[str, int, float, float]]  # (tag, step, wall_time, value), sorted
_SCALARS_METADATA = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))


def write_file(logdir: Path, steps: int, tags: int, layout: str = "simple") -> Path:
    with SummaryWriter(str(logdir), max_queue=10_000, flush_secs=3600) as w:
        for step in range(steps):
            for t in range(tags):
                if layout == "simple":
                    w.add_scalar(f"train/metric_{t}", 1.0 / (step + t + 1), step)
                else:  # TF2's tf.summary.scalar: a float32 rank-0 tensor, the plugin's metadata on the first event
                    tensor = TensorProto(dtype="DT_FLOAT", tensor_shape=TensorShapeProto(),
                                         float_val=[1.0 / (step + t + 1)])
                    value = Summary.Value(tag=f"train/metric_{t}", tensor=tensor,
                                          metadata=_SCALARS_METADATA if step == 0 else None)
                    w._get_file_writer().add_summary(Summary(value=[value]), step)
    (path,) = logdir.glob("*tfevents*")
    return path


def f32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


def event_accumulator(path: Path) -> Rows:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(tag, e.step, e.wall_time, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)] + \
        [(tag, e.step, e.wall_time, float(tensor_util.make_ndarray(e.tensor_proto)))
         for tag in acc.Tags()["tensors"] for e in acc.Tensors(tag)]


async def _poll(path: Path, out: list) -> int:
    src = TensorBoardSource({"logDir": str(path.parent)}, SourceContext(max_batch_points=10**8))
    batch = await src.poll(None)
    assert not batch.more
    out.extend(batch.points)
    return len(out)


def source_poll(path: Path) -> list:
    # The main task returns a count, not the points: on exit Python 3.11's asyncio.run formats the main task's
    # repr (signal.getsignal -> enum error message), which would repr every point and dwarf the read.
    out: list = []
    asyncio.run(_poll(path, out))
    return out


def under_default_gc(fn: Callable[[Path], list]) -> Callable[[Path], list]:
    def run(path: Path) -> list:
        was = gc.get_threshold()
        gc.set_threshold(700, 10, 10)
        try:
            return fn(path)
        finally:
            gc.set_threshold(*was)
    return run


def reader_only(path: Path) -> list:
    out: list = []
    with path.open("rb") as f:
        read_file(f, 0, path.stat().st_size, EventScanner(lambda tag: True), ".", out, 10**8, {})
    return out


def reader_columns(path: Path) -> ColumnSink:
    sink = ColumnSink()
    with path.open("rb") as f:
        read_file(f, 0, path.stat().st_size, EventScanner(lambda tag: True), ".", sink, 10**8, {})
    sink.columns()  # the arrays a columnar batch would hand on
    return sink


def points_rows(points: Iterable) -> Rows:
    """(metric, step, ts, value) of Points or of the RawPoint tuples a Columns batch yields (a poll that read
    64 KiB or more hands over columns)."""
    return [p[:4] for p in points]


class Rustboard:
    """One tensorboard-data-server process over `logdir`, as TensorBoard's ServerIngester starts it."""

    def __init__(self, logdir: Path, checksum: bool) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rustboard-"))
        port_file = self.tmp / "port"
        args = [server_binary(), f"--logdir={logdir}", "--reload=once", "--samples-per-plugin=scalars=all",
                "--port=0", f"--port-file={port_file}", "--die-after-stdin", "--verbose",
                f"--error-file={self.tmp / 'error'}"] + (["--checksum"] if checksum else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.load_cycle: float | None = None
        self._log = threading.Thread(target=self._read_log, daemon=True)
        self._log.start()
        while not (port_file.exists() and port_file.read_text().endswith("\n")):
            if self.proc.poll() is not None:
                raise SystemExit(f"tensorboard-data-server exited: {(self.tmp / 'error').read_text()}")
            time.sleep(0.002)
        # Same channel options as server_ingester._make_stub (256 MiB answers).
        self.channel = grpc.insecure_channel(f"localhost:{int(port_file.read_text())}",
                                             options=[("grpc.max_receive_message_length", 256 * 2**20)])
        self.stub = TensorBoardDataProviderStub(self.channel)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if "Finished load cycle (" in line:
                text = line.split("Finished load cycle (")[1].split(")")[0]
                unit = 1e-3 if text.endswith("ms") and not text.endswith("µs") else 1.0
                self.load_cycle = float(text.rstrip("msµ")) * (1e-6 if text.endswith("µs") else unit)

    def read_all(self, steps: int, tags: int) -> Rows:
        """Wait until ListScalars shows every tag at the last step, then ReadScalars every point of them."""
        plugin = data_provider_pb2.PluginFilter(plugin_name="scalars")
        while True:
            listed = self.stub.ListScalars(data_provider_pb2.ListScalarsRequest(experiment_id="",
                                                                                plugin_filter=plugin))
            done = [t for r in listed.runs for t in r.tags if t.metadata.max_step == steps - 1]
            if len(done) == tags:
                break
            time.sleep(0.005)
        res = self.stub.ReadScalars(data_provider_pb2.ReadScalarsRequest(
            experiment_id="", plugin_filter=plugin, downsample=data_provider_pb2.Downsample(num_points=steps)))
        return [(t.tag_name, s, w, v) for r in res.runs for t in r.tags
                for s, w, v in zip(t.data.step, t.data.wall_time, t.data.value, strict=True)]

    def close(self) -> float:
        """Stop it (stdin closed, as when TensorBoard exits); its CPU seconds."""
        self.channel.close()
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        _, _, ru = os.wait4(self.proc.pid, 0)
        self.proc.returncode = 0
        self._log.join(5)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return ru.ru_utime + ru.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--layout", choices=["simple", "tf2"], default="simple",
                        help="simple: tensorboardX add_scalar (simple_value); tf2: float32 scalar tensors with the "
                             "scalars plugin's metadata on each tag's first event only, as TF2 writes them")
    args = parser.parse_args()
    steps, tags = args.steps, args.tags
    daemon_gc = tune_for_ingest()

    tmp = Path(tempfile.mkdtemp(prefix="bench-tfevents-"))
    try:
        t0 = time.perf_counter()
        path = write_file(tmp, steps, tags, args.layout)
        n = steps * tags
        truth = sorted(event_accumulator(path))
        written = sorted((f"train/metric_{t}", s, f32(1.0 / (s + t + 1))) for s in range(steps) for t in range(tags))
        assert [(tag, s, v) for tag, s, _, v in truth] == written, "EventAccumulator does not read what was written"
        print(f"wrote {n:,} scalar events ({args.layout} layout), "
              f"{path.stat().st_size / 1e6:.1f} MB, in {time.perf_counter() - t0:.1f}s; "
              f"truth: {len(truth):,} points")

        def rustboard(checksum: bool) -> Callable[[Path], Rows]:
            def run(_: Path) -> Rows:
                server = Rustboard(tmp, checksum)
                try:
                    return server.read_all(steps, tags)
                finally:
                    extra[checksum].append((server.close(), server.load_cycle))
            return run

        extra: dict[bool, list[tuple[float, float | None]]] = {False: [], True: []}
        ways: dict[str, tuple[Callable[[Path], object], Callable[[object], Rows]]] = {
            "peer: rustboard (gRPC)": (rustboard(False), lambda r: r),
            "peer: rustboard --checksum": (rustboard(True), lambda r: r),
            "ours: TensorBoardSource.poll": (source_poll, points_rows),
            "ours: tfevents.read_file": (reader_only, points_rows),
            "ours: read_file into columns": (reader_columns, lambda sink: points_rows(sink.points())),
            "ours: poll @gc700": (under_default_gc(source_poll), points_rows),
            "old baseline: EventAccumulator": (event_accumulator, lambda r: r),
        }
        times: dict[str, list[float]] = {w: [] for w in ways}
        cpu: dict[str, list[float]] = {w: [] for w in ways}
        loads: list[float] = []
        for rnd in range(args.repeat):
            order = list(ways) if rnd % 2 == 0 else list(reversed(ways))  # in turns, order swapped every round
            for way in order:
                fn, rows = ways[way]
                gc.collect()
                c0, t0 = time.process_time(), time.perf_counter()
                result = fn(path)
                times[way].append(time.perf_counter() - t0)
                cpu[way].append(time.process_time() - c0)
                got = sorted(rows(result))
                if got != truth:
                    bad = next((g, w) for g, w in zip(got + [None] * n, truth, strict=False) if g != w)
                    raise SystemExit(f"VERIFY FAILED: {way} gave {len(got):,} points, truth {len(truth):,}; "
                                     f"first difference {bad}")
                del result, got
            loads.append(os.getloadavg()[0])
            print(f"  round {rnd + 1}/{args.repeat}: " + ", ".join(f"{w.split(': ')[1]} {times[w][-1]:.3f}s"
                                                                  for w in ways) + f"; load {loads[-1]:.2f}")
        for checksum, label in ((False, "peer: rustboard (gRPC)"), (True, "peer: rustboard --checksum")):
            cpu[label] = [c + s for c, (s, _) in zip(cpu[label], extra[checksum], strict=True)]
        print(f"\n{n:,} events ({steps:,} steps x {tags} tags), {args.repeat} rounds in turns, every run verified "
              f"point for point; gc thresholds {daemon_gc} (the collecting processes');\n"
              f"1-min load per round: {', '.join(f'{x:.2f}' for x in loads)}")
        print(f"{'way':<34}{'median s':>10}{'events/s':>12}{'CPU s':>8}{'x peer':>8}{'x peer CPU':>12}")
        peer = statistics.median(times["peer: rustboard (gRPC)"])
        peer_cpu = statistics.median(cpu["peer: rustboard (gRPC)"])
        for way in ways:
            med, med_cpu = statistics.median(times[way]), statistics.median(cpu[way])
            print(f"{way:<34}{med:>10.3f}{n / med:>12,.0f}{med_cpu:>8.3f}{peer / med:>8.2f}{peer_cpu / med_cpu:>12.2f}")
        cycles = [c for _, c in extra[False] if c is not None]
        if cycles:
            print(f"rustboard's own 'Finished load cycle' (load only, no gRPC): "
                  f"median {statistics.median(cycles):.3f}s")
        ours = statistics.median(times["ours: TensorBoardSource.poll"])
        print(f"ours (poll) / peer: {peer / ours:.2f}x (goal >= 1.0x), load {os.getloadavg()}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
