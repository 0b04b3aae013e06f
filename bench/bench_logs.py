"""Parsing training logs: lines/s per format against the read-and-split ceiling and the naive every-pattern way.

Run: python bench/bench_logs.py [--lines 200000 --repeat 3]
Writes one large realistic log per format (HF Trainer dicts, Megatron iteration lines, DeepSpeed, Lightning
progress bars, key=value, JSON lines; "+noise" variants mix in the info lines, warnings and tracebacks real jobs
print) and times, in this one process, on the same file:

- ceiling: read in 1 MiB chunks, decode, split into lines and loop over them in Python, doing nothing else;
- ours: the logs source's file reader (LineSplitter, LogParser with format=auto, Points), no thread, no asyncio;
- naive: the same reading, then every format's regexes tried on every line (search, then findall of the pairs
  on a match), as a straightforward implementation would.

Best of `repeat` runs; figures are printed, never asserted. Other processes on the machine move them by +-20%.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainscope.collector.points import Point
from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.logparsers import LineSplitter, LogParser, decode_lines
from trainscope.collector.sources.logs import LogsSource

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


def ceiling(path: Path) -> tuple[int, int]:
    n = 0
    with path.open("rb") as f:
        splitter = LineSplitter()
        while chunk := f.read(CHUNK):
            for blob, _ in splitter.feed(chunk):
                for _line in decode_lines(blob):
                    n += 1
    return n, 0


def ours(path: Path) -> tuple[int, int]:
    parser = LogParser("auto")
    out: list[Point] = []
    points = 0
    with path.open("rb") as f:
        from trainscope.collector.sources.logs import _Feed

        feed = _Feed(parser, "run", out, 10**9)
        LogsSource._read_file(f, 0, 0.0, feed)
        points = len(out)
    return parser.lines, points


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


def poll(path: Path) -> tuple[int, int]:
    import asyncio

    async def go() -> int:
        src = LogsSource({"path": str(path)}, SourceContext(max_batch_points=10**9))
        return len((await src.poll(None)).points)
    return 0, asyncio.run(go())


def best(fn: Callable[[Path], tuple[int, int]], path: Path, repeat: int) -> tuple[float, int, int]:
    times = []
    result = (0, 0)
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        result = fn(path)
        times.append(time.perf_counter() - t0)
    return min(times), *result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = [("hf", False), ("megatron", False), ("hf", True), ("megatron", True), ("deepspeed", False),
             ("lightning", False), ("keyvalue", False), ("json", False)]
    print(f"{args.lines:,} lines per log, best of {args.repeat}; lines/s (points/s)\n")
    print(f"{'log':<16}{'ceiling':>12}{'ours':>22}{'of ceiling':>12}{'naive':>12}{'ours/naive':>12}"
          f"{'poll() lines/s':>16}")
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, noise in cases:
            path = Path(tmp) / f"{fmt}{'-noise' if noise else ''}.log"
            n = write(path, fmt, args.lines, noise)
            t_ceil, _, _ = best(ceiling, path, args.repeat)
            t_ours, lines, points = best(ours, path, args.repeat)
            t_naive, _, _ = best(naive, path, args.repeat)
            t_poll, _, poll_points = best(poll, path, args.repeat)
            assert lines == n and poll_points == points, (lines, n, poll_points, points)
            name = fmt + (" +noise" if noise else "")
            print(f"{name:<16}{n / t_ceil:>12,.0f}{n / t_ours:>12,.0f} ({points / t_ours / 1e6:4.2f}M pt/s)"
                  f"{t_ceil / t_ours:>11.0%}{n / t_naive:>12,.0f}{t_naive / t_ours:>11.1f}x{n / t_poll:>16,.0f}")


if __name__ == "__main__":
    main()
