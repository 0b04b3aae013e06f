"""Finding the database: TRAINSCOPE_DATABASE_URL, else the embedded PostgreSQL, else a clear error."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest

from trainscope.collector.store import resolve_database_url
from trainscope.collector.store.embedded import DatabaseNotConfigured, embedded_data_dir, start_embedded


def test_environment_url_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINSCOPE_DATABASE_URL", "postgresql://u:p@db:5432/ts")
    assert resolve_database_url() == "postgresql://u:p@db:5432/ts"
    assert resolve_database_url(embedded_ok=False) == "postgresql://u:p@db:5432/ts"


def test_no_url_and_no_embedded_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINSCOPE_DATABASE_URL", raising=False)
    with pytest.raises(DatabaseNotConfigured, match="TRAINSCOPE_DATABASE_URL"):
        resolve_database_url(embedded_ok=False)


def test_embedded_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRAINSCOPE_DATA_DIR", str(tmp_path / "env"))
    assert embedded_data_dir() == tmp_path / "env" / "postgres"
    assert embedded_data_dir(tmp_path / "arg") == tmp_path / "arg" / "postgres"
    monkeypatch.delenv("TRAINSCOPE_DATA_DIR")
    assert embedded_data_dir().name == "postgres" and "trainscope" in str(embedded_data_dir())


async def test_embedded_server_starts_and_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINSCOPE_DATABASE_URL", raising=False)
    base = Path(tempfile.mkdtemp(prefix="ts-emb-", dir="/tmp"))
    try:
        url = resolve_database_url(data_dir=base)
        assert (base / "postgres" / "PG_VERSION").exists()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await conn.close()
        # Asking again reuses the running server.
        assert resolve_database_url(data_dir=base) == url
    finally:
        start_embedded(base / "postgres").cleanup()
        shutil.rmtree(base, ignore_errors=True)
