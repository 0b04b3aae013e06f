"""REST API latency and memory: our queries against the seed's reference approach, in the same run.

Run: python bench/bench_api.py [--points 1000000 --series 10 --repeat 3]
One embedded PostgreSQL (pgserver, temporary directory) holding one workload with N points in S series, written
through the store's writer. The API runs as its own process (uvicorn, as `trainscope api`), with one extra route:
the reference approach of seed 001's server (AMD Primus Lens): load every row of the workload, filter in the server,
answer everything as one JSON document. Figures are measured and printed, never asserted. See docs/api.md (Figures).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from benchlib import proc_memory, wait_ready

UID = "bench-uid"
T0 = 1_704_067_200.0


# ---- the server process -----------------------------------------------------------------------------------------

def serve(url: str, port: int) -> None:
    """Our app plus the reference route, on 127.0.0.1:port (runs in the child process)."""
    import uvicorn
    from fastapi import Query
    from fastapi.responses import JSONResponse

    from trainscope.api.app import ApiSettings, create_app
    from trainscope.api.datasources import data_source_of
    from trainscope.api.downsample import minmax_reference

    app = create_app(ApiSettings(url))

    @app.get("/reference/workloads/{uid}/metrics/data")
    async def reference(uid: str, metrics: str | None = None, downsample: int | None = Query(None)) -> Any:
        """Primus Lens's GetMetricsData on our schema: every row of the workload, then filters in Python."""
        async with app.state.db.acquire() as conn:
            rows = await conn.fetch("SELECT s.id, s.metric, s.kind, p.step, p.ts, p.value FROM points p "
                                    "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
        wanted = set(metrics.split(",")) if metrics else None
        kept = [r for r in rows if wanted is None or r["metric"] in wanted]
        if downsample:  # the same answer as ours, reduced in Python after loading everything
            by_series: dict[int, list] = {}
            for r in kept:
                by_series.setdefault(r["id"], []).append(r)
            kept = []
            for series_rows in by_series.values():
                series_rows.sort(key=lambda r: r["step"])
                keep = {s for s, _, _ in minmax_reference([(r["step"], r["ts"], r["value"]) for r in series_rows],
                                                          downsample)}
                kept += [r for r in series_rows if r["step"] in keep]
        data = [{"metric_name": r["metric"], "value": r["value"] if math.isfinite(r["value"]) else None,
                 "timestamp": r["ts"], "iteration": r["step"], "data_source": data_source_of(r["kind"])}
                for r in kept]
        return JSONResponse({"workload_uid": uid, "data": data, "total_count": len(data)})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


class Server:
    """The child process, and its resident memory (from /proc)."""

    def __init__(self, url: str, port: int):
        self.port = port
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", url, "--port", str(port)])
        self.base = f"http://127.0.0.1:{port}"
        wait_ready(self.base, self.proc, "the API")

    def memory(self, field: str) -> float:
        """VmRSS (now) or VmHWM (peak so far) of the server process, in MB."""
        return proc_memory(self.proc.pid, field)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


# ---- measurements -----------------------------------------------------------------------------------------------

def timed_get(client: httpx.Client, url: str, **params: Any) -> tuple[float, int]:
    """Seconds until the whole body is received, and its size."""
    t = time.perf_counter()
    r = client.get(url, params=params)
    r.raise_for_status()
    return time.perf_counter() - t, len(r.content)


def median_of(repeat: int, fn: Any) -> tuple[float, Any]:
    fn()  # warm-up
    runs = [fn() for _ in range(repeat)]
    return statistics.median(r[0] for r in runs), runs[0][1]


def interleaved(repeat: int, *fns: Any) -> list[tuple[float, Any]]:
    """(median seconds, first result) of each fn, run in turns so that a change of machine load hits all alike."""
    for fn in fns:
        fn()  # warm-up
    runs = [[fn() for fn in fns] for _ in range(repeat)]
    return [(statistics.median(r[i][0] for r in runs), runs[0][i][1]) for i in range(len(fns))]


def walk(client: httpx.Client, base: str, limit: int) -> tuple[float, int]:
    t = time.perf_counter()
    cursor, n = None, 0
    while True:
        page = client.get(f"{base}/api/v1/workloads/{UID}/metrics/data",
                          params={"limit": limit, **({"cursor": cursor} if cursor else {})}).json()
        n += len(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            return time.perf_counter() - t, n


def export_peak(server: Server, path: str, params: dict[str, Any]) -> tuple[float, float, float, int]:
    """(seconds, resident MB before, peak resident MB during, bytes) of one streamed download."""
    before = server.memory("VmRSS")
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.memory("VmRSS"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    size = 0
    t = time.perf_counter()
    with httpx.Client(timeout=600) as client, client.stream("GET", f"{server.base}{path}", params=params) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            size += len(chunk)
    seconds = time.perf_counter() - t
    done.set()
    sampler.join()
    return seconds, before, max(peak[0], server.memory("VmHWM")), size


# ---- data -------------------------------------------------------------------------------------------------------

async def fill(url: str, points: int, series: int) -> None:
    from trainscope.collector.points import Point
    from trainscope.collector.store import Store

    store = await Store.open(url)
    try:
        await store.register_workload(UID, "bench", "big", {"totalSteps": points // series})
        steps = points // series
        metrics = [f"train/metric_{i}" for i in range(series)]
        batch = max(1, 50_000 // series)
        for lo in range(0, steps, batch):
            pts = [Point(m, s, T0 + s * 0.5 + 0.0004, math.sin(s / 5000 + i) + 0.01 * ((s * 7919 + i) % 101))
                   for s in range(lo, min(steps, lo + batch)) for i, m in enumerate(metrics)]
            await store.write(UID, "tb", "tensorboard", pts, {"step": lo})
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


class _Done(Exception):
    """--only: the asked measurements are done."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--series", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--page", type=int, default=10_000, help="page size of the paginated walk")
    ap.add_argument("--only", choices=("downsample",), help="measure only the downsampled queries (~1 minute)")
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=18080)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return

    from trainscope.collector.store.embedded import start_embedded

    base_dir = Path(tempfile.mkdtemp(prefix="ts-bench-api-"))
    pg = start_embedded(base_dir / "pgdata", cleanup_mode="delete")
    try:
        url = pg.get_uri()
        t = time.perf_counter()
        asyncio.run(fill(url, args.points, args.series))
        print(f"filled {args.points:,} points in {args.series} series in {time.perf_counter() - t:.1f}s")
        rows: list[tuple[str, str, str]] = []

        server = Server(url, args.port)
        try:
            with httpx.Client(timeout=600) as c:
                ours = f"{server.base}/api/v1/workloads/{UID}/metrics/data"
                ref = f"{server.base}/reference/workloads/{UID}/metrics/data"
                one = "train/metric_3"
                for label, q in (("all series", {}), ("one series", {"metrics": one})):
                    (o, osize), (r_all, rsize), (r_ds, _) = interleaved(
                        args.repeat, lambda q=q: timed_get(c, ours, downsample=1000, **q),
                        lambda q=q: timed_get(c, ref, **q), lambda q=q: timed_get(c, ref, downsample=1000, **q))
                    rows.append((f"downsample=1000, {label}: ours", f"{o * 1000:.0f} ms", f"{osize / 1e6:.2f} MB"))
                    rows.append(("  reference, every point (what its clients get)", f"{r_all * 1000:.0f} ms",
                                 f"{rsize / 1e6:.1f} MB; ours {r_all / o:.1f}x faster"))
                    rows.append(("  reference + the same downsampling in Python", f"{r_ds * 1000:.0f} ms",
                                 f"ours {r_ds / o:.1f}x faster"))
                if args.only == "downsample":
                    raise _Done
                w, n = median_of(max(1, args.repeat - 1), lambda: walk(c, server.base, args.page))
                r_all, _ = median_of(max(1, args.repeat - 1), lambda: timed_get(c, ref))
                rows.append((f"paginated walk, limit={args.page}: ours", f"{w * 1000:.0f} ms",
                             f"{n:,} points, {math.ceil(n / args.page)} pages"))
                rows.append(("  reference, everything in one answer", f"{r_all * 1000:.0f} ms",
                             f"ours {r_all / w:.2f}x the reference's speed"))
                full, size = median_of(max(1, args.repeat - 1), lambda: timed_get(c, ours))
                rows.append(("ours, everything in one streamed JSON answer", f"{full * 1000:.0f} ms",
                             f"{size / 1e6:.0f} MB"))
        except _Done:
            pass
        finally:
            server.stop()

        exports = (("ours: CSV export, streamed", "/api/v1/workloads/{uid}/metrics/data", {"format": "csv"}),
                   ("ours: JSON, streamed", "/api/v1/workloads/{uid}/metrics/data", {}),
                   ("reference: JSON, loaded whole", "/reference/workloads/{uid}/metrics/data", {}))
        for what, path, params in () if args.only else exports:
            server = Server(url, args.port)  # a fresh process each: its peak belongs to this export alone
            try:
                secs, before, peak, size = export_peak(server, path.format(uid=UID), params)
            finally:
                server.stop()
            rows.append((f"{what} (server peak RSS)", f"{peak:.0f} MB",
                         f"{before:.0f} MB before; {size / 1e6:.0f} MB sent in {secs:.1f}s"))

        width = max(len(r[0]) for r in rows)
        print(f"\n{'measure':<{width}}  {'value':>10}  notes")
        for what, value, note in rows:
            print(f"{what:<{width}}  {value:>10}  {note}")
        print(f"\nPostgreSQL {pg.get_uri().split('?')[0]} (embedded), {os.cpu_count()} CPUs, "
              f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        pg.cleanup()
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
