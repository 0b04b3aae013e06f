"""PostgreSQL failing under a running operator PROCESS: its connections cut (pg_terminate_backend), the server
stopped for 60 s mid-collection while training goes on, then crash-restarted (immediate mode). Collection pauses,
status says why (WaitingForStore), memory stays bounded while it waits (the operator's RSS, sampled), and in the
end every stored point equals the source's truth, for every covered source kind.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from faults import (
    ADAPTERS,
    CountingCluster,
    LiveWriter,
    OperatorProcess,
    RssSampler,
    SourceAdapter,
    TensorBoardFiles,
    check_stored,
    covered_kinds,
)
from kube import condition, db_points, eventually, show, source_status

OUTAGE = 60.0  # seconds, as the issue asks
WAIT = 60.0
MB = 1 << 20


@pytest.fixture
async def cluster() -> AsyncIterator[CountingCluster]:
    async with CountingCluster() as c:
        yield c


async def _cursors(url: str) -> dict[tuple[str, str], str]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch("SELECT workload_uid, source, cursor::text AS c FROM cursors")
    finally:
        await conn.close()
    return {(r["workload_uid"], r["source"]): r["c"] for r in rows}


async def _cut_connections(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'")
    finally:
        await conn.close()


def _crash_restart(pg: Any) -> None:
    """`pg_ctl stop -m immediate` (every backend killed, crash recovery at start), then start again."""
    from pgserver import _commands

    server = pg._server
    _commands.pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)
    pg.start()


async def test_database_cut_stopped_and_crash_restarted_loses_nothing(cluster: CountingCluster, restartable_pg: Any,
                                                                     tmp_path: Path) -> None:
    url = restartable_pg.url
    sources: dict[str, SourceAdapter] = {}
    for kind in covered_kinds():
        adapter = ADAPTERS[kind](tmp_path / kind, f"db-{kind}")
        adapter.grow_to(2000, wall=lambda s: 1_700_000_000.0 + s)
        sources[f"db-{kind}"] = adapter
    env = {k: v for a in sources.values() for k, v in a.env().items()}
    op = OperatorProcess(cluster.kubeconfig(tmp_path / "kubeconfig"), url, tmp_path / "operator.log",
                         extra_env=env)
    writers: list[LiveWriter] = []
    uids: dict[str, str] = {}
    try:
        op.start()
        for name, adapter in sources.items():
            spec = {"sources": [adapter.spec_item()], "pollInterval": "300ms"}
            uids[name] = (await cluster.create(name, spec))["metadata"]["uid"]
        await _until_equal(sources, uids, url, op, "the first catch-up")
        writers = [LiveWriter(a.grow_to, lambda a=a: a.last_step, rate=40).start() for a in sources.values()]

        with RssSampler(op.pid) as rss:
            # 1. connections cut under a collecting operator, three times: the pool reconnects by itself
            for _ in range(3):
                before = await _cursors(url)
                assert await _cut_connections(url) >= 1
                await _until_moved(url, before, op, "collection to go on after the connections were cut")

            # 2. the server stopped for 60 s while training goes on (and one run writes a burst of 300k points)
            rss.phase = "outage"
            stopped_at = time.monotonic()
            await asyncio.to_thread(restartable_pg.stop)
            tb = next((a for a in sources.values() if isinstance(a, TensorBoardFiles)), None)
            if tb is not None:
                await asyncio.to_thread(tb.grow_to, tb.last_step + 150_000)

            async def waiting() -> None:
                for name, adapter in sources.items():
                    obj = await cluster.workload(name)
                    src = source_status(obj, adapter.name)
                    assert src["state"] == "WaitingForStore", show(obj)
                    assert "database unavailable" in src.get("lastError", ""), show(obj)
                    cond = condition(obj, "SourcesHealthy")
                    assert (cond["status"], cond["reason"]) == ("False", "StoreUnavailable"), show(obj)
            await eventually(waiting, within=WAIT, what="every Workload's status to say it waits for the database")
            waited = time.monotonic() - stopped_at
            await asyncio.sleep(max(0.0, OUTAGE - waited))  # the outage lasts its 60 s; nothing is asserted on time
            assert op.alive(), op.tail()
            rss.phase = "after"
            await asyncio.to_thread(restartable_pg.start)
            restarted_at = time.monotonic()
            before = await _cursors(url)
            await _until_moved(url, before, op, "collection to resume after the outage")
            resumed_after = time.monotonic() - restarted_at

            # 3. a crash restart: every backend killed at once, crash recovery, the same socket again
            await asyncio.to_thread(_crash_restart, restartable_pg)
            before = await _cursors(url)
            await _until_moved(url, before, op, "collection to resume after the crash restart")

        for w in writers:
            w.stop()
        writers = []
        await _until_equal(sources, uids, url, op, "the end")

        async def healthy() -> None:
            for name, adapter in sources.items():
                obj = await cluster.workload(name)
                assert source_status(obj, adapter.name)["state"] == "Healthy", show(obj)
                assert condition(obj, "SourcesHealthy")["status"] == "True", show(obj)
        await eventually(healthy, within=WAIT, what="every source to be healthy again")

        before_mb, outage_mb, after_mb = (rss.peak(p) / MB for p in ("before", "outage", "after"))
        print(f"\noperator RSS peak: before {before_mb:.0f} MB, during the 60 s outage {outage_mb:.0f} MB, "
              f"after {after_mb:.0f} MB; collection resumed {resumed_after:.1f} s after the restart")
        # Bounded: the sources hold at most the batch in hand (<= 50,000 points) while the database is away, not
        # the 300,000 points written meanwhile. A generous bound on a counted resource, not a timing.
        assert outage_mb < before_mb + 150, (before_mb, outage_mb)
        assert await asyncio.to_thread(op.stop) == 0, op.tail()
    finally:
        for w in writers:
            w.stop()
        await asyncio.to_thread(op.stop)  # not on the loop that serves the emulator kopf talks to
        for a in sources.values():
            a.close()


async def _until_moved(url: str, before: dict[tuple[str, str], str], op: OperatorProcess, what: str) -> None:
    async def moved() -> None:
        assert op.alive(), f"operator exited:\n{op.tail()}"
        try:
            now = await _cursors(url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise AssertionError(f"database not reachable yet: {exc}") from None
        assert any(now[k] != before.get(k) for k in now), "no cursor moved yet"
    await eventually(moved, within=WAIT, what=what, interval=0.2)


async def _until_equal(sources: dict[str, SourceAdapter], uids: dict[str, str], url: str, op: OperatorProcess,
                       what: str) -> None:
    for name, adapter in sources.items():
        truth, served = adapter.truth(), adapter.served()

        async def equal(name: str = name, adapter: SourceAdapter = adapter, truth: Any = truth,
                        served: Any = served) -> None:
            assert op.alive(), f"operator exited:\n{op.tail()}"
            try:
                stored = await db_points(url, uids[name])
            except (OSError, asyncpg.PostgresError) as exc:  # not migrated yet, or restarting
                raise AssertionError(f"cannot read the database yet: {exc}") from None
            check_stored(stored, adapter, truth, served)
        await eventually(equal, within=WAIT, what=f"{name} to equal its source's truth ({what})", interval=0.5)
