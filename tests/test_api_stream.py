"""The live stream over real HTTP (uvicorn on 127.0.0.1) and the store's real write path: points stored after
subscribing arrive, replaced points arrive again, a reconnect with Last-Event-ID misses nothing, and writers that
commit out of order lose nothing either."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest
import yaml
from rich.console import Console

from trainscope.api.app import ApiSettings
from trainscope.api.server import ApiServer
from trainscope.collector.points import Point
from trainscope.collector.store import Store
from trainscope.operator.local import LocalApi, load_workloads, run_local
from trainscope.operator.runtime import RuntimeConfig

from apifixtures import STEPS, Expected, free_port, write_tensorboard
from waiting import eventually

UID = "live-1"
T0 = 1_704_067_200.0


@dataclass
class Event:
    kind: str = "message"
    id: str | None = None
    data: str = ""
    points: list[dict] = field(default_factory=list)


class Subscription:
    """An SSE client reading events as they come."""

    def __init__(self, client: httpx.AsyncClient, url: str, last_event_id: str | None = None):
        self._cm = client.stream("GET", url, headers={"Last-Event-ID": last_event_id} if last_event_id else {})
        self.last_id: str | None = last_event_id

    async def __aenter__(self) -> Subscription:
        self.response = await self._cm.__aenter__()
        assert self.response.status_code == 200
        assert self.response.headers["content-type"].startswith("text/event-stream")
        self._lines = self.response.aiter_lines()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cm.__aexit__(None, None, None)

    async def next(self) -> Event:
        ev = Event()
        async for line in self._lines:
            if line == "":
                if ev.data or ev.kind != "message":
                    if ev.id is not None:
                        self.last_id = ev.id
                    if ev.kind == "points":
                        ev.points = json.loads(ev.data)["data"]
                    return ev
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                ev.kind = value
            elif name == "id":
                ev.id = value
            elif name == "data":
                ev.data += value
        raise AssertionError("the stream ended")

    async def points(self, n: int) -> list[dict]:
        """The next `n` points (across events); waits with a deadline, never a fixed sleep."""
        got: list[dict] = []
        while len(got) < n:
            ev = await asyncio.wait_for(self.next(), 30)
            got += ev.points
        assert len(got) == n, got
        return got


def key(p: dict) -> tuple:
    return (p["metric_name"], p["iteration"], p["value"], p["timestamp"])


def expect(points: list[Point]) -> list[tuple]:
    return [(p.metric, p.step, p.value, int(p.ts * 1000)) for p in points]


@pytest.fixture
async def live(store: Store, database_url: str) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    await store.register_workload(UID, "ml", "live", {})
    await store.write(UID, "tb", "tensorboard", [Point("loss", s, T0 + s, 1.0 / s) for s in range(1, 6)], None)
    server = ApiServer(ApiSettings(database_url, stream_interval=0.05, stream_batch=3), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            yield client, f"/api/v1/workloads/{UID}/metrics/stream"
    finally:
        await server.stop()


async def test_points_stored_after_subscribing_arrive_and_replacements_too(live, store: Store) -> None:
    client, url = live
    async with Subscription(client, url) as sub:
        first = await sub.next()
        assert first.kind == "subscribed" and first.id
        new = [Point("loss", s, T0 + s, 1.0 / s) for s in range(6, 11)]
        await store.write(UID, "tb", "tensorboard", new, None)
        got = await sub.points(5)
        assert sorted(map(key, got)) == sorted(expect(new))  # the 5 older points are not re-sent
        # A resumed run re-logs step 3 with a newer timestamp: the replaced point comes again.
        again = [Point("loss", 3, T0 + 100, 0.25)]
        await store.write(UID, "tb", "tensorboard", again, None)
        assert list(map(key, await sub.points(1))) == expect(again)
        # A filter applies to the stream, and a series created after subscribing is included.
        lr = [Point("lr", 1, T0 + 1, 1e-3)]
        await store.write(UID, "tb", "tensorboard", lr, None)
        assert list(map(key, await sub.points(1))) == expect(lr)
    async with Subscription(client, url + "?metrics=lr") as sub:
        await sub.next()
        await store.write(UID, "tb", "tensorboard", [Point("loss", 11, T0 + 11, 0.1), Point("lr", 2, T0 + 2, 2e-3)],
                          None)
        assert [p["metric_name"] for p in await sub.points(1)] == ["lr"]


async def test_reconnect_with_last_event_id_misses_nothing(live, store: Store) -> None:
    client, url = live
    first_batch = [Point("loss", s, T0 + s, s / 10) for s in range(100, 110)]  # 10 points: events of 3, 3, 3, 1
    async with Subscription(client, url) as sub:
        await sub.next()
        await store.write(UID, "tb", "tensorboard", first_batch, None)
        seen = await sub.points(6)  # two events, then the client goes away in the middle of the poll
        resume_from = sub.last_id
    assert resume_from and "/" in resume_from  # an id inside a poll: base/target/series/step
    while_away = [Point("loss", s, T0 + s, s / 10) for s in range(110, 115)]
    await store.write(UID, "tb", "tensorboard", while_away, None)
    async with Subscription(client, url, last_event_id=resume_from) as sub:
        assert (await sub.next()).kind == "subscribed"
        rest = await sub.points(4 + 5)
        resume_again = sub.last_id
    everything = first_batch + while_away
    assert sorted(map(key, seen + rest)) == sorted(expect(everything))  # all of them, none twice
    # Resuming from the last id of a finished poll sends nothing old.
    late = [Point("loss", 200, T0 + 200, 2.0)]
    async with Subscription(client, url, last_event_id=resume_again) as sub:
        await sub.next()
        await store.write(UID, "tb", "tensorboard", late, None)
        assert list(map(key, await sub.points(1))) == expect(late)
    bad = await client.get(url, headers={"Last-Event-ID": "not-an-id"})
    assert bad.status_code == 400 and bad.json()["message"].startswith("Last-Event-ID: ")


async def test_a_writer_that_commits_late_is_not_skipped(live, store: Store, database_url: str) -> None:
    client, url = live
    sid = await store_series_id(database_url)
    slow = await asyncpg.connect(database_url)
    try:
        async with Subscription(client, url) as sub:
            await sub.next()
            tx = slow.transaction()
            await tx.start()  # begins before the fast writer and commits after it
            await slow.execute("INSERT INTO points (series_id, step, ts, value) "
                               "VALUES ($1, 500, to_timestamp($2), 5.0)", sid, T0 + 500)
            fast = [Point("loss", 501, T0 + 501, 5.01)]
            await store.write(UID, "tb", "tensorboard", fast, None)
            assert list(map(key, await sub.points(1))) == expect(fast)
            await tx.commit()
            assert list(map(key, await sub.points(1))) == expect([Point("loss", 500, T0 + 500, 5.0)])
    finally:
        await slow.close()


async def store_series_id(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT id FROM series WHERE workload_uid = $1 AND metric = 'loss'", UID)
    finally:
        await conn.close()


async def test_local_mode_serves_the_api_while_collecting(tmp_path, database_url: str) -> None:
    """`trainscope local` with the API on: live phase and progress from the running collector, data from the store."""
    write_tensorboard(tmp_path / "tb", 1_704_067_200, Expected(0))
    manifest = tmp_path / "wl.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                                        "metadata": {"name": "demo", "namespace": "ml"},
                                        "spec": {"totalSteps": STEPS, "pollInterval": "1s",
                                                 "sources": [{"tensorboard": {"logDir": "tb"}}]}}))
    workloads = load_workloads([manifest])
    stop = asyncio.Event()
    port = free_port()
    config = RuntimeConfig(database_url=database_url, metrics_port=None, backoff_base=0.05, backoff_cap=0.5)
    console = Console(record=True, width=200, force_terminal=False)
    task = asyncio.create_task(run_local(workloads, config, console=console, refresh=0.1, stop=stop,
                                         api=LocalApi(port=port)))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            async def collected() -> dict | None:
                try:
                    r = await c.get("/api/v1/namespaces/ml/workloads/demo")
                except httpx.TransportError:
                    return None
                body = r.json() if r.status_code == 200 else {}
                return body if body.get("step") == STEPS else None

            wl = await eventually(collected)
            assert wl["phase"] == "Collecting" and wl["progress"] == 1.0 and wl["uid"] == workloads[0].uid
            data = (await c.get(f"/api/v1/workloads/{wl['uid']}/metrics/data", params={"metrics": "train/loss",
                                                                                      "last": 1})).json()
            assert [p["iteration"] for p in data["data"]] == [STEPS]
    finally:
        stop.set()
        await task
    assert f"API: http://127.0.0.1:{port}/api/v1/workloads" in console.export_text()
