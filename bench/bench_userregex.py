"""How long a healthy Workload's poll is delayed while another Workload's hostile regex runs: Python's backtracking
`re` (how user patterns were compiled before) against RE2 (now), in turns, in one process.

Two Collectors share one event loop and one store, as in the operator: a healthy one polling a TensorBoard log
directory every 100 ms, and a hostile one whose `logs.patterns` regex backtracks catastrophically on a line of a's
(`(?:a+)+x$`). The figure is the longest gap between two polls of the healthy Workload while the hostile line is
parsed, minus the poll interval. Python's `re` is run on a 24-character line (the doubling per character makes 30
characters ~64x that, ~40 s on an idle machine, which is the issue's figure; its projection is printed); RE2 runs the
30-character line and a 100,000-character one.

Run: python bench/bench_userregex.py [--turns 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tensorboardX import SummaryWriter

from trainscope.collector.collector import Collector
from trainscope.collector.sources import REGISTRY
from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.collector.store.embedded import start_embedded

HOSTILE = r"step=(?P<step>\d+) (?P<loss>[0-9.]+) (?:a+)+x$"
INTERVAL = 0.1


class BacktrackingLogs(LogsSource):
    """The logs source with its patterns compiled as before RE2: Python's `re` (same named-group conversion)."""

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        super().__init__(config, ctx)
        self.patterns = [re.compile(re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", p)) for p in config["patterns"]]


async def one_turn(store: Store, root: Path, engine: str, n: int) -> tuple[float, float]:
    """(delay of the healthy Workload's poll in s, time until the hostile Workload stored the line after)."""
    turn = root / uuid.uuid4().hex[:8]
    (turn / "runs").mkdir(parents=True)
    with SummaryWriter(str(turn / "runs")) as w:
        for i in range(1, 11):
            w.add_scalar("loss", 1.0 / i, i, walltime=1_700_000_000.0 + i)
    log = turn / "train.log"
    log.write_text("step=1 0.5 aaax\n")
    registry = {**REGISTRY, "logs": BacktrackingLogs} if engine == "re" else REGISTRY
    healthy = Collector(uuid.uuid4().hex, parse_spec({"sources": [{"name": "tb", "tensorboard": {
        "logDir": str(turn / "runs")}}], "pollInterval": f"{INTERVAL}s"}), store, name="healthy")
    hostile = Collector(uuid.uuid4().hex, parse_spec({"sources": [{"name": "logs", "logs": {
        "path": str(log), "format": "none", "patterns": [HOSTILE]}}], "pollInterval": f"{INTERVAL}s"}), store,
        name="hostile", registry=registry)
    await healthy.start()
    await hostile.start()
    try:
        while healthy.snapshot().step != 10 or hostile.snapshot().step != 1:  # noqa: ASYNC110  (polling a snapshot)
            await asyncio.sleep(0.01)
        polls, last, worst = healthy.health["tb"].polls, time.monotonic(), 0.0
        started = time.monotonic()
        with log.open("a") as f:  # the hostile line, then a good one that must be stored after it
            f.write(f"step=2 0.4 {'a' * n}!\nstep=3 0.3 aax\n")
        done = None
        while done is None or time.monotonic() < done + 1.0:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            if healthy.health["tb"].polls != polls:
                polls, worst, last = healthy.health["tb"].polls, max(worst, now - last), now
            if done is None and hostile.snapshot().step == 3:
                done = now
        assert hostile.snapshot().latest["loss"].value == 0.3 and healthy.snapshot().step == 10
        return max(0.0, worst - INTERVAL), done - started
    finally:
        await hostile.stop()
        await healthy.stop()


async def main(turns: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="ts-bre-", dir="/tmp"))
    server = start_embedded(base / "pgdata", cleanup_mode="delete")
    try:
        store = await Store.open(server.get_uri())
        try:
            cases = [("re", 24), ("re2", 30), ("re2", 100_000), ("re2", 0)]  # 0: no hostile line (baseline)
            results: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in cases}
            for t in range(turns):
                for case in cases if t % 2 == 0 else cases[::-1]:  # in turns: ABC CBA ...
                    results[case].append(await one_turn(store, base, *case))
                    d, s = results[case][-1]
                    print(f"  turn {t + 1} {case[0]:>3} {case[1]:>7} chars: healthy poll delayed {d * 1000:8.1f} ms, "
                          f"hostile line done in {s * 1000:8.1f} ms  (load {os.getloadavg()[0]:.2f})", flush=True)
        finally:
            await store.close()
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\npoll interval {INTERVAL * 1000:.0f} ms; medians of {turns} turns; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for (engine, n), rs in results.items():
        delay = statistics.median(d for d, _ in rs)
        spent = statistics.median(s for _, s in rs)
        extra = "  (baseline: a harmless line)" if n == 0 else ""
        if engine == "re":
            extra = f"  -> 30 chars: ~{delay * 2 ** (30 - n):.0f} s (x2 per character)"
        print(f"{engine:>4} {n:>7} chars: healthy poll delayed {delay * 1000:9.1f} ms "
              f"({delay / INTERVAL:6.2f} poll intervals), hostile line done in {spent * 1000:9.1f} ms{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=3)
    asyncio.run(main(parser.parse_args().turns))
