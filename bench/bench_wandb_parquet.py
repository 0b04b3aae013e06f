"""W&B history read paths for a large finished run: our HistoryPage catch-up against W&B's parquet export.

Run: python bench/bench_wandb_parquet.py [--steps 200000 --rounds 3]
A finished run of `--steps` steps x 5 numeric keys (1,000,000 points at the default), its whole history exported,
is served by the fake W&B server (tests/fakes, real HTTP on 127.0.0.1) in a CHILD process, so the server's work and
the reader's do not share one interpreter. In turns (ABAB...):
  historypage: `WandbSource.poll` until caught up (HistoryPage windows, JSON rows -> points), nothing stored;
  parquet:     one `RunParquetHistory` query, each parquet URL downloaded with httpx and read with pyarrow, numeric
               columns (nested ones joined with '/') -> the same points.
Both read paths are checked to give the same point set before any figure is printed. Medians, with the load
average at each round. Only the read is timed: storing is the same for both paths.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from trainscope.collector.points import Point  # noqa: E402
from trainscope.collector.sources.base import SourceContext  # noqa: E402
from trainscope.collector.sources.wandb import WandbSource  # noqa: E402

KEY = "b" * 40
QUERY = """query RunParquetHistory($entity: String!, $project: String!, $runName: String!, $liveKeys: [String!]!) {
  project(name: $project, entityName: $entity) { run(name: $runName) { parquetHistory(liveKeys: $liveKeys) {
    parquetUrls liveData } } } }"""


def _serve(steps: int, conn: Any) -> None:
    from fakes.wandb_server import FakeRun, FakeWandb, serve

    fake = FakeWandb(api_keys=(KEY,))
    run = FakeRun("bench", "bench-run", state="finished")
    for s in range(steps):
        run.log(s, run.created_at + s * 0.25, loss=2.0 / (s + 1), lr=1e-4, grad_norm=0.5 + s % 7 / 10,
                tokens_per_s=3000.0 + s % 11, train={"acc": s / steps})
    run.rows[7]["loss"] = math.nan  # non-finite values ride along
    run.rows[8]["loss"] = math.inf
    run.export()
    run.parquet_files()  # W&B exports ahead of time: build the files before timing
    fake.add_run("ent", "proj", run)
    with serve(fake):
        conn.send(fake.url)
        conn.recv()  # until the parent is done


async def historypage(url: str) -> list[Point]:
    src = WandbSource({"baseUrl": url, "entity": "ent", "project": "proj", "runId": "bench"},
                      SourceContext(max_batch_points=50_000))
    out: list[Point] = []
    cursor = None
    try:
        while True:
            batch = await src.poll(cursor)
            out.extend(batch.points)
            cursor = batch.cursor
            if not batch.more:
                return out
    finally:
        await src.aclose()


def _columns(name: str, arr: Any, out: list[tuple[str, Any]]) -> None:
    import pyarrow as pa

    if pa.types.is_struct(arr.type):
        if "_type" in [f.name for f in arr.type]:
            return  # a media object
        for i, f in enumerate(arr.type):
            _columns(f"{name}/{f.name}", arr.field(i), out)
    elif pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        out.append((name, arr))


def parquet(url: str) -> list[Point]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with httpx.Client(auth=("api", KEY), timeout=120) as client:
        data = client.post(f"{url}/graphql", json={"operationName": "RunParquetHistory", "query": QUERY, "variables": {
            "entity": "ent", "project": "proj", "runName": "bench", "liveKeys": ["_step"]}}).json()
        hist = data["data"]["project"]["run"]["parquetHistory"]
        assert not hist["liveData"], "the bench run is fully exported"
        out: list[Point] = []
        for file_url in hist["parquetUrls"]:
            table = pq.read_table(io.BytesIO(client.get(file_url).content))
            steps, stamps = table.column("_step").combine_chunks(), table.column("_timestamp").combine_chunks()
            cols: list[tuple[str, Any]] = []
            for name in table.column_names:
                if not name.startswith("_"):
                    _columns(name, table.column(name).combine_chunks(), cols)
            for name, arr in cols:
                keep = pc.is_valid(arr)
                for s, t, v in zip(pc.filter(steps, keep).to_pylist(), pc.filter(stamps, keep).to_pylist(),
                                   pc.filter(arr, keep).to_pylist(), strict=True):
                    out.append(Point(name, s, t, float(v), "bench"))
        return out


def _key(p: Point) -> tuple:
    return (p.metric, p.step, p.ts, "nan" if math.isnan(p.value) else p.value, p.run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ["WANDB_API_KEY"] = KEY  # the source's key when no Secret is named
    import pyarrow.compute  # imported before timing: a collector would import it once
    import pyarrow.parquet  # noqa: F401
    parent, child = mp.Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(args.steps, child), daemon=True)
    server.start()
    try:
        url = parent.recv()
        print(f"fake W&B in process {server.pid} at {url}, {args.steps:,} steps x 5 keys, fully exported")
        times: dict[str, list[float]] = {"historypage": [], "parquet": []}
        for r in range(args.rounds):
            for name in ("historypage", "parquet"):
                started = time.perf_counter()
                points = asyncio.run(historypage(url)) if name == "historypage" else parquet(url)
                secs = time.perf_counter() - started
                if r == 0:
                    if name == "historypage":
                        want = sorted(map(_key, points))
                    else:
                        assert sorted(map(_key, points)) == want, "parquet and HistoryPage read different points"
                        print(f"verified: both paths read the same {len(want):,} points")
                times[name].append(secs)
                print(f"round {r + 1} {name:11}: {len(points):,} points in {secs:6.2f}s = "
                      f"{len(points) / secs:>9,.0f} points/s  load {os.getloadavg()[0]:.1f}")
        hp, pq_ = statistics.median(times["historypage"]), statistics.median(times["parquet"])
        n = len(want)
        print(f"median historypage {n / hp:,.0f} points/s, parquet {n / pq_:,.0f} points/s: parquet is "
              f"{hp / pq_:.1f}x; load {os.getloadavg()}")
    finally:
        parent.send("done")
        server.join(10)
        if server.is_alive():
            server.kill()


if __name__ == "__main__":
    main()
