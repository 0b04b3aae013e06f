"""Qianfan end to end through the Collector and a real PostgreSQL: a Workload with only a qianfan source shows
phase, progress and ETA; every observation is stored once; a FAIL fails the Workload; wrong keys never show."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from trainscope.collector.collector import Collector, SourceState
from trainscope.collector.points import RunState
from trainscope.collector.sources.qianfan import METRIC_PROGRESS, METRIC_RUN_TIME, METRIC_TRAIN_TIME, QianfanSource
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.operator.gauges import Exported, WorkloadExporter
from trainscope.operator.status import Phase, build_status, phase_of

from fakes.qianfan_server import AK, JOB, LABEL, SK, START_TS, TASK, FakeQianfan, Secrets, job, serve
from waiting import eventually

REGISTRY = {QianfanSource.kind: QianfanSource}
SCHEMAS = {QianfanSource.kind: QianfanSource.schema}


@pytest.fixture
def fake() -> Iterator[FakeQianfan]:
    f = FakeQianfan(keys={AK: SK})
    with serve(f):
        yield f


def gauges(c: Collector) -> CollectorRegistry:
    """A Prometheus registry exporting this collector's snapshot, as the operator's /metrics does."""
    registry = CollectorRegistry()
    registry.register(WorkloadExporter(lambda: [Exported("ml", "ernie-sft", (), c.snapshot())]))
    return registry


WL = {"namespace": "ml", "workload": "ernie-sft"}


def collector(store: Store, uid: str, url: str, secrets: Secrets | None = None) -> Collector:
    spec = parse_spec({"sources": [{"name": "finetune", "qianfan": {
        "taskId": TASK, "jobId": JOB, "endpoint": url, "credentialsSecretRef": {"name": "qianfan"}}}],
        "pollInterval": "50ms"}, SCHEMAS)
    return Collector(uid, spec, store, namespace="ml", name="ernie-sft", registry=REGISTRY,
                     resolve_secret=secrets or Secrets(), backoff_base=0.02, backoff_cap=0.1)


async def stored(url: str, uid: str) -> dict[tuple[str, int], tuple[float, float]]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT s.metric, s.run, p.step, extract(epoch from p.ts)::float8 AS ts, p.value "
            "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    assert {r["run"] for r in rows} <= {LABEL}
    return {(r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


def expected(*answers: dict[str, Any]) -> dict[tuple[str, int], tuple[float, float]]:
    out = {}
    for a in answers:
        ts = START_TS + a["runTime"]
        out[(METRIC_PROGRESS, a["runTime"])] = (ts, float(a["progress"]))
        out[(METRIC_RUN_TIME, a["runTime"])] = (ts, float(a["runTime"]))
        out[(METRIC_TRAIN_TIME, a["runTime"])] = (ts, float(a["trainTime"]))
    return out


async def test_a_qianfan_workload_shows_progress_eta_and_succeeds(store: Store, database_url: str,
                                                                  fake: FakeQianfan):
    running = [job("RUNNING", 25, 300, 200), job("RUNNING", 50, 600, 500)]
    fake.set_job(TASK, JOB, running)  # the fake then keeps answering the last one
    c = collector(store, "wl-qf-1", fake.url)
    await c.start()
    try:
        await eventually(lambda: METRIC_PROGRESS in c.snapshot().latest
                         and c.snapshot().latest[METRIC_PROGRESS].step == 600)
        await eventually(lambda: len(fake.seen) >= 6)  # several identical answers after the second
        snap = c.snapshot()
        assert snap.run_state == RunState.RUNNING and phase_of(snap) == Phase.COLLECTING
        # run-time seconds are not training steps: no step, steps/s or totalSteps from this kind
        assert snap.step is None and snap.total_steps is None and snap.throughput is None
        assert snap.progress == pytest.approx(0.5)
        assert snap.eta_seconds == pytest.approx(600)  # half done after 600 s: 600 s to go (Qianfan's own pace)
        assert snap.latest[METRIC_PROGRESS].value == 50.0
        status = build_status(snap, now=snap.taken_at)
        assert (status["phase"], status["progress"], status["etaSeconds"], status["eta"]) == \
            ("Collecting", 50.0, 600, "10m")
        assert status["sources"][0]["runState"] == "running"
        prom = gauges(c)
        assert prom.get_sample_value("trainscope_workload_progress_ratio", WL) == pytest.approx(0.5)
        assert prom.get_sample_value("trainscope_workload_eta_seconds", WL) == pytest.approx(600)
        assert prom.get_sample_value("trainscope_workload_phase", {**WL, "phase": "Collecting"}) == 1.0
        assert c.health["finetune"].points == 6  # 2 observations x 3 metrics, however often it was polled
        assert await stored(database_url, "wl-qf-1") == expected(*running)

        finish = job("FINISH", 99, 1000, 900, finish="2023-10-20 18:35:49", finish_key="finishtime")
        fake.set_job(TASK, JOB, [finish])
        await eventually(lambda: c.snapshot().run_state == RunState.FINISHED)
        snap = c.snapshot()
        assert phase_of(snap) == Phase.SUCCEEDED and snap.progress == 1.0 and snap.eta_seconds == 0.0
        assert build_status(snap, now=snap.taken_at)["progress"] == 100.0
        assert gauges(c).get_sample_value("trainscope_workload_phase", {**WL, "phase": "Succeeded"}) == 1.0
        await eventually(lambda: len(fake.seen) >= 12)
        assert c.health["finetune"].points == 9
        assert await stored(database_url, "wl-qf-1") == expected(*running, finish)
        [run] = await store.runs("wl-qf-1")
        assert (run.source, run.run) == ("finetune", LABEL)
        assert run.info["state"] == "finished" and run.info["finishTime"] == "2023-10-20T10:35:49Z"
        assert run.info["displayName"] == "sdk_test_7" and run.info["vdlLink"].startswith("https://")
        assert {s.verdict for s in fake.seen} == {"ok"}
    finally:
        await c.stop()


async def test_restart_resumes_without_storing_again(store: Store, database_url: str, fake: FakeQianfan):
    answer = job("RUNNING", 40, 400, 300)
    fake.set_job(TASK, JOB, [answer])
    c = collector(store, "wl-qf-2", fake.url)
    await c.start()
    await eventually(lambda: c.health["finetune"].points == 3)
    await c.stop()
    seen = len(fake.seen)
    again = collector(store, "wl-qf-2", fake.url)
    await again.start()
    try:
        await eventually(lambda: len(fake.seen) >= seen + 3)
        await eventually(lambda: again.snapshot().run_state == RunState.RUNNING)
        assert again.health["finetune"].points == 3  # seeded from the store; nothing inserted again
        assert await stored(database_url, "wl-qf-2") == expected(answer)
    finally:
        await again.stop()


async def test_a_failed_job_fails_the_workload(store: Store, fake: FakeQianfan):
    fake.set_job(TASK, JOB, [job("RUNNING", 10, 100, 50), job("FAIL", 10, 130, 60)])
    c = collector(store, "wl-qf-3", fake.url)
    await c.start()
    try:
        await eventually(lambda: c.snapshot().run_state == RunState.FAILED)
        assert build_status(c.snapshot(), now=c.snapshot().taken_at)["phase"] == Phase.FAILED
        assert gauges(c).get_sample_value("trainscope_workload_phase", {**WL, "phase": "Failed"}) == 1.0
    finally:
        await c.stop()


async def test_wrong_keys_show_as_auth_failed_without_the_keys(store: Store, fake: FakeQianfan):
    fake.set_job(TASK, JOB, [job()])
    wrong = Secrets({("qianfan", "QIANFAN_ACCESS_KEY"): AK, ("qianfan", "QIANFAN_SECRET_KEY"): "x" + SK})
    c = collector(store, "wl-qf-4", fake.url, wrong)
    await c.start()
    try:
        await eventually(lambda: c.health["finetune"].consecutive_failures >= 1)
        h = c.health["finetune"]
        assert h.state == SourceState.FAILING and h.last_error_reason == "AuthFailed"
        assert AK not in (h.last_error or "") and SK not in (h.last_error or "")
        assert phase_of(c.snapshot()) == Phase.DEGRADED
    finally:
        await c.stop()  # the collector is waiting out the slow auth backoff; stop ends the wait
    assert len(fake.seen) == 1
