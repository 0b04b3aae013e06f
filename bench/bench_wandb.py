"""W&B catch-up: the wandb source + the exactly-once writer against the naive way, from the same fake server.

Run: python bench/bench_wandb.py [--steps 200000 --naive-steps 20000]
A run of `--steps` steps with 5 numeric keys is served by the fake W&B GraphQL server (tests/fakes, real HTTP on
127.0.0.1). Ours: `WandbSource.poll` batches (50,000 points) written with `Store.write` (COPY, cursor in the same
transaction). Naive: the wandb SDK's `run.scan_history()` row by row, one autocommitted INSERT per point (on the
first `--naive-steps` steps: at a few thousand points/s the whole run would take minutes). One process, one
embedded PostgreSQL (pgserver, temporary directory, default durable settings). Figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.wandb import WandbSource  # noqa: E402
from trainscope.collector.store import Store  # noqa: E402
from trainscope.collector.store.embedded import start_embedded  # noqa: E402

from fakes.wandb_server import FakeRun, FakeWandb, serve  # noqa: E402

KEY = "b" * 40
NAIVE_DDL = "CREATE TABLE naive_points (run text, metric text, step bigint, ts timestamptz, value float8)"


def make_run(steps: int) -> FakeRun:
    run = FakeRun("bench", "bench-run")
    for s in range(steps):
        run.log(s, run.created_at + s * 0.25, loss=2.0 / (s + 1), lr=1e-4, grad_norm=0.5 + s % 7 / 10,
                tokens_per_s=3000.0 + s % 11, train={"acc": s / steps})
    return run


async def ours(fake: FakeWandb, dsn: str) -> tuple[int, float, int]:
    store = await Store.open(dsn)
    src = WandbSource({"baseUrl": fake.url, "entity": "ent", "project": "proj", "runId": "bench"},
                      SourceContext(max_batch_points=50_000))
    before, n, cursor = fake.count(), 0, None
    started = time.perf_counter()
    while True:
        batch = await src.poll(cursor)
        await store.write("bench-uid", "wandb", "wandb", batch.points, batch.cursor, batch.runs)
        n += len(batch.points)
        cursor = batch.cursor
        if not batch.more:
            break
    elapsed = time.perf_counter() - started
    await src.aclose()
    await store.close()
    return n, elapsed, fake.count() - before


def naive(fake: FakeWandb, dsn: str, steps: int) -> tuple[int, float, int]:
    import wandb

    async def insert_all(rows: list) -> int:
        conn = await asyncpg.connect(dsn)
        await conn.execute(NAIVE_DDL)
        n = 0
        for row in rows:
            for k, v in row.items():
                if not k.startswith("_") and isinstance(v, int | float):
                    await conn.execute("INSERT INTO naive_points VALUES ($1, $2, $3, to_timestamp($4), $5)",
                                       "bench", k, row["_step"], row["_timestamp"], float(v))
                    n += 1
        await conn.close()
        return n

    before = fake.count()
    started = time.perf_counter()
    api = wandb.Api(overrides={"base_url": fake.url}, api_key=KEY, timeout=60)
    rows = []
    for row in api.run("ent/proj/bench").scan_history(max_step=steps, use_cache=False):
        flat = dict(row)
        for k, v in row.items():  # flatten one level, as the source does
            if isinstance(v, dict):
                flat.pop(k)
                flat.update({f"{k}/{k2}": v2 for k2, v2 in v.items()})
        rows.append(flat)
    n = asyncio.run(insert_all(rows))
    return n, time.perf_counter() - started, fake.count() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--naive-steps", type=int, default=20_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-wb-"))
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[var] = str(tmp / var.lower())
    os.environ["WANDB_SILENT"] = "true"
    os.environ["WANDB_API_KEY"] = KEY
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    try:
        fake = FakeWandb(api_keys=(KEY,))
        t = time.perf_counter()
        fake.add_run("ent", "proj", make_run(args.steps))
        print(f"generated {args.steps:,} steps x 5 keys in {time.perf_counter() - t:.1f}s")
        with serve(fake):
            n, secs, reqs = asyncio.run(ours(fake, pg.get_uri()))
            print(f"ours : {n:>9,} points in {secs:6.1f}s = {n / secs:>9,.0f} points/s, {reqs} requests")
            m, nsecs, nreqs = naive(fake, pg.get_uri(), args.naive_steps)
            print(f"naive: {m:>9,} points in {nsecs:6.1f}s = {m / nsecs:>9,.0f} points/s, {nreqs} requests "
                  f"(first {args.naive_steps:,} steps)")
            print(f"ours is {(n / secs) / (m / nsecs):.1f}x the naive rate")
    finally:
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
