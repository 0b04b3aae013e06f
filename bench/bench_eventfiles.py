"""Reading a TensorBoard event file: the tensorboard source's logDir reader against TensorBoard's EventAccumulator.

Run: python bench/bench_eventfiles.py [--steps 100000 --tags 2 --repeat 5]
Writes one event file of steps x tags scalar events with tensorboardX (add_scalar, the simple_value layout), then
times, in this one process, (a) EventAccumulator(path, size_guidance={'scalars': 0}).Reload() plus reading every
scalar, and (b) TensorBoardSource.poll() in logDir mode with max_batch_points above the file's count (the public
path: directory walk, file read in 4 MiB chunks, CRC checks, decoding, Point objects, in a worker thread), and
(c) the reader function alone (tfevents.read_file, no thread, no walk). Each reader is fresh each round, so no
cache of a previous round helps. Figures are measured and printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import SummaryWriter

from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.tensorboard import TensorBoardSource
from trainscope.collector.sources.tfevents import EventScanner, read_file


def write_file(logdir: Path, steps: int, tags: int) -> Path:
    with SummaryWriter(str(logdir), max_queue=10_000, flush_secs=3600) as w:
        for step in range(steps):
            for t in range(tags):
                w.add_scalar(f"train/metric_{t}", 1.0 / (step + t + 1), step)
    (path,) = logdir.glob("*tfevents*")
    return path


def event_accumulator(path: Path) -> int:
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
    acc.Reload()
    return sum(len(acc.Scalars(tag)) for tag in acc.Tags()["scalars"])


async def _poll_count(path: Path) -> int:
    src = TensorBoardSource({"logDir": str(path.parent)}, SourceContext(max_batch_points=10**8))
    batch = await src.poll(None)
    assert not batch.more
    return len(batch.points)


def source_poll(path: Path) -> int:
    # The main task returns a count, not the Batch: on exit Python 3.11's asyncio.run formats the main task's
    # repr (signal.getsignal -> enum error message), which would repr 200,000 points and dwarf the read.
    return asyncio.run(_poll_count(path))


def reader_only(path: Path) -> int:
    out: list = []
    with path.open("rb") as f:
        read_file(f, 0, path.stat().st_size, EventScanner(lambda tag: True), ".", out, 10**8, {})
    return len(out)


def measure(fn: Callable[[Path], int], path: Path, repeat: int) -> tuple[int, list[float]]:
    times = []
    count = 0
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        count = fn(path)
        times.append(time.perf_counter() - t0)
    return count, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--tags", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-tfevents-"))
    try:
        t0 = time.perf_counter()
        path = write_file(tmp, args.steps, args.tags)
        print(f"wrote {args.steps * args.tags:,} scalar events, {path.stat().st_size / 1e6:.1f} MB, "
              f"in {time.perf_counter() - t0:.1f}s")
        results = {}
        for name, fn in [("EventAccumulator", event_accumulator), ("TensorBoardSource.poll (logDir)", source_poll),
                         ("tfevents.read_file only", reader_only)]:
            count, times = measure(fn, path, args.repeat)
            best, median = min(times), statistics.median(times)
            results[name] = count / best
            print(f"{name:34s} {count:>9,} events  best {best:6.3f}s  median {median:6.3f}s  "
                  f"{count / best:>11,.0f} events/s (best)  {count / median:>11,.0f} events/s (median)")
        base = results["EventAccumulator"]
        print(f"ratio poll / EventAccumulator: {results['TensorBoardSource.poll (logDir)'] / base:.1f}x   "
              f"reader only / EventAccumulator: {results['tfevents.read_file only'] / base:.1f}x   (goal >= 5x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
