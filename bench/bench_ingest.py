"""Ingest throughput: our exactly-once writer against a plain COPY and against a JSONB-row-per-step design.

Run: python bench/bench_ingest.py [--steps 100000 --metrics 10 --batch 50000]
One process, one embedded PostgreSQL (pgserver, temporary directory, default durable settings). Figures are
measured and printed, never asserted. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from trainscope.collector.points import Point
from trainscope.collector.store import Store
from trainscope.collector.store.codecs import init_connection
from trainscope.collector.store.embedded import start_embedded
from trainscope.collector.store.writer import POINT_COLUMNS

T0 = 1_700_000_000.0

# AMD Primus Lens keeps one row per (workload, serial, iteration, data source) holding every metric of the step
# as JSONB, and stores a step by reading that row first, then inserting it or deleting and re-inserting it merged
# (Lens/modules/core/pkg/database/training_facade.go and its telemetry processors). Each statement commits on its
# own, as gorm does without an explicit transaction. The index is generous: their lookup columns.
JSONB_DDL = """
CREATE TABLE IF NOT EXISTS training_performance (
    id           serial PRIMARY KEY,
    pod_uuid     varchar(256),
    performance  jsonb,
    iteration    integer,
    created_at   timestamptz,
    serial       integer,
    workload_uid varchar(256),
    data_source  varchar(50)
);
CREATE INDEX IF NOT EXISTS training_performance_lookup
    ON training_performance (workload_uid, serial, iteration, data_source);
"""
JSONB_GET = """
SELECT id, performance, created_at FROM training_performance
WHERE serial = $1 AND iteration = $2 AND workload_uid = $3 AND data_source = $4 ORDER BY id LIMIT 1
"""
JSONB_INSERT = """
INSERT INTO training_performance (pod_uuid, performance, iteration, created_at, serial, workload_uid, data_source)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""


@dataclass
class Figure:
    name: str
    points: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def make_points(metrics: int, steps: range, *, ts_shift: Callable[[int], float] = lambda s: 0.0) -> list[Point]:
    return [Point(f"train/metric_{m}", s, T0 + s * 0.5 + ts_shift(s), 1.0 / (s + 1) + m) for s in steps
            for m in range(metrics)]


def batches(points: list[Point], size: int) -> list[list[Point]]:
    return [points[i:i + size] for i in range(0, len(points), size)]


async def timed(name: str, points: int, body: Callable[[], Awaitable[object]]) -> Figure:
    start = time.perf_counter()
    await body()
    return Figure(name, points, time.perf_counter() - start)


async def truncate(admin: asyncpg.Connection) -> None:
    await admin.execute("TRUNCATE points, rollup")
    await admin.execute("CHECKPOINT")  # each run starts with the same amount of dirty data behind it


async def bench_ceiling(admin: asyncpg.Connection, pool: asyncpg.Pool, pts: list[Point], size: int) -> Figure:
    """COPY of ready-made rows into `points`, same indexes, one transaction per batch, no conflict handling."""
    await truncate(admin)
    sid = {f"train/metric_{m}": 1_000_000 + m for m in range(20_000)}
    chunks = [[(sid[p.metric], p.step, p.ts, p.value) for p in chunk] for chunk in batches(pts, size)]

    async def run() -> None:
        async with pool.acquire() as conn:
            for rows in chunks:
                await conn.copy_records_to_table("points", records=rows, columns=POINT_COLUMNS)

    return await timed("ceiling: plain COPY", len(pts), run)


async def bench_store(store: Store, name: str, uid: str, chunks: list[list[Point]]) -> Figure:
    async def run() -> None:
        for i, chunk in enumerate(chunks):
            await store.write(uid, "tb", "tensorboard", chunk, {"batch": i, "offset": i * 1_000_000})

    return await timed(name, sum(map(len, chunks)), run)


# The strongest plain-SQL peer: the whole batch as arrays in one INSERT ... SELECT unnest(...) ON CONFLICT DO UPDATE
# WHERE newer, the cursor in the same transaction (what a careful hand-written writer does).
UNNEST_UPSERT = """
INSERT INTO points AS p (series_id, step, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::float8[])
ON CONFLICT (series_id, step) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value WHERE EXCLUDED.ts > p.ts
"""


async def bench_unnest(pool: asyncpg.Pool, name: str, chunks: list[list[Point]]) -> Figure:
    sid = {f"train/metric_{m}": 2_000_000 + m for m in range(20_000)}

    async def run() -> None:
        async with pool.acquire() as conn:
            for i, chunk in enumerate(chunks):
                async with conn.transaction():
                    await conn.execute(UNNEST_UPSERT, [sid[p.metric] for p in chunk], [p.step for p in chunk],
                                       [p.ts for p in chunk], [p.value for p in chunk])
                    await conn.execute("INSERT INTO cursors VALUES ('peer', 'tb', $1, now()) ON CONFLICT "
                                       "(workload_uid, source) DO UPDATE SET cursor = EXCLUDED.cursor", {"batch": i})

    return await timed(name, sum(map(len, chunks)), run)


async def verify(admin: asyncpg.Connection, name: str, want: list[Point]) -> None:
    """The stored rows of the run just timed (points holds only that run): count, step sum and value sum must be
    the source's; fail loudly if not."""
    n, ssum, vsum = await admin.fetchrow("SELECT count(*), sum(step), sum(value) FROM points")
    w_s, w_v = sum(p.step for p in want), sum(p.value for p in want)
    if n != len(want) or ssum != w_s or not math.isclose(vsum, w_v, rel_tol=1e-9):
        raise SystemExit(f"{name}: stored {n} rows (steps {ssum}, values {vsum}), expected {len(want)} ({w_s}, {w_v})")


async def bench_jsonb(conn: asyncpg.Connection, uid: str, metrics: int, steps: range, ts_shift: float,
                      name: str) -> Figure:
    """One step at a time: read the step's row, then INSERT it, or DELETE + INSERT it merged."""

    async def run() -> None:
        for s in steps:
            data = {f"train/metric_{m}": 1.0 / (s + 1) + m for m in range(metrics)}
            perf = {"source": "tensorflow", "step": s, "wall_time": T0 + s * 0.5 + ts_shift, **data}
            row = await conn.fetchrow(JSONB_GET, 0, s, uid, "tensorflow")
            if row is not None:
                merged = {**row["performance"], **perf}
                await conn.execute("DELETE FROM training_performance WHERE id = $1", row["id"])
                await conn.execute(JSONB_INSERT, "pod", merged, s, row["created_at"], 0, uid, "tensorflow")
            else:
                await conn.execute(JSONB_INSERT, "pod", perf, s, T0 + s, 0, uid, "tensorflow")

    return await timed(name, len(steps) * metrics, run)


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="ts-bench-", dir="/tmp"))
    server = start_embedded(base / "pgdata", cleanup_mode="delete")
    try:
        return await run_all(server.get_uri(), args)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


async def run_all(url: str, args: argparse.Namespace) -> int:
    n, m, size = args.steps, args.metrics, args.batch
    half = size // m // 2  # steps per half batch in the overlap run
    appended = make_points(m, range(n))
    # Overlap: every batch re-logs `half` stored steps (every other one with a newer ts) and adds `half` new ones.
    relogged = make_points(m, range(n // 2), ts_shift=lambda s: 10.0 if s % 2 else 0.0)
    fresh = make_points(m, range(n, n + n // 2))
    step = half * m
    overlap_chunks = [relogged[i:i + step] + fresh[i:i + step] for i in range(0, len(relogged), step)]
    gc.collect()
    gc.freeze()  # the inputs are long-lived; keep the collector from rescanning them in every measurement

    admin = await asyncpg.connect(url)
    await init_connection(admin)  # jsonb <-> dict and timestamptz <-> float, as for the store
    store = await Store.open(url, min_size=1, max_size=2)
    store_nr = await Store.open(url, min_size=1, max_size=2, keep_rollup=False)  # the rollup's cost, same run
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, init=init_connection)
    await admin.execute(JSONB_DDL)
    results: dict[str, list[Figure]] = {}
    try:
        for rep in range(args.repeat):
            figs = [await bench_ceiling(admin, pool, appended, size)]
            for name, st, uid in (("ours: append", store, f"a{rep}"),
                                  ("ours: append, no rollup", store_nr, f"n{rep}")):
                await truncate(admin)
                figs.append(await bench_store(st, name, uid, batches(appended, size)))
                await verify(admin, name, appended)
                figs.append(await bench_store(st, name.replace("append", "overlap"), uid, overlap_chunks))
                await verify(admin, name, appended + fresh)
            await truncate(admin)
            figs.append(await bench_unnest(pool, "peer: unnest upsert, append", batches(appended, size)))
            await verify(admin, "peer: unnest upsert, append", appended)
            figs.append(await bench_unnest(pool, "peer: unnest upsert, overlap", overlap_chunks))
            await verify(admin, "peer: unnest upsert, overlap", appended + fresh)
            for fig in figs:
                results.setdefault(fig.name, []).append(fig)
            print(f"  run {rep + 1}/{args.repeat}: load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            await admin.execute("TRUNCATE training_performance")
            js = args.jsonb_steps
            results.setdefault("baseline: JSONB row per step", []).append(
                await bench_jsonb(admin, f"j{rep}", m, range(js), 0.0, "baseline: JSONB row per step"))
            results.setdefault("baseline: JSONB, re-logged", []).append(
                await bench_jsonb(admin, f"j{rep}", m, range(js // 2), 10.0, "baseline: JSONB, re-logged"))
            print(f"  run {rep + 1}/{args.repeat} done", file=sys.stderr)
    finally:
        await pool.close()
        await store.close()
        await store_nr.close()
        await admin.close()
    report(results, args)
    return 0


def report(results: dict[str, list[Figure]], args: argparse.Namespace) -> None:
    best = {name: max(figs, key=lambda f: f.rate) for name, figs in results.items()}
    ceiling = best["ceiling: plain COPY"].rate
    jsonb = best["baseline: JSONB row per step"].rate
    print(f"\n{args.metrics} metrics x {args.steps:,} steps, batches of {args.batch:,} points; "
          f"best of {args.repeat} (median in brackets)\n")
    print(f"{'method':<30} {'points':>10} {'points/s':>10} {'(median)':>10} {'of ceiling':>11} {'x JSONB':>8}")
    for name, fig in best.items():
        median = statistics.median(f.rate for f in results[name])
        print(f"{name:<30} {fig.points:>10,} {fig.rate:>10,.0f} {median:>10,.0f} {fig.rate / ceiling:>10.0%} "
              f"{fig.rate / jsonb:>8.1f}")
    append, overlap = best["ours: append"].rate, best["ours: overlap"].rate
    peer_a, peer_o = best["peer: unnest upsert, append"].rate, best["peer: unnest upsert, overlap"].rate
    plain = best["ours: append, no rollup"].rate
    med = {name: statistics.median(f.rate for f in figs) for name, figs in results.items()}
    print(f"\nrollup cost on append: {1 - append / plain:.0%} (best), "
          f"{1 - med['ours: append'] / med['ours: append, no rollup']:.0%} (median); load {os.getloadavg()[0]:.1f}")
    print("\ngoals (from the issue):")
    for text, ok in [
        (f"append >= 70% of ceiling: {append / ceiling:.0%}", append >= 0.7 * ceiling),
        (f"append >= 3x the unnest upsert: {append / peer_a:.1f}x", append >= 3 * peer_a),
        (f"overlap >= 2x the unnest upsert: {overlap / peer_o:.1f}x", overlap >= 2 * peer_o),
        (f"rollup costs <= 15% of append: {1 - append / plain:.0%}", append >= 0.85 * plain),
        (f"overlap >= 200,000 points/s: {overlap:,.0f}", overlap >= 200_000),
        (f"append >= 8x JSONB: {append / jsonb:.1f}x", append >= 8 * jsonb),
        (f"overlap >= 8x JSONB: {overlap / jsonb:.1f}x", overlap >= 8 * jsonb),
    ]:
        print(f"  {'met   ' if ok else 'MISSED'} {text}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100_000, help="steps per run (points = steps x metrics)")
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--batch", type=int, default=50_000, help="points per Store.write / COPY")
    p.add_argument("--jsonb-steps", type=int, default=10_000, help="steps for the (slow) JSONB baseline")
    p.add_argument("--repeat", type=int, default=3)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
