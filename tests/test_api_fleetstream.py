"""`GET /api/v1/overview/stream`, the fleet view's live feed, over real HTTP (uvicorn on 127.0.0.1) and the store's
real write path: the first event is exactly what GET /workloads and GET /overview answer; each later event carries
exactly the workloads whose list or overview item changed (as those routes then answer them) and the uids that
left; a workload nobody wrote to is never re-sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from test_api_stream import Subscription

from trainscope.api.app import ApiSettings
from trainscope.api.server import ApiServer
from trainscope.collector.points import Point
from trainscope.collector.store import Store

T0 = 1_704_067_200.0


@pytest.fixture
async def client(store: Store, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    for uid in ("a", "b"):
        await store.register_workload(uid, "ml", uid, {"primaryMetric": "loss", "totalSteps": 100})
        await store.write(uid, "tb", "tensorboard", [Point("loss", s, T0 + s, 1.0 / s) for s in range(1, 11)], None)
    server = ApiServer(ApiSettings(database_url, fleet_interval=0.05), "127.0.0.1", 0)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            yield c
    finally:
        await server.stop()


async def answers(client: httpx.AsyncClient, **params: object) -> tuple[dict[str, dict], dict[str, dict]]:
    """GET /workloads and GET /overview now, by uid."""
    w = (await client.get("/api/v1/workloads", params=params)).json()["workloads"]
    o = (await client.get("/api/v1/overview", params={"points": 8, **params})).json()["workloads"]
    return {i["uid"]: i for i in w}, {i["uid"]: i for i in o}


async def next_event(sub: Subscription) -> tuple[str, dict]:
    ev = await asyncio.wait_for(sub.next(), 30)
    return ev.kind, json.loads(ev.data)


async def test_the_first_event_is_the_fleet_then_only_what_changed(client: httpx.AsyncClient, store: Store) -> None:
    async with Subscription(client, "/api/v1/overview/stream?points=8") as sub:
        kind, body = await next_event(sub)
        listed, over = await answers(client)
        assert kind == "fleet" and body["points"] == 8 and body["total_count"] == 2
        assert body["workloads"] == list(listed.values()) and body["overview"] == list(over.values())
        # the same text too (fields in the same order): a client tells changed items from unchanged ones by it
        assert json.dumps(body["workloads"]) == json.dumps(list(listed.values()))
        assert json.dumps(body["overview"]) == json.dumps(list(over.values()))

        # a new point for a: one event, a's list item (step 11) and overview item (sparkline, pace), nothing of b
        await store.write("a", "tb", "tensorboard", [Point("loss", 11, T0 + 11, 0.05)], None)
        kind, body = await next_event(sub)
        listed, over = await answers(client)
        assert kind == "changes" and body["removed"] == []
        assert body["workloads"] == [listed["a"]] and body["overview"] == [over["a"]]
        assert listed["a"]["step"] == 11 and over["a"]["points"][-1] == [11, 0.05]

        # a new workload arrives whole; then one written to afterwards comes alone (a and c are not re-sent)
        await store.register_workload("c", "research", "c", {})
        kind, body = await next_event(sub)
        listed, over = await answers(client)
        assert [w["uid"] for w in body["workloads"]] == ["c"] and body["overview"] == [over["c"]]
        assert body["workloads"] == [listed["c"]] and body["total_count"] == 3
        await store.write("b", "tb", "tensorboard", [Point("loss", 12, T0 + 12, 0.04)], None)
        kind, body = await next_event(sub)
        listed, over = await answers(client)
        assert body["workloads"] == [listed["b"]] and body["overview"] == [over["b"]]


async def test_a_deleted_workload_leaves_a_stream_without_deleted_ones(client: httpx.AsyncClient,
                                                                       store: Store) -> None:
    async with Subscription(client, "/api/v1/overview/stream?include_deleted=false&namespace=ml") as sub:
        kind, body = await next_event(sub)
        assert kind == "fleet" and [w["uid"] for w in body["workloads"]] == ["a", "b"]
        await store.forget_workload("b", delete_data=False)
        kind, body = await next_event(sub)
        assert kind == "changes" and body["removed"] == ["b"] and body["workloads"] == []
        assert body["total_count"] == 1
    # with deleted ones (the default), b stays, marked deleted
    async with Subscription(client, "/api/v1/overview/stream") as sub:
        kind, body = await next_event(sub)
        assert {w["uid"]: w["deleted"] for w in body["workloads"]} == {"a": False, "b": True}


async def test_bad_parameters_are_400_naming_them(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/overview/stream", params={"points": 1})
    assert r.status_code == 400 and "points" in r.text
