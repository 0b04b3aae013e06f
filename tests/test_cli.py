"""The installed `trainscope` console script, run as a user would: version, schema migrations, manifest errors."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from trainscope.collector.store.migrate import available_migrations

SCRIPT = shutil.which("trainscope", path=str(Path(sys.executable).parent)) or shutil.which("trainscope")


def trainscope(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert SCRIPT, "the trainscope console script is not installed (pip install -e .)"
    base = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSCOPE_")}
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=120, env={**base, **(env or {})})


def test_version_is_the_installed_distributions() -> None:
    proc = trainscope("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"trainscope {version('trainscope')}"


async def test_db_upgrade_applies_each_migration_once(database_url: str) -> None:
    first = await asyncio.to_thread(trainscope, "db", "upgrade", "--database-url", database_url)
    assert first.returncode == 0, first.stderr
    shipped = [name for name, _ in available_migrations()]
    assert shipped[0] == "0001_initial.sql"
    assert first.stdout.split() == shipped
    # The URL may also come from the environment; nothing is left to apply the second time.
    again = await asyncio.to_thread(trainscope, "db", "upgrade", env={"TRAINSCOPE_DATABASE_URL": database_url})
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "database is up to date"
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r["tablename"] for r in rows}
        ledger = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
    finally:
        await conn.close()
    assert {"workloads", "series", "points", "cursors", "schema_migrations"} <= tables
    assert sorted(ledger) == shipped


def _manifest(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


GOOD_SPEC = {"sources": [{"tensorboard": {"logDir": "runs"}}]}


@pytest.mark.parametrize(("doc", "named"), [
    ({"spec": {**GOOD_SPEC, "pollInterval": "soon"}}, "spec.pollInterval"),
    ({"spec": {**GOOD_SPEC, "pollIntervall": "30s"}}, "spec.pollIntervall"),
    ({"spec": {"sources": [{"name": "nokind"}]}}, "spec.sources[0]"),
    ({"spec": {"pollInterval": "30s"}}, "spec.sources"),
    ({"spec": {"sources": [{"tensorboard": {}}]}}, "spec.sources[0].tensorboard"),
    ({"metadata": {}, "spec": GOOD_SPEC}, "metadata.name"),
])
def test_local_rejects_a_bad_manifest_naming_the_field(tmp_path: Path, doc: dict[str, Any], named: str) -> None:
    full = {"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload", "metadata": {"name": "wl"}, **doc}
    path = _manifest(tmp_path / "bad.yaml", full)
    # A database URL that is never used: the manifest is refused before anything connects.
    proc = trainscope("local", "-f", str(path), "--database-url", "postgresql://nobody@127.0.0.1:1/none")
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stderr.startswith("trainscope local: "), proc.stderr
    assert named in proc.stderr and str(path) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_database_problems_are_one_clear_line_not_a_traceback() -> None:
    down = trainscope("db", "upgrade", "--database-url", "postgresql://trainscope:s3cret@127.0.0.1:9/x")
    assert down.returncode == 1  # not there now: trying later may do
    assert down.stderr.startswith("trainscope db: database unavailable (Unreachable):")
    assert "Traceback" not in down.stderr
    assert "s3cret" not in down.stderr  # the URL's password never reaches the output
    unset = trainscope("operator", "--metrics-port", "0")
    assert unset.returncode == 2  # a person must act
    assert "set TRAINSCOPE_DATABASE_URL" in unset.stderr and "Traceback" not in unset.stderr
