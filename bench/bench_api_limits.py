"""The API's bounds under hostile-but-allowed load, against the code before them (a git commit), in the same run.

Run: python bench/bench_api_limits.py [--baseline 0b91242 --points 2000000 --series 20 --repeat 3]

One embedded PostgreSQL (pgserver, temporary directory) with one workload of N points in S series. Two `trainscope
api` processes are started from the two code trees (ours: this checkout; baseline: `git archive <commit>` laid out
as Python imports it), each fresh per measurement so its peak RSS (VmHWM) belongs to that measurement alone:

1. memory: the worst request each version allows on this workload (baseline: downsample=100000, its maximum; ours:
   downsample=10000, our maximum, which the answer budget lowers to 100000 points in all), alone and 4 at once;
   also a 100,000-point page and a full streamed CSV export;
2. a normal client's requests per second (one series, its last 100 points, sequential) alone and while 10 clients
   hold a full CSV export open without reading (= the pool size).

Measurements alternate baseline/ours (ABAB...), medians are printed with os.getloadavg(). Answers are checked
(status, number of points) before a figure is printed. Nothing is asserted: see docs/api.md (Limits).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import httpx
from benchlib import proc_memory, wait_ready

ROOT = Path(__file__).resolve().parents[1]
UID = "bench-limits"
PACKAGES = {"trainscope": "trainscope", "trainscope/collector": "collector", "trainscope/operator": "operator",
            "trainscope/api": "api"}


def lay_out(src_root: Path, dest: Path) -> None:
    """The package as Python imports it (pyproject's package-dir), from a source tree."""
    for target, folder in PACKAGES.items():
        src = src_root / folder
        for path in src.rglob("*"):
            rel = path.relative_to(src)
            if path.is_file() and not any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                if folder == "trainscope" and rel.parts[0] in ("collector", "operator", "api"):
                    continue
                out = dest / target / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Api:
    """`trainscope api` of one code tree (PYTHONPATH: the baseline's layout; None: this checkout)."""

    def __init__(self, label: str, url: str, pythonpath: str | None):
        self.label, self.port = label, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSCOPE_")}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen([sys.executable, "-m", "trainscope.cli", "api", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--database-url", url],
                                     env=env, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        wait_ready(self.base, self.proc, label)

    def memory(self, field: str = "VmHWM") -> float:
        return proc_memory(self.proc.pid, field)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# ---- data -------------------------------------------------------------------------------------------------------

async def fill(url: str, points: int, series: int) -> None:
    """S series through the store's writer (one point each), the rest by SQL: the API only reads."""
    from trainscope.collector.points import Point
    from trainscope.collector.store import Store

    steps = points // series
    store = await Store.open(url)
    try:
        await store.register_workload(UID, "bench", "big", {"totalSteps": steps})
        await store.write(UID, "tb", "tensorboard",
                          [Point(f"train/metric_{i:02}", 0, 1_700_000_000.0, 0.0) for i in range(series)], None)
    finally:
        await store.close()
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO points (series_id, step, ts, value) SELECT s.id, g, to_timestamp(1700000000 + g * 0.5), "
            "sin(g / 5000.0 + s.id) + 0.01 * ((g * 7919 + s.id) % 101) FROM series s, generate_series(1, $1) g "
            "WHERE s.workload_uid = $2", steps - 1, UID)
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


# ---- 1. memory --------------------------------------------------------------------------------------------------

def fetch(base: str, params: dict[str, object]) -> tuple[int, int]:
    """(status, points answered): JSON counted from total_count, CSV by lines."""
    with httpx.Client(timeout=900) as c:
        r = c.get(f"{base}/api/v1/workloads/{UID}/metrics/data", params=params)
    if r.status_code != 200:
        return r.status_code, 0
    if params.get("format") == "csv":
        return 200, r.text.count("\n") - 1
    return 200, int(r.json()["total_count"])


def peak(label: str, url: str, pythonpath: str | None, params: dict[str, object], n_concurrent: int,
         expect: int | None) -> float:
    """Peak RSS (MB) of a fresh server answering `n_concurrent` copies of one request; answers checked."""
    api = Api(label, url, pythonpath)
    try:
        with concurrent.futures.ThreadPoolExecutor(n_concurrent) as pool:
            results = list(pool.map(lambda _: fetch(api.base, params), range(n_concurrent)))
        for status, n in results:
            assert status == 200, f"{label} {params}: HTTP {status}"
            assert expect is None or n == expect, f"{label} {params}: {n} points, expected {expect}"
        return api.memory("VmHWM")
    finally:
        api.stop()


# ---- 2. a normal client beside 10 stalled readers ---------------------------------------------------------------

def stalled(base: str, n: int) -> list[socket.socket]:
    """n clients asking for the full CSV export, each reading the status line, then nothing more."""
    host, port = base.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, int(port)))
        s.sendall(f"GET /api/v1/workloads/{UID}/metrics/data?format=csv HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.settimeout(60)
        assert s.recv(12).startswith(b"HTTP/1.1 200"), "a stalled reader was refused"
        socks.append(s)
    return socks


def rate(base: str, seconds: float, metric: str) -> float:
    """Sequential normal requests (one series, last 100 points) per second; a request that hangs counts 0."""
    done = 0
    t0 = time.monotonic()
    with httpx.Client(timeout=httpx.Timeout(seconds)) as c:
        while (elapsed := time.monotonic() - t0) < seconds:
            try:
                r = c.get(f"{base}/api/v1/workloads/{UID}/metrics/data", params={"metrics": metric, "last": 100},
                          timeout=max(0.1, seconds - elapsed))
            except httpx.TimeoutException:
                break
            assert r.status_code == 200 and r.json()["total_count"] == 100, r.text[:200]
            done += 1
    return done / seconds


def cpu_seconds(pid: int) -> float:
    """CPU time of the API process and of the PostgreSQL backends serving it (application_name), from /proc:
    what a request costs, whatever else the machine runs."""
    import psutil

    total = sum(psutil.Process(pid).cpu_times()[:2])
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "postgres" and "trainscope-api" in " ".join(p.info["cmdline"] or ()):
                total += sum(p.cpu_times()[:2])
        except psutil.Error:
            continue
    return total


def rates(label: str, url: str, pythonpath: str | None, seconds: float, rounds: int
          ) -> list[tuple[float, float, float, float]]:
    """(alone, beside 10 stalled readers) requests/s and CPU ms per request, `rounds` times in turn on one server:
    load from elsewhere on the machine then weighs on both sides of each pair alike."""
    api = Api(label, url, pythonpath)
    out = []
    try:
        rate(api.base, 1.0, "train/metric_00")  # warm-up (pool, plans)
        for _ in range(rounds):
            c0 = cpu_seconds(api.proc.pid)
            alone = rate(api.base, seconds, "train/metric_01")
            c1 = cpu_seconds(api.proc.pid)
            socks = stalled(api.base, 10)
            try:
                time.sleep(1.0)  # their answers have filled the sockets; the server waits on each
                c2 = cpu_seconds(api.proc.pid)
                beside = rate(api.base, seconds, "train/metric_01")
                c3 = cpu_seconds(api.proc.pid)
            finally:
                for s in socks:
                    s.close()
            cpu_alone = (c1 - c0) * 1000 / max(1, alone * seconds)
            cpu_beside = (c3 - c2) * 1000 / beside / seconds if beside else float("nan")
            out.append((alone, beside, cpu_alone, cpu_beside))
            print(f"    {label}: alone {alone:.1f}/s ({cpu_alone:.1f} CPU ms/request), beside {beside:.1f}/s "
                  f"({cpu_beside:.1f} CPU ms/request) | load {tuple(round(x, 1) for x in os.getloadavg())}")
        return out
    finally:
        api.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--baseline", default="0b91242", help="git commit of the code before the limits")
    ap.add_argument("--points", type=int, default=2_000_000)
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each requests/s window")
    ap.add_argument("--rounds", type=int, default=4, help="alone/beside pairs per server start")
    ap.add_argument("--skip-memory", action="store_true")
    args = ap.parse_args()

    from trainscope.api.params import MAX_ANSWER_POINTS, MAX_DOWNSAMPLE
    from trainscope.collector.store import apply_migrations
    from trainscope.collector.store.embedded import start_embedded

    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-limits-"))
    base_src, base_pkg = tmp / "src", tmp / "pkg"
    base_src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(base_src)], input=archive.stdout, check=True)
    lay_out(base_src, base_pkg)
    check = subprocess.run([sys.executable, "-c", "import trainscope.api.params as p; print(p.__file__, "
                            "hasattr(p, 'MAX_DOWNSAMPLE'))"], env={**os.environ, "PYTHONPATH": str(base_pkg)},
                           cwd="/", capture_output=True, text=True, check=True)
    assert check.stdout.split() == [str(base_pkg / "trainscope/api/params.py"), "False"], check.stdout
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    try:
        url = pg.get_uri()
        asyncio.run(apply_migrations(url))
        t = time.perf_counter()
        asyncio.run(fill(url, args.points, args.series))
        print(f"filled {args.points:,} points in {args.series} series in {time.perf_counter() - t:.1f}s; "
              f"baseline {args.baseline} from {base_pkg}")
        trees = (("baseline", str(base_pkg)), ("ours", None))
        steps = args.points // args.series

        if not args.skip_memory:
            print("\n1. peak RSS of the API process (VmHWM, MB), median of", args.repeat)
            worst = {"baseline": {"downsample": 100_000}, "ours": {"downsample": MAX_DOWNSAMPLE}}
            expect_worst = {"baseline": args.points if steps <= 100_000 else None, "ours": None}
            scenarios = [("worst allowed downsample, 1 request", worst, 1, expect_worst),
                         ("worst allowed downsample, 4 at once", worst, 4, expect_worst),
                         ("limit=100000 page, 1 request", {k: {"limit": 100_000} for k in worst}, 1,
                          {k: 100_000 for k in worst}),
                         ("full CSV export (streamed), 1 request", {k: {"format": "csv"} for k in worst}, 1,
                          {k: args.points for k in worst})]
            for name, params, conc, expect in scenarios:
                got: dict[str, list[float]] = {"baseline": [], "ours": []}
                for _ in range(args.repeat):
                    for label, pp in trees:
                        got[label].append(peak(label, url, pp, params[label], conc, expect[label]))
                b, o = statistics.median(got["baseline"]), statistics.median(got["ours"])
                print(f"  {name}: baseline {params['baseline']} {b:.0f} MB | ours {params['ours']} {o:.0f} MB "
                      f"| load {tuple(round(x, 1) for x in os.getloadavg())}")
            # What ours answers to the baseline's worst request, and how big its worst answer is.
            api = Api("ours", url, None)
            try:
                status, _ = fetch(api.base, {"downsample": 100_000})
                _, n = fetch(api.base, {"downsample": MAX_DOWNSAMPLE})
                print(f"  ours: downsample=100000 -> HTTP {status}; downsample={MAX_DOWNSAMPLE} -> {n:,} points "
                      f"(budget {MAX_ANSWER_POINTS:,})")
            finally:
                api.stop()

        print(f"\n2. normal requests/s (one series, last 100 points), alone and beside 10 stalled CSV readers, "
              f"{args.seconds:g} s windows, {args.rounds} pairs x {args.repeat} server starts")
        got2: dict[str, list[tuple[float, float, float, float]]] = {"baseline": [], "ours": []}
        for _ in range(args.repeat):
            for label, pp in trees:
                got2[label] += rates(label, url, pp, args.seconds, args.rounds)
        for label, _ in trees:
            rows = got2[label]
            alone = statistics.median(r[0] for r in rows)
            beside = statistics.median(r[1] for r in rows)
            pairs = statistics.median(r[1] / r[0] for r in rows if r[0])
            cpu_a = statistics.median(r[2] for r in rows)
            cpu_b = [r[3] for r in rows if r[1]]
            cpu = f"{statistics.median(cpu_b):.1f}" if cpu_b else "- (no request answered)"
            print(f"  {label}: alone {alone:.1f} req/s, beside 10 stalled readers {beside:.1f} req/s "
                  f"(ratio of medians {beside / alone:.0%}; median of the pairs' ratios {pairs:.0%}); "
                  f"CPU per request (API + its PostgreSQL backends) alone {cpu_a:.1f} ms, beside {cpu} ms")
        print(f"load {tuple(round(x, 1) for x in os.getloadavg())}")
    finally:
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
