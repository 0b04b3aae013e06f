"""Catch-up of a 20,000-step, 3-metric SwanLab run: logDir mode against url mode (a real `swanlab watch`).

Run: python bench/bench_swanlab.py   (writing the run with the SwanLab SDK takes most of the time)
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from trainscope.collector.sources import SourceContext
from trainscope.collector.sources.swanlab import SwanLabSource

from swanfixtures import api, swan_env, swanlab_watch, write_runs

STEPS = 20_000


async def drain(src: SwanLabSource) -> tuple[int, float, int, list[str], float, int]:
    """Poll until caught up; then time one idle poll."""
    cursor: Any = None
    points = polls = 0
    started = time.perf_counter()
    while True:
        batch = await src.poll(cursor)
        polls += 1
        cursor = json.loads(json.dumps(batch.cursor))
        points += len(batch.points)
        if not batch.more:
            break
    elapsed = time.perf_counter() - started
    started = time.perf_counter()
    again = await src.poll(cursor)
    idle = time.perf_counter() - started
    await src.aclose()
    return points, elapsed, polls, batch.notes, idle, len(again.points)


def main() -> None:
    base = Path(tempfile.mkdtemp(prefix="swbench-"))
    env, logdir = swan_env(base), base / "logs"
    started = time.perf_counter()
    write_runs(logdir, env, {"name": "bench", "metrics": ["train/loss", "train/acc", "lr"], "steps": STEPS})
    print(f"writing {STEPS} steps x 3 metrics with the swanlab SDK: {time.perf_counter() - started:.1f}s")
    try:
        with swanlab_watch(logdir, env) as (url, _):
            for mode, cfg in (("logDir", {"logDir": str(logdir)}), ("url", {"url": url})):
                for limit in (50_000, 10_000):
                    src = SwanLabSource(cfg, SourceContext(max_batch_points=limit))
                    n, elapsed, polls, notes, idle, again = asyncio.run(drain(src))
                    print(f"{mode:6} max_batch_points={limit:>6}: {n:>6} points in {elapsed:.3f}s "
                          f"({n / elapsed:,.0f} points/s), {polls} polls; next idle poll {idle * 1000:.1f}ms "
                          f"({again} points); notes: {notes}")
            print("summary says:", api(url, "/api/v1/experiment/1/summary"))
    finally:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
