"""The W&B source end to end through the Collector into a real PostgreSQL: catch-up, growth, a restart
mid-catch-up, run state and totalSteps into the snapshot, run metadata in the runs table."""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Iterator

import asyncpg
import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.points import RunState
from trainscope.collector.sources.wandb import WandbSource
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store

from fakes.wandb_server import FakeWandb, grow, run_points, serve, training_run
from waiting import eventually

KEY = "s" * 40
REGISTRY = {WandbSource.kind: WandbSource}
SCHEMAS = {WandbSource.kind: WandbSource.schema}


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    server = FakeWandb(api_keys=(KEY,))
    with serve(server):
        yield server


async def resolve(ref: dict[str, str]) -> str:
    assert ref == {"name": "wandb-key", "key": "apiKey"}
    return KEY


def collector(store: Store, uid: str, fake: FakeWandb) -> Collector:
    spec = parse_spec({"pollInterval": "50ms", "sources": [{"name": "wb", "wandb": {
        "baseUrl": fake.url, "entity": "ent", "project": "proj", "filters": {"config.experiment_name": "sft"},
        "apiKeySecretRef": {"name": "wandb-key", "key": "apiKey"}, "totalStepsConfigKey": "max_steps",
        "pageSize": 500}}]}, SCHEMAS)
    return Collector(uid, spec, store, name="wl", registry=REGISTRY, resolve_secret=resolve, max_batch_points=2000,
                     backoff_base=0.02, backoff_cap=0.1)


async def stored(url: str, uid: str) -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.run, s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value "
            "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
        runs = await conn.fetch("SELECT run, info FROM runs WHERE workload_uid = $1", uid)
    finally:
        await conn.close()
    points = [(r["run"], r["metric"], r["step"], r["ts"], "nan" if math.isnan(r["value"]) else r["value"])
              for r in rows]
    return sorted(points, key=repr), {r["run"]: json.loads(r["info"]) for r in runs}


def expected(*runs) -> list[tuple]:
    out = [(run_, m, s, ts, "nan" if math.isnan(v) else v) for r in runs for m, s, ts, v, run_ in run_points(r)]
    return sorted(out, key=repr)


async def test_catch_up_growth_restart_and_finish_through_the_collector(store, database_url, fake: FakeWandb):
    run = fake.add_run("ent", "proj", training_run("r1", 4000, display_name="llama-sft",
                                                   config={"experiment_name": "sft", "max_steps": 8000}))
    uid = str(uuid.uuid4())
    # the server stops answering from step 3000 on: the restart below comes mid-catch-up, however fast (and however
    # many pages the source asks for ahead)
    held = threading.Event()
    fake.inject(op="HistoryPage", from_step=3000, hold=held, status=503)
    c = collector(store, uid, fake)
    await c.start()
    try:
        await eventually(lambda: (c.snapshot().step or 0) >= 1000)
        await c.stop()  # an operator restart in the middle of the catch-up
    finally:
        held.set()
    assert any(r.variables["minStep"] >= 3000 for r in fake.requests if r.op == "HistoryPage")  # the held one: asked
    partial, _ = await stored(database_url, uid)
    assert 0 < len(partial) < len(run_points(run))
    grow(run, 500)
    c = collector(store, uid, fake)
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == run.last_step)
        points, runs = await stored(database_url, uid)
        assert points == expected(run)  # point for point: nothing lost, nothing twice, NaN and ±Infinity kept
        snap = c.snapshot()
        assert snap.total_steps == 8000 and snap.run_state == RunState.RUNNING
        assert snap.primary_metric == "train/loss" and snap.latest["train/loss"].step == run.rows[-1]["_step"]
        health = snap.sources[0]
        assert health.skipped.get("media") and health.skipped.get("non_numeric")
        assert runs["r1"]["display_name"] == "llama-sft" and runs["r1"]["config"]["max_steps"] == 8000
        # a second run starts matching; the first finishes
        other = fake.add_run("ent", "proj", training_run("r2", 30, config={"experiment_name": "sft"},
                                                         created_at=run.created_at + 10))
        run.state, other.state = "finished", "finished"
        await eventually(lambda: c.snapshot().run_state == RunState.FINISHED)
        await eventually(lambda: c.health["wb"].points == len(run_points(run)) + len(run_points(other)))
        points, runs = await stored(database_url, uid)
        assert points == expected(run, other) and runs["r1"]["state"] == "finished"
    finally:
        await c.stop()
