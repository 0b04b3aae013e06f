"""SwanLab source against the real program: runs logged by the swanlab SDK, read from the logdir and a `swanlab watch`.

One logdir and one dashboard for the module: two short finished runs (one with NaN/Inf in a metric), a run of
2,100 steps (over the dashboard's 1,500-point cap, three rolled .log files), a crashed run and a SIGKILLed run.
Tests that add runs (a live run, a late experiment) select experiments by name or look only at their own runs.
"""

from __future__ import annotations

import json
import math
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.points import Point, RunState
from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.sources.swanlab import HTTP_CAP, SwanLabSource
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store

from swanfixtures import (
    LiveRun,
    api,
    file_points,
    key,
    keys,
    logged_lines,
    swan_env,
    swanlab_watch,
    value,
    values_at,
    wait_for,
    write_runs,
)
from waiting import eventually

LONG = 2100
CONFIG = {"lr": 3e-4, "optimizer": {"name": "adamw", "betas": [0.9, 0.95]}, "layers": 4}
SHORT_A = {"name": "short-a", "metrics": ["train/loss", "train/acc", "train/grad_norm"], "steps": 60,
           "config": CONFIG}
SHORT_B = {"name": "short-b", "metrics": ["eval/loss"], "steps": 30, "every": 5}
LONG_RUN = {"name": "long", "metrics": ["loss"], "steps": LONG}
CRASHED = {"name": "crashed", "metrics": ["loss"], "steps": 12, "end": "crash"}
BASE_NAMES = ["short-a", "short-b", "long", "crashed", "killed"]


@dataclass
class Swan:
    base: Path
    env: dict[str, str]
    logdir: Path
    url: str
    run_ids: dict[str, str]  # experiment name -> run id (the run label)

    def oracle(self, name: str) -> list[tuple]:
        """Every point SwanLab wrote for experiment `name`, from its files (tag folders from runs.swanlab)."""
        run_id = self.run_ids[name]
        with sqlite3.connect(f"file:{self.logdir / 'runs.swanlab'}?mode=ro", uri=True) as db:
            folders = dict(db.execute("SELECT t.name, t.folder FROM tag t JOIN experiment e ON e.id = t.experiment_id "
                                      "WHERE e.run_id = ?", (run_id,)).fetchall())
        return file_points(self.logdir, run_id, folders)

    def refresh(self) -> None:
        with sqlite3.connect(f"file:{self.logdir / 'runs.swanlab'}?mode=ro", uri=True) as db:
            self.run_ids = dict(db.execute("SELECT name, run_id FROM experiment").fetchall())


@pytest.fixture(scope="module")
def swan(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swan]:
    base = tmp_path_factory.mktemp("swan")
    env = swan_env(base)
    logdir = base / "logs"
    write_runs(logdir, env, SHORT_A, SHORT_B, LONG_RUN)
    write_runs(logdir, env, CRASHED)
    killed = LiveRun(logdir, env, "killed", ["loss"])
    killed.log(8)
    wait_for(lambda: logged_lines(logdir, killed.run_id) == 8, "the killed run's 8 points on disk")
    killed.kill()
    with swanlab_watch(logdir, env) as (url, _):
        swan = Swan(base, env, logdir, url, {})
        swan.refresh()
        assert sorted(swan.run_ids) == sorted(BASE_NAMES)
        yield swan


def source(swan: Swan, mode: str, max_points: int = 50_000, **config: Any) -> SwanLabSource:
    where = {"url": swan.url} if mode == "url" else {"logDir": str(swan.logdir)}
    return SwanLabSource({**where, **config}, SourceContext(max_batch_points=max_points))


async def drain(src: SwanLabSource, cursor: Any = None) -> tuple[list, Any, list]:
    """Poll until `more` is false; cursors go through JSON as the store keeps them."""
    points, batches = [], []
    for _ in range(1000):
        batch = await src.poll(cursor)
        assert len(batch.points) <= src.ctx.max_batch_points
        cursor = json.loads(json.dumps(batch.cursor))
        json.dumps(batch.runs, allow_nan=False)
        points += map(Point._make, batch.points)  # the named form, for the tests' reading
        batches.append(batch)
        if not batch.more:
            return points, cursor, batches
    raise AssertionError("source never finished")


def of(points: list, swan: Swan, *names: str) -> list[tuple]:
    labels = {swan.run_ids[n] for n in names}
    return [k for k in keys(points) if k[0] in labels]


def expected_steps(run: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((m, i * run.get("every", 1)) for m in run["metrics"] for i in range(run["steps"]))


# ---- logDir mode: complete, point for point


async def test_logdir_mode_equals_what_was_logged(swan: Swan):
    src = source(swan, "logDir", experiments={"names": BASE_NAMES})
    points, _, batches = await drain(src)
    assert len(set(map(key, points))) == len(points)
    for run in (SHORT_A, SHORT_B, LONG_RUN, CRASHED):
        got = of(points, swan, run["name"])
        assert got == swan.oracle(run["name"])  # steps, create_time and values as SwanLab wrote them
        assert [(m, s) for _, m, s, _, _ in got] == expected_steps(run)
        for _, metric, step, _, v in got:  # ... and the values are what the SDK was given
            want = value(run["name"], metric, step)
            assert v == ("nan" if math.isnan(want) else want)
    by = {(p.metric, p.step): p.value for p in points if p.run == swan.run_ids["short-a"]}
    assert math.isnan(by[("train/grad_norm", 3)]) and by[("train/grad_norm", 10)] == math.inf
    assert by[("train/grad_norm", 17)] == -math.inf
    assert len(of(points, swan, "long")) == LONG  # every point, across 1000.log, 2000.log, 3000.log
    assert len(of(points, swan, "killed")) == 8
    assert batches[0].info["runs"] == [swan.run_ids[n] for n in BASE_NAMES]


async def test_logdir_bounded_batches_and_resume_after_restart(swan: Swan):
    full, _, _ = await drain(source(swan, "logDir", experiments={"names": BASE_NAMES}))
    src = source(swan, "logDir", max_points=700, experiments={"names": BASE_NAMES})
    first = await src.poll(None)
    assert len(first.points) == 700 and first.more
    # a restarted collector: a new source instance from the committed cursor gets exactly the rest
    rest, cursor, batches = await drain(source(swan, "logDir", max_points=700, experiments={"names": BASE_NAMES}),
                                        json.loads(json.dumps(first.cursor)))
    assert all(b.more for b in batches[:-1]) and [len(b.points) for b in batches] == [700, 700, 230]
    assert keys(first.points + rest) == keys(full)
    again, _, _ = await drain(source(swan, "logDir", experiments={"names": BASE_NAMES}), cursor)
    assert again == []


# ---- url mode: the dashboard's API


async def test_url_mode_short_runs_equal_logdir(swan: Swan):
    names = ["short-a", "short-b", "crashed", "killed"]
    points, _, batches = await drain(source(swan, "url", experiments={"names": names},
                                            metrics={"exclude": ["*grad_norm"]}))
    files, _, _ = await drain(source(swan, "logDir", experiments={"names": names},
                                     metrics={"exclude": ["*grad_norm"]}))
    assert keys(points) == keys(files)  # step, create_time and value, exactly
    assert len(points) == 2 * 60 + 30 + 12 + 8
    assert batches[-1].notes == [] and batches[-1].skipped == {}


async def test_url_mode_reports_the_cap_on_long_runs(swan: Swan):
    points, _, batches = await drain(source(swan, "url", experiments={"names": ["long"]}))
    got = of(points, swan, "long")
    assert len(got) == HTTP_CAP
    oracle = swan.oracle("long")
    assert set(got) <= set(oracle) and got[0] == oracle[0] and got[-1] == oracle[-1]  # first and last kept
    (note,) = batches[-1].notes
    assert "sampled for 1 metric(s) (1,499-point cap; `sum` says 2,100" in note and "logDir" in note
    assert batches[-1].info["sampled_metrics"] == 1
    assert api(swan.url, f"/api/v1/experiment/{batches[-1].runs[swan.run_ids['long']]['experiment_id']}"
                         "/tag/loss")["sum"] == LONG


async def test_url_mode_skips_a_metric_with_nan_and_says_so(swan: Swan):
    src = source(swan, "url", experiments={"names": ["short-a"]})
    points, cursor, batches = await drain(src)
    assert {p.metric for p in points} == {"train/loss", "train/acc"}
    assert batches[0].skipped == {"non_finite_metric": 1}
    (note,) = batches[0].notes
    assert "NaN or infinity" in note and f"{swan.run_ids['short-a']}/train/grad_norm" in note
    second = await src.poll(cursor)  # a finished run is not fetched again; the note is not repeated either
    assert second.points == [] and second.skipped == {}


async def test_url_mode_bounded_batches_and_resume(swan: Swan):
    names = ["short-a", "short-b", "long"]
    full, _, _ = await drain(source(swan, "url", experiments={"names": names}))
    first = await source(swan, "url", max_points=400, experiments={"names": names}).poll(None)
    assert len(first.points) == 400 and first.more
    rest, cursor, batches = await drain(source(swan, "url", max_points=400, experiments={"names": names}),
                                        json.loads(json.dumps(first.cursor)))
    assert keys(first.points + rest) == keys(full) and all(b.more for b in batches[:-1])
    assert (await drain(source(swan, "url", experiments={"names": names}), cursor))[0] == []


# ---- status, metadata, selection


@pytest.mark.parametrize("mode", ["logDir", "url"])
async def test_status_mapping_and_run_metadata(swan: Swan, mode: str):
    batch = (await drain(source(swan, mode, experiments={"names": BASE_NAMES})))[2][0]
    runs = {info["name"]: info for info in batch.runs.values()}
    assert set(runs) == set(BASE_NAMES) and set(batch.runs) == {swan.run_ids[n] for n in BASE_NAMES}
    assert {n: (r["status"], r["state"]) for n, r in runs.items()} == {
        "short-a": (1, "finished"), "short-b": (1, "finished"), "long": (1, "finished"),
        "crashed": (-1, "failed"), "killed": (0, "running")}
    assert runs["short-a"]["config"] == CONFIG  # unwrapped from {"desc", "sort", "value"}
    assert list(runs["short-a"]["config"]) == ["lr", "optimizer", "layers"]  # the order it was logged in
    assert runs["short-a"]["system"]["swanlab"]["version"] and runs["short-a"]["project"] == "trainscope-test"
    assert runs["short-a"]["finish_time"] and runs["killed"]["finish_time"] is None
    assert "RuntimeError: boom in crashed" in runs["crashed"]["error"]
    assert isinstance(runs["short-a"]["experiment_id"], int) and runs["long"]["create_time"]
    assert batch.state == RunState.RUNNING  # the newest chosen experiment ("killed") decides
    for name, state in [("crashed", RunState.FAILED), ("long", RunState.FINISHED), ("killed", RunState.RUNNING)]:
        assert (await source(swan, mode, experiments={"names": [name]}).poll(None)).state == state


@pytest.mark.parametrize("mode", ["logDir", "url"])
async def test_a_killed_run_that_stays_running_gets_a_note(swan: Swan, mode: str):
    quiet = await source(swan, mode, experiments={"names": ["killed", "long"]}).poll(None)
    assert not any("reports running" in n for n in quiet.notes)  # default staleAfter: 10m
    batch = await source(swan, mode, experiments={"names": ["killed", "long"]}, staleAfter="1ms").poll(None)
    (note,) = [n for n in batch.notes if "reports running" in n]
    assert swan.run_ids["killed"] in note and "(killed)" in note and "stays 'running'" in note


@pytest.mark.parametrize("mode", ["logDir", "url"])
async def test_experiment_selection(swan: Swan, mode: str):
    ids = {info["name"]: info["experiment_id"]
           for info in (await source(swan, mode, experiments={"names": BASE_NAMES}).poll(None)).runs.values()}
    for experiments, want in [
        ({"names": ["short-b"]}, {"short-b"}),
        ({"ids": [ids["long"], ids["crashed"]]}, {"long", "crashed"}),
        ({"runIds": [swan.run_ids["killed"]]}, {"killed"}),
        ({"names": ["short-b"], "ids": [ids["killed"]]}, {"short-b", "killed"}),
    ]:
        batch = await source(swan, mode, experiments=experiments).poll(None)
        assert {p[4] for p in batch.points} == {swan.run_ids[n] for n in want}, experiments
        assert not [n for n in batch.notes if "not found" in n]
    partly = await source(swan, mode, experiments={"names": ["short-b", "not-yet"]}).poll(None)
    where = swan.logdir if mode == "logDir" else f"the SwanLab dashboard at {swan.url}"
    assert partly.points
    assert [n for n in partly.notes if "not found" in n] == [
        f"SwanLab experiment with name 'not-yet' not found (yet) in {where}"]
    with pytest.raises(SourceError) as err:
        await source(swan, mode, experiments={"names": ["nope"], "ids": [9999]}).poll(None)
    assert err.value.reason == "ExperimentNotFound"
    assert "name 'nope', id 9999" in str(err.value) and "'short-a' (id" in str(err.value)


async def test_missing_experiment_and_metric_on_the_real_dashboard(swan: Swan):
    src = source(swan, "url")
    try:
        with pytest.raises(SourceError) as err:
            await src._get("/api/v1/experiment/9999/status")
        assert err.value.reason == "ExperimentNotFound"
        with pytest.raises(SourceError) as err:
            await src._get("/api/v1/experiment/1/tag/no/such/metric")
        assert err.value.reason == "MetricNotFound" and "'no/such/metric'" in str(err.value)
        with pytest.raises(SourceError) as err:
            await src._get("/api/v1/nothing-here")
        assert err.value.reason == "HttpError" and "swanlab watch" in str(err.value)
    finally:
        await src.aclose()


# ---- a run still logging, later experiments, a re-logged step


async def test_live_run_is_collected_incrementally_in_both_modes(swan: Swan):
    name = f"live-{uuid.uuid4().hex[:6]}"
    modes = {m: source(swan, m) for m in ("logDir", "url")}  # all experiments: the new one must be picked up
    cursors: dict[str, Any] = {}
    for mode, src in modes.items():
        _, cursors[mode], batches = await drain(src)
        assert name not in {i["name"] for i in batches[0].runs.values()}
    live = LiveRun(swan.logdir, swan.env, name, ["train/loss", "lr"])
    try:
        seen: dict[str, list] = {m: [] for m in modes}
        for chunk in (20, 15):
            live.log(chunk)
            wait_for(lambda: logged_lines(swan.logdir, live.run_id) == 2 * live.steps, f"{live.steps} steps on disk")
            for mode, src in modes.items():
                points, cursors[mode], batches = await drain(src, cursors[mode])
                mine = [p for p in points if p.run == live.run_id]
                assert len(mine) == len(points)  # nothing else is new
                assert sorted({p.step for p in mine}) == list(range(live.steps - chunk, live.steps)), mode
                assert batches[-1].state == RunState.RUNNING
                seen[mode] += mine
        live.relog(5)  # SwanLab rewrites 1000.log in place (temp file + rename)
        wait_for(lambda: [v > 500 for v in values_at(swan.logdir, live.run_id, 5)] == [True, True],
                 "the re-logged step on disk")
        for mode, src in modes.items():
            points, cursors[mode], _ = await drain(src, cursors[mode])
            step5 = {p.metric: p for p in points if p.step == 5}
            assert {m: p.value for m, p in step5.items()} == {m: value(name, m, 5) + 1000 for m in ("train/loss", "lr")}
            old = {p.metric: p.ts for p in seen[mode] if p.step == 5}
            assert all(p.ts > old[m] for m, p in step5.items()), mode  # a newer create_time: the upsert keeps it
        live.finish()
        swan.refresh()
        for mode, src in modes.items():
            points, cursors[mode], batches = await drain(src, cursors[mode])
            assert batches[-1].state == RunState.FINISHED
            assert batches[-1].runs[live.run_id]["state"] == "finished"
        files, _, _ = await drain(source(swan, "logDir", experiments={"names": [name]}))
        assert keys(files) == swan.oracle(name) and len(files) == 2 * 35
    finally:
        if live.proc.poll() is None:
            live.kill()


async def test_dashboard_going_away_is_unreachable(swan: Swan):
    with swanlab_watch(swan.logdir, swan.env) as (url, proc):
        src = SwanLabSource({"url": url, "experiments": {"names": ["short-b"]}}, SourceContext())
        try:
            assert len((await src.poll(None)).points) == 30
            proc.terminate()
            proc.wait(10)
            with pytest.raises(SourceError) as err:
                await src.poll(None)
        finally:
            await src.aclose()
    assert err.value.reason == "Unreachable" and url in str(err.value)


# ---- end to end: a Collector with the real store


async def test_collector_stores_a_swanlab_run(swan: Swan, store: Store, database_url: str):
    import asyncpg

    schemas = {SwanLabSource.kind: SwanLabSource.schema}
    spec = parse_spec({"pollInterval": "50ms", "sources": [
        {"name": "swan", "swanlab": {"logDir": str(swan.logdir), "experiments": {"names": ["short-a", "crashed"]}}},
    ]}, schemas)
    c = Collector("wl-swan", spec, store, name="wl", registry={SwanLabSource.kind: SwanLabSource},
                  max_batch_points=100, backoff_base=0.02, backoff_cap=0.1)
    await c.start()
    try:
        await eventually(lambda: c.health["swan"].points == 3 * 60 + 12)
        snap = c.snapshot()
        assert snap.step == 59 and snap.run_state == RunState.FAILED
    finally:
        await c.stop()
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT s.run, s.metric, p.step, extract(epoch from p.ts)::float8 AS ts, p.value "
                                "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = 'wl-swan'")
    finally:
        await conn.close()
    stored = sorted(key((r["metric"], r["step"], r["ts"], r["value"], r["run"])) for r in rows)
    want = sorted(swan.oracle("short-a") + swan.oracle("crashed"))
    assert [k[:3] + k[4:] for k in stored] == [k[:3] + k[4:] for k in want]
    assert all(abs(a[3] - b[3]) < 1e-6 for a, b in zip(stored, want, strict=True))  # timestamptz keeps microseconds
    runs = {r.run: r.info for r in await store.runs("wl-swan")}
    assert runs[swan.run_ids["short-a"]]["config"] == CONFIG
    assert runs[swan.run_ids["crashed"]]["state"] == "failed"
