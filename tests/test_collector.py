"""The Collector against a real PostgreSQL: bounded catch-up, health and backoff, filters, stop/resume, outages."""

from __future__ import annotations

import math
import uuid

import asyncpg
import pytest

from trainscope.collector.collector import Collector, SourceState
from trainscope.collector.points import RunState
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store

from scripted import REGISTRY, RUNS, SCHEMAS, ScriptedRun
from waiting import eventually

T0 = 1_700_000_000.0


def make_run(steps: int, start: int = 1) -> ScriptedRun:
    run = ScriptedRun()
    for s in range(start, start + steps):
        run.log(s, T0 + s, loss=1.0 / s, lr=1e-3)
    return run


def collector(store: Store, uid: str, runs: dict[str, ScriptedRun], **spec_extra) -> Collector:
    name = uuid.uuid4().hex[:8]
    sources = []
    for i, (src, run) in enumerate(runs.items()):
        RUNS[f"{name}-{i}"] = run
        sources.append({"name": src, "scripted": {"run": f"{name}-{i}"}})
    spec = parse_spec({"sources": sources, "pollInterval": "50ms", **spec_extra}, SCHEMAS)
    return Collector(uid, spec, store, name="wl", registry=REGISTRY, max_batch_points=1000,
                     backoff_base=0.02, backoff_cap=0.1)


async def stored(url: str, uid: str) -> dict[tuple[str, str, int], tuple[float, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.source, s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value "
            "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    return {(r["source"], r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


def expected(source: str, run: ScriptedRun) -> dict[tuple[str, str, int], tuple[float, float]]:
    return {(source, p.metric, p.step): (p.ts, p.value) for p in run.points}


async def test_catch_up_is_bounded_and_stores_every_point(store, database_url):
    run = make_run(6000)  # 12,000 points with batches of 1,000
    c = collector(store, "wl-1", {"tb": run}, totalSteps=12000)
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 6000)
        assert run.polls >= 12
        assert await stored(database_url, "wl-1") == expected("tb", run)
        snap = c.snapshot()
        assert snap.primary_metric == "loss" and snap.latest["loss"].value == pytest.approx(1 / 6000)
        assert snap.progress == pytest.approx(0.5)
        assert snap.throughput == pytest.approx(1.0)  # one step per second of source time
        assert snap.eta_seconds == pytest.approx(6000)
        assert snap.sources[0].points == 12000 and snap.sources[0].state == SourceState.HEALTHY
    finally:
        await c.stop()


async def test_live_points_arrive_and_run_state_flows_into_the_snapshot(store, database_url):
    run = make_run(10)
    c = collector(store, "wl-live", {"tb": run})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 10)
        for s in range(11, 21):
            run.log(s, T0 + s, loss=math.nan if s == 20 else 0.5, lr=1e-3)
        run.state = RunState.FINISHED
        await eventually(lambda: c.snapshot().step == 20)
        await eventually(lambda: c.snapshot().run_state == RunState.FINISHED)
        assert math.isnan(c.snapshot().latest["loss"].value)
        db = await stored(database_url, "wl-live")
        assert db.keys() == expected("tb", run).keys()
        assert math.isnan(db[("tb", "loss", 20)][1])
    finally:
        await c.stop()


async def test_a_broken_source_backs_off_and_reports_while_the_other_collects(store, database_url):
    good, bad = make_run(50), make_run(50)
    bad.broken = "connection refused by http://tensorboard:6006"
    c = collector(store, "wl-2", {"good": good, "bad": bad})
    await c.start()
    try:
        await eventually(lambda: c.health["bad"].consecutive_failures >= 3)
        await eventually(lambda: c.snapshot().step == 50)
        h = c.health["bad"]
        assert h.state == SourceState.FAILING and h.last_error_reason == "Broken"
        assert "connection refused" in h.last_error and h.errors["Broken"] >= 3
        assert c.health["good"].state == SourceState.HEALTHY
        polls_when_broken = bad.polls
        assert polls_when_broken < 60  # backed off, not a hot loop
        bad.broken = None
        await eventually(lambda: c.health["bad"].state == SourceState.HEALTHY)
        await eventually(lambda: c.health["bad"].points == 100)
        assert await stored(database_url, "wl-2") == {**expected("good", good), **expected("bad", bad)}
    finally:
        await c.stop()


async def test_metric_filters_apply_before_storing(store, database_url):
    run = make_run(20)
    c = collector(store, "wl-3", {"tb": run}, metrics={"include": ["l*"], "exclude": ["lr"]})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 20)
        assert {k[1] for k in await stored(database_url, "wl-3")} == {"loss"}
        assert set(c.snapshot().latest) == {"loss"}
    finally:
        await c.stop()


async def test_stop_and_restart_resume_from_the_committed_cursor(store, database_url):
    run = make_run(3000)
    c = collector(store, "wl-4", {"tb": run})
    await c.start()
    await eventually(lambda: (c.snapshot().step or 0) >= 500)
    await c.stop()
    partial = await stored(database_url, "wl-4")
    assert 0 < len(partial) <= len(run.points)
    polls_before = run.polls
    for s in range(3001, 3101):
        run.log(s, T0 + s, loss=0.1, lr=1e-3)
    again = Collector("wl-4", c.spec, store, name="wl", registry=REGISTRY, max_batch_points=1000,
                      backoff_base=0.02, backoff_cap=0.1)
    await again.start()
    try:
        # Seeded from the store before any poll: a restarted operator reports the step it had.
        assert again.snapshot().step == max(k[2] for k in partial)
        await eventually(lambda: again.snapshot().step == 3100)
        assert await stored(database_url, "wl-4") == expected("tb", run)
        # Resumed: the second collector read only what the first had not committed.
        assert again.health["tb"].points == len(run.points)
        assert run.polls - polls_before <= math.ceil((len(run.points) - len(partial)) / 1000) + 3
    finally:
        await again.stop()


async def test_reconfigure_keeps_cursors(store, database_url):
    run = make_run(100)
    c = collector(store, "wl-5", {"tb": run})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 100)
        polls = run.polls
        spec = parse_spec({"sources": [{"name": "tb", "scripted": {"run": next(k for k, v in RUNS.items()
                                                                             if v is run)}}],
                           "pollInterval": "50ms", "primaryMetric": "lr"}, SCHEMAS)
        await c.reconfigure(spec)
        await eventually(lambda: run.polls > polls)
        assert c.snapshot().primary_metric == "lr"
        assert c.health["tb"].points == 200  # nothing re-inserted
        assert await stored(database_url, "wl-5") == expected("tb", run)
    finally:
        await c.stop()


async def test_database_outage_delays_writes_and_loses_nothing(restartable_pg):
    store = await Store.open(restartable_pg.url)
    run = make_run(100)
    c = collector(store, "wl-6", {"tb": run})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 100)
        restartable_pg.stop()
        for s in range(101, 301):
            run.log(s, T0 + s, loss=0.2, lr=1e-3)
        await eventually(lambda: c.health["tb"].state == SourceState.WAITING, timeout=30)
        assert "database unavailable" in c.health["tb"].last_error
        restartable_pg.start()
        await eventually(lambda: c.snapshot().step == 300, timeout=30)
        assert c.health["tb"].state == SourceState.HEALTHY
        assert await stored(restartable_pg.url, "wl-6") == expected("tb", run)
    finally:
        await c.stop()
        await store.close()


async def test_a_point_with_an_unusable_wall_time_is_retimed_and_its_source_moves_on(store, database_url):
    good, bad = make_run(20), make_run(20)
    bad.points[5] = bad.points[5]._replace(ts=math.nan)  # no timestamptz holds NaN: it used to block the source
    c = collector(store, "wl-7", {"good": good, "bad": bad})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 20 and c.health["bad"].points == 40)
        h = c.health["bad"]
        assert h.state == SourceState.HEALTHY and h.consecutive_failures == 0
        assert any("unusable wall time" in n and "nan" in n for n in h.notes), h.notes
        want = {**expected("good", good), **expected("bad", bad)}
        p = bad.points[5]  # the NaN point keeps its value; its time is the previous point's of the same batch
        want["bad", p.metric, p.step] = (bad.points[4].ts, p.value)
        got = await stored(database_url, "wl-7")
        assert got.keys() == want.keys()
        assert got["bad", p.metric, p.step] == want["bad", p.metric, p.step]
        assert {k: v for k, v in got.items() if k != ("bad", p.metric, p.step)} == {
            k: v for k, v in want.items() if k != ("bad", p.metric, p.step)}
    finally:
        await c.stop()


async def test_health_is_judged_on_the_injected_clock_and_transitions_are_stored(store):
    now = [T0 + 60]
    run = make_run(50)  # one step per second of source time, the last at T0 + 50
    spec = parse_spec({"sources": [{"name": "tb", "scripted": {"run": "health-run"}}], "pollInterval": "50ms"},
                      SCHEMAS)
    RUNS["health-run"] = run
    c = Collector("wl-8", spec, store, name="wl", registry=REGISTRY, backoff_base=0.02, backoff_cap=0.1,
                  health_interval=0.02, clock=lambda: now[0])
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 50)

        def condition(ctype: str) -> str | None:
            return next((h.status for h in c.snapshot().health if h.type == ctype), None)

        assert condition("Stalled") == "False"
        now[0] = T0 + 50 + 601  # ten minutes (the floor) without a new step
        await eventually(lambda: condition("Stalled") == "True")
        run.log(51, T0 + 700, loss=math.nan, lr=1e-3)
        await eventually(lambda: condition("NonFiniteMetric") == "True" and condition("Stalled") == "False")
        stored = await eventually(lambda: _events(store, "wl-8", 3))
        assert [(e.condition.type, e.condition.status) for e in stored] == [
            ("Stalled", "True"), ("Stalled", "False"), ("NonFiniteMetric", "True")]
        assert stored[2].condition.step == 51 and "loss is nan" in stored[2].condition.message
    finally:
        await c.stop()


async def _events(store: Store, uid: str, n: int):
    events = await store.health_events(uid)
    return events if len(events) >= n else None


async def test_a_source_whose_steps_are_not_training_steps_never_moves_the_step(store):
    train, status_api = make_run(30), ScriptedRun()
    for s in (3600, 7200):  # run-time seconds: far above any training step
        status_api.log(s, T0 + s, progress=s / 100)
    RUNS["steps-a"], RUNS["seconds-a"] = train, status_api
    spec = parse_spec({"sources": [{"name": "tb", "scripted": {"run": "steps-a"}},
                                   {"name": "job", "seconds": {"run": "seconds-a"}}], "pollInterval": "50ms"},
                      SCHEMAS)
    c = Collector("wl-9", spec, store, name="wl", registry=REGISTRY, backoff_base=0.02, backoff_cap=0.1)
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 30 and "progress" in c.snapshot().latest)
        assert c.snapshot().latest["progress"].step == 7200  # stored and shown...
        await c.stop()
        again = Collector("wl-9", spec, store, name="wl", registry=REGISTRY)
        await again._seed_from_store()
        assert again.snapshot().step == 30  # ...but never the Workload's step, even when seeded after a restart
    finally:
        await c.stop()


async def test_a_resumed_run_moves_step_and_loss_back_to_its_newest_step(store, database_url):
    """A run restarted from a checkpoint re-logs steps below its highest: step, Loss and rate follow the resumed
    branch (the later observation in the source's order), and the store keeps the re-logged values."""
    run = make_run(100)
    c = collector(store, "wl-resume", {"tb": run})
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 100)
        for s in range(50, 61):  # resumed from step 49's checkpoint, on a node whose clock is an hour behind
            run.log(s, T0 + s - 3600, loss=10.0 + s, lr=1e-3)
        await eventually(lambda: c.snapshot().step == 60)
        snap = c.snapshot()
    finally:
        await c.stop()
    assert snap.latest["loss"].step == 60 and snap.latest["loss"].value == 70.0 and snap.step_ts == T0 + 60 - 3600
    got = await stored(database_url, "wl-resume")
    assert got["tb", "loss", 55] == (T0 + 55 - 3600, 65.0) and got["tb", "loss", 61] == (T0 + 61, 1.0 / 61)
