"""W&B catch-up through W&B's parquet export against HistoryPage only: the wandb source + the exactly-once writer,
from the same fake server (bench_wandb.py has the SDK scan + COPY peer and the naive baseline).

Run: python bench/bench_wandb_export.py [--steps 200000 --rounds 2]
A finished run of `--steps` steps with 5 numeric keys, its history exported to parquet as W&B's server does, is
served by the fake W&B GraphQL server (tests/fakes, real HTTP on 127.0.0.1). `WandbSource.poll` batches (50,000
points) are written with `Store.write` (COPY, cursor in the same transaction), in turns (ABAB...) reading the
history through HistoryPage only and through the parquet export; both stores are checked equal to the run's points
before figures are printed, with the load average. One process, one embedded PostgreSQL (pgserver, temporary
directory, default durable settings). Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import catch_up, wandb_sandbox  # noqa: E402

from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.wandb import WandbSource  # noqa: E402
from trainscope.collector.store.embedded import start_embedded  # noqa: E402

from fakes.wandb_server import FakeRun, FakeWandb, row_points, serve  # noqa: E402

KEY = "b" * 40


def make_run(steps: int) -> FakeRun:
    run = FakeRun("bench", "bench-run", state="finished")
    for s in range(steps):
        run.log(s, run.created_at + s * 0.25, loss=2.0 / (s + 1), lr=1e-4, grad_norm=0.5 + s % 7 / 10,
                tokens_per_s=3000.0 + s % 11, train={"acc": s / steps})
    run.rows[7]["loss"], run.rows[8]["loss"] = math.nan, math.inf
    run.export()
    run.parquet_files()  # W&B exports ahead of time
    return run


async def verify(dsn: str, uid: str, run: FakeRun) -> None:
    """The stored points of `uid` equal the run's points (row_points), point for point."""
    conn = await asyncpg.connect(dsn)
    rows = await conn.fetch("SELECT s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value FROM points p "
                            "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    await conn.close()
    got = {(r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}
    want = {(m, s): (t, v) for row in run.rows for m, s, t, v, _ in row_points(row, "bench")}
    assert got.keys() == want.keys(), (len(got), len(want))
    bad = [k for k, (t, v) in want.items()
           if abs(got[k][0] - t) > 2e-6 or not (got[k][1] == v or (math.isnan(v) and math.isnan(got[k][1])))]
    assert not bad, bad[:5]


async def ours(fake: FakeWandb, dsn: str, uid: str = "bench-uid", parquet: bool = False) -> tuple[int, float, int]:
    src = WandbSource({"baseUrl": fake.url, "entity": "ent", "project": "proj", "runId": "bench"},
                      SourceContext(max_batch_points=50_000))
    src._parquet = parquet  # the path under test: HistoryPage only, or the parquet export where it has the steps
    before = fake.count()
    n, elapsed = await catch_up(src, dsn, uid, "wandb", "wandb")
    return n, elapsed, fake.count() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-wb-"))
    wandb_sandbox(tmp, KEY)
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    try:
        fake = FakeWandb(api_keys=(KEY,))
        t = time.perf_counter()
        run = fake.add_run("ent", "proj", make_run(args.steps))
        print(f"generated {args.steps:,} steps x 5 keys (exported to parquet) in {time.perf_counter() - t:.1f}s")
        with serve(fake):
            times: dict[bool, list[float]] = {False: [], True: []}
            for r in range(args.rounds):
                for parquet in (False, True):
                    uid = f"bench-{r}-{'parquet' if parquet else 'historypage'}"
                    n, secs, reqs = asyncio.run(ours(fake, pg.get_uri(), uid, parquet))
                    asyncio.run(verify(pg.get_uri(), uid, run))
                    times[parquet].append(secs)
                    print(f"round {r + 1} ours via {'parquet    ' if parquet else 'HistoryPage'}: {n:>9,} points in "
                          f"{secs:6.1f}s = {n / secs:>9,.0f} points/s, {reqs} requests, stored == the run's "
                          f"points; load {os.getloadavg()[0]:.1f}")
            hp, pq = statistics.median(times[False]), statistics.median(times[True])
            print(f"median: HistoryPage {n / hp:,.0f} points/s, parquet {n / pq:,.0f} points/s: parquet x{hp / pq:.2f}"
                  f"; load {os.getloadavg()}")
    finally:
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
