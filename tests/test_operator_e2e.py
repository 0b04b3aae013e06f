"""The operator end to end: kopf + the project's handlers against a KMock-emulated Kubernetes API, a real
PostgreSQL and real TensorBoard event files written by tensorboardX while the operator runs.

Every wait is deadline-based and fails with the last Workload seen; nothing is asserted on timing.
What KMock cannot show (schema validation by the API server, RBAC, admission, watch bookmarks,
resourceVersion semantics) is out of reach here; see tests/kube.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from kube import (
    BackgroundWriter,
    Cluster,
    Operator,
    TBRun,
    compare_points,
    condition,
    db_points,
    db_scalar,
    distinct_tag_steps,
    eventually,
    loss_at,
    lr_at,
    operator_config,
    read_scalars,
    same_value,
    series,
    show,
    six_digits,
    source_status,
    workload_labels,
)

WAIT = 20.0  # seconds; generous for 2 loaded cores, never reached when things work


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Any]:
    """TBRun factory; every writer is closed at the end."""
    made: list[TBRun] = []

    def make(name: str, **kw: Any) -> TBRun:
        run = TBRun(tmp_path / name, **kw)
        made.append(run)
        return run

    yield make
    for run in made:
        run.close()


def tb_spec(*logdirs: Path | str, names: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    sources: list[dict[str, Any]] = []
    for i, logdir in enumerate(logdirs):
        item: dict[str, Any] = {"tensorboard": {"logDir": str(logdir)}}
        if names:
            item["name"] = names[i]
        sources.append(item)
    return {"sources": sources, "pollInterval": "200ms", **extra}


async def wait_step(cluster: Cluster, name: str, step: int, within: float = WAIT) -> dict[str, Any]:
    """Until the Workload's status.step == step."""
    async def check() -> dict[str, Any]:
        obj = await cluster.workload(name)
        assert obj.get("status", {}).get("step") == step, f"want status.step == {step}:\n{show(obj)}"
        return obj
    return await eventually(check, within=within, what=f"{name} to reach step {step}")


def assert_stopped(*collectors: Any) -> None:
    for c in collectors:
        assert c is not None and not c.running, f"collector {c.name} still running"
        assert {h.state for h in c.health.values()} == {"Stopped"}, {n: h.state for n, h in c.health.items()}


async def wait_db(database_url: str, uid: str, source: str, logdir: Path, within: float = WAIT,
                  **kw: Any) -> dict[tuple[str, str, str, int], Any]:
    """Until the source's stored points equal the event files under `logdir` (read now)."""
    async def check() -> dict[tuple[str, str, str, int], Any]:
        stored = await db_points(database_url, uid)
        compare_points(stored, read_scalars(logdir), source, **kw)
        return stored
    return await eventually(check, within=within, what=f"the database to equal the files of {logdir}")


# ---- 1. a run is collected into status, /metrics and the database ----------------------------------------------


async def test_run_reaches_status_metrics_and_database(cluster: Cluster, operator: Operator, runs: Any,
                                                       database_url: str) -> None:
    run = runs("wl1")
    run.write(range(1, 501))
    spec = tb_spec(run.logdir, totalSteps=1000, primaryMetric="train/loss",
                   prometheus={"metrics": ["train/*"]})
    uid = (await cluster.create("wl1", spec))["metadata"]["uid"]

    obj = await wait_step(cluster, "wl1", 500)

    async def settled() -> dict[str, Any]:
        obj = await cluster.workload("wl1")
        st = obj["status"]
        assert st.get("primaryMetric") == {"name": "train/loss", "value": six_digits(loss_at(500)), "step": 500}, \
            show(obj)
        assert st.get("phase") == "Collecting", show(obj)
        assert condition(obj, "Ready")["status"] == "True", show(obj)
        assert condition(obj, "SourcesHealthy")["status"] == "True", show(obj)
        assert source_status(obj, "tensorboard").get("points") == 1000, show(obj)
        return obj
    obj = await eventually(settled, within=WAIT, what="wl1's status to settle")
    st = obj["status"]
    assert st["totalSteps"] == 1000
    assert st["progress"] == pytest.approx(500 / 1000 * 100)
    assert st["latest"]["train/lr"] == six_digits(run.value("train/lr", 500))
    src = source_status(obj, "tensorboard")
    assert src["kind"] == "tensorboard" and src["state"] == "Healthy" and "lastSuccessTime" in src
    assert isinstance(src.get("lagSeconds"), int) and "lastError" not in src
    assert obj["metadata"]["finalizers"] == ["trainscope.io/finalizer"]
    assert st["observedGeneration"] == obj["metadata"]["generation"] == 1
    assert "lastUpdateTime" in st

    # Prometheus, over HTTP: the exported metrics exactly as written (float32 widened to float64).
    expected = read_scalars(run.logdir)
    scraped = await operator.scrape()
    labels = {"namespace": "default", "workload": "wl1", "source": "tensorboard"}
    assert series(scraped, "trainscope_metric_value", metric="train/loss", **labels) == \
        [expected[(".", "train/loss", 500)].value]
    assert series(scraped, "trainscope_metric_value", metric="train/lr", **labels) == \
        [expected[(".", "train/lr", 500)].value]
    assert series(scraped, "trainscope_metric_step", metric="train/loss", **labels) == [500.0]
    assert series(scraped, "trainscope_workload_step", workload="wl1") == [500.0]
    assert series(scraped, "trainscope_workload_total_steps", workload="wl1") == [1000.0]
    assert series(scraped, "trainscope_workload_progress_ratio", workload="wl1") == [0.5]
    assert series(scraped, "trainscope_source_up", workload="wl1", source="tensorboard") == [1.0]
    assert series(scraped, "trainscope_source_points_ingested_total", workload="wl1") == [1000.0]
    assert series(scraped, "trainscope_workload_phase", workload="wl1", phase="Collecting") == [1.0]

    # The oracle agrees with TensorBoard's own reader.
    acc = EventAccumulator(str(run.logdir), size_guidance={"scalars": 0})
    acc.Reload()
    assert {(".", tag, e.step): (e.wall_time, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)} \
        .keys() == expected.keys()
    assert all(abs(e.wall_time - expected[(".", "train/loss", e.step)].ts) < 1e-6
               and same_value(e.value, expected[(".", "train/loss", e.step)].value)
               for e in acc.Scalars("train/loss"))

    # The database: every (metric, step, ts, value) of the file, NaN as NaN, nothing else.
    stored = await db_points(database_url, uid)
    compare_points(stored, expected, "tensorboard")
    assert len(stored) == distinct_tag_steps(expected) == 1000
    assert sum(1 for s in stored.values() if s.value != s.value) == 500 // 97  # the NaN losses


# ---- 2. live collection --------------------------------------------------------------------------------------


async def test_status_follows_a_live_run(cluster: Cluster, operator: Operator, runs: Any,
                                         database_url: str) -> None:
    run = runs("live", pace=2.0)  # event wall times 0.5 s apart: 2 steps/s
    run.write(range(1, 51))
    uid = (await cluster.create("live", tb_spec(run.logdir, totalSteps=400)))["metadata"]["uid"]
    await wait_step(cluster, "live", 50)
    for last in (120, 250):  # training goes on while the operator watches
        run.write_to(last)
        await wait_step(cluster, "live", last)

    # Throughput comes from the events' own times, ETA from it and totalSteps: (400 - 250) / 2 = 75 s.
    async def paced() -> None:
        obj = await cluster.workload("live")
        st = obj["status"]
        assert st.get("throughput") == 2.0, show(obj)
        assert st.get("etaSeconds") in (74, 75) and st.get("eta") in ("1m14s", "1m15s"), show(obj)
        assert st.get("progress") == 62.5, show(obj)
        scraped = await operator.scrape()
        assert series(scraped, "trainscope_workload_throughput_steps_per_second", workload="live") == \
            [pytest.approx(2.0)]
        assert series(scraped, "trainscope_workload_eta_seconds", workload="live") == [pytest.approx(75.0)]
    await eventually(paced, within=WAIT, what="throughput and ETA of 'live'")

    run.write_to(400)
    await wait_step(cluster, "live", 400)
    # A loss-like name is detected as primary metric when the spec names none.
    async def final() -> dict[str, Any]:
        obj = await cluster.workload("live")
        assert obj["status"].get("primaryMetric") == {"name": "train/loss", "value": six_digits(loss_at(400)),
                                                      "step": 400}, show(obj)
        assert obj["status"].get("progress") == 100, show(obj)
        return obj
    obj = await eventually(final, within=WAIT, what="the final status of 'live'")
    assert obj["status"]["phase"] in ("Collecting", "Succeeded"), show(obj)
    await wait_db(database_url, uid, "tensorboard", run.logdir)


# ---- 3. spec change -----------------------------------------------------------------------------------------


async def test_spec_change_restarts_collection_from_the_cursors(cluster: Cluster, operator: Operator, runs: Any,
                                                                database_url: str) -> None:
    run = runs("respec", tags=("train/loss", "train/lr", "eval/acc"))
    run.write(range(1, 201))
    uid = (await cluster.create("respec", tb_spec(run.logdir, primaryMetric="train/loss")))["metadata"]["uid"]
    await wait_step(cluster, "respec", 200)
    await wait_db(database_url, uid, "tensorboard", run.logdir)
    scraped = await operator.scrape()
    # default export: the primary metric only
    assert {lbl["metric"] for lbl, _ in scraped["trainscope_metric_value"] if lbl["workload"] == "respec"} == \
        {"train/loss"}

    patched = await cluster.patch_spec("respec", {"primaryMetric": "train/lr", "metrics": {"exclude": ["eval/*"]},
                                                  "prometheus": {"metrics": ["train/*"]}})
    # KMock does not bump metadata.generation; tests/kube.py's Emulator does on spec patches, as Kubernetes does.
    assert patched["metadata"]["generation"] == 2

    async def respecced() -> dict[str, Any]:
        obj = await cluster.workload("respec")
        st = obj["status"]
        assert st.get("observedGeneration") == 2, show(obj)
        assert st.get("primaryMetric", {}).get("name") == "train/lr", show(obj)
        return obj
    await eventually(respecced, within=WAIT, what="the new spec to show in status")

    run.write(range(201, 401))
    obj = await wait_step(cluster, "respec", 400)

    async def exported() -> None:
        obj = await cluster.workload("respec")
        assert obj["status"].get("primaryMetric") == {"name": "train/lr", "value": six_digits(lr_at(400)),
                                                      "step": 400}, show(obj)
        scraped = await operator.scrape()
        metrics = {lbl["metric"]: v for lbl, v in scraped["trainscope_metric_value"] if lbl["workload"] == "respec"}
        want = read_scalars(run.logdir)
        assert metrics == {"train/loss": want[(".", "train/loss", 400)].value,
                           "train/lr": want[(".", "train/lr", 400)].value}, metrics
    await eventually(exported, within=WAIT, what="status and /metrics to follow the new spec")

    # Resumed from the stored cursor: train/* complete and never duplicated (the primary key would refuse a
    # duplicate, so count too); eval/acc stored up to the change only, as the new spec excludes it.
    stored = await db_points(database_url, uid)
    files = read_scalars(run.logdir)
    compare_points(stored, files, "tensorboard", metrics=lambda m: m.startswith("train/"))
    acc_steps = sorted(step for (_s, _r, metric, step) in stored if metric == "eval/acc")
    assert acc_steps == list(range(1, 201))
    assert len(stored) == 400 * 2 + 200
    assert source_status(obj, "tensorboard")["points"] == len(stored), show(obj)


# ---- 4. operator stop and restart mid-run ---------------------------------------------------------------------


async def test_operator_restart_mid_run_loses_and_duplicates_nothing(cluster: Cluster, runs: Any,
                                                                     database_url: str) -> None:
    run = runs("restart")
    run.write(range(1, 301))
    first = await Operator(operator_config(database_url)).start()
    try:
        uid = (await cluster.create("restart", tb_spec(run.logdir)))["metadata"]["uid"]
        await wait_step(cluster, "restart", 300)
        writer = BackgroundWriter(run).start()  # training goes on from here to the end
        await writer.wait_written(400)
        collector = first.runtime.entries[uid].collector
    finally:
        await first.stop()
    assert_stopped(collector)  # the stop was graceful: the collector finished, not abandoned
    stopped_at = run.last_step
    await writer.wait_written(stopped_at + 50)  # written while no operator runs
    second = await Operator(operator_config(database_url)).start()
    try:
        async def resumed() -> None:
            obj = await cluster.workload("restart")
            assert obj["status"].get("step", 0) > stopped_at + 50, f"want step > {stopped_at + 50}:\n{show(obj)}"
        await eventually(resumed, within=WAIT, what="the restarted operator to collect new steps")
        last = await writer.stop()
        await wait_step(cluster, "restart", last)
        stored = await wait_db(database_url, uid, "tensorboard", run.logdir)
        files = read_scalars(run.logdir)
        assert len(stored) == distinct_tag_steps(files) == 2 * last
        assert await db_scalar(database_url, "SELECT count(*) FROM series WHERE workload_uid = $1", uid) == 2
    finally:
        await second.stop()


# ---- 5. invalid spec ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bad_spec", "field"), [
    ({"pollInterval": "soon"}, "spec.pollInterval"),
    ({"sources": [{"name": "nokind"}]}, "spec.sources[0]"),
])
async def test_invalid_spec_is_reported_and_others_keep_running(cluster: Cluster, operator: Operator, runs: Any,
                                                                database_url: str, bad_spec: dict[str, Any],
                                                                field: str) -> None:
    good_run, bad_run = runs("good"), runs("bad")
    good_run.write(range(1, 101))
    bad_run.write(range(1, 31))
    await cluster.create("bad", {**tb_spec(bad_run.logdir), **bad_spec})
    good_uid = (await cluster.create("good", tb_spec(good_run.logdir)))["metadata"]["uid"]

    async def reported() -> dict[str, Any]:
        obj = await cluster.workload("bad")
        ready = condition(obj, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec"), show(obj)
        assert field in ready["message"], show(obj)
        assert obj["status"].get("phase") == "Pending", show(obj)
        return obj
    await eventually(reported, within=WAIT, what="the bad spec to be reported in status")

    async def event_posted() -> dict[str, Any]:
        events = cluster.events(involved="bad", reason="InvalidSpec")
        assert events, f"no InvalidSpec event yet; events: {[e.get('reason') for e in cluster.events()]}"
        return events[0]
    event = await eventually(event_posted, within=WAIT, what="the InvalidSpec event")
    assert event["type"] == "Warning" and field in event["message"], event
    assert event["involvedObject"]["kind"] == "Workload" and event["involvedObject"]["namespace"] == "default"

    await wait_step(cluster, "good", 100)  # the operator keeps serving the valid Workload
    await wait_db(database_url, good_uid, "tensorboard", good_run.logdir)
    assert not cluster.events(involved="good", reason="InvalidSpec")

    # Fixing the spec starts collection.
    fixed = tb_spec(bad_run.logdir)
    await cluster.patch_spec("bad", {"pollInterval": fixed["pollInterval"], "sources": fixed["sources"]})
    await wait_step(cluster, "bad", 30)

    async def ready() -> None:
        obj = await cluster.workload("bad")
        cond = condition(obj, "Ready")
        assert (cond["status"], cond["reason"]) == ("True", "Collecting"), show(obj)
        assert obj["status"].get("phase") == "Collecting", show(obj)
    await eventually(ready, within=WAIT, what="the fixed Workload to be Ready")


# ---- 6. a broken source ---------------------------------------------------------------------------------------


async def test_broken_source_degrades_only_its_workload(cluster: Cluster, operator: Operator, runs: Any,
                                                        database_url: str, tmp_path: Path) -> None:
    good, other = runs("good"), runs("other")
    good.write(range(1, 101))
    other.write(range(1, 61))
    missing = tmp_path / "no" / "such" / "logdir"
    mixed = (await cluster.create("mixed", tb_spec(good.logdir, missing, names=("good", "missing"))))
    other_uid = (await cluster.create("healthy", tb_spec(other.logdir)))["metadata"]["uid"]

    async def degraded() -> dict[str, Any]:
        obj = await cluster.workload("mixed")
        bad = source_status(obj, "missing")
        assert bad["state"] == "Failing" and str(missing) in bad.get("lastError", ""), show(obj)
        assert bad.get("reason") and bad.get("points") == 0, show(obj)
        assert obj["status"].get("phase") == "Degraded", show(obj)
        healthy = condition(obj, "SourcesHealthy")
        assert healthy["status"] == "False" and "missing" in healthy["message"], show(obj)
        assert condition(obj, "Ready")["status"] == "True", show(obj)  # one of two sources collects
        assert source_status(obj, "good")["state"] == "Healthy", show(obj)
        return obj
    await eventually(degraded, within=WAIT, what="the broken source to show")

    # The good source of the same Workload keeps collecting, new steps included.
    good.write(range(101, 151))
    await wait_step(cluster, "mixed", 150)
    await wait_db(database_url, mixed["metadata"]["uid"], "good", good.logdir)
    scraped = await operator.scrape()
    assert series(scraped, "trainscope_source_up", workload="mixed", source="missing") == [0.0]
    assert series(scraped, "trainscope_source_up", workload="mixed", source="good") == [1.0]
    assert series(scraped, "trainscope_workload_phase", workload="mixed", phase="Degraded") == [1.0]

    # The other Workload is not affected at all.
    obj = await wait_step(cluster, "healthy", 60)
    assert condition(obj, "SourcesHealthy")["status"] == "True", show(obj)
    assert obj["status"]["phase"] == "Collecting", show(obj)
    await wait_db(database_url, other_uid, "tensorboard", other.logdir)


# ---- 7. delete ---------------------------------------------------------------------------------------------------


async def test_delete_keeps_or_drops_data(cluster: Cluster, operator: Operator, runs: Any, database_url: str) -> None:
    keep, drop = runs("keep"), runs("drop")
    keep.write(range(1, 81))
    drop.write(range(1, 81))
    keep_uid = (await cluster.create("keep", tb_spec(keep.logdir)))["metadata"]["uid"]
    drop_uid = (await cluster.create("drop", tb_spec(drop.logdir, retainData=False)))["metadata"]["uid"]
    for name in ("keep", "drop"):
        await wait_step(cluster, name, 80)
    await wait_db(database_url, keep_uid, "tensorboard", keep.logdir)
    await wait_db(database_url, drop_uid, "tensorboard", drop.logdir)
    assert {"keep", "drop"} <= workload_labels(await operator.scrape())
    collectors = [operator.runtime.entries[uid].collector for uid in (keep_uid, drop_uid)]

    for name in ("keep", "drop"):
        await cluster.delete(name)

    async def gone() -> None:
        for name in ("keep", "drop"):
            obj = await cluster.get(name)
            assert obj is None, f"{name} still exists (finalizer not removed?):\n{show(obj)}"
    await eventually(gone, within=WAIT, what="both Workloads to be gone")

    # No series of the deleted Workloads remain (gauges come from live collectors only), and their collectors
    # were stopped before the finalizer went (so nothing is written after retainData=false deleted the data).
    assert not {"keep", "drop"} & workload_labels(await operator.scrape())
    assert not operator.runtime.entries
    assert_stopped(*collectors)

    compare_points(await db_points(database_url, keep_uid), read_scalars(keep.logdir), "tensorboard")
    assert await db_points(database_url, drop_uid) == {}
    for table in ("series", "cursors"):
        assert await db_scalar(database_url, f"SELECT count(*) FROM {table} WHERE workload_uid = $1", drop_uid) == 0
    for uid in (keep_uid, drop_uid):
        assert await db_scalar(database_url, "SELECT deleted_at IS NOT NULL FROM workloads WHERE uid = $1", uid)


# ---- 8. PostgreSQL down ------------------------------------------------------------------------------------------


async def test_database_down_at_start_then_up(cluster: Cluster, runs: Any, restartable_pg: Any) -> None:
    run = runs("dbstart")
    run.write(range(1, 121))
    restartable_pg.stop()
    op = await Operator(operator_config(restartable_pg.url)).start()
    try:
        uid = (await cluster.create("dbstart", tb_spec(run.logdir)))["metadata"]["uid"]

        async def waiting() -> None:
            obj = await cluster.workload("dbstart")
            ready = condition(obj, "Ready")
            assert (ready["status"], ready["reason"]) == ("False", "WaitingForStore"), show(obj)
            assert "database" in ready["message"], show(obj)
            assert obj["status"].get("phase") == "Pending", show(obj)
        await eventually(waiting, within=WAIT, what="status to say it waits for the database")

        await _start_pg(restartable_pg)
        await wait_step(cluster, "dbstart", 120)
        await wait_db(restartable_pg.url, uid, "tensorboard", run.logdir)

        async def ready() -> None:
            obj = await cluster.workload("dbstart")
            assert condition(obj, "Ready")["status"] == "True", show(obj)
        await eventually(ready, within=WAIT, what="Ready once the database is up")
    finally:
        await op.stop()


async def test_database_down_mid_run_loses_nothing(cluster: Cluster, runs: Any, restartable_pg: Any) -> None:
    run = runs("dbdown")
    run.write(range(1, 101))
    op = await Operator(operator_config(restartable_pg.url)).start()
    try:
        uid = (await cluster.create("dbdown", tb_spec(run.logdir)))["metadata"]["uid"]
        await wait_step(cluster, "dbdown", 100)
        await _stop_pg(restartable_pg)
        run.write(range(101, 301))  # training goes on while the database is away

        async def waiting() -> None:
            obj = await cluster.workload("dbdown")
            src = source_status(obj, "tensorboard")
            assert src["state"] == "WaitingForStore", show(obj)
            assert condition(obj, "SourcesHealthy")["status"] == "False", show(obj)
            assert obj["status"].get("phase") == "Degraded", show(obj)
        await eventually(waiting, within=WAIT, what="the source to wait for the database")
        obj = await cluster.workload("dbdown")
        assert obj["status"]["step"] == 100, show(obj)  # nothing reported that was not stored

        run.write(range(301, 351))
        await _start_pg(restartable_pg)
        await wait_step(cluster, "dbdown", 350)
        stored = await wait_db(restartable_pg.url, uid, "tensorboard", run.logdir)
        assert len(stored) == distinct_tag_steps(read_scalars(run.logdir)) == 700

        async def healthy() -> None:
            obj = await cluster.workload("dbdown")
            assert source_status(obj, "tensorboard")["state"] == "Healthy", show(obj)
            assert condition(obj, "SourcesHealthy")["status"] == "True", show(obj)
        await eventually(healthy, within=WAIT, what="the source to be healthy again")
    finally:
        await op.stop()


async def _stop_pg(pg: Any) -> None:
    await asyncio.to_thread(pg.stop)


async def _start_pg(pg: Any) -> None:
    await asyncio.to_thread(pg.start)


# ---- 9. training health -----------------------------------------------------------------------------------------


async def test_a_stalled_run_flips_the_condition_the_gauge_and_posts_events(cluster: Cluster, operator: Operator,
                                                                            runs: Any, tmp_path: Path) -> None:
    old = runs("stall/old", pace=2.0)  # wall times an hour ago: the run's newest step is old
    old.write(range(1, 51))
    await cluster.create("stall", tb_spec(tmp_path / "stall", health={"stall": {"after": "1m"}}))
    await wait_step(cluster, "stall", 50)

    def stalled_gauge(scraped: Any) -> list[float]:
        return series(scraped, "trainscope_workload_condition", workload="stall", condition="Stalled")

    async def stalled() -> dict[str, Any]:
        obj = await cluster.workload("stall")
        cond = condition(obj, "Stalled")
        assert cond.get("status") == "True" and "no new step since step 50" in cond.get("message", ""), show(obj)
        assert stalled_gauge(await operator.scrape()) == [1.0]
        assert cluster.events("stall", reason="Stalled"), "no Warning event for the stall"
        return obj
    await eventually(stalled, within=WAIT, what="the Stalled condition of 'stall'")

    fresh = runs("stall/fresh")  # training goes on: a new step stamped now
    fresh.write([51])

    async def recovered() -> None:
        obj = await cluster.workload("stall")
        assert condition(obj, "Stalled").get("status") == "False", show(obj)
        assert stalled_gauge(await operator.scrape()) == [0.0]
        assert cluster.events("stall", reason="StalledCleared"), "no event for the cleared stall"
    await eventually(recovered, within=WAIT, what="the Stalled condition of 'stall' to clear")


# ---- 10. other source kinds under the operator -----------------------------------------------------------------


async def test_a_swanlab_run_reaches_status_under_the_operator(cluster: Cluster, operator: Operator,
                                                              tmp_path: Path) -> None:
    from swanfixtures import swan_env, write_runs
    from swanfixtures import value as swan_value

    logdir = tmp_path / "swanlog"
    write_runs(logdir, swan_env(tmp_path / "swan"), {"name": "sft", "metrics": ["train/loss", "train/lr"],
                                                     "steps": 120})
    await cluster.create("swan", {"sources": [{"swanlab": {"logDir": str(logdir)}}], "pollInterval": "200ms",
                                  "totalSteps": 119})

    async def collected() -> dict[str, Any]:
        obj = await cluster.workload("swan")
        st = obj.get("status", {})
        assert st.get("step") == 119 and st.get("phase") == "Succeeded", show(obj)  # steps 0..119, run finished
        assert st.get("primaryMetric") == {"name": "train/loss", "step": 119,
                                           "value": six_digits(swan_value("sft", "train/loss", 119))}, show(obj)
        assert st.get("progress") == 100 and st.get("runState") == "finished", show(obj)
        return obj
    await eventually(collected, within=WAIT, what="the SwanLab Workload's status")


async def test_a_wandb_run_with_its_key_from_a_secret_reaches_status(cluster: Cluster, operator: Operator) -> None:
    import base64

    from fakes.wandb_server import FakeWandb, grow, serve, training_run
    from kube import NAMESPACE

    key = "w" * 40
    response = await cluster.emu.post(f"/api/v1/namespaces/{NAMESPACE}/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wandb-key", "namespace": NAMESPACE},
        "data": {"apiKey": base64.b64encode(key.encode()).decode()}})
    assert response.status in (200, 201)
    fake = FakeWandb(api_keys=(key,))
    with serve(fake):
        run = fake.add_run("ent", "proj", training_run("r1", 300, display_name="llama-sft"))
        await cluster.create("wb", {"pollInterval": "200ms", "totalSteps": 600, "sources": [{"wandb": {
            "baseUrl": fake.url, "entity": "ent", "project": "proj", "runId": "r1",
            "apiKeySecretRef": {"name": "wandb-key", "key": "apiKey"}}}]})

        async def at(step: int, phase: str) -> dict[str, Any]:
            obj = await cluster.workload("wb")
            st = obj.get("status", {})
            loss = next(r["train/loss"] for r in reversed(run.rows) if "train/loss" in r)
            assert st.get("step") == step and st.get("phase") == phase, show(obj)
            assert st.get("primaryMetric", {}).get("value") == six_digits(loss), show(obj)
            return obj
        await eventually(lambda: at(run.last_step, "Collecting"), within=WAIT, what="the W&B run's status")
        grow(run, 100)
        run.state = "finished"
        obj = await eventually(lambda: at(run.last_step, "Succeeded"), within=WAIT, what="the finished W&B run")
    # The key came from the Secret through the operator, and went nowhere else.
    assert key not in repr(obj) and not any(key in repr(e) for e in cluster.events())
