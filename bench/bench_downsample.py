"""`downsample=N` from the store's rollup against the scan of every matching point (the answer before the rollup),
single requests and 20 concurrent clients, in turns, answers compared before any figure is printed.

Run: python bench/bench_downsample.py [--series 10 --points 1000000 --clients 20 --seconds 10 --repeat 5]
         [--data DIR] [--buckets even|aligned]
         (--data: keep the database there and reuse it: 10 x 10M points take a while to build)
One embedded PostgreSQL (pgserver, temporary directory or --data) holding one workload of `--series` series of
`--points` points each (generated in SQL: noisy sine waves with a few NaN and inf), rolled up by the store's own
builder (collector/store/rollup.py, the same code the collector runs; its build time is printed). Three API servers
run as their own processes (uvicorn, as `trainscope api`): ours (rollup, answers shared between identical
requests), the same code with the rollup switched off and nothing shared (the scan: the answer before), and ours
with sharing off ("unshared"). For every query shape the answers of ours and the scan are compared first (a
difference aborts), then timed in turns (ABAB..., medians; each single request asks another from_step, so nothing
is shared). Under concurrency: distinct questions (every request another from_step drawn at random: nothing can be
shared), then the same question from every client (a dashboard watched by many users). The load average is
printed with every figure. Never asserted.
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
from benchlib import wait_ready

UID = "bench-uid"


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def serve(url: str, port: int, scan: bool, share: bool) -> None:
    import logging

    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")  # why a 503, if any

    from trainscope.api import rollup
    from trainscope.api.app import ApiSettings, create_app

    if scan:  # the answer before the rollup: every request scans the matching points (and counts them for `last`)
        rollup.plan = lambda *a: None  # type: ignore[assignment]

        async def count_points(*a: object) -> tuple[bool, None]:
            return False, None
        rollup.last_n_start = count_points  # type: ignore[assignment]
    settings = ApiSettings(url, statement_timeout=300.0, acquire_timeout=300.0, answer_cache_mb=64 if share else 0)
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    def __init__(self, url: str, port: int, scan: bool, share: bool = False):
        args = [sys.executable, __file__, "--serve", url, "--port", str(port)] + (["--scan"] if scan else []) + \
            (["--share"] if share else [])
        self.proc = subprocess.Popen(args)
        self.base = f"http://127.0.0.1:{port}"
        wait_ready(self.base, self.proc, "the scan API" if scan else "the API")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


async def fill(url: str, points: int, series: int) -> None:
    from trainscope.collector.store import Store

    store = await Store.open(url)  # migrates
    await store.rollup.close()  # built below, timed
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DELETE FROM points; DELETE FROM rollup; DELETE FROM series; DELETE FROM workloads")
        await conn.execute("INSERT INTO workloads (uid, namespace, name) VALUES ($1, 'bench', 'bench')", UID)
        for i in range(series):
            sid = await conn.fetchval("INSERT INTO series (workload_uid, source, kind, run, metric) "
                                      "VALUES ($1, 'tb', 'tensorboard', '', $2) RETURNING id", UID, f"metric_{i}")
            await conn.execute(
                "INSERT INTO points (series_id, step, ts, value) SELECT $1, s, "
                "to_timestamp(1704067200 + s * 0.5), CASE WHEN s % 100003 = 7 THEN 'NaN'::float8 "
                "WHEN s % 200003 = 11 THEN 'Infinity'::float8 ELSE sin(s / 5000.0) + random() END "
                "FROM generate_series(0, $2 - 1) s", sid, points)
            store.rollup.written([sid])
        await conn.execute("VACUUM ANALYZE points")
        t = time.perf_counter()
        await store.rollup.settle()
        await conn.execute("VACUUM ANALYZE rollup")
        print(f"rollup built by the store in {time.perf_counter() - t:.1f}s ({load()})")
        await conn.execute("UPDATE workloads SET namespace = 'bench-done' WHERE uid = $1", UID)
    finally:
        await conn.close()
        await store.close()


async def filled(url: str) -> bool:
    """Whether a kept database holds the whole workload (a killed fill is built again), its rollup brought up to
    date by the store's builder (after a migration that changed it)."""
    from trainscope.collector.store import Store

    store = await Store.open(url)  # migrates
    try:
        async with store._pool.acquire() as conn:
            done = await conn.fetchval("SELECT count(*) FROM workloads WHERE uid = $1 AND namespace = 'bench-done'",
                                       UID)
        if done:
            await store.rollup.settle()
        return bool(done)
    finally:
        await store.close()


async def one(client: httpx.AsyncClient, base: str, params: dict[str, Any], parse: bool = True) -> tuple[float, Any]:
    """(seconds, the answer): timed up to the last byte received; parsed after (a client's parsing of ~1 MB of
    JSON is not the server's time, and under concurrency it would take the cores the servers need)."""
    t = time.perf_counter()
    r = await client.get(f"{base}/api/v1/workloads/{UID}/metrics/data", params=params)
    r.raise_for_status()
    elapsed = time.perf_counter() - t
    return elapsed, (r.json() if parse else len(r.content))


async def concurrent(base: str, params: dict[str, Any], clients: int, seconds: float,
                     span: int, same: bool = False) -> tuple[float, float, float, int]:
    """(requests/s, p50 s, p99 s, errors) of `clients` clients asking in a loop for `seconds`, each request for
    another from_step in the first tenth of the series (distinct questions), or all the same question (`same`)."""
    times: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds
    rnd = random.Random(1)

    async def client_loop() -> None:
        nonlocal errors
        async with httpx.AsyncClient(timeout=600) as c:
            while time.perf_counter() < end:
                try:
                    p = params if same else {**params, "from_step": rnd.randrange(1, span // 10)}
                    times.append((await one(c, base, p, parse=False))[0])
                except httpx.HTTPError as e:
                    errors += 1
                    detail = e.response.text[:300] if isinstance(e, httpx.HTTPStatusError) else ""
                    if errors <= 3:
                        print(f"    error {type(e).__name__}: {e} {detail} (from_step {p.get('from_step')})")

    started = time.perf_counter()
    await asyncio.gather(*(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - started
    times.sort()
    if not times:
        return 0.0, float("nan"), float("nan"), errors
    return len(times) / elapsed, times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))], errors


async def measure(args: argparse.Namespace, ours: Server, scan: Server, unshared: Server) -> None:
    n = args.points
    queries = [(f"all {args.series} series", {"downsample": 1000}),
               ("one series", {"downsample": 1000, "metrics": "metric_0"}),
               ("step range", {"downsample": 1000, "from_step": 1000, "to_step": n // 2}),
               ("last half", {"downsample": 1000, "last": n // 2})]
    queries = [(name, {**params, "buckets": args.buckets}) for name, params in queries]
    print(f"buckets={args.buckets}")
    async with httpx.AsyncClient(timeout=600) as c:
        for name, params in queries:  # verified before any figure
            a, b = (await one(c, ours.base, params))[1], (await one(c, scan.base, params))[1]
            if a != b:
                raise SystemExit(f"{name}: the rollup's answer differs from the scan's")
            for i in range(args.verify_starts):
                # other starts, kept below a step range's end however few points there are
                p = {**params, "from_step": params.get("from_step", 0) + 7919 * (i + 1) % max(1, n // 4)}
                if (await one(c, ours.base, p))[1] != (await one(c, scan.base, p))[1]:
                    raise SystemExit(f"{name} {p}: the rollup's answer differs from the scan's")
        print(f"answers identical (ours vs scan) for every query shape; {load()}\n")
        print(f"{'query':14} {'ours ms':>9} {'scan ms':>9} {'scan/ours':>9}  load")
        for name, params in queries:
            ta, tb = [], []
            for i in range(args.repeat):  # in turns, another from_step each time
                p = {**params, "from_step": params.get("from_step", 0) + i + 1}
                ta.append((await one(c, ours.base, p))[0])
                if i < args.scan_repeat:
                    tb.append((await one(c, scan.base, p))[0])
            out = (await one(c, ours.base, params))[1]
            ma, mb = statistics.median(ta), statistics.median(tb)
            print(f"{name:14} {ma * 1000:>9.1f} {mb * 1000:>9.1f} {mb / ma:>8.1f}x  {load()}  "
                  f"({len(out['data'])} points of {out['downsample']['source_points']:,})")
    params = queries[0][1]
    print(f"\n{args.clients} concurrent clients, in turns, {params}, each request another from_step (distinct "
          "questions, nothing shared)")
    for rnd in range(args.rounds):
        for label, server, secs in (("ours", ours, args.seconds), ("scan", scan, args.scan_seconds)):
            if secs <= 0:
                continue
            rps, p50, p99, errors = await concurrent(server.base, params, args.clients, secs, n)
            print(f"  {label:9} round {rnd + 1}: {rps:7.1f} req/s, p50 {p50 * 1000:7.0f} ms, "
                  f"p99 {p99 * 1000:7.0f} ms, {errors} errors  {load()}")
    async with httpx.AsyncClient(timeout=600) as c:  # the shared answer is the scan's, checked again
        if (await one(c, ours.base, params))[1] != (await one(c, scan.base, params))[1]:
            raise SystemExit("the shared answer differs from the scan's")
    print(f"\n{args.clients} concurrent clients, in turns, all asking {params} (the same question: a dashboard "
          "watched by many); ours shares answers, 'unshared' is ours with sharing off")
    for rnd in range(args.rounds):
        for label, server, secs in (("ours", ours, args.seconds), ("unshared", unshared, args.seconds),
                                    ("scan", scan, args.scan_seconds)):
            if secs <= 0:
                continue
            rps, p50, p99, errors = await concurrent(server.base, params, args.clients, secs, n, same=True)
            print(f"  {label:9} round {rnd + 1}: {rps:7.1f} req/s, p50 {p50 * 1000:7.0f} ms, "
                  f"p99 {p99 * 1000:7.0f} ms, {errors} errors  {load()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000, help="points per series")
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--scan-seconds", type=float, default=20.0, help="0: the scan is not run concurrently")
    ap.add_argument("--scan-repeat", type=int, default=5, help="single scan requests timed per query shape "
                    "(at most --repeat; 10 x 10M points: ~40 s each)")
    ap.add_argument("--verify-starts", type=int, default=3, help="other from_steps compared per query shape")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--buckets", choices=["even", "aligned"], default="even", help="downsample's bucket kind "
                    "(api/buckets.py): the scan answers with the same buckets")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--scan", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--share", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--data", type=Path, help="keep the database in this directory and reuse it on the next run "
                    "(built once: 10 series x 10M points take a while)")
    ap.add_argument("--fill-only", action="store_true", help="build the database (--data) and stop")
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.scan, args.share)
        return
    from trainscope.collector.store.embedded import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-ds-"))
    pg = None
    servers: list[Server] = []
    try:
        pgdata = args.data / f"pg-{args.series}x{args.points}" if args.data else tmp / "pgdata"
        reuse = (pgdata / "PG_VERSION").exists()
        pg = start_embedded(pgdata, cleanup_mode="stop" if args.data else "delete")
        url = pg.get_uri()
        if not reuse or not asyncio.run(filled(url)):
            t = time.perf_counter()
            asyncio.run(fill(url, args.points, args.series))
            print(f"{args.series} series x {args.points:,} points stored and rolled up in "
                  f"{time.perf_counter() - t:.0f}s; {load()}")
        else:
            print(f"reusing {pgdata}; {load()}")
        if args.fill_only:
            return
        servers = [Server(url, args.port, False, share=True), Server(url, args.port + 1, True),
                   Server(url, args.port + 2, False)]
        asyncio.run(measure(args, *servers))
    finally:
        for s in servers:
            s.stop()
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
