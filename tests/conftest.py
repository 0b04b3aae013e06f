"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database per test, a Store on it.

Set TRAINSCOPE_TEST_DATABASE_URL (a URL whose user may CREATE DATABASE) to test against your own server;
otherwise an embedded PostgreSQL (pgserver) is started in a temporary directory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from hypothesis import settings as _hypothesis_settings

from trainscope.collector.store import Store
from trainscope.collector.store.embedded import start_embedded

# kopf fixes a timer's interval when trainscope.operator.handlers is imported; whichever test module imports it
# first, the operator tests need a fast status timer. Set before any test module is collected.
os.environ.setdefault("TRAINSCOPE_STATUS_INTERVAL", "0.3")

# CI replays the same hypothesis examples every run (a red CI is then a regression, reproducible); local runs keep
# exploring new ones and save what fails in .hypothesis/.
_hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    _hypothesis_settings.load_profile("ci")

TEST_DATABASE_URL_ENV = "TRAINSCOPE_TEST_DATABASE_URL"


def run_sync(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to completion from sync code, in a thread so it never meets pytest-asyncio's loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at database `dbname` (query string, e.g. a unix socket ?host=, kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def _short_tmpdir(prefix: str) -> Path:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp_path can be longer than that.
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp" if os.path.isdir("/tmp") else None))


async def _tune_for_tests(url: str) -> None:
    # A throwaway cluster: durability buys nothing here and fsync would dominate the suite's run time.
    conn = await asyncpg.connect(url)
    try:
        for setting in ("fsync = off", "synchronous_commit = off", "full_page_writes = off"):
            await conn.execute(f"ALTER SYSTEM SET {setting}")
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The session's embedded pgserver instance, or None when TRAINSCOPE_TEST_DATABASE_URL names a server."""
    if os.environ.get(TEST_DATABASE_URL_ENV):
        yield None
        return
    base = _short_tmpdir("ts-pg-")
    server = start_embedded(base / "pgdata", cleanup_mode="delete")
    run_sync(_tune_for_tests(server.get_uri()))
    try:
        yield server
    finally:
        server.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_server: Any) -> str:
    """A URL of the session's server (its maintenance database); use `database_url` for a database of your own."""
    return os.environ.get(TEST_DATABASE_URL_ENV) or pg_server.get_uri()


async def _create_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(url: str, name: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def database_url(pg_url: str) -> Iterator[str]:
    """A fresh, empty database for this test only (dropped afterwards); no migrations applied."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    run_sync(_create_database(pg_url, name))
    try:
        yield with_database(pg_url, name)
    finally:
        run_sync(_drop_database(pg_url, name))


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated Store on this test's own database."""
    s = await Store.open(database_url, min_size=1, max_size=4)
    try:
        yield s
    finally:
        # a connection still in use now belongs to a task the test left running: say so, and do not wait the
        # command timeout (a minute) for it
        if not await s.close(timeout=10):
            warnings.warn("the store's pool had a connection in use at the end of the test", stacklevel=1)


class RestartablePg:
    """A PostgreSQL of the test's own that can be stopped and started again (outage tests)."""

    def __init__(self, pgdata: Path):
        self._server = start_embedded(pgdata, cleanup_mode="delete")
        self.url: str = self._server.get_uri()

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated, the socket disappears, new connections are refused."""
        from pgserver import _commands

        _commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        """Start again on the same data directory and socket, so `url` stays valid."""
        self._server.ensure_postgres_running()
        assert self._server.get_uri() == self.url

    def cleanup(self) -> None:
        self._server.cleanup()


@pytest.fixture
def restartable_pg() -> Iterator[RestartablePg]:
    """A separate PostgreSQL server (own data directory) with `.url`, `.stop()` and `.start()`."""
    base = _short_tmpdir("ts-pgr-")
    pg = RestartablePg(base / "pgdata")
    try:
        yield pg
    finally:
        pg.cleanup()
        shutil.rmtree(base, ignore_errors=True)


# ---- the emulated cluster and the operator (tests/kube.py), for every operator-level test ----------------------------


@pytest.fixture
async def cluster() -> AsyncIterator[Any]:
    """A KMock-emulated API server for one test (kube.Cluster)."""
    from kube import Cluster

    async with Cluster() as c:
        yield c


@pytest.fixture
async def operator(cluster: Any, database_url: str) -> AsyncIterator[Any]:
    """The project's kopf operator in its own thread, against `cluster` and this test's database (kube.Operator)."""
    from kube import Operator, operator_config

    op = await Operator(operator_config(database_url)).start()
    try:
        yield op
    finally:
        await op.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (tests/browser.py), for the dashboard's browser tests."""
    from browser import Browser

    b = Browser()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(autouse=True)
def source_contract(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Every poll of every registered source kind, in every test, is checked against the cursor contract the
    collector's poll ahead relies on (tests/cursorcontract.py); a change in place fails the test."""
    from cursorcontract import install

    contract = install(monkeypatch)
    yield contract
    assert not contract.broken, "\n".join(contract.broken)
