"""Helpers for the API tests: a database filled by real collection, the expected answers, servers to talk to.

The seed workload (namespace ml, name llama-sft) has what seed 001's quick start shows: train/loss from several
data sources, train/accuracy, train/learning_rate. TensorBoard points are REAL collection: tensorboardX writes
event files, a Collector with the TensorBoard source reads them into the store. W&B and log-parser points go
through the store's write path with the kinds those sources use ("wandb", "logs"), as their sources will.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import numpy as np
from tensorboardX import SummaryWriter

from trainscope.api.app import ApiSettings
from trainscope.api.server import ApiServer
from trainscope.collector.collector import Collector
from trainscope.collector.points import Point
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store

SEED_UID = "0b6f3c1e-5d7a-4f0e-9a63-6f1d2c3b4a59"
SEED_NS, SEED_NAME = "ml", "llama-sft"
STEPS = 120
KIND_NAMES = {"tensorboard": "tensorflow", "wandb": "wandb", "logs": "log"}


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine from sync code in a thread of its own (never on pytest-asyncio's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


async def create_database(pg_url: str) -> str:
    name = f"api_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(pg_url, name)


async def drop_database(pg_url: str, url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Expected:
    """What the seed workload holds: (metric, data_source) -> {step: (timestamp ms, value)}."""

    t0: int  # epoch seconds of step 0
    series: dict[tuple[str, str], dict[int, tuple[int, float]]] = field(default_factory=dict)

    def add(self, metric: str, data_source: str, step: int, ts: float, value: float) -> None:
        self.series.setdefault((metric, data_source), {})[step] = (round(ts * 1e6) // 1000, value)

    def items(self, metrics: set[str] | None = None, data_source: str | None = None,
              start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        """The seed's items matching a query, in the API's order (metric, data source, step)."""
        out = []
        for (metric, ds), points in sorted(self.series.items()):
            if (metrics is not None and metric not in metrics) or (data_source is not None and ds != data_source):
                continue
            for step, (ms, value) in sorted(points.items()):
                if (start is not None and ms < start) or (end is not None and ms > end):
                    continue
                out.append({"metric_name": metric, "value": value if math.isfinite(value) else None,
                            "timestamp": ms, "iteration": step, "data_source": ds})
        return out


def write_tensorboard(logdir: Path, t0: int, expected: Expected) -> None:
    """Real event files, as a training job using tensorboardX writes them (float32 scalars)."""
    with SummaryWriter(str(logdir)) as w:
        for step in range(1, STEPS + 1):
            wall = float(t0 + 60 * step)
            values = {"train/loss": 2.5 * math.exp(-step / 40) + 0.3, "train/accuracy": 1 - math.exp(-step / 50),
                      "train/learning_rate": 3e-4 * (1 - step / (STEPS + 1)),
                      "train/grad_norm": math.nan if step == 50 else (math.inf if step == 60 else 1.0 / step)}
            for metric, v in values.items():
                w.add_scalar(metric, v, step, walltime=wall)
                expected.add(metric, "tensorflow", step, wall, float(np.float32(v)))


async def collect_tensorboard(store: Store, logdir: Path, expected_points: int) -> None:
    """A Collector with the real TensorBoard source, until every point is stored."""
    spec = parse_spec({"sources": [{"name": "tb", "tensorboard": {"logDir": str(logdir)}}], "pollInterval": "1s",
                       "primaryMetric": "train/loss", "totalSteps": 200})
    c = Collector(SEED_UID, spec, store, namespace=SEED_NS, name=SEED_NAME, backoff_base=0.05, backoff_cap=0.2)
    await c.start()
    try:
        deadline = time.monotonic() + 60
        while (c.snapshot().sources[0].points if c.snapshot().sources else 0) < expected_points:
            assert time.monotonic() < deadline, f"collection stalled: {c.snapshot().sources}"
            await asyncio.sleep(0.05)
    finally:
        await c.stop()


async def fill_seed_workload(url: str, logdir: Path) -> Expected:
    """The seed workload: TensorBoard collected for real, W&B and log points through the store's writer."""
    t0 = int(time.time()) // 60 * 60 - 60 * STEPS  # the run ends about now: "the last hour" holds ~60 steps
    expected = Expected(t0)
    write_tensorboard(logdir, t0, expected)
    store = await Store.open(url)
    try:
        await store.register_workload(SEED_UID, SEED_NS, SEED_NAME,
                                      {"primaryMetric": "train/loss", "totalSteps": 200,
                                       "sources": [{"name": "tb", "tensorboard": {"logDir": str(logdir)}}]})
        await collect_tensorboard(store, logdir, STEPS * 4)
        wandb, logs = [], []
        for step in range(1, STEPS + 1):
            ts = t0 + 60 * step + 0.25
            loss = 2.5 * math.exp(-step / 40) + 0.3
            for metric, v in (("train/loss", loss + 0.001), ("train/accuracy", 1 - math.exp(-step / 50) - 0.002)):
                wandb.append(Point(metric, step, ts, v, "run-a3b1799d"))
                expected.add(metric, "wandb", step, ts, v)
            ts = t0 + 60 * step + 0.5
            for metric, v in (("train/loss", round(loss, 4)), ("train/learning_rate", 3e-4 * (1 - step / 121))):
                logs.append(Point(metric, step, ts, v))
                expected.add(metric, "log", step, ts, v)
        await store.write(SEED_UID, "wandb", "wandb", wandb, {"step": STEPS},
                          runs={"run-a3b1799d": {"displayName": "Qwen2.5-7B/20250321-1130-16bed2e2",
                                                 "state": "running"}})
        await store.write(SEED_UID, "logs", "logs", logs, {"offset": 1234})
        # A second, deleted workload in another namespace: lists and filters must tell them apart.
        await store.register_workload("deleted-uid", "other", "old-run", {})
        await store.write("deleted-uid", "tb", "tensorboard", [Point("loss", 1, t0, 1.0)], None)
        await store.forget_workload("deleted-uid", delete_data=False)
    finally:
        await store.close()
    return expected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """The API served by uvicorn on 127.0.0.1 from a thread with its own event loop (for sync clients)."""

    def __init__(self, settings: ApiSettings):
        self._settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-server", daemon=True)
        self._server: ApiServer | None = None
        self.url = ""

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        self._server = ApiServer(self._settings, "127.0.0.1", 0)
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result(30)
        self.url = f"http://127.0.0.1:{self._server.port}"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        asyncio.run_coroutine_threadsafe(self._server.stop(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def seed_database(pg_url: str, tmp: Path) -> Iterator[tuple[str, Expected]]:
    """A module's database with the seed workload (generator body of a module-scoped fixture)."""
    url = run_sync(create_database(pg_url))
    try:
        yield url, run_sync(fill_seed_workload(url, tmp / "tb"))
    finally:
        run_sync(drop_database(pg_url, url))
