"""The writer's merge statement against the one it replaced, in one process on one server, in turns: the merge now
(staged rows compared with the stored ones first, only the differing ones updated) and before (one INSERT ...
ON CONFLICT DO UPDATE over every staged row, which locks each conflicting row). Everything else is the same Store
(without the rollup, to isolate the statement).

Run: python bench/bench_merge.py [--steps 100000 --metrics 10 --batch 50000 --repeat 4]
Per round: append the steps, CHECKPOINT, time the overlap run of bench_ingest (every batch re-logs 25,000 stored
points, half changed, and adds 25,000), CHECKPOINT, time the first fifth of its batches sent again. Rates, WAL bytes
per point and the load are printed per round; the stored rows are verified after each timed run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import bench_ingest as ingest

from trainscope.collector.store import Store, writer
from trainscope.collector.store.codecs import init_connection
from trainscope.collector.store.embedded import start_embedded

# The statement before, returning what the writer's merge() reads now.
BEFORE = """
WITH added AS (
    INSERT INTO points AS p (series_id, step, ts, value)
    SELECT series_id, step, ts, value FROM points_stage
    ON CONFLICT (series_id, step) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value, ingest_xid = DEFAULT
    WHERE (p.ts, p.value) IS DISTINCT FROM (EXCLUDED.ts, EXCLUDED.value)
    RETURNING p.series_id, p.step, (p.xmax = 0) AS fresh
)
SELECT series_id, min(step) AS lo, max(step) AS hi, count(*) FILTER (WHERE fresh) AS inserted,
       count(*) FILTER (WHERE NOT fresh) AS updated FROM added GROUP BY series_id
"""
WAYS = {"now": (writer._MERGE, writer._PROBE_BY_KEY), "before": (BEFORE, "SELECT 1")}
LSN = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"


async def timed_writes(admin: asyncpg.Connection, store: Store, uid: str, chunks: list) -> tuple[float, float]:
    """(points/s, WAL bytes per point) of writing `chunks`, after a checkpoint."""
    await admin.execute("CHECKPOINT")
    wal0, t0 = int(await admin.fetchval(LSN)), time.perf_counter()
    for i, chunk in enumerate(chunks):
        await store.write(uid, "tb", "tensorboard", chunk, i)
    seconds, wal = time.perf_counter() - t0, int(await admin.fetchval(LSN)) - wal0
    n = sum(map(len, chunks))
    return n / seconds, wal / n


async def run(url: str, args: argparse.Namespace) -> None:
    n, m, size = args.steps, args.metrics, args.batch
    step = size // m // 2 * m
    appended = ingest.make_points(m, range(n))
    relogged = ingest.make_points(m, range(n // 2), ts_shift=lambda s: 10.0 if s % 2 else 0.0)
    fresh = ingest.make_points(m, range(n, n + n // 2))
    overlap = [relogged[i:i + step] + fresh[i:i + step] for i in range(0, len(relogged), step)]
    resend = overlap[:max(1, len(overlap) // 5)]
    want = ingest.expected(appended, relogged, fresh)
    admin = await asyncpg.connect(url)
    await init_connection(admin)
    store = await Store.open(url, min_size=1, max_size=2, keep_rollup=False)
    res: dict[str, list[tuple[float, float, float, float]]] = {"now": [], "before": []}
    try:
        for rep in range(args.repeat):
            for way in ("now", "before") if rep % 2 == 0 else ("before", "now"):
                writer._MERGE, writer._PROBE_BY_KEY = WAYS[way]
                await ingest.truncate(admin)
                for i, chunk in enumerate(ingest.batches(appended, size)):
                    await store.write(f"{way}{rep}", "tb", "tensorboard", chunk, i)
                o = await timed_writes(admin, store, f"{way}{rep}", overlap)
                await ingest.verify(admin, f"{way}: overlap", want)
                r = await timed_writes(admin, store, f"{way}{rep}", resend)
                await ingest.verify(admin, f"{way}: re-send", want)
                res[way].append((*o, *r))
                print(f"  round {rep + 1} {way:<6}: overlap {o[0]:,.0f} points/s, WAL {o[1]:.1f} B/point; re-send "
                      f"{r[0]:,.0f} points/s, WAL {r[1]:.1f} B/point; load {os.getloadavg()}", file=sys.stderr)
    finally:
        writer._MERGE, writer._PROBE_BY_KEY = WAYS["now"]
        await store.close()
        await admin.close()

    def ratio(i: int) -> float:
        return statistics.median(a[i] / b[i] for a, b in zip(res["now"], res["before"], strict=True))

    def med(way: str, i: int) -> float:
        return statistics.median(x[i] for x in res[way])

    print(f"\nmerge now / before, median of per-round ratios ({args.repeat} rounds, every run verified; "
          f"load {os.getloadavg()}):")
    print(f"  overlap: {ratio(0):.2f}x; WAL {med('now', 1):.1f} against {med('before', 1):.1f} bytes per point")
    print(f"  re-send: {ratio(2):.2f}x; WAL {med('now', 3):.1f} against {med('before', 3):.1f} bytes per point")


async def main(args: argparse.Namespace) -> int:
    base = Path(tempfile.mkdtemp(prefix="ts-bench-", dir="/tmp"))
    server = start_embedded(base / "pgdata", cleanup_mode="delete")
    try:
        await run(server.get_uri(), args)
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--metrics", type=int, default=10)
    p.add_argument("--batch", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=4)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
