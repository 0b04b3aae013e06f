"""`make demo` twice: the second run goes on with the same simulated run from its highest step, so the store and the
API hold one continuous run (each step once), and a finished run is left as it is. The real CLI in a subprocess
(`trainscope local --demo`, stopped with SIGINT as Ctrl-C does), over the test's real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import yaml

from trainscope.api.app import ApiSettings
from trainscope.demo import read_steps, resume_point

from apifixtures import ThreadedServer, run_sync

TOTAL = 80


def _manifest(folder: Path) -> Path:
    path = folder / "demo.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
        "metadata": {"name": "demo-llm-sft", "namespace": "default"},
        "spec": {"totalSteps": TOTAL, "pollInterval": "200ms", "primaryMetric": "train/loss",
                 "sources": [{"name": "tensorboard", "tensorboard": {"logDir": "demo-run"}}]}}))
    return path


async def _stored(url: str) -> list[int]:
    conn = await asyncpg.connect(url)
    try:
        return [r[0] for r in await conn.fetch(
            "SELECT p.step FROM points p JOIN series s ON s.id = p.series_id WHERE s.metric = 'train/loss' "
            "ORDER BY p.step")]
    except asyncpg.UndefinedTableError:  # not migrated yet
        return []
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _demo(manifest: Path, url: str, until: int, timeout: float = 60) -> str:
    """Run `trainscope local --demo` until its API answers and `until` train/loss points are stored, then Ctrl-C
    it (as a user does; its API up means its signal handlers are in place); its output."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "trainscope.cli", "local", "-f", str(manifest), "--demo",
                             "--api-port", str(port), "--refresh", "0.2"],
                            env={**os.environ, "TRAINSCOPE_DATABASE_URL": url, "COLUMNS": "200"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + timeout
        while not _up(port) or len(run_sync(_stored(url))) < until:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, f"fewer than {until} points stored in {timeout}s"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    return out


def test_a_second_demo_resumes_the_same_run_and_the_api_has_each_step_once(tmp_path: Path,
                                                                           database_url: str) -> None:
    manifest = _manifest(tmp_path)
    first = _demo(manifest, database_url, until=20)
    assert "a new simulated run run-" in first
    run_dir, stopped_at = resume_point(tmp_path / "demo-run")
    assert 20 <= stopped_at < TOTAL

    second = _demo(manifest, database_url, until=TOTAL)
    assert f"resuming the simulated run {run_dir.name} at step {stopped_at + 1}/{TOTAL}" in second
    assert f"{TOTAL}/{TOTAL}" in second and "100.0%" in second  # the table's last frame
    # one run folder, two event files: the second picks up where the first stopped
    assert [p.name for p in (tmp_path / "demo-run").iterdir()] == [run_dir.name]
    files = sorted(run_dir.glob("events.out.tfevents.*"))
    assert len(files) == 2
    steps = [s for f in files for s in read_steps(f) if s > 0]
    assert steps == list(range(1, TOTAL + 1))

    # the API: one series of train/loss, every step exactly once
    with ThreadedServer(ApiSettings(database_url=database_url)) as srv:
        body = httpx.get(f"{srv.url}/api/v1/namespaces/default/workloads/demo-llm-sft/metrics/data",
                         params={"metrics": "train/loss", "include": "run,source"}, timeout=30).json()
        listed = httpx.get(f"{srv.url}/api/v1/workloads", timeout=30).json()["workloads"]
    assert [p["iteration"] for p in body["data"]] == list(range(1, TOTAL + 1))
    assert {(p["data_source"], p["source"], p["run"]) for p in body["data"]} == {
        ("tensorflow", "tensorboard", run_dir.name)}
    [item] = listed
    assert item["step"] == TOTAL and item["progress"] == 1.0

    # a third demo finds the run finished and writes nothing
    third = _demo(manifest, database_url, until=TOTAL)
    assert f"finished at step {TOTAL}/{TOTAL}; nothing new is written" in third
    assert sorted(run_dir.glob("events.out.tfevents.*")) == files
    assert run_sync(_stored(database_url)) == list(range(1, TOTAL + 1))
