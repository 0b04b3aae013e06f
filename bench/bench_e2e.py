"""End-to-end catch-up: a source read to completion through the Runtime (as `trainscope local` drives it) against
the writer alone storing the same points, in turns, on one embedded PostgreSQL.

Run: python bench/bench_e2e.py [--sources tensorboard logs swanlab wandb] [--points 1000000] [--repeat 3]
                                [--batch-mb 16 | --batch POINTS] [--wandb-latency 0.1]
     python bench/bench_e2e.py --memory logs --points 10000000   (peak RSS during one catch-up)

Per source: the input is made once (a tensorboardX event file; an HF Trainer log; a run logged by the swanlab SDK
in local mode, read as a logDir; a run on the fake W&B server of tests/fakes over real HTTP on 127.0.0.1; event
files and SwanLab runs are cached between invocations, their writers being slow). Then, `--repeat` times, in turns
(ABAB...):
- e2e: Runtime.apply of a fresh Workload naming the source; timed from apply until the collector's stored count
  equals the source's point count; the Workload is then stopped;
- writer: Store.write of the same points (read once beforehand, in the source's batches, turned into the columns the
  collector hands the writer) under a fresh uid.
Each run's stored points are checked against the source's generator (count, sum of steps, sum of values, in SQL)
and the e2e rows against the writer's rows point for point (run, metric, step, ts, value; EXCEPT both ways) before
a figure is printed; a mismatch aborts. Medians are printed with the load average, and this process's CPU seconds
per million points (every thread: reading, the collector's bookkeeping and the writer's encoding; PostgreSQL's own
work is not in it), which the machine's load disturbs far less than the rates, beside the CPU seconds the source
alone took to read the batches. Never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "fakes"))

from benchlib import wandb_sandbox  # noqa: E402

from trainscope.collector.batches import DEFAULT_BATCH_BYTES, batch_points  # noqa: E402
from trainscope.collector.points import Columns  # noqa: E402
from trainscope.collector.sources import REGISTRY, SourceContext  # noqa: E402
from trainscope.collector.store import Store  # noqa: E402
from trainscope.collector.store.embedded import start_embedded  # noqa: E402
from trainscope.gc_tuning import tune_for_ingest  # noqa: E402
from trainscope.operator.runtime import Runtime, RuntimeConfig  # noqa: E402

KEY = "b" * 40
T0 = 1_700_000_000.0
TAGS = 4  # metrics per step
CACHE = Path(tempfile.gettempdir()) / "ts-bench-e2e-cache"


def load() -> str:
    return "load {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


@dataclass
class Input:
    kind: str
    config: dict[str, Any]
    points: int
    steps_sum: int
    values_sum: float
    cleanup: Any = None
    server_cpu: Any = None  # the CPU seconds a server process of the source's has used so far (the fake W&B)


def make_tensorboard(tmp: Path, n: int) -> Input:
    from tensorboardX import SummaryWriter

    CACHE.mkdir(exist_ok=True)

    logdir = CACHE / f"tb-{n}"  # kept between runs: tensorboardX writes ~15k events/s
    steps = n // TAGS
    ssum = vsum = 0.0
    for step in range(steps):
        for t in range(TAGS):
            vsum += _f32(1.0 / (step + t + 1))
        ssum += step * TAGS
    if not logdir.exists():
        part = logdir.with_suffix(".part")
        shutil.rmtree(part, ignore_errors=True)
        with SummaryWriter(str(part), max_queue=100_000, flush_secs=3600) as w:
            for step in range(steps):
                for t in range(TAGS):
                    w.add_scalar(f"train/metric_{t}", 1.0 / (step + t + 1), step, walltime=T0 + step * 0.1)
        part.rename(logdir)
    return Input("tensorboard", {"logDir": str(logdir)}, steps * TAGS, int(ssum), vsum)


def _f32(v: float) -> float:
    import struct

    return struct.unpack("<f", struct.pack("<f", v))[0]


def make_logs(tmp: Path, n: int) -> Input:
    path = tmp / "train.log"
    lines = n // 4  # loss, grad_norm, learning_rate, epoch per line
    vsum = 0.0
    with path.open("w") as f:
        for i in range(1, lines + 1):
            loss, gn = f"{2.0 / math.sqrt(i):.4f}", f"{0.5 + (i % 13) / 100:.6f}"
            lr, ep = repr(5e-05 * (1 - i / 1e8)), f"{i / 625:.2f}"
            f.write(f"{{'loss': {loss}, 'grad_norm': {gn}, 'learning_rate': {lr}, 'epoch': {ep}}}\n")
            vsum += float(loss) + float(gn) + float(lr) + float(ep)
    # HF logs count logging steps: the parser numbers them 1, 2, ... when no step is printed (loggingSteps 1)
    return Input("logs", {"path": str(path), "format": "hf"}, lines * 4, 0, vsum)


_WANDB_SERVER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from fakes.wandb_server import FakeRun, FakeWandb, serve
steps = int(sys.argv[2])
run = FakeRun("bench", "bench-run")
for s in range(steps):
    run.log(s, run.created_at + s * 0.25, loss=2.0 / (s + 1), lr=1e-4, grad_norm=0.5 + s % 7 / 10,
            tokens_per_s=3000.0 + s % 11, acc=s / steps)
for row in run.rows:  # W&B keeps history as JSON text written as it is logged: the fake renders each row once
    run.text(row)
fake = FakeWandb(api_keys=(sys.argv[3],))
fake.latency = float(sys.argv[4])
fake.add_run("ent", "proj", run)
with serve(fake):
    print(fake.url, flush=True)
    sys.stdin.read()
"""


WANDB_LATENCY = 0.0  # seconds the fake W&B server adds to each answer (--wandb-latency)


def make_wandb(tmp: Path, n: int) -> Input:
    """The fake W&B server in its own process (in this one it would take the GIL from the collector)."""
    steps = n // 5
    vsum = 0.0
    for s in range(steps):
        vsum += 2.0 / (s + 1) + 1e-4 + (0.5 + s % 7 / 10) + (3000.0 + s % 11) + s / steps
    proc = subprocess.Popen([sys.executable, "-c", _WANDB_SERVER, str(ROOT / "tests"), str(steps), KEY,
                             str(WANDB_LATENCY)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    os.environ["WANDB_API_KEY"] = KEY

    def stop() -> None:
        proc.kill()
        proc.wait()

    def cpu() -> float:
        t = psutil.Process(proc.pid).cpu_times()
        return t.user + t.system

    config = {"baseUrl": url, "entity": "ent", "project": "proj", "runId": "bench"}
    return Input("wandb", config, steps * 5, sum(range(steps)) * 5, vsum, cleanup=stop, server_cpu=cpu)


SWAN_METRICS = ["train/loss", "train/acc", "lr", "tokens", "eval/loss", "eval/acc", "speed", "epoch", "mem",
                "gpu"]


def make_swanlab(tmp: Path, n: int) -> Input:
    """A finished run logged by the real swanlab SDK in local mode (tests/swanfixtures.py's writer), read as a
    logDir. The values are swanfixtures.value(), the oracle the source tests use too."""
    from swanfixtures import HERE as WRITER
    from swanfixtures import swan_env, value

    CACHE.mkdir(exist_ok=True)
    steps = n // len(SWAN_METRICS)
    logdir = CACHE / f"swanlab-{len(SWAN_METRICS)}-{n}"
    if not logdir.exists():
        part = logdir.with_suffix(".part")
        shutil.rmtree(part, ignore_errors=True)
        env = swan_env(part / "env")
        plan = [{"name": "bench", "metrics": SWAN_METRICS, "steps": steps}]
        subprocess.run([sys.executable, str(WRITER), str(part / "logs"), json.dumps(plan)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        part.rename(logdir)
    vsum = math.fsum(value("bench", m, s) for s in range(steps) for m in SWAN_METRICS)
    return Input("swanlab", {"logDir": str(logdir / "logs")}, steps * len(SWAN_METRICS),
                 sum(range(steps)) * len(SWAN_METRICS), vsum)


MAKERS = {"tensorboard": make_tensorboard, "logs": make_logs, "swanlab": make_swanlab, "wandb": make_wandb}


async def read_all(inp: Input, batch: int) -> tuple[list[tuple[Columns, Any, dict]], float]:
    """The source's batches, as the collector would poll them (read once, outside the timings), as the columns
    the collector hands the writer; and the CPU seconds the reading took."""
    src = REGISTRY[inp.kind](inp.config, SourceContext(max_batch_points=batch, base_dir=Path.cwd()))
    out, cursor = [], None
    cpu = time.process_time()
    while True:
        b = await src.poll(cursor)
        out.append((b.points, b.cursor, b.runs))
        cursor = b.cursor
        if not b.more:
            break
    cpu = time.process_time() - cpu
    await src.aclose()
    return [(p if isinstance(p, Columns) else Columns.from_points(p) or p, c, r) for p, c, r in out], cpu


async def check(store: Store, uid: str, inp: Input, what: str) -> None:
    async with store._pool.acquire() as conn:  # the bench checks the table itself
        n, ssum, vsum = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(p.step), 0), coalesce(sum(p.value), 0) FROM points p "
            "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    want_s = inp.steps_sum if inp.kind != "logs" else (inp.points // 4) * (inp.points // 4 + 1) // 2 * 4
    if n != inp.points or int(ssum) != want_s or not math.isclose(vsum, inp.values_sum, rel_tol=1e-9):
        raise SystemExit(f"{what}: stored {n} points (step sum {ssum}, value sum {vsum!r}); the source holds "
                         f"{inp.points} (step sum {want_s}, value sum {inp.values_sum!r})")


_ROWS = """SELECT s.run, s.metric, p.step, p.ts, p.value FROM points p JOIN series s ON s.id = p.series_id
WHERE s.workload_uid = $1"""


async def same_rows(store: Store, a: str, b: str, what: str) -> None:
    """The rows stored under uid `a` and uid `b` are the same, point for point (NaN equals NaN in PostgreSQL)."""
    async with store._pool.acquire() as conn:
        for x, y in ((a, b), (b, a)):
            n = await conn.fetchval(f"SELECT count(*) FROM ({_ROWS} EXCEPT ALL {_ROWS.replace('$1', '$2')}) d", x, y)
            if n:
                raise SystemExit(f"{what}: {n} rows of {x} are not in {y}")


async def drop(store: Store, uid: str) -> None:
    """Delete a round's rows (keeps the table the size of one catch-up, so rounds are alike)."""
    await store.forget_workload(uid, delete_data=True)
    async with store._pool.acquire() as conn:
        await conn.execute("VACUUM points")


# this process's CPU seconds per run (all threads); "server": a source's server process during the e2e runs
CPU: dict[str, list[float]] = {"e2e": [], "writer": [], "server": []}


async def e2e(runtime: Runtime, inp: Input, uid: str) -> float:
    spec = {"sources": [{"name": "src", inp.kind: inp.config}], "pollInterval": "60s"}
    server = inp.server_cpu() if inp.server_cpu else 0.0
    cpu = time.process_time()
    started = time.perf_counter()
    await runtime.apply(uid, "bench", uid, spec)
    while True:
        snap = runtime.snapshot(uid)
        if snap is not None and snap.sources and snap.sources[0].points >= inp.points:
            break
        if snap is not None and snap.sources and snap.sources[0].last_error:
            raise SystemExit(f"e2e {inp.kind}: {snap.sources[0].last_error}")
        await asyncio.sleep(0.02)  # each look takes a snapshot (as the status timer does every few seconds)
    elapsed = time.perf_counter() - started
    CPU["e2e"].append(time.process_time() - cpu)
    if inp.server_cpu:
        CPU["server"].append(inp.server_cpu() - server)
    await runtime.stop(uid)
    return elapsed


async def writer_alone(store: Store, inp: Input, batches: list, uid: str) -> float:
    cpu = time.process_time()
    started = time.perf_counter()
    for points, cursor, runs in batches:
        await store.write(uid, "src", inp.kind, points, cursor, runs)
    elapsed = time.perf_counter() - started
    CPU["writer"].append(time.process_time() - cpu)
    return elapsed


async def bench(args: argparse.Namespace, dsn: str, tmp: Path) -> None:
    runtime = Runtime(RuntimeConfig(database_url=dsn, metrics_port=None, max_batch_points=args.batch,
                                    max_batch_bytes=int(args.batch_mb * 2**20)))
    await runtime.start()
    store = await runtime.wait_store()
    print(f"{'source':12} {'points':>10} {'e2e pts/s':>11} {'writer pts/s':>13} {'e2e/writer':>10}  load")
    for kind in args.sources:
        t = time.perf_counter()
        inp = MAKERS[kind](tmp, args.points)
        made = time.perf_counter() - t
        t = time.perf_counter()
        batches, read_cpu = await read_all(inp, batch_points(int(args.batch_mb * 2**20), args.batch))
        read_s = time.perf_counter() - t
        e2e_s, w_s = [], []
        for r in range(args.repeat):
            uid, wuid = f"{kind}-e2e-{r}", f"{kind}-writer-{r}"
            for way in ("e2e", "writer") if r % 2 == 0 else ("writer", "e2e"):  # ABBA: neither always first
                if way == "e2e":
                    e2e_s.append(await e2e(runtime, inp, uid))
                    await check(store, uid, inp, f"e2e {kind} round {r}")
                else:
                    w_s.append(await writer_alone(store, inp, batches, wuid))
                    await check(store, wuid, inp, f"writer {kind} round {r}")
            await same_rows(store, uid, wuid, f"{kind} round {r}")
            await drop(store, uid)
            await drop(store, wuid)
            print(f"  {kind} round {r}: e2e {e2e_s[-1]:.2f}s, writer {w_s[-1]:.2f}s  {load()}", flush=True)
        e, w = statistics.median(e2e_s), statistics.median(w_s)
        print(f"{kind:12} {inp.points:>10,} {inp.points / e:>11,.0f} {inp.points / w:>13,.0f} {w / e:>10.0%}  "
              f"{load()}  (input made in {made:.0f}s; source alone {inp.points / read_s:,.0f} pts/s; "
              f"e2e runs {[round(x, 2) for x in e2e_s]} s, "
              f"writer {[round(x, 2) for x in w_s]} s; this process's CPU seconds per million points: e2e "
              f"{statistics.median(CPU['e2e']) * 1e6 / inp.points:.2f}, writer "
              f"{statistics.median(CPU['writer']) * 1e6 / inp.points:.2f}, source alone "
              f"{read_cpu * 1e6 / inp.points:.2f}"
              + (f"; the fake server's, e2e {statistics.median(CPU['server']) * 1e6 / inp.points:.2f}"
                 if CPU["server"] else "") + ")")
        for v in CPU.values():
            v.clear()
        del batches
        if inp.cleanup:
            inp.cleanup()
    await runtime.close()


async def memory_child(kind: str, n: int, dsn: str, tmp: Path, batch: int | None, batch_bytes: int) -> None:
    inp = MAKERS[kind](tmp, n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runtime = Runtime(RuntimeConfig(database_url=dsn, metrics_port=None, max_batch_points=batch,
                                    max_batch_bytes=batch_bytes))
    await runtime.start()
    store = await runtime.wait_store()
    import gc

    gc.collect()
    # Peak RSS is a high-water mark: the input is made first, so sample RSS during the run instead.
    proc, peak, base = psutil.Process(), 0, psutil.Process().memory_info().rss
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, proc.memory_info().rss)
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    secs = await e2e(runtime, inp, f"{kind}-mem")
    done.set()
    await sampler
    await check(store, f"{kind}-mem", inp, "memory run")
    print(f"memory {kind}: {inp.points:,} points caught up in {secs:.1f}s ({inp.points / secs:,.0f}/s); RSS before "
          f"{base / 2**20:.0f} MB, peak during catch-up {peak / 2**20:.0f} MB (maxrss before input {before / 1024:.0f} "
          f"MB); {load()}")
    await runtime.close()
    if inp.cleanup:
        inp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", default=["tensorboard", "logs", "swanlab", "wandb"],
                        choices=sorted(MAKERS))
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=None, help="points per batch at most (default: by --batch-mb)")
    parser.add_argument("--batch-mb", type=float, default=DEFAULT_BATCH_BYTES / 2**20,
                        help="memory per batch, as `trainscope local --batch-mb`")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--wandb-latency", type=float, default=0.0,
                        help="seconds the fake W&B server adds to each answer (W&B is a remote service)")
    parser.add_argument("--memory", choices=sorted(MAKERS))
    parser.add_argument("--dsn")
    args = parser.parse_args()
    global WANDB_LATENCY
    WANDB_LATENCY = args.wandb_latency
    tune_for_ingest()
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-e2e-"))
    wandb_sandbox(tmp)
    pg = None
    try:
        dsn = args.dsn
        if dsn is None:
            pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
            dsn = pg.get_uri()
        print(f"{load()} at start")
        if args.memory:
            asyncio.run(memory_child(args.memory, args.points, dsn, tmp, args.batch, int(args.batch_mb * 2**20)))
        else:
            asyncio.run(bench(args, dsn, tmp))
    finally:
        if pg is not None:
            pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
