"""MLflow catch-up: the mlflow source + the exactly-once writer against MlflowClient.get_metric_history + COPY per
batch (the fair peer: MLflow's own client, the same COPY path), from the same run on a real `mlflow server`.

Run: python bench/bench_mlflow.py [--steps 250000 --keys 4 --rounds 2]
A run of `--steps` steps x `--keys` metrics is logged once with the real client (log_batch, 1,000 points a request)
to a real `mlflow server` (SQLite backend, one worker) on 127.0.0.1. Then, in turns (ours, peer, ours, peer...):
ours = `MlflowSource.poll` batches (50,000 points) written with `Store.write` (COPY, cursor in the same transaction),
under a fresh workload uid each round; peer = `MlflowClient.get_metric_history(run, key)` for every key, each
history written with asyncpg's COPY in 50,000-point batches into a plain table. Before any figure is printed, ours'
stored points are checked against the peer's (= MLflow's) history point for point. Then the requests one idle poll
makes, counted in the server's access log. Figures are printed with the load average, not asserted.
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
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import catch_up  # noqa: E402

from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.mlflow import MlflowSource  # noqa: E402
from trainscope.collector.store import Store  # noqa: E402
from trainscope.collector.store.embedded import start_embedded  # noqa: E402

from mlflowfixtures import MlflowServer  # noqa: E402

T0 = 1_700_000_000_000


def log_run(server: MlflowServer, steps: int, keys: int) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from mlflow.entities import Metric

    c = server.client()
    rid = c.create_run(c.create_experiment("bench")).info.run_id
    names = [f"train/m{k}" for k in range(keys)]

    def chunk(lo: int) -> None:
        c.log_batch(rid, metrics=[Metric(name, _value(k, s), T0 + s * 100, s) for s in range(lo, min(steps, lo + 250))
                                  for k, name in enumerate(names)], synchronous=True)

    with ThreadPoolExecutor(4) as pool:  # 250 steps x 4 keys = the server's 1,000 metrics per log_batch
        list(pool.map(chunk, range(0, steps, 250)))
    return rid


def _value(k: int, s: int) -> float:
    if s % 9973 == 0:
        return math.nan
    if s % 19997 == 0:
        return math.inf
    return 2.0 / math.sqrt(s + 1) + k


async def ours(url: str, rid: str, dsn: str, uid: str) -> tuple[int, float]:
    src = MlflowSource({"trackingUri": url, "runId": rid}, SourceContext(max_batch_points=50_000))
    return await catch_up(src, dsn, uid, "mlflow", "mlflow")


async def peer(server: MlflowServer, rid: str, dsn: str, table: str) -> tuple[int, float, dict]:
    c = server.client()
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE TABLE {table} (run text, metric text, step bigint, ts timestamptz, value float8)")
    import datetime as dt

    n, seen = 0, {}
    started = time.perf_counter()
    for key in c.get_run(rid).data.metrics:
        history = await asyncio.to_thread(c.get_metric_history, rid, key)
        for lo in range(0, len(history), 50_000):
            rows = [(rid, key, m.step, dt.datetime.fromtimestamp(m.timestamp / 1000, dt.UTC), m.value)
                    for m in history[lo:lo + 50_000]]
            await conn.copy_records_to_table(table, records=rows)
            n += len(rows)
        seen.update({(key, m.step): (m.timestamp / 1000, m.value) for m in history})
    elapsed = time.perf_counter() - started
    await conn.close()
    return n, elapsed, seen


async def verify(dsn: str, uid: str, truth: dict) -> None:
    conn = await asyncpg.connect(dsn)
    rows = await conn.fetch("SELECT s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value FROM points p "
                            "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    await conn.close()
    got = {(r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}
    assert got.keys() == truth.keys(), (len(got), len(truth))
    bad = [k for k, (ts, v) in truth.items()
           if abs(got[k][0] - ts) > 2e-6 or not (got[k][1] == v or (math.isnan(v) and math.isnan(got[k][1])))]
    assert not bad, bad[:5]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=250_000)
    ap.add_argument("--keys", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mlflow-"))
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    server = MlflowServer(tmp / "mlflow").start()
    try:
        t = time.perf_counter()
        rid = log_run(server, args.steps, args.keys)
        total = args.steps * args.keys
        print(f"logged {total:,} points with the MLflow client in {time.perf_counter() - t:.0f}s; "
              f"load {os.getloadavg()}")
        dsn = pg.get_uri()
        await (await Store.open(dsn)).close()  # migrations
        mine, theirs, truth = [], [], None
        for r in range(args.rounds):
            uid = str(uuid.uuid4())
            n, el = await ours(server.url, rid, dsn, uid)
            assert n == total, (n, total)
            mine.append(el)
            print(f"round {r}: ours {n:,} points in {el:.1f}s = {n / el:,.0f}/s; load {os.getloadavg()}")
            n2, el2, seen = await peer(server, rid, dsn, f"peer_{r}")
            assert n2 == total, (n2, total)
            theirs.append(el2)
            print(f"round {r}: peer {n2:,} points in {el2:.1f}s = {n2 / el2:,.0f}/s; load {os.getloadavg()}")
            truth = truth or seen
            await verify(dsn, uid, truth)
            print(f"round {r}: stored points of ours == MlflowClient.get_metric_history, point for point")
        a, b = statistics.median(mine), statistics.median(theirs)
        print(f"median: ours {total / a:,.0f} points/s, peer {total / b:,.0f} points/s: x{b / a:.2f}")

        src = MlflowSource({"trackingUri": server.url, "runId": rid}, SourceContext(max_batch_points=50_000))
        cursor = None
        while True:
            batch = await src.poll(cursor)
            cursor = batch.cursor
            if not batch.more:
                break
        before = server.requests()
        batch = await src.poll(cursor)
        assert not batch.points
        print(f"idle poll of 1 run x {args.keys} metrics: {server.requests() - before} request(s)")
        await src.aclose()
    finally:
        server.stop()
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
