"""One operator process, N Workloads, each with a TensorBoard run that gains one point per second.

Run: python bench/bench_scale.py [--workloads 10 100 1000] [--duration 60] [--poll 5s] [--status-interval 5]

Per N, from scratch: an embedded PostgreSQL (pgserver, temporary, default durable settings plus
track_commit_timestamp=on), the KMock emulator in this process (counting status patches), a writer PROCESS that
appends one scalar event per Workload per second to real event files (trainscope.demo's encoder, the layout
tensorboardX writes), and `python -m trainscope.cli operator` as its own process so its CPU and RSS are its own
(psutil). After every Workload shows a step, the bench waits until the start-up backlog has drained (every
Workload's stored step within pollInterval + 2 s of what the writer has written; at most --drain-timeout s, the
row says if it was not reached) and then measures a window of --duration seconds:

- operator CPU (cores = CPU seconds / wall seconds) and peak RSS;
- points stored per second (rows committed in the window);
- status patches per second received by the emulator, and the most any one Workload got;
- lag of each point committed in the window: its commit time (pg_xact_commit_timestamp) minus its source time
  (the event's wall_time, stamped by the writer as it wrote), p50/p95/max;
- the CPU of this process in the window (the emulator serving the operator: shows the emulator is not the limit);
- how long creating the N Workloads took (the emulator serving the operator meanwhile) and the machine's 1-minute
  load average at the end of the row's run (the machine is shared: figures mean little without it).

`--under quiet hog` runs each N also beside a CPU hog (--hog-procs busy-loop processes, nice 0, started before the
Workloads and stopped after the window), the conditions alternating per round (`--rounds`); the load average of
each row is printed with it. `--profile FILE` runs the operator under cProfile (its own row; slower) and prints the
share of the operator's CPU in the status timer, the watch-event processing and the collectors.

`--peer REV` runs the operator of another git revision of this repository (e.g. the commit a change started from) in
turns with this tree's, same N and conditions, the order swapped every round: its packages are laid out from
`git archive REV` as the editable install maps them and put first on the operator's PYTHONPATH. Each row says
which operator it measured.

Figures are printed as a markdown table (docs/performance.md), never asserted. The machine is shared: the
emulator, the writer, PostgreSQL and the operator all run on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
os.environ.setdefault("TRAINSCOPE_STATUS_INTERVAL", "0.3")  # for tests/kube.py's import check; the operator's own
# status interval is set in its environment below

from trainscope.collector.store.embedded import start_embedded  # noqa: E402
from trainscope.demo import encode_event, frame  # noqa: E402

from faults import CountingCluster, OperatorProcess  # noqa: E402


def hog_main(stop: mp.synchronize.Event) -> None:
    """A busy loop: one runnable process, what another tenant's CPU-bound job looks like to the scheduler."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def writer_main(root: str, n: int, stop: mp.synchronize.Event, written: mp.sharedctypes.Synchronized) -> None:
    """One point per Workload per second, spread evenly over the second, wall_time = the moment it is written."""
    files = []
    for i in range(n):
        d = Path(root) / f"w{i:04d}"
        d.mkdir(parents=True, exist_ok=True)
        f = open(d / "events.out.tfevents.0.bench", "ab")
        f.write(frame(encode_event(time.time(), 0, file_version="brain.Event:2")))
        f.flush()
        files.append(f)
    step = 0
    start = time.time()
    while not stop.is_set():
        step += 1
        for i, f in enumerate(files):
            due = start + step - 1 + i / n
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            f.write(frame(encode_event(time.time(), step, {"train/loss": 1.0 / step})))
            f.flush()
        written.value = step  # every Workload's file now holds this step
    for f in files:
        f.close()


_LAG = """
WITH w AS (
    SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - ts) AS lag FROM points
    WHERE pg_xact_commit_timestamp(xmin) BETWEEN $1 AND $2)
SELECT count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY lag) AS p50,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY lag) AS p95, max(lag) AS max FROM w"""


async def _prepare_pg(base: Path) -> tuple[object, str]:
    server = start_embedded(base / "pgdata", cleanup_mode="delete")
    url = server.get_uri()
    conn = await asyncpg.connect(url)
    await conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
    await conn.execute("ALTER SYSTEM SET max_connections = 200")
    await conn.close()
    from pgserver import _commands

    _commands.pg_ctl(["-w", "-m", "fast", "restart"], pgdata=server.pgdata, user=server.system_user)
    return server, url


_BEHIND = """
SELECT count(*) AS series, min(m) AS lowest FROM (SELECT max(step) AS m FROM points GROUP BY series_id) s"""


async def drain(url: str, n: int, written: mp.sharedctypes.Synchronized, poll_s: float, within: float) -> float:
    """Wait until every Workload's stored step is within poll + 2 s (one point a second) of the writer's; the
    seconds waited, negative if the timeout came first."""
    conn = await asyncpg.connect(url)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < within:
            row = await conn.fetchrow(_BEHIND)
            if row["series"] >= n and row["lowest"] >= written.value - (poll_s + 2):
                return time.monotonic() - t0
            await asyncio.sleep(0.5)
        return -(time.monotonic() - t0)
    finally:
        await conn.close()


async def late_workloads(cluster: CountingCluster, url: str, n: int, op: OperatorProcess) -> str:
    """Why the Workloads that show no step yet do not: kopf has not taken them up (no finalizer), the collector has
    not started (not registered in the store), nothing stored yet, or stored but no status written."""
    late = [f"w{i:04d}" for i in range(n) if f"w{i:04d}" not in cluster.emu.stepped]
    conn = await asyncpg.connect(url)
    try:
        registered = {r["name"] for r in await conn.fetch("SELECT name FROM workloads")}
        storing = {r["name"] for r in await conn.fetch(
            "SELECT DISTINCT w.name FROM workloads w JOIN series s ON s.workload_uid = w.uid")}
    finally:
        await conn.close()
    untaken = [name for name in late if not ((await cluster.get(name)) or {}).get("metadata", {}).get("finalizers")]
    unregistered = [name for name in late if name not in registered and name not in untaken]
    empty = [name for name in late if name in registered and name not in storing]
    unstatused = [name for name in late if name in storing]
    said = [line for line in op.tail(2000).splitlines() if any(name in line for name in late[:50])][-3:]
    states = []  # what the status of the first ones that stored nothing says about their source
    for name in empty[:3]:
        st = ((await cluster.get(name)) or {}).get("status") or {}
        src = (st.get("sources") or [{}])[0]
        states.append(f"{name}: phase {st.get('phase')}, source {src.get('state')} {src.get('reason') or ''}"
                      f"{src.get('lastError', '')[:80]}")
    return (f"{len(late)} show no step: {len(untaken)} not taken up by kopf (no finalizer) {untaken[:5]}, "
            f"{len(unregistered)} collector not started (not in the store) {unregistered[:5]}, {len(empty)} "
            f"started but nothing stored {empty[:5]}, {len(unstatused)} stored but no status yet {unstatused[:5]}; "
            f"their status: {states}; operator log about them: {said}")


def seconds(duration: str) -> float:
    return float(duration.rstrip("s"))


def peer_tree(rev: str) -> tuple[str, Path]:
    """The package tree of revision `rev`, laid out as pyproject's package-dir maps it (trainscope.collector =
    collector/, ...), for PYTHONPATH: (short commit, folder)."""
    import subprocess
    import tarfile

    repo = HERE.parent
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", rev], check=True, capture_output=True,
                            text=True).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix=f"ts-peer-{commit}-", dir="/tmp"))
    src = root / "src"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", commit], check=True,
                             capture_output=True).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(src, filter="data")
    site = root / "site" / "trainscope"
    shutil.copytree(src / "trainscope", site)
    for name in ("collector", "operator", "api"):
        shutil.copytree(src / name, site / name)
    return commit, root / "site"


class ProfiledOperator(OperatorProcess):
    """The operator under cProfile (stats written when it exits on SIGTERM)."""

    def __init__(self, *args: object, profile: Path, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.profile = profile

    def start(self) -> OperatorProcess:
        import subprocess

        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", str(self.profile), "-m",
                                          "trainscope.cli", "operator"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    def stop(self, within: float = 30.0) -> int:
        # Under cProfile, 1,000 collectors wind down several times slower; a SIGKILL would lose the stats.
        return super().stop(within=max(within, 300.0))


def profile_shares(path: Path) -> str:
    """Share of the operator's busy time (profiled wall time less the event loop's idle waits in epoll) spent in
    the status timer's handler and kopf's patch requests, kopf's watch-event processing, and the collectors'
    source loops: cumulative time of their entry points (asyncio: while on the stack, not while suspended)."""
    import pstats

    st = pstats.Stats(str(path))
    stats = st.stats  # type: ignore[attr-defined]
    idle = sum(v[2] for (_, _, fn), v in stats.items() if fn in ("<method 'poll' of 'select.epoll' objects>",))
    busy = st.total_tt - idle  # type: ignore[attr-defined]
    picks = {"kopf timers, i.e. the status timer with its patches (daemons._timer)": "_timer",
             "status handler (write_status)": "write_status", "kopf patch requests (patch_obj)": "patch_obj",
             "status publisher: building (StatusPublisher._publish)": "_publish",
             "status publisher: patch requests (StatusPublisher._send)": "_send",
             "kopf watch events (process_resource_event)": "process_resource_event",
             "collectors (Collector._run_source)": "_run_source"}
    out = []
    for label, name in picks.items():
        cum = max((v[3] for (_, _, fn), v in stats.items() if fn == name), default=0.0)
        out.append(f"{label} {cum / busy:.0%}")
    return f"profile: operator busy {busy:.1f}s (idle in epoll {idle:.1f}s); " + ", ".join(out)


async def run_one(n: int, duration: float, poll: str, status_interval: float, hog: int = 0,
                  drain_timeout: float = 300.0, profile: Path | None = None,
                  warmup_timeout: float = 900.0, pythonpath: Path | None = None,
                  env: dict[str, str] | None = None) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="ts-scale-", dir="/tmp"))
    server, url = await _prepare_pg(base)
    stop = mp.Event()
    written = mp.Value("q", 0)
    writer = mp.Process(target=writer_main, args=(str(base / "runs"), n, stop, written), daemon=True)
    writer.start()
    hogs = [mp.Process(target=hog_main, args=(stop,), daemon=True) for _ in range(hog)]
    for h in hogs:
        h.start()
    try:
        async with CountingCluster() as cluster:
            kw: dict[str, object] = {"status_interval": status_interval, "extra_env": dict(env or {})}
            if pythonpath is not None:
                # PYTHONSAFEPATH: the working directory (this tree) is not put before the peer's packages
                kw["extra_env"] = {**(env or {}), "PYTHONPATH": str(pythonpath), "PYTHONSAFEPATH": "1"}
            op = (ProfiledOperator(cluster.kubeconfig(base / "kubeconfig"), url, base / "operator.log",
                                   profile=profile, **kw) if profile else
                  OperatorProcess(cluster.kubeconfig(base / "kubeconfig"), url, base / "operator.log", **kw))
            op.start()
            t_create = time.monotonic()
            for i in range(n):
                spec = {"sources": [{"name": "tb", "tensorboard": {"logDir": str(base / "runs" / f"w{i:04d}")}}],
                        "pollInterval": poll}
                await cluster.create(f"w{i:04d}", spec)
            create_s = time.monotonic() - t_create
            # warm-up: every Workload collecting (status shows a step)
            last_report = 0.0
            while True:
                assert op.alive(), op.tail()
                ready = len(cluster.emu.stepped)
                if ready >= n or time.monotonic() - t_create > warmup_timeout:
                    break
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    print(f"  [{n}] warming up: {ready}/{n} Workloads show a step after "
                          f"{time.monotonic() - t_create:.0f}s", file=sys.stderr, flush=True)
                await asyncio.sleep(1.0)
            warmup = time.monotonic() - t_create
            if ready < n:
                print(f"  [{n}] {await late_workloads(cluster, url, n, op)}", file=sys.stderr, flush=True)
            await asyncio.sleep(max(5.0, 2 * status_interval))  # settle after the start-up burst
            drained = await drain(url, n, written, seconds(poll), drain_timeout)
            proc = psutil.Process(op.pid)
            rss: list[int] = []
            halt = threading.Event()

            def sample() -> None:
                while not halt.is_set():
                    rss.append(proc.memory_info().rss)
                    halt.wait(0.5)
            sampler = threading.Thread(target=sample, daemon=True)
            conn = await asyncpg.connect(url)
            me = psutil.Process()  # the emulator (and this bench's light bookkeeping)
            cpu0, patches0, emu0 = op.cpu_seconds(), cluster.emu.status_patches, me.cpu_times()
            per0 = dict(cluster.emu.status_patches_by)
            db_t0 = await conn.fetchval("SELECT now()")
            t0 = time.monotonic()
            sampler.start()
            await asyncio.sleep(duration)
            elapsed = time.monotonic() - t0
            cpu = op.cpu_seconds() - cpu0
            emu1 = me.cpu_times()
            emu_cpu = (emu1.user + emu1.system) - (emu0.user + emu0.system)
            patches = cluster.emu.status_patches - patches0
            per = {k: v - per0.get(k, 0) for k, v in cluster.emu.status_patches_by.items()}
            db_t1 = await conn.fetchval("SELECT now()")
            halt.set()
            sampler.join()
            row = await conn.fetchrow(_LAG, db_t0, db_t1)
            await conn.close()
            await asyncio.to_thread(op.stop)  # never block the loop that serves the emulator kopf talks to
            return {"workloads": n, "create_s": create_s, "load": os.getloadavg()[0], "warmup_s": warmup,
                    "drain_s": drained, "hog": hog, "ready": ready,
                    "cpu_cores": cpu / elapsed, "rss_mb": max(rss) / 2**20, "emulator_cores": emu_cpu / elapsed,
                    "points_per_s": row["n"] / (db_t1 - db_t0).total_seconds(), "patches_per_s": patches / elapsed,
                    "max_patches_per_wl_per_min": 60 * max(per.values(), default=0) / elapsed,
                    "lag_p50": row["p50"] or 0.0, "lag_p95": row["p95"] or 0.0, "lag_max": row["max"] or 0.0}
    finally:
        if "op" in locals():
            await asyncio.to_thread(op.stop)
        stop.set()
        writer.join(10)
        for h in hogs:
            h.join(10)
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


async def run_local(n: int, duration: float, poll: str) -> dict[str, float]:
    """The same collectors and store without Kubernetes: `trainscope local` over N Workload manifests (no kopf, no
    status patches): what collection alone costs, to set beside the operator's figures."""
    import subprocess

    import yaml

    base = Path(tempfile.mkdtemp(prefix="ts-scale-", dir="/tmp"))
    server, url = await _prepare_pg(base)
    stop = mp.Event()
    written = mp.Value("q", 0)
    writer = mp.Process(target=writer_main, args=(str(base / "runs"), n, stop, written), daemon=True)
    writer.start()
    docs = [{"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
             "metadata": {"name": f"w{i:04d}", "namespace": "default"},
             "spec": {"sources": [{"name": "tb", "tensorboard": {"logDir": str(base / "runs" / f"w{i:04d}")}}],
                      "pollInterval": poll}} for i in range(n)]
    (base / "workloads.yaml").write_text(yaml.safe_dump_all(docs))
    env = {**os.environ, "TRAINSCOPE_DATABASE_URL": url}
    with open(base / "local.log", "wb") as log:  # noqa: ASYNC230  (a bench, not a server)
        cmd = [sys.executable, "-m", "trainscope.cli", "local", "-f", str(base / "workloads.yaml"), "--refresh", "3600"]
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    try:
        conn = await asyncpg.connect(url)
        t_start = time.monotonic()
        while True:
            assert proc.poll() is None, (base / "local.log").read_text()[-2000:]
            try:
                if await conn.fetchval("SELECT count(DISTINCT workload_uid) FROM series") >= n:
                    break
            except asyncpg.UndefinedTableError:  # not migrated yet
                pass
            await asyncio.sleep(1.0)
        warmup = time.monotonic() - t_start
        await asyncio.sleep(10.0)
        drained = await drain(url, n, written, seconds(poll), 300.0)
        ps = psutil.Process(proc.pid)
        rss: list[int] = []
        t = ps.cpu_times()
        cpu0 = t.user + t.system
        db_t0 = await conn.fetchval("SELECT now()")
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration:
            rss.append(ps.memory_info().rss)
            await asyncio.sleep(0.5)
        elapsed = time.monotonic() - t0
        t = ps.cpu_times()
        cpu = t.user + t.system - cpu0
        db_t1 = await conn.fetchval("SELECT now()")
        row = await conn.fetchrow(_LAG, db_t0, db_t1)
        await conn.close()
        return {"workloads": n, "create_s": 0.0, "load": os.getloadavg()[0], "warmup_s": warmup,
                "drain_s": drained, "hog": 0, "ready": n,
                "cpu_cores": cpu / elapsed, "rss_mb": max(rss) / 2**20, "emulator_cores": 0.0,
                "points_per_s": row["n"] / (db_t1 - db_t0).total_seconds(), "patches_per_s": 0.0,
                "max_patches_per_wl_per_min": 0.0,
                "lag_p50": row["p50"] or 0.0, "lag_p95": row["p95"] or 0.0, "lag_max": row["max"] or 0.0}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        stop.set()
        writer.join(10)
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", type=int, nargs="*", default=[10, 100, 1000])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--poll", default="5s")
    ap.add_argument("--status-interval", type=float, default=5.0)
    ap.add_argument("--local", type=int, nargs="*", default=[],
                    help="also these N in local mode (`trainscope local`: no kopf, no emulator, no status)")
    ap.add_argument("--under", nargs="*", default=["quiet"], choices=["quiet", "hog"],
                    help="conditions per N, alternating per round: quiet, and/or beside a CPU hog")
    ap.add_argument("--hog-procs", type=int, default=2, help="busy-loop processes of the hog")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of the conditions, order swapped every round")
    ap.add_argument("--drain-timeout", type=float, default=300.0)
    ap.add_argument("--warmup-timeout", type=float, default=900.0,
                    help="measure anyway after this long; the row then says how many Workloads showed a step")
    ap.add_argument("--profile", type=Path, help="also one run of the first N under cProfile, stats to this file "
                    "(with --peer, also one of the peer's, to FILE.peer)")
    ap.add_argument("--peer", help="git revision whose operator runs in turns with this tree's (e.g. main)")
    ap.add_argument("--also-env", action="append", default=[], metavar="KEY=VALUE",
                    help="also this tree's operator with this environment variable set, in turns with the others")
    args = ap.parse_args()
    variants: list[tuple[str, Path | None, dict[str, str]]] = [("this tree", None, {})]
    for item in args.also_env:
        key, _, value = item.partition("=")
        variants.append((f"this tree, {key}={value}", None, {key: value}))
    if args.peer:
        commit, site = peer_tree(args.peer)
        variants.append((f"peer {commit}", site, {}))
    print(f"cores: {psutil.cpu_count()}, pollInterval {args.poll}, status interval {args.status_interval}s, "
          f"window {args.duration:.0f}s, hog {args.hog_procs} busy processes, load {os.getloadavg()}")
    print("| Workloads | operator | beside | create s | warm-up s | drain s | operator CPU (cores) | operator RSS MB "
          "| points/s stored | status patches/s | max patches per Workload per min | lag p50 s | lag p95 s "
          "| lag max s | emulator CPU (cores) | load (1 min) |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    runs: list[tuple[int, bool, str, tuple[str, Path | None, dict[str, str]]]] = []
    for rnd in range(args.rounds):
        for n in args.workloads:
            for under in args.under if rnd % 2 == 0 else list(reversed(args.under)):
                for variant in variants if rnd % 2 == 0 else list(reversed(variants)):
                    runs.append((n, False, under, variant))
    runs += [(n, True, "quiet", variants[0]) for n in args.local]
    for n, local, under, (which, site, env) in runs:
        hog = args.hog_procs if under == "hog" else 0
        if local:
            r = asyncio.run(run_local(n, args.duration, args.poll))
        else:
            r = asyncio.run(run_one(n, args.duration, args.poll, args.status_interval, hog, args.drain_timeout,
                                    warmup_timeout=args.warmup_timeout, pythonpath=site, env=env))
        label = f"{n} (local mode)" if local else str(n)
        if r["ready"] < n:
            label += f" ({r['ready']} showed a step by the end of warm-up)"
        beside = f"hog ({hog} procs)" if hog else "-"
        drained = f"{r['drain_s']:.0f}" if r["drain_s"] >= 0 else f"not in {-r['drain_s']:.0f}"
        print(f"| {label} | {which} | {beside} | {r['create_s']:.1f} | {r['warmup_s']:.0f} | {drained} "
              f"| {r['cpu_cores']:.2f} | {r['rss_mb']:.0f} | {r['points_per_s']:.0f} "
              f"| {r['patches_per_s']:.1f} | {r['max_patches_per_wl_per_min']:.1f} | {r['lag_p50']:.2f} "
              f"| {r['lag_p95']:.2f} | {r['lag_max']:.2f} | {r['emulator_cores']:.2f} | {r['load']:.1f} |", flush=True)
    for which, site, env in variants if args.profile else []:
        n = args.workloads[0]
        path = args.profile.resolve()
        path = path.with_suffix(".peer") if site is not None else path.with_suffix(".env") if env else path
        r = asyncio.run(run_one(n, args.duration, args.poll, args.status_interval, 0, args.drain_timeout,
                                path, warmup_timeout=args.warmup_timeout, pythonpath=site, env=env))
        print(f"| {n} (under cProfile) | {which} | - | {r['create_s']:.1f} | {r['warmup_s']:.0f} | {r['drain_s']:.0f} "
              f"| {r['cpu_cores']:.2f} | {r['rss_mb']:.0f} | {r['points_per_s']:.0f} | {r['patches_per_s']:.1f} "
              f"| {r['max_patches_per_wl_per_min']:.1f} | {r['lag_p50']:.2f} | {r['lag_p95']:.2f} "
              f"| {r['lag_max']:.2f} | {r['emulator_cores']:.2f} | {r['load']:.1f} |")
        print(f"{which}: {profile_shares(path)}")
    for _, site, _env in variants:
        if site is not None:
            shutil.rmtree(site.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
