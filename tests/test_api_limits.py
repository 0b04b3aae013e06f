"""The API's limits, served by the real uvicorn on 127.0.0.1: downsample and answer size, request head, URL and path
lengths; clients that read slowly (or never) hold no pool connection and no transaction; a slow database is cut
off by the statement timeout; /readyz says so when every connection is busy."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from trainscope.api.app import ApiSettings
from trainscope.api.params import MAX_ANSWER_POINTS, MAX_DOWNSAMPLE
from trainscope.api.server import MAX_HEAD, MAX_URL, ApiServer
from trainscope.collector.points import Point
from trainscope.collector.store import Store

UID = "limits-uid"
SERIES = 4
STEPS = 60_000  # x 4 series: a CSV of ~7 MB, far more than the socket buffers of a client that does not read


async def fill(store: Store, database_url: str) -> None:
    """One point per series through the store's writer, the rest in bulk by SQL (the API only reads them)."""
    await store.register_workload(UID, "ml", "big", {"totalSteps": STEPS})
    await store.write(UID, "tb", "tensorboard", [Point(f"m{i}", 1, 1_700_000_000.0, 1.0) for i in range(SERIES)],
                      None)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO points (series_id, step, ts, value) SELECT s.id, g, to_timestamp(1700000000 + g), g * 0.5 "
            "FROM series s, generate_series(2, $1) g WHERE s.workload_uid = $2", STEPS, UID)
        await conn.execute("ANALYZE points")
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def serving(database_url: str, **kw: object) -> AsyncIterator[str]:
    server = ApiServer(ApiSettings(database_url, **kw), "127.0.0.1", 0)  # type: ignore[arg-type]
    await server.start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        await server.stop()


@pytest.fixture
async def filled(store: Store, database_url: str) -> str:
    await fill(store, database_url)
    return database_url


async def test_downsample_above_the_maximum_is_a_400_naming_it(filled: str) -> None:
    async with serving(filled) as url, httpx.AsyncClient(base_url=url, timeout=60) as c:
        r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"downsample": MAX_DOWNSAMPLE + 1})
        assert r.status_code == 400
        assert r.json()["message"].startswith("downsample: ") and str(MAX_DOWNSAMPLE) in r.json()["message"]
        # At the maximum, 4 series x 10,000 fit in one answer; the points per series are what was asked.
        r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"downsample": MAX_DOWNSAMPLE})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["downsample"]["max_points_per_series"] == MAX_DOWNSAMPLE
        assert body["total_count"] <= SERIES * MAX_DOWNSAMPLE and body["downsampled"] is True
        assert body["downsample"]["source_points"] == SERIES * STEPS


async def test_a_downsampled_answer_never_exceeds_the_answer_budget(store: Store, database_url: str) -> None:
    # 30 series x 10,000 asked > 100,000: the points per series are lowered to fit, and the answer says so.
    await store.register_workload(UID, "ml", "wide", {})
    conn = await asyncpg.connect(database_url)
    try:
        await store.write(UID, "tb", "tensorboard", [Point(f"m{i:02}", 1, 1_700_000_000.0, 1.0) for i in range(30)],
                          None)
        await conn.execute(
            "INSERT INTO points (series_id, step, ts, value) SELECT s.id, g, to_timestamp(1700000000 + g), "
            "sin(g) FROM series s, generate_series(2, 12000) g WHERE s.workload_uid = $1", UID)
    finally:
        await conn.close()
    async with serving(database_url) as url, httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"downsample": MAX_DOWNSAMPLE})
        assert r.status_code == 200, r.text
        body = r.json()
        per_series = MAX_ANSWER_POINTS // 30
        assert body["downsample"]["max_points_per_series"] == per_series
        assert body["total_count"] == len(body["data"]) <= MAX_ANSWER_POINTS
        counts: dict[str, int] = {}
        for item in body["data"]:
            counts[item["metric_name"]] = counts.get(item["metric_name"], 0) + 1
        assert len(counts) == 30 and max(counts.values()) <= per_series


async def raw_request(url: str, head: bytes, *, chunk: int = 16 * 1024, total: int | None = None) -> bytes:
    """Send a request head (optionally followed by an endless header, in chunks, until the server answers) and
    return the answer's status line."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    answer = asyncio.create_task(reader.readline())
    try:
        writer.write(head)
        if total is not None:  # an unfinished header that grows until the server stops it
            writer.write(b"X-Pad: ")
            sent = 0
            with contextlib.suppress(OSError):
                while sent < total and not answer.done():
                    writer.write(b"a" * chunk)
                    await writer.drain()
                    sent += chunk
        return await asyncio.wait_for(answer, 30)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def test_request_head_url_and_path_limits(filled: str) -> None:
    async with serving(filled) as url:
        # An unfinished header of 10 MB is cut at the head limit: 431, not 10 MB held in memory.
        line = await raw_request(url, b"GET /healthz HTTP/1.1\r\nHost: x\r\n", total=10 * 1024 * 1024)
        assert line.startswith(b"HTTP/1.1 431 "), line
        # A URL over the limit: 414.
        line = await raw_request(url, b"GET /api/v1/workloads?x=" + b"a" * (MAX_URL + 10) + b" HTTP/1.1\r\n"
                                 b"Host: x\r\n\r\n")
        assert line.startswith(b"HTTP/1.1 414 "), line
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            # Just under the limits is served.
            r = await c.get("/api/v1/workloads", headers={"X-Big": "a" * (MAX_HEAD // 2)})
            assert r.status_code == 200
            # Path parameters: a Kubernetes name is at most 253 characters.
            for path in (f"/api/v1/workloads/{'u' * 254}", f"/api/v1/namespaces/{'n' * 254}/workloads/x",
                         f"/api/v1/workloads/{'u' * 254}/metrics/data", f"/api/v1/namespaces/ml/workloads/{'n' * 254}"):
                r = await c.get(path)
                assert r.status_code == 400, (path, r.text)
                assert r.json()["code"] == "RequestParameterInvalid"
            assert (await c.get(f"/api/v1/workloads/{'u' * 253}")).status_code == 404


async def stalled_reader(url: str, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client that asks for a big answer, reads its first bytes, then stops reading (its socket fills up)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), limit=1024)
    writer.transport.set_write_buffer_limits(0)
    sock = writer.get_extra_info("socket")
    import socket

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    first = await asyncio.wait_for(reader.readline(), 30)
    assert first.startswith(b"HTTP/1.1 200"), first
    writer.transport.pause_reading()  # read nothing more: the server's writes back up to it
    return reader, writer


async def api_transactions(database_url: str) -> list[asyncpg.Record]:
    """The API's sessions that hold a transaction (a snapshot VACUUM must respect) or a running statement."""
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(
            "SELECT pid, state, backend_xmin, query FROM pg_stat_activity WHERE application_name = 'trainscope-api' "
            "AND (state <> 'idle' OR backend_xmin IS NOT NULL)")
    finally:
        await conn.close()


@pytest.mark.parametrize("path", [f"/api/v1/workloads/{UID}/metrics/data?format=csv",
                                  f"/api/v1/workloads/{UID}/metrics/iteration-times",
                                  f"/api/v1/workloads/{UID}/metrics/data?format=ndjson"])
async def test_ten_stalled_readers_hold_no_connection_and_a_normal_request_is_answered(filled: str,
                                                                                       path: str) -> None:
    async with serving(filled, pool_size=10) as url:
        clients = [await stalled_reader(url, path) for _ in range(10)]  # = the pool size
        try:
            await asyncio.sleep(1.0)  # the server has written what the sockets take and waits on every one
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"limit": 10})
                assert r.status_code == 200 and r.json()["total_count"] == 10
                r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"downsample": 100})
                assert r.status_code == 200
                assert (await c.get("/readyz")).status_code == 200
            # No API session keeps a transaction open for the stalled readers: VACUUM is not held back.
            assert await api_transactions(filled) == []
        finally:
            for _, writer in clients:
                writer.close()


async def test_a_blocked_query_is_cut_by_the_statement_timeout_and_readyz_says_busy(filled: str) -> None:
    lock = await asyncpg.connect(filled)
    try:
        async with serving(filled, pool_size=2, statement_timeout=3.0, acquire_timeout=1.0) as url, \
                httpx.AsyncClient(base_url=url, timeout=60) as c:
            assert (await c.get("/readyz")).status_code == 200
            tx = lock.transaction()
            await tx.start()
            await lock.execute("LOCK TABLE points IN ACCESS EXCLUSIVE MODE")  # every read of points now waits
            blocked = [asyncio.create_task(c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"limit": 5}))
                       for _ in range(2)]
            async def busy() -> bool:
                return (await c.get("/readyz")).status_code == 503
            for _ in range(100):
                if await busy():
                    break
                await asyncio.sleep(0.05)
            r = await c.get("/readyz")
            assert r.status_code == 503 and "busy" in r.json()["message"], r.text
            # A third request finds no free connection within acquire_timeout: a 503 naming why, not a hang.
            r = await c.get(f"/api/v1/workloads/{UID}/metrics/sources")
            assert r.status_code == 503 and "busy" in r.json()["message"], r.text
            # The blocked ones are cancelled by PostgreSQL at the statement timeout and answered 503.
            for task in blocked:
                r = await task
                assert r.status_code == 503 and "longer than 3 s" in r.json()["message"], r.text
            await tx.rollback()
            assert (await c.get("/readyz")).status_code == 200
            r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params={"limit": 5})
            assert r.status_code == 200
    finally:
        await lock.close()
