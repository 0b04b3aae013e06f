"""W&B catch-up: the wandb source + the exactly-once writer against the SDK's scan + COPY, from the same fake server.

Run: python bench/bench_wandb.py [--steps 200000 --naive-steps 20000 --repeat 3] [--latency 0.1]
A run of `--steps` steps with 5 numeric keys is served by the fake W&B GraphQL server (tests/fakes, real HTTP on
127.0.0.1) in a child process (in the bench's own, its threads would take the interpreter from the source). Ours:
`WandbSource.poll` batches (50,000 points) written with `Store.write` (COPY, cursor in the same transaction). Peer:
the wandb SDK's `run.scan_history()` row by row, flattened, one COPY per 50,000 points into a plain table (what a
user would script). Old baseline: the same scan with one autocommitted INSERT per point (on the first
`--naive-steps` steps: at a few thousand points/s the whole run would take minutes). The three run in turns
(ABAB..., order swapped every round, medians); after each run the stored rows are checked per metric against the
fake run's rows (count, step sum, exact ts sum, value sum) and the bench stops if any differs. One embedded
PostgreSQL (pgserver, temporary directory, default durable settings). Figures are printed with the load average,
not asserted. `--latency S`: the fake takes S seconds more to answer each request (W&B is a remote service: a
round trip plus its own read), so the figure shows what requests out at once (`pagesInFlight`) are worth against
the SDK's one at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from benchlib import catch_up, wandb_sandbox  # noqa: E402

from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.wandb import WandbSource  # noqa: E402
from trainscope.collector.store import Store  # noqa: E402
from trainscope.collector.store.embedded import start_embedded  # noqa: E402

from fakes.wandb_server import FakeRun, FakeWandb, serve  # noqa: E402

KEY = "b" * 40
NAIVE_DDL = "CREATE TABLE IF NOT EXISTS naive_points (run text, metric text, step bigint, ts timestamptz, value float8)"
Sums = dict[str, tuple[int, int, int, float]]  # metric -> (count, step sum, ts sum in microseconds, value sum)


def serve_child(steps: int, latency: float) -> None:
    """Serve the run until stdin closes; each line read is answered with the number of requests so far."""
    fake = FakeWandb(api_keys=(KEY,))
    fake.latency = latency
    fake.add_run("ent", "proj", make_run(steps))
    with serve(fake):
        print(fake.url, flush=True)
        for _ in sys.stdin:
            print(fake.count(), flush=True)


class Served:
    """The fake W&B server in a child process: its url and request count, as FakeWandb has them."""

    def __init__(self, steps: int, latency: float):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", "--steps", str(steps), "--latency",
                                      str(latency)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout
        self.url = self._out.readline().strip()
        if not self.url:
            raise SystemExit("the fake W&B server did not start")

    def count(self) -> int:
        self._in.write("count\n")
        self._in.flush()
        return int(self._out.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def make_run(steps: int) -> FakeRun:
    run = FakeRun("bench", "bench-run")
    for s in range(steps):
        run.log(s, run.created_at + s * 0.25, loss=2.0 / (s + 1), lr=1e-4, grad_norm=0.5 + s % 7 / 10,
                tokens_per_s=3000.0 + s % 11, train={"acc": s / steps})
    for row in run.rows:  # W&B keeps history as JSON text written as it is logged: the fake renders each row once
        run.text(row)
    return run


def truth(run: FakeRun, steps: int) -> Sums:
    """Per flattened numeric key of the run's first `steps` rows: what any correct catch-up must store."""
    out: dict[str, list] = {}
    for row in run.rows[:steps]:
        for k, v in flatten(row).items():
            if not k.startswith("_"):
                acc = out.setdefault(k, [0, 0, 0, 0.0])
                acc[0] += 1
                acc[1] += row["_step"]
                acc[2] += round(row["_timestamp"] * 1e6)
                acc[3] += float(v)
    return {k: tuple(v) for k, v in out.items()}


def flatten(row: dict) -> dict:
    """One level of nesting joined with '/', as the source does."""
    flat = dict(row)
    for k, v in row.items():
        if isinstance(v, dict):
            flat.pop(k)
            flat.update({f"{k}/{k2}": v2 for k2, v2 in v.items()})
    return flat


async def stored(dsn: str, sql: str, *args: object) -> Sums:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(sql, *args)
    finally:
        await conn.close()
    return {r["metric"]: (r["n"], int(r["s"]), int(r["t"]), r["v"]) for r in rows}


_SUMS = ("count(*) AS n, sum(step) AS s, sum((extract(epoch FROM ts) * 1000000)::bigint) AS t, sum(value) AS v")
OURS_SUMS = (f"SELECT s.metric, {_SUMS} FROM points p JOIN series s ON s.id = p.series_id "
             "WHERE s.workload_uid = $1 GROUP BY s.metric")
PEER_SUMS = f"SELECT metric, {_SUMS} FROM naive_points GROUP BY metric"


def verify(name: str, got: Sums, want: Sums) -> None:
    bad = [m for m in got.keys() | want.keys() if m not in got or m not in want or got[m][:3] != want[m][:3]
           or not math.isclose(got[m][3], want[m][3], rel_tol=1e-9)]
    if bad:
        m = sorted(bad)[0]
        raise SystemExit(f"VERIFY FAILED for {name}: {len(bad)} metrics differ; {m}: stored {got.get(m)}, "
                         f"source {want.get(m)}")


async def ours(fake: Served, dsn: str, uid: str = "bench-uid") -> tuple[int, float, int]:
    src = WandbSource({"baseUrl": fake.url, "entity": "ent", "project": "proj", "runId": "bench"},
                      SourceContext(max_batch_points=50_000))
    before = fake.count()
    n, elapsed = await catch_up(src, dsn, uid, "wandb", "wandb")
    return n, elapsed, fake.count() - before


def sdk(fake: Served, dsn: str, steps: int, copy: bool) -> tuple[int, float, int]:
    """The SDK's scan_history, flattened; one COPY per 50,000 points (the peer) or one INSERT per point (old)."""
    import wandb

    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        n = 0
        pending: list[tuple] = []

        async def flush() -> None:
            if copy:
                async with conn.transaction():
                    await conn.copy_records_to_table("naive_points", records=pending)
            else:
                for rec in pending:
                    await conn.execute("INSERT INTO naive_points VALUES ($1, $2, $3, to_timestamp($4), $5)", *rec)
            pending.clear()

        try:
            api = wandb.Api(overrides={"base_url": fake.url}, api_key=KEY, timeout=60)
            for row in api.run("ent/proj/bench").scan_history(max_step=steps, use_cache=False):  # blocking HTTP
                ts = datetime.fromtimestamp(row["_timestamp"], UTC) if copy else row["_timestamp"]
                for k, v in flatten(row).items():
                    if not k.startswith("_") and isinstance(v, int | float):
                        pending.append(("bench", k, row["_step"], ts, float(v)))
                if len(pending) >= (50_000 if copy else 1):
                    n += len(pending)
                    await flush()
            n += len(pending)
            await flush()
        finally:
            await conn.close()
        return n

    before = fake.count()
    started = time.perf_counter()
    n = asyncio.run(run())
    return n, time.perf_counter() - started, fake.count() - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--naive-steps", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the fake adds to each answer")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child serving the fake
    args = parser.parse_args()
    if args.serve:
        serve_child(args.steps, args.latency)
        return
    tmp = Path(tempfile.mkdtemp(prefix="ts-bench-wb-"))
    wandb_sandbox(tmp, KEY)
    pg = start_embedded(tmp / "pgdata", cleanup_mode="delete")
    dsn = pg.get_uri()
    try:
        t = time.perf_counter()
        fake = Served(args.steps, args.latency)
        run = make_run(args.steps)  # the child's run: the same rows
        want, want_naive = truth(run, args.steps), truth(run, args.naive_steps)
        print(f"generated {args.steps:,} steps x 5 keys in {time.perf_counter() - t:.1f}s")
        asyncio.run(_sql(dsn, NAIVE_DDL))
        asyncio.run(_migrate(dsn))
        ways = {
            "ours: WandbSource + Store.write": lambda rnd: asyncio.run(ours(fake, dsn, f"bench-{rnd}")),
            "peer: SDK scan_history + COPY per batch": lambda rnd: sdk(fake, dsn, args.steps, True),
            f"old baseline: SDK + INSERT per point ({args.naive_steps:,} steps)":
                lambda rnd: sdk(fake, dsn, args.naive_steps, False),
        }
        figs: dict[str, list[tuple[int, float, int]]] = {w: [] for w in ways}
        loads = []
        with contextlib.closing(fake):
            for rnd in range(args.repeat):
                for way in list(ways) if rnd % 2 == 0 else list(reversed(ways)):  # in turns, order swapped
                    asyncio.run(_sql(dsn, "TRUNCATE points, series, cursors, runs, naive_points"))
                    n, secs, reqs = ways[way](rnd)
                    if way.startswith("ours"):
                        verify(way, asyncio.run(stored(dsn, OURS_SUMS, f"bench-{rnd}")), want)
                    else:
                        verify(way, asyncio.run(stored(dsn, PEER_SUMS)), want_naive if "INSERT" in way else want)
                    figs[way].append((n, secs, reqs))
                loads.append(os.getloadavg()[0])
                print(f"  round {rnd + 1}/{args.repeat}: " + ", ".join(
                    f"{w.split(':')[0]} {f[-1][0] / f[-1][1]:,.0f}/s" for w, f in figs.items())
                    + f"; load {loads[-1]:.2f}")
        print(f"\n{args.steps:,} steps x 5 keys; {args.latency * 1000:.0f} ms added to each answer; {args.repeat} "
              f"rounds in turns, medians; every run's rows verified per metric; 1-min load per round: "
              f"{', '.join(f'{x:.2f}' for x in loads)}")
        rate = {w: statistics.median(n / s for n, s, _ in f) for w, f in figs.items()}
        peer = rate["peer: SDK scan_history + COPY per batch"]
        print(f"{'way':<52}{'points':>10}{'points/s':>11}{'requests':>10}{'x peer':>8}")
        for w, f in figs.items():
            print(f"{w:<52}{f[0][0]:>10,}{rate[w]:>11,.0f}{f[0][2]:>10}{rate[w] / peer:>8.2f}")
        print(f"load {os.getloadavg()}")
    finally:
        pg.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


async def _migrate(dsn: str) -> None:
    await (await Store.open(dsn)).close()  # the store's tables exist before the first round truncates them


async def _sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


if __name__ == "__main__":
    main()
