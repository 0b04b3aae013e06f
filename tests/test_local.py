"""Local mode: Workload YAML files, the demo's event files, the live table, a clean stop; and the package layout."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import asyncpg
import pytest
import yaml
from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trainscope.demo import simulate
from trainscope.operator.local import ManifestError, load_workloads, local_uid, run_local
from trainscope.operator.runtime import RuntimeConfig

from waiting import eventually

ROOT = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, spec: dict, name: str = "wl") -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                                    "metadata": {"name": name, "namespace": "ml"}, "spec": spec}))
    return path


async def _eq(value, expected) -> bool:
    return await value == expected


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
    stop = asyncio.Event()
    console = Console(record=True, width=160, force_terminal=False)
    config = RuntimeConfig(database_url=database_url, metrics_port=None, backoff_base=0.05, backoff_cap=0.5)
    task = asyncio.create_task(run_local(workloads, config, console=console, refresh=0.1, stop=stop))
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
