"""A database that refuses us or hangs, on a real PostgreSQL: classified, shown (StoreReady, trainscope_store_up,
one log line), retried until fixed, exit code 2 for one-shot commands; nothing collected is lost meanwhile.

The server is one of the test's own (`restartable_pg`) with password authentication turned on for one role, so a
wrong password is refused exactly as a production server refuses it; "hung" is every PostgreSQL process of it
SIGSTOPped (the postmaster alone, for new connections).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import kopf
import pytest
from conftest import with_database
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tensorboardX import SummaryWriter

from trainscope.collector.points import Point
from trainscope.collector.store import Store, StoreUnavailable, WriteResult
from trainscope.operator.gauges import WorkloadExporter
from trainscope.operator.handlers import store_probe
from trainscope.operator.runtime import Runtime, RuntimeConfig

from waiting import eventually

pytestmark = pytest.mark.timeout(180)
T0 = 1_700_000_000.0
PASSWORD = "right-horse-battery-staple"


def _as(url: str, user: str, password: str | None = None, db: str | None = None) -> str:
    parts = urlsplit(with_database(url, db) if db else url)
    host = parts.netloc.split("@", 1)[-1]
    auth = f"{user}:{password}" if password is not None else user
    return urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


async def _sql(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


@pytest.fixture
async def pg(restartable_pg: Any) -> AsyncIterator[Any]:
    """The test's own server: role `pw` must log in with a password (scram), role `ro` may log in but owns
    nothing; `app` is a database for them."""
    pgdata = Path(restartable_pg._server.pgdata)
    hba = pgdata / "pg_hba.conf"
    hba.write_text("local all pw scram-sha-256\nhost all pw 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    await _sql(restartable_pg.url, "CREATE ROLE pw LOGIN PASSWORD 'something-else'", "CREATE ROLE ro LOGIN",
               "CREATE DATABASE app", "SELECT pg_reload_conf()")
    restartable_pg.pgdata = pgdata
    yield restartable_pg


def _postgres_pids(pgdata: Path) -> list[int]:
    """The postmaster (first line of postmaster.pid) and every process it forked."""
    master = int((pgdata / "postmaster.pid").read_text().split()[0])
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            kids.append(int(stat.parent.name))
    return [master, *kids]


class Frozen:
    """SIGSTOP the server's processes; SIGCONT them on exit, whatever happens."""

    def __init__(self, pgdata: Path, *, postmaster_only: bool = False):
        pids = _postgres_pids(pgdata)
        self.pids = pids[:1] if postmaster_only else pids

    def __enter__(self) -> Frozen:
        for pid in self.pids:
            os.kill(pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc: object) -> None:
        for pid in self.pids:
            os.kill(pid, signal.SIGCONT)


def batch(steps: range) -> list[Point]:
    return [Point(f"m{m}", s, T0 + s, s + m / 10) for s in steps for m in range(3)]


# ---- refused: classified, one line, fixed while we wait --------------------------------------------------------------


async def test_wrong_password_missing_database_and_missing_privilege_are_told_apart(pg: Any, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="trainscope.collector.store.errors")
    cases = [(_as(pg.url, "pw", PASSWORD, "app"), "AuthenticationFailed", "refused the credentials"),
             (_as(pg.url, "nosuchrole", None, "app"), "AuthenticationFailed", "refused the login"),
             (with_database(pg.url, "nosuchdb"), "DatabaseMissing", "does not exist"),
             (_as(pg.url, "ro", None, "app"), "PermissionDenied", "lacks a privilege")]  # cannot create the tables
    for url, reason, words in cases:
        with pytest.raises(StoreUnavailable) as err:
            await Store.open(url, connect_timeout=5)
        assert err.value.reason == reason, (url, err.value)
        assert words in str(err.value) and "\n" not in str(err.value)
        assert PASSWORD not in str(err.value)
    # one ERROR line per refusal, each naming its reason (the Store's own state object logs the change)
    lines = [r.getMessage() for r in caplog.records]
    assert [ln.split("(")[1].split(")")[0] for ln in lines] == [
        "AuthenticationFailed", "AuthenticationFailed", "DatabaseMissing", "PermissionDenied"], lines


def _trainscope(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trainscope.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd="/", env={k: v for k, v in os.environ.items()
                                                    if k != "TRAINSCOPE_DATABASE_URL"})


async def test_db_upgrade_exits_2_with_one_line_when_refused_and_0_once_fixed(pg: Any) -> None:
    wrong = _as(pg.url, "pw", PASSWORD, "app")
    refused = await asyncio.to_thread(_trainscope, "db", "upgrade", "--database-url", wrong)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.startswith("trainscope db: database unavailable (AuthenticationFailed): ")
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr and PASSWORD not in refused.stderr
    denied = await asyncio.to_thread(_trainscope, "db", "upgrade", "--database-url", _as(pg.url, "ro", None, "app"))
    assert denied.returncode == 2 and "(PermissionDenied)" in denied.stderr, denied.stderr
    missing = await asyncio.to_thread(_trainscope, "db", "upgrade", "--database-url", with_database(pg.url, "nope"))
    assert missing.returncode == 2 and "(DatabaseMissing)" in missing.stderr, missing.stderr
    await _sql(with_database(pg.url, "app"), "GRANT CREATE ON SCHEMA public TO ro")
    fixed = await asyncio.to_thread(_trainscope, "db", "upgrade", "--database-url", _as(pg.url, "ro", None, "app"))
    assert fixed.returncode == 0, fixed.stderr


def _gauges(runtime: Runtime) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    registry.register(WorkloadExporter(runtime.exported, store_up=runtime.store_up))
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _condition(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == ctype)


@pytest.fixture
def tb_run(tmp_path: Path) -> Iterator[Path]:
    with SummaryWriter(str(tmp_path / "runs")) as w:
        for i in range(1, 51):
            w.add_scalar("loss", 1.0 / i, i, walltime=T0 + i)
    yield tmp_path


async def test_the_operator_shows_store_ready_false_and_collects_once_the_password_is_fixed(pg: Any,
                                                                                         tb_run: Path) -> None:
    url = _as(pg.url, "pw", PASSWORD, "app")
    runtime = Runtime(RuntimeConfig(database_url=url, metrics_port=None, base_dir=tb_run, store_retry=0.05,
                                    store_probe=0.1, backoff_base=0.02, backoff_cap=0.1))
    await runtime.start()
    try:
        await runtime.apply("uid-1", "ml", "wl", {"sources": [{"tensorboard": {"logDir": "runs"}}],
                                                   "pollInterval": "100ms"})
        status = await eventually(lambda: (s := runtime.status("uid-1", now=T0)) and _condition(
            s, "StoreReady")["status"] == "False" and s)
        store_ready = _condition(status, "StoreReady")
        assert store_ready["reason"] == "AuthenticationFailed" and "refused the credentials" in store_ready["message"]
        assert _condition(status, "Ready")["reason"] == "WaitingForStore" and status["phase"] == "Pending"
        assert PASSWORD not in str(status)
        assert _gauges(runtime)["trainscope_store_up", ()] == 0.0
        probe = store_probe(memo=kopf.Memo(runtime=runtime))  # kopf's liveness JSON: reported, not raised
        assert probe["up"] is False and probe["reason"] == "AuthenticationFailed" and PASSWORD not in str(probe)
        # The DBA fixes the role (a Secret update on the database side): the operator gets in by itself.
        await _sql(with_database(pg.url, "app"), f"ALTER ROLE pw PASSWORD '{PASSWORD}'",
                   "GRANT CREATE ON SCHEMA public TO pw")
        await eventually(lambda: (s := runtime.status("uid-1", now=T0)) and s.get("step") == 50, timeout=60)
        status = runtime.status("uid-1", now=T0)
        assert _condition(status, "StoreReady")["status"] == "True" and status["phase"] == "Collecting"
        assert _gauges(runtime)["trainscope_store_up", ()] == 1.0
    finally:
        await runtime.close()


# ---- hung: a stopped server is detected by timeouts, and nothing is lost --------------------------------------------


async def test_a_frozen_server_times_out_instead_of_hanging_and_the_batch_is_kept(pg: Any) -> None:
    store = await Store.open(pg.url, min_size=2, max_size=2, connect_timeout=1, command_timeout=1)
    try:
        assert await store.write("w", "tb", "tensorboard", batch(range(10)), 10) == WriteResult(30, 0)
        pending = batch(range(10, 20))
        with Frozen(pg.pgdata):
            with pytest.raises(StoreUnavailable) as err:
                await asyncio.wait_for(store.write("w", "tb", "tensorboard", pending, 20), 30)
            assert err.value.reason == "Timeout"
            assert store.state.health.up is False and store.state.health.reason == "Timeout"
            health = await asyncio.wait_for(store.ping(0.5), 30)
            assert health.up is False
        # Thawed: the same batch again is stored once; the pool replaced what the timeouts broke.
        async def answers() -> bool:
            return bool((await store.ping(1.0)).up)

        await eventually(answers, describe=lambda: store.state.health)
        assert await store.write("w", "tb", "tensorboard", pending, 20) == WriteResult(30, 0)
        assert await store.counts("w") == {("tb", f"m{m}"): 20 for m in range(3)}
        assert await store.load_cursor("w", "tb") == 20
        assert store.state.health.up is True
    finally:
        await store.close()


async def test_a_stopped_postmaster_fails_new_connections_by_timeout(pg: Any) -> None:
    with Frozen(pg.pgdata, postmaster_only=True):
        with pytest.raises(StoreUnavailable) as err:
            await asyncio.wait_for(Store.open(pg.url, connect_timeout=1), 30)
    assert err.value.reason == "Timeout"


async def test_while_the_server_hangs_the_store_is_down_and_no_source_is(pg: Any, tb_run: Path) -> None:
    runtime = Runtime(RuntimeConfig(database_url=pg.url, metrics_port=None, base_dir=tb_run, store_retry=0.05,
                                    store_probe=0.2, store_connect_timeout=1, store_command_timeout=1,
                                    backoff_base=0.02, backoff_cap=0.1))
    await runtime.start()
    try:
        await runtime.apply("uid-2", "ml", "wl", {"sources": [{"tensorboard": {"logDir": "runs"}}],
                                                   "pollInterval": "100ms"})
        await eventually(lambda: (s := runtime.status("uid-2", now=T0)) and s.get("step") == 50)
        up = ("trainscope_source_up", (("kind", "tensorboard"), ("namespace", "ml"), ("source", "tensorboard"),
                                       ("workload", "wl")))
        assert _gauges(runtime)[up] == 1.0
        with Frozen(pg.pgdata):
            await eventually(lambda: runtime.store_up() is False, timeout=30)
            status = runtime.status("uid-2", now=T0)
            assert _condition(status, "StoreReady")["reason"] == "Timeout"
            gauges = _gauges(runtime)
            assert gauges["trainscope_store_up", ()] == 0.0
            assert gauges[up] == 1.0  # the source is fine: one store alert, not a SourceDown per source
        await eventually(lambda: runtime.store_up() is True, timeout=30)
        assert _condition(runtime.status("uid-2", now=T0), "StoreReady")["status"] == "True"
    finally:
        await runtime.close()


async def test_api_readiness_follows_the_database_now(pg: Any) -> None:
    """/readyz asks the database on every call: 200, then 503 while the server is stopped or frozen, then 200."""
    import httpx

    from trainscope.api.app import ApiSettings, create_app

    await (await Store.open(pg.url)).close()  # migrated
    app = create_app(ApiSettings(pg.url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        try:
            assert (await api.get("/readyz")).status_code == 200
            with Frozen(pg.pgdata):
                frozen = await api.get("/readyz")
            assert frozen.status_code == 503 and frozen.json()["code"] == "NotReady", frozen.text
            await eventually(lambda: _ready(api, 200))
            await asyncio.to_thread(pg.stop)
            assert (await api.get("/readyz")).status_code == 503
            await asyncio.to_thread(pg.start)
            await eventually(lambda: _ready(api, 200))
        finally:
            await app.state.db.close()


async def test_api_readiness_on_a_frozen_server_before_its_first_connection(pg: Any) -> None:
    """The API's pool does not exist yet and the postmaster is frozen (it accepts connections, answers nothing):
    a request gets its 503 after the connect timeout (acquire_timeout), not asyncpg's 60 s; /readyz answers within
    READY_TIMEOUT even when that timeout is longer; both recover by themselves once the server is thawed."""
    import httpx

    from trainscope.api.app import READY_TIMEOUT, ApiSettings, create_app

    await (await Store.open(pg.url)).close()  # migrated
    app = create_app(ApiSettings(pg.url, acquire_timeout=2.0))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
        try:
            with Frozen(pg.pgdata, postmaster_only=True):
                # hang guards well below asyncpg's default 60 s: a hang fails here instead of waiting
                ready = await asyncio.wait_for(api.get("/readyz"), 30)
                assert ready.status_code == 503 and "did not answer within 2 s" in ready.json()["message"]
                data = await asyncio.wait_for(api.get("/api/v1/workloads"), 30)
                assert data.status_code == 503 and "did not answer within 2 s" in data.json()["message"]
            app.state.db.acquire_timeout = 60.0  # readiness alone bounds the wait now
            with Frozen(pg.pgdata, postmaster_only=True):
                ready = await asyncio.wait_for(api.get("/readyz"), 30)
                assert ready.status_code == 503, ready.text
                assert ready.json()["message"] == f"no database connection within {READY_TIMEOUT:g} s"
            await eventually(lambda: _ready(api, 200))
            assert (await api.get("/api/v1/workloads")).status_code == 200
        finally:
            await app.state.db.close()


async def _ready(api: Any, code: int) -> bool:
    return (await api.get("/readyz")).status_code == code
