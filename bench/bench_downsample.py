"""`downsample=N` from the writer's rollup against the scan of every matching point, single and under concurrency.

Run: python bench/bench_downsample.py [--series 10 --points 10000000 --clients 20 --seconds 10 --repeat 5]
One embedded PostgreSQL (pgserver, temporary directory) holding one workload of `--series` series sharing
`--points` points in all (generated in SQL: random walks with a few NaN and inf), and the rollup the writer would
keep for them (built by migration 0006's own statements, which tests/test_store_rollup.py checks equal to the
writer's). Two API servers run as their own processes (uvicorn, as `trainscope api`): ours, and the same code with
the rollup switched off (the scan of every matching point: the answer before the rollup). Every figure comes from
turns (ABAB...) on the same data, with the load average printed; each server's answers are compared with the
other's before any figure is printed (a difference aborts). Never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx

UID = "bench-uid"


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def serve(url: str, port: int, scan: bool) -> None:
    import uvicorn

    from trainscope.api import rollup
    from trainscope.api.app import ApiSettings, create_app

    if scan:  # the answer before the rollup: every request scans, nothing is shared between requests
        from trainscope.api import downsample
        from trainscope.api.dscache import AnswerCache

        class NoCache(AnswerCache):
            async def get(self, key: Any, compute: Any, size: Any) -> Any:
                return await compute()

        rollup.MIN_BUCKET_STEPS = 2**62
        downsample.CACHE = NoCache()
    uvicorn.run(create_app(ApiSettings(url)), host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    def __init__(self, url: str, port: int, scan: bool):
        args = [sys.executable, __file__, "--serve", url, "--port", str(port)] + (["--scan"] if scan else [])
        self.proc = subprocess.Popen(args)
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the API server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def fill(url: str, points: int, series: int) -> None:
    from trainscope.collector.store import Store
    from trainscope.collector.store.migrate import available_migrations

    store = await Store.open(url)  # migrates
    await store.close()
    per = points // series
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO workloads (uid, namespace, name) VALUES ($1, 'bench', 'bench')", UID)
        # the source's cursor row, as the collector's writes leave it (what shared answers are keyed on)
        await conn.execute("INSERT INTO cursors (workload_uid, source, cursor) VALUES ($1, 'tb', '{}')", UID)
        for i in range(series):
            sid = await conn.fetchval("INSERT INTO series (workload_uid, source, kind, run, metric) "
                                      "VALUES ($1, 'tb', 'tensorboard', '', $2) RETURNING id", UID, f"metric_{i}")
            await conn.execute(
                "INSERT INTO points (series_id, step, ts, value) SELECT $1, s, "
                "to_timestamp(1704067200 + s * 0.5), CASE WHEN s % 100003 = 7 THEN 'NaN'::float8 "
                "WHEN s % 200003 = 11 THEN 'Infinity'::float8 ELSE sin(s / 5000.0) + random() END "
                "FROM generate_series(0, $2 - 1) s", sid, per)
        sql = dict(available_migrations())["0006_rollup.sql"]
        await conn.execute("TRUNCATE rollup")
        await conn.execute(sql[sql.index("INSERT INTO rollup"):])
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def one(client: httpx.AsyncClient, base: str, params: dict[str, Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = await client.get(f"{base}/api/v1/workloads/{UID}/metrics/data", params=params)
    r.raise_for_status()
    return time.perf_counter() - t, r.json()


async def concurrent(base: str, params: dict[str, Any], clients: int, seconds: float,
                     distinct: bool = False) -> tuple[float, float, float]:
    """(requests/s, p50 s, p99 s) of `clients` clients asking in a loop for `seconds`; `distinct`: each request
    for another step range (from_step = a random step in the first tenth), so no two questions are the same."""
    times: list[float] = []
    end = time.perf_counter() + seconds
    rnd = random.Random(1)

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=300) as c:
            while time.perf_counter() < end:
                p = {**params, "from_step": rnd.randrange(1, 100_000)} if distinct else params
                times.append((await one(c, base, p))[0])

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    times.sort()
    return len(times) / elapsed, times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


async def measure(args: argparse.Namespace, ours: Server, scan: Server) -> None:
    queries = [("all series", {"downsample": 1000}), ("one series", {"downsample": 1000, "metrics": "metric_0"}),
               ("step range", {"downsample": 1000, "from_step": 1000, "to_step": args.points // args.series // 2})]
    async with httpx.AsyncClient(timeout=300) as c:
        print(f"{'query':12} {'ours ms':>9} {'scan ms':>9} {'scan/ours':>9}  load")
        for name, params in queries:
            a = await one(c, ours.base, params)
            b = await one(c, scan.base, params)
            if a[1] != b[1]:
                raise SystemExit(f"{name}: the rollup's answer differs from the scan's")
            ta, tb = [], []
            for i in range(args.repeat):  # another from_step each time: computed, never a shared answer
                p = {**params, "from_step": params.get("from_step", 0) + i + 1}
                ta.append((await one(c, ours.base, p))[0])
                tb.append((await one(c, scan.base, p))[0])
            again = statistics.median([(await one(c, ours.base, params))[0] for _ in range(args.repeat)])
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{name:12} {ma * 1000:>9.1f} {mb * 1000:>9.1f} {mb / ma:>8.1f}x  {load()}  "
                  f"({len(a[1]['data'])} points of {a[1]['downsample']['source_points']:,}; the same question "
                  f"again, shared: {again * 1000:.1f} ms)")
    params = queries[0][1]
    print(f"\n{args.clients} concurrent clients, {args.seconds:g}s each, in turns: {params}; 'same': every client "
          "asks the same question (a shared dashboard), 'distinct': each request another from_step")
    for rnd in range(args.rounds):
        for label, server, secs, distinct in (("ours same", ours, args.seconds, False),
                                              ("scan same", scan, args.scan_seconds, False),
                                              ("ours distinct", ours, args.seconds, True),
                                              ("scan distinct", scan, args.scan_seconds, True)):
            rps, p50, p99 = await concurrent(server.base, params, args.clients, secs, distinct)
            print(f"  {label:14} round {rnd + 1}: {rps:7.1f} req/s, p50 {p50 * 1000:7.0f} ms, "
                  f"p99 {p99 * 1000:7.0f} ms  {load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=10_000_000)
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--scan-seconds", type=float, default=20.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-fill", action="store_true", help="--dsn already holds the data")
    ap.add_argument("--dsn")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=18090)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.scan)
        return
    from trainscope.collector.store.embedded import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-ds-"))
    pg = None
    servers: list[Server] = []
    try:
        url = args.dsn
        if url is None:
            pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
            url = pg.get_uri()
        t = time.perf_counter()
        if not args.no_fill:
            asyncio.run(fill(url, args.points, args.series))
        print(f"{args.points:,} points in {args.series} series stored with their rollup in "
              f"{time.perf_counter() - t:.0f}s; {load()}")
        servers = [Server(url, args.port, False), Server(url, args.port + 1, True)]
        asyncio.run(measure(args, *servers))
    finally:
        for s in servers:
            s.stop()
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
