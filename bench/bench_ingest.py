"""Ingest throughput: our exactly-once writer against the batched unnest upsert (the peer), a plain binary COPY of
pre-encoded rows (the ceiling) and a JSONB-row-per-step design; and what the downsampling rollup costs it (the same
writer without it, in turns).

Run: python bench/bench_ingest.py [--steps 100000 --metrics 10 --batch 50000 --repeat 3]
One process, one embedded PostgreSQL (pgserver, temporary directory, default durable settings). Ours and the peer
run in turns (ABAB..., the order swapped every round), medians reported with the load average of each round;
after every timed run the stored rows are checked per series against the source (count, step sum, exact ts sum,
value sum) and the bench stops with an error if they differ. Figures are printed, never asserted. See
bench/README.md.
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
from trainscope.collector.store.copybin import encode
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
    wal: int = 0  # bytes of WAL the run wrote: the server's write work, whatever the load

    @property
    def wal_per_point(self) -> float:
        return self.wal / self.points

    @property
    def rate(self) -> float:
        return self.points / self.seconds


def make_points(metrics: int, steps: range, *, ts_shift: Callable[[int], float] = lambda s: 0.0) -> list[Point]:
    return [Point(f"train/metric_{m}", s, T0 + s * 0.5 + ts_shift(s), 1.0 / (s + 1) + m) for s in steps
            for m in range(metrics)]


def batches(points: list[Point], size: int) -> list[list[Point]]:
    return [points[i:i + size] for i in range(0, len(points), size)]


WAL_LSN: list[asyncpg.Connection] = []  # the admin connection, to read the WAL position around each timed run


async def timed(name: str, points: int, body: Callable[[], Awaitable[object]]) -> Figure:
    lsn = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
    before = int(await WAL_LSN[0].fetchval(lsn)) if WAL_LSN else 0
    start = time.perf_counter()
    await body()
    seconds = time.perf_counter() - start
    wal = int(await WAL_LSN[0].fetchval(lsn)) - before if WAL_LSN else 0
    return Figure(name, points, seconds, wal)


async def truncate(admin: asyncpg.Connection) -> None:
    await admin.execute("TRUNCATE points, rollup")
    await admin.execute("UPDATE series SET rollup_upto = -9223372036854775808")
    await admin.execute("CHECKPOINT")  # each run starts with the same amount of dirty data behind it


CEILING_SID = {f"train/metric_{m}": 1_000_000 + m for m in range(20_000)}


async def bench_ceiling(admin: asyncpg.Connection, pool: asyncpg.Pool, pts: list[Point], size: int) -> Figure:
    """Binary COPY of payloads encoded before the clock starts into `points`, same indexes, one transaction per
    batch, no conflict handling: only the server's work and the transfer are timed."""
    await truncate(admin)
    chunks = []
    for chunk in batches(pts, size):
        payload = encode([CEILING_SID[p.metric] for p in chunk], [p.step for p in chunk], [p.ts for p in chunk],
                         [p.value for p in chunk])
        assert payload is not None
        chunks.append(memoryview(payload))

    async def run() -> None:
        async with pool.acquire() as conn:
            for payload in chunks:
                await conn.copy_to_table("points", source=payload, columns=POINT_COLUMNS, format="binary")

    return await timed("ceiling: pre-encoded COPY", len(pts), run)


async def bench_store(store: Store, name: str, uid: str, chunks: list[list[Point]]) -> Figure:
    async def run() -> None:
        for i, chunk in enumerate(chunks):
            await store.write(uid, "tb", "tensorboard", chunk, {"batch": i, "offset": i * 1_000_000})

    return await timed(name, sum(map(len, chunks)), run)


# The strongest plain-SQL peer: the whole batch as arrays in one INSERT ... SELECT unnest(...) ON CONFLICT DO UPDATE
# WHERE newer, the cursor in the same transaction: what a careful hand-written writer does.
UNNEST_UPSERT = """
INSERT INTO points AS p (series_id, step, ts, value)
SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::float8[])
ON CONFLICT (series_id, step) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value WHERE EXCLUDED.ts > p.ts
"""
PEER_SID = {f"train/metric_{m}": 2_000_000 + m for m in range(20_000)}


async def bench_unnest(pool: asyncpg.Pool, name: str, chunks: list[list[Point]]) -> Figure:
    async def run() -> None:
        async with pool.acquire() as conn:
            for i, chunk in enumerate(chunks):
                async with conn.transaction():
                    await conn.execute(UNNEST_UPSERT, [PEER_SID[p.metric] for p in chunk], [p.step for p in chunk],
                                       [p.ts for p in chunk], [p.value for p in chunk])
                    await conn.execute("INSERT INTO cursors (workload_uid, source, cursor) VALUES ('peer', 'tb', $1) "
                                       "ON CONFLICT (workload_uid, source) DO UPDATE SET cursor = EXCLUDED.cursor",
                                       {"batch": i, "offset": i * 1_000_000})

    return await timed(name, sum(map(len, chunks)), run)


def expected(*layers: list[Point]) -> dict[str, tuple[int, int, int, float]]:
    """Per metric (count, step sum, ts sum in microseconds, value sum) of the last observation of each step."""
    last: dict[tuple[str, int], Point] = {}
    for layer in layers:
        for p in layer:
            last[p.metric, p.step] = p
    out: dict[str, list] = {}
    for p in last.values():
        acc = out.setdefault(p.metric, [0, 0, 0, 0.0])
        acc[0] += 1
        acc[1] += p.step
        acc[2] += round(p.ts * 1e6)
        acc[3] += p.value
    return {k: tuple(v) for k, v in out.items()}


async def verify(admin: asyncpg.Connection, name: str, want: dict[str, tuple[int, int, int, float]]) -> None:
    """The stored rows of the run just timed (points holds only that run) against the source, per series: count,
    step sum, exact ts sum (a replaced ts moves it), value sum. Stops the bench if any differs."""
    names = {r["id"]: r["metric"] for r in await admin.fetch("SELECT id, metric FROM series")}
    names.update({sid: metric for sids in (PEER_SID, CEILING_SID) for metric, sid in sids.items()})
    rows = await admin.fetch("SELECT series_id, count(*) AS n, sum(step) AS s, "
                             "sum((extract(epoch FROM ts) * 1000000)::bigint) AS t, sum(value) AS v "
                             "FROM points GROUP BY series_id")
    got = {names[r["series_id"]]: (r["n"], int(r["s"]), int(r["t"]), r["v"]) for r in rows}
    bad = [m for m in want.keys() | got.keys() if m not in got or m not in want or got[m][:3] != want[m][:3]
           or not math.isclose(got[m][3], want[m][3], rel_tol=1e-9)]
    if bad:
        m = sorted(bad)[0]
        raise SystemExit(f"VERIFY FAILED for {name}: {len(bad)} series differ; {m}: stored {got.get(m)}, "
                         f"source {want.get(m)}")


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
    # Re-send: batches already stored exactly so (a re-read after a restart, a retry after a lost acknowledgement),
    # the first fifth of the overlap run sent again after it.
    resend_chunks = overlap_chunks[:max(1, len(overlap_chunks) // 5)]
    gc.collect()
    gc.freeze()  # the inputs are long-lived; keep the collector from rescanning them in every measurement

    want_append = expected(appended)
    want_overlap = expected(appended, relogged, fresh)
    admin = await asyncpg.connect(url)
    await init_connection(admin)  # jsonb <-> dict and timestamptz <-> float, as for the store
    WAL_LSN[:] = [admin]
    store = await Store.open(url, min_size=1, max_size=2)
    # The same writer without the rollup (no watermark statement, no background builder): the rollup's cost.
    plain = await Store.open(url, min_size=1, max_size=2, keep_rollup=False)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1, init=init_connection)
    await admin.execute(JSONB_DDL)
    results: dict[str, list[Figure]] = {}
    loads: list[float] = []

    async def ours_pair(rep: int, st: Store = store, label: str = "ours") -> list[Figure]:
        await truncate(admin)
        a = await bench_store(st, f"{label}: append", f"a{rep}", batches(appended, size))
        await verify(admin, a.name, want_append)
        o = await bench_store(st, f"{label}: overlap", f"a{rep}", overlap_chunks)
        await verify(admin, o.name, want_overlap)
        r = await bench_store(st, f"{label}: re-send", f"a{rep}", resend_chunks)
        await verify(admin, r.name, want_overlap)
        # What the builder deferred (it builds at most a tenth of the time while writes come) is done now, untimed,
        # so it never runs beside another way's timed run; its pace is the "rollup build" row.
        await st.rollup.settle()
        return [a, o, r]

    async def plain_pair(rep: int) -> list[Figure]:
        return await ours_pair(rep, plain, "ours without rollup")

    async def peer_pair(rep: int) -> list[Figure]:
        await truncate(admin)
        a = await bench_unnest(pool, "peer: unnest upsert, append", batches(appended, size))
        await verify(admin, a.name, want_append)
        o = await bench_unnest(pool, "peer: unnest upsert, overlap", overlap_chunks)
        await verify(admin, o.name, want_overlap)
        r = await bench_unnest(pool, "peer: unnest upsert, re-send", resend_chunks)
        await verify(admin, r.name, want_overlap)
        return [a, o, r]

    try:
        for rep in range(args.repeat):
            figs = [await bench_ceiling(admin, pool, appended, size)]
            await verify(admin, figs[0].name, want_append)
            # In turns, the order swapped every round so neither always runs first after the checkpoint.
            pairs = [(ours_pair, plain_pair, peer_pair), (peer_pair, plain_pair, ours_pair),
                     (plain_pair, ours_pair, peer_pair)][rep % 3]
            for pair in pairs:
                figs += await pair(rep)
            for fig in figs:
                results.setdefault(fig.name, []).append(fig)
            await admin.execute("TRUNCATE training_performance")
            js = args.jsonb_steps
            results.setdefault("baseline: JSONB row per step", []).append(
                await bench_jsonb(admin, f"j{rep}", m, range(js), 0.0, "baseline: JSONB row per step"))
            results.setdefault("baseline: JSONB, re-logged", []).append(
                await bench_jsonb(admin, f"j{rep}", m, range(js // 2), 10.0, "baseline: JSONB, re-logged"))
            loads.append(os.getloadavg()[0])
            print(f"  round {rep + 1}/{args.repeat}: " + ", ".join(f"{f.name} {f.rate:,.0f}/s" for f in figs)
                  + f"; load {os.getloadavg()}", file=sys.stderr)
        # The builder's own pace: the rollup of the appended points from scratch, nothing else running.
        await truncate(admin)
        await store.rollup.close()  # the settle below is the only builder
        for i, chunk in enumerate(batches(appended, size)):
            await store.write("build", "tb", "tensorboard", chunk, {"batch": i})
        await verify(admin, "rollup build input", want_append)
        await admin.execute("TRUNCATE rollup")
        await admin.execute("UPDATE series SET rollup_upto = -9223372036854775808")
        results["rollup build, from scratch"] = [await timed("rollup build, from scratch", len(appended),
                                                             store.rollup.settle)]
    finally:
        await pool.close()
        await store.close()
        await plain.close()
        await admin.close()
    report(results, args, loads)
    return 0


def report(results: dict[str, list[Figure]], args: argparse.Namespace, loads: list[float]) -> None:
    med = {name: statistics.median(f.rate for f in figs) for name, figs in results.items()}
    top = {name: max(f.rate for f in figs) for name, figs in results.items()}
    ceiling, jsonb = med["ceiling: pre-encoded COPY"], med["baseline: JSONB row per step"]
    print(f"\n{args.metrics} metrics x {args.steps:,} steps, batches of {args.batch:,} points; median of "
          f"{args.repeat} rounds in turns (best in brackets); every run's stored rows verified; 1-min load per "
          f"round: {', '.join(f'{x:.1f}' for x in loads)}\n")
    print(f"{'method':<33} {'points':>10} {'points/s':>10} {'(best)':>10} {'of ceiling':>11} {'x JSONB':>8} "
          f"{'WAL B/point':>12}")
    for name, figs in results.items():
        wal = statistics.median(f.wal_per_point for f in figs)
        print(f"{name:<33} {figs[0].points:>10,} {med[name]:>10,.0f} {top[name]:>10,.0f} "
              f"{med[name] / ceiling:>10.0%} {med[name] / jsonb:>8.1f} {wal:>12.1f}")
    append, overlap = med["ours: append"], med["ours: overlap"]
    peer_a, peer_o = med["peer: unnest upsert, append"], med["peer: unnest upsert, overlap"]
    plain_a, plain_o = med["ours without rollup: append"], med["ours without rollup: overlap"]
    # Ratios per round (ours and the peer ran in the same round, minutes apart at most), then their median: steadier
    # under a varying load than the ratio of the medians.
    def ratio(a: str, b: str) -> float:
        return statistics.median(x.rate / y.rate for x, y in zip(results[a], results[b], strict=True))

    ra = ratio("ours: append", "peer: unnest upsert, append")
    ro = ratio("ours: overlap", "peer: unnest upsert, overlap")
    rr = ratio("ours: re-send", "peer: unnest upsert, re-send")
    ca = 1 - ratio("ours: append", "ours without rollup: append")
    co = 1 - ratio("ours: overlap", "ours without rollup: overlap")
    print(f"\nper-round ratios (median): append {ra:.2f}x the peer, overlap {ro:.2f}x, re-send {rr:.2f}x; "
          f"rollup cost: append {ca:.1%}, overlap {co:.1%}")
    print(f"\ngoals (from the issue), on medians; load {os.getloadavg()}:")
    for text, ok in [
        (f"rollup costs <= 15% of the append rate: {1 - append / plain_a:.1%}", append >= 0.85 * plain_a),
        (f"rollup costs <= 15% of the overlap rate: {1 - overlap / plain_o:.1%}", overlap >= 0.85 * plain_o),
        (f"append >= 3x the unnest upsert: {append / peer_a:.2f}x", append >= 3 * peer_a),
        (f"overlap >= 2x the unnest upsert: {overlap / peer_o:.2f}x", overlap >= 2 * peer_o),
        (f"append >= 3x the unnest upsert, per round: {ra:.2f}x", ra >= 3),
        (f"overlap >= 2x the unnest upsert, per round: {ro:.2f}x", ro >= 2),
        (f"rollup costs <= 15% of the append rate, per round: {ca:.1%}", ca <= 0.15),
        (f"rollup costs <= 15% of the overlap rate, per round: {co:.1%}", co <= 0.15),
        (f"append >= 70% of ceiling: {append / ceiling:.0%}", append >= 0.7 * ceiling),
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
