"""Local mode: Workload YAML files, the demo's event files, the live table, a clean stop; and the package layout."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest
import yaml
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX import SummaryWriter

from trainscope.demo import simulate
from trainscope.operator.local import (
    COLUMNS,
    ManifestError,
    cells,
    freshness,
    load_workloads,
    local_uid,
    run_local,
    status_lines,
)
from trainscope.operator.runtime import RuntimeConfig

from waiting import eventually

ROOT = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, spec: dict, name: str = "wl") -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                                    "metadata": {"name": name, "namespace": "ml"}, "spec": spec}))
    return path


async def _eq(value, expected) -> bool:
    return await value == expected


def _start_local(workloads: list, database_url: str, *, width: int,
                 terminal: bool) -> tuple[asyncio.Task, asyncio.Event, Console]:
    """`trainscope local` on `workloads`, refreshing its view (recorded, `width` columns) every 0.1 s until `stop`."""
    stop = asyncio.Event()
    console = Console(record=True, width=width, force_terminal=terminal)
    config = RuntimeConfig(database_url=database_url, metrics_port=None, backoff_base=0.05, backoff_cap=0.5)
    return asyncio.create_task(run_local(workloads, config, console=console, refresh=0.1, stop=stop)), stop, console


def test_demo_writer_makes_files_tensorboard_reads_identically(tmp_path):
    run_dir = simulate(tmp_path, total_steps=300, steps_per_second=1e6)
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["eval/loss", "train/learning_rate", "train/loss"]
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == list(range(1, 301))
    assert len(acc.Scalars("eval/loss")) == 1  # every 250 steps


def test_manifests_are_validated_with_the_field_named(tmp_path):
    good = write_manifest(tmp_path / "good.yaml", {"sources": [{"tensorboard": {"logDir": "runs"}}]})
    [wl] = load_workloads([good])
    assert (wl.namespace, wl.name, wl.base_dir) == ("ml", "wl", tmp_path)
    assert wl.uid == local_uid("ml", "wl")  # stable, so a second run resumes its cursors
    bad = write_manifest(tmp_path / "bad.yaml", {"sources": [{"tensorboard": {"logDir": "x"}}], "totalSteps": 0})
    with pytest.raises(ManifestError, match=r"bad.yaml: Workload ml/wl: spec.totalSteps"):
        load_workloads([bad])
    (tmp_path / "other.yaml").write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n")
    with pytest.raises(ManifestError, match="expected kind Workload"):
        load_workloads([tmp_path / "other.yaml"])
    with pytest.raises(ManifestError, match="defined twice"):
        load_workloads([good, good])


def test_cli_rejects_a_bad_manifest_with_exit_2(tmp_path):
    bad = write_manifest(tmp_path / "bad.yaml", {"sources": [{}]})
    proc = subprocess.run([sys.executable, "-m", "trainscope.cli", "local", "-f", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "spec.sources[0]" in proc.stderr


async def test_local_mode_collects_the_demo_run_and_stops_cleanly(tmp_path, database_url):
    manifest = write_manifest(tmp_path / "demo.yaml", {
        "totalSteps": 400, "pollInterval": "100ms", "primaryMetric": "train/loss",
        "sources": [{"tensorboard": {"logDir": "demo-run"}}]})
    stop_writer = threading.Event()
    writer = threading.Thread(target=simulate, args=(tmp_path / "demo-run",),
                              kwargs={"total_steps": 400, "steps_per_second": 400, "stop": stop_writer})
    writer.start()
    workloads = load_workloads([manifest])
    task, stop, console = _start_local(workloads, database_url, width=160, terminal=False)
    try:
        async def stored_steps() -> int:
            conn = await asyncpg.connect(database_url)
            try:
                return await conn.fetchval("SELECT count(*) FROM points p JOIN series s ON s.id = p.series_id "
                                           "WHERE s.metric = 'train/loss'")
            except asyncpg.UndefinedTableError:  # local mode has not migrated yet
                return 0
            finally:
                await conn.close()

        await eventually(lambda: _eq(stored_steps(), 400), timeout=30)
    finally:
        stop.set()
        stop_writer.set()
        writer.join()
    snaps = await asyncio.wait_for(task, 30)
    snap = snaps[workloads[0].uid]
    assert snap.step == 400 and snap.progress == 1.0
    assert snap.primary_metric == "train/loss"
    text = console.export_text()
    assert "ml/wl" in text and "100.0%" in text and "train/loss" in text


def test_operator_is_not_importable_as_a_top_level_package():
    import operator

    import trainscope.operator

    assert Path(operator.__file__).parent != ROOT / "operator"  # the standard library's module
    assert Path(trainscope.operator.__file__).parent == ROOT / "operator"
    proc = subprocess.run([sys.executable, "-m", "trainscope.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("trainscope ")


async def test_the_table_tells_a_step_that_stopped_moving_from_a_running_one(tmp_path, database_url):
    """Three real collector runs side by side: a live simulated run, a run whose newest step is 5 minutes old (a
    rerun that finds the old run, a paused job) and one 30 minutes old (past the Stalled threshold). The table
    shows each step's age; only the live one reads as running, with its pace and ETA."""
    now = time.time()
    for name, newest_ago in (("paused", 300.0), ("stalled", 1800.0)):
        with SummaryWriter(str(tmp_path / name / "run-1")) as w:  # tensorboardX, the writer users run
            for step in range(1, 51):  # one step a second, ending `newest_ago` seconds before now
                w.add_scalar("train/loss", 2.0 / step, step, walltime=now - newest_ago - (50 - step))
    spec = {"totalSteps": 100, "pollInterval": "200ms", "primaryMetric": "train/loss"}
    manifests = [write_manifest(tmp_path / f"{name}.yaml", {**spec, "sources": [{"tensorboard": {"logDir": name}}]},
                                name=name) for name in ("live", "paused", "stalled")]
    manifests[0] = write_manifest(tmp_path / "live.yaml", {
        **spec, "totalSteps": 100_000, "sources": [{"tensorboard": {"logDir": "live"}}]}, name="live")
    stop_writer = threading.Event()
    writer = threading.Thread(target=simulate, args=(tmp_path / "live",),
                              kwargs={"total_steps": 100_000, "steps_per_second": 20, "stop": stop_writer})
    writer.start()
    workloads = load_workloads(manifests)
    assert [wl.poll_interval for wl in workloads] == [0.2, 0.2, 0.2]
    task, stop, console = _start_local(workloads, database_url, width=230, terminal=True)
    try:
        async def counts() -> tuple[int, ...]:
            conn = await asyncpg.connect(database_url)
            try:
                rows = dict(await conn.fetch(
                    "SELECT w.name, count(*) FROM points p JOIN series s ON s.id = p.series_id "
                    "JOIN workloads w ON w.uid = s.workload_uid WHERE s.metric = 'train/loss' GROUP BY w.name"))
            except asyncpg.UndefinedTableError:  # local mode has not migrated yet
                return (0, 0, 0)
            finally:
                await conn.close()
            return tuple(min(rows.get(n, 0), 50) for n in ("live", "paused", "stalled"))

        await eventually(lambda: _eq(counts(), (50, 50, 50)), timeout=60)
        await asyncio.sleep(0.5)  # a few more refreshes, so the live run's pace is measured
    finally:
        stop.set()
        stop_writer.set()
        writer.join()
    snaps = await asyncio.wait_for(task, 30)
    by_name = {wl.name: (wl, snaps[wl.uid]) for wl in workloads}
    live, paused, stalled = (dict(zip(COLUMNS, cells(*by_name[n]), strict=True)) for n in ("live", "paused", "stalled"))

    assert live["Phase"] == "Collecting" and live["Last step"].endswith("s ago")
    assert live["Steps/s"] != "0" and live["ETA"] != "-"
    assert freshness(*by_name["live"]) == "fresh"

    assert paused["Phase"] == "Collecting, no new step"
    assert paused["Step"] == "50/100" and re.fullmatch(r"no new step for 5m(\d\ds)?", paused["Last step"])
    assert paused["Steps/s"] == "0 (was 1)" and paused["ETA"] == "-"  # not 50 s to go at 1 step/s
    assert freshness(*by_name["paused"]) == "stale"

    assert stalled["Phase"] == "Collecting, stalled" and re.fullmatch(r"no new step for 3[01]m", stalled["Last step"])
    assert freshness(*by_name["stalled"]) == "stalled"

    # the same words in the table a user sees and in the plain lines of a redirected run
    text = console.export_text()
    assert "Last step" in text and "no new step for 3" in text and "Collecting, stalled" in text
    lines = status_lines([by_name[n] for n in ("live", "paused", "stalled")], None)
    assert "ml/paused phase=Collecting, no new step step=50/100 last_step=no new step for 5m" in lines[1]


async def test_the_table_says_why_a_recorded_real_run_failed(tmp_path, database_url):
    """Two recorded real HF Trainer runs (tests/data/logruns: transformers 5, CPU): one that crashed with a traceback
    at step 25 and one that finished. The crashed one reads Failed and names its exception in the table and in the
    plain lines, as the RunEnded condition does in a cluster; the finished one reads Succeeded, without it."""
    runs = ROOT / "tests" / "data" / "logruns"
    manifests = [write_manifest(tmp_path / f"{name}.yaml", {
        "totalSteps": 60, "pollInterval": "200ms", "sources": [{"name": "log", "logs": {"path": str(path)}}]},
        name=name) for name, path in (("crash", runs / "hf5_crash_pipe" / "console.log"),
                                      ("done", runs / "hf5_pipe" / "console.log"))]
    workloads = load_workloads(manifests)
    task, stop, console = _start_local(workloads, database_url, width=230, terminal=True)
    try:
        async def both_ended() -> bool:
            text = console.export_text(clear=False)
            return "Failed" in text and "Succeeded" in text
        await eventually(both_ended, timeout=60)
    finally:
        stop.set()
    snaps = await asyncio.wait_for(task, 30)
    by_name = {wl.name: (wl, snaps[wl.uid]) for wl in workloads}
    crash, done = (dict(zip(COLUMNS, cells(*by_name[n]), strict=True)) for n in ("crash", "done"))
    error = "ValueError: synthetic failure at step 25: loss went bad"
    assert crash["Phase"] == "Failed" and crash["Last step"].endswith("run ended")
    assert crash["Sources"].startswith("log: Healthy") and f"run failed: console.log: {error}" in crash["Sources"]
    assert done["Phase"] == "Succeeded" and done["Step"] == "60/60" and "run failed" not in done["Sources"]
    assert error in console.export_text()
    lines = status_lines([by_name[n] for n in ("crash", "done")], None)
    assert "ml/crash phase=Failed" in lines[0] and f"run failed: console.log: {error}" in lines[0]
