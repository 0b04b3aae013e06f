"""Downsampled answers shared between identical requests (api/answers.py): served again only while exact. Every
answer is compared point for point with the Python oracle over what the store holds at that moment, and with the
same question computed afresh (no sharing), after replacements, appends, writes elsewhere, and a write that commits
while the same question is being answered."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from trainscope.api import downsample as ds
from trainscope.api import queries
from trainscope.api.app import ApiSettings, create_app
from trainscope.collector.points import Point
from trainscope.collector.store import Store

T0 = 1_704_067_200.0
UID = "shared"


def client_for(settings: ApiSettings) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(settings)), base_url="http://api")


class Truth:
    """What the store holds, per metric: step -> (ts seconds, value)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[int, tuple[float, float]]] = {}

    async def write(self, store: Store, metric: str, points: dict[int, float], uid: str = UID) -> None:
        pts = [Point(metric, s, T0 + s + 0.5 * (v == v and v > 10), v) for s, v in points.items()]
        await store.write(uid, "tb", "tensorboard", pts, None)
        if uid == UID:
            for p in pts:
                self.rows.setdefault(metric, {})[p.step] = (p.ts, p.value)

    def expected(self, params: dict[str, Any]) -> dict[str, list[tuple[int, int, float | None]]]:
        out = {}
        for metric, rows in self.rows.items():
            keep = [(s, math.floor(rows[s][0] * 1000), rows[s][1]) for s in sorted(rows)
                    if s >= params.get("from_step", -(2**63))]
            want = ds.minmax_reference(keep, params["downsample"])
            out[metric] = [(s, t, v if math.isfinite(v) else None) for s, t, v in want]
        return out


def points_of(body: dict[str, Any]) -> dict[str, list[tuple[int, int, float | None]]]:
    out: dict[str, list[tuple[int, int, float | None]]] = {}
    for i in body["data"]:
        out.setdefault(i["metric_name"], []).append((i["iteration"], i["timestamp"], i["value"]))
    return out


PARAMS = [{"downsample": 64}, {"downsample": 200, "from_step": 777}]


async def test_shared_answers_follow_every_write(store: Store, database_url: str) -> None:
    """Asked again: the kept answer (no new computation). After a replacement of an extreme, an append, a new
    series: computed again, equal to the oracle and to an unshared server. A write to another workload changes
    nothing: still the kept answer."""
    rnd = random.Random(7)
    truth = Truth()
    for metric in ("loss", "acc"):
        await truth.write(store, metric, {s: rnd.gauss(0, 1) for s in range(0, 30_000, 3)})
    await store.rollup.settle()
    shared = client_for(ApiSettings(database_url))
    # nothing shared, one connection (no second one to share the rollup's reads with)
    fresh = client_for(ApiSettings(database_url, answer_cache_mb=0, pool_size=1))
    answers = shared._transport.app.state.answers  # type: ignore[attr-defined]
    try:
        async def check(expect_hits: int) -> None:
            before = answers.hits
            for p in PARAMS:
                body = (await shared.get(f"/api/v1/workloads/{UID}/metrics/data", params=p)).json()
                assert points_of(body) == truth.expected(p), p
                assert body == (await fresh.get(f"/api/v1/workloads/{UID}/metrics/data", params=p)).json()
            assert answers.hits - before == expect_hits

        await check(0)
        await check(len(PARAMS))  # nothing written: both answers served again
        # an extreme of each series replaced by a larger and a smaller value (in the rolled-up part)
        for metric, rows in truth.rows.items():
            top = max(rows, key=lambda s: rows[s][1])
            await truth.write(store, metric, {top: 1e6, top + 3: -1e6, 3000: math.nan})
        await check(0)
        await check(len(PARAMS))
        await truth.write(store, "loss", {30_000 + i: 0.5 for i in range(5)})  # an append moves the last bucket
        await check(0)
        await truth.write(store, "lr", {s: 1e-3 for s in range(0, 30_000, 7)})  # a new series in the workload
        await check(0)
        await truth.write(store, "loss", {s: 9.0 for s in range(100)}, uid="elsewhere")  # another workload
        await check(len(PARAMS))
        await store.rollup.settle()  # the rollup rebuilt: the points, hence the answers, are the same
        await check(len(PARAMS))
    finally:
        for c in (shared, fresh):
            await c._transport.app.state.db.close()  # type: ignore[attr-defined]
            await c.aclose()


async def test_a_write_during_the_computation_is_never_missed(store: Store, database_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The first request's snapshot predates a replacement that commits while it computes; a second request for
    the same question, made after that commit, waits for the first and must still answer with the replacement.
    Then 20 concurrent identical requests after each of several writes: every one equals the oracle."""
    rnd = random.Random(8)
    truth = Truth()
    await truth.write(store, "loss", {s: rnd.gauss(0, 1) for s in range(20_000)})
    await store.rollup.settle()
    gate, started = asyncio.Event(), asyncio.Event()
    compute = ds.downsample_in

    async def slow(*args: Any) -> Any:
        if not gate.is_set():
            await args[0].fetchval("SELECT 1")  # the snapshot is taken
            started.set()
            await gate.wait()
        return await compute(*args)

    monkeypatch.setattr("trainscope.api.routes.downsample_in", slow)
    p = PARAMS[0]
    url = f"/api/v1/workloads/{UID}/metrics/data"
    async with client_for(ApiSettings(database_url)) as c:
        answers = c._transport.app.state.answers  # type: ignore[attr-defined]
        before = truth.expected(p)
        first = asyncio.create_task(c.get(url, params=p))
        await started.wait()
        top = max(truth.rows["loss"], key=lambda s: truth.rows["loss"][s][1])
        await truth.write(store, "loss", {top: 123.0, 19_999: -77.0})
        second = asyncio.create_task(c.get(url, params=p))
        await asyncio.sleep(0.2)
        assert not second.done()  # it waits for the answer being computed
        gate.set()
        assert points_of((await first).json()) == before  # its snapshot predates the write
        assert points_of((await second).json()) == truth.expected(p)  # ours does not: computed again
        assert truth.expected(p) != before
        for round_ in range(3):
            await truth.write(store, "loss", {rnd.randrange(20_000): rnd.choice([50.0 + round_, -50.0 - round_])
                                              for _ in range(5)})
            bodies = await asyncio.gather(*(c.get(url, params=p) for _ in range(20)))
            for b in bodies:
                assert points_of(b.json()) == truth.expected(p)
        assert answers.hits >= 3 * 19 - 3  # most of them shared one computation
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]


async def test_memory_is_bounded(store: Store, database_url: str) -> None:
    """Beyond the budget the least recently used answers are dropped (asked again: computed again), the recent ones
    are kept; what is served stays exact."""
    truth = Truth()
    await truth.write(store, "loss", {s: math.sin(s / 50) for s in range(5000)})
    async with client_for(ApiSettings(database_url)) as c:
        answers = c._transport.app.state.answers  # type: ignore[attr-defined]
        answers.max_bytes = 100_000  # about ten answers of 100 points
        url = f"/api/v1/workloads/{UID}/metrics/data"
        questions = [{"downsample": 100, "from_step": 10 * i} for i in range(30)]
        for p in questions:
            assert points_of((await c.get(url, params=p)).json()) == truth.expected(p)
        count, size = answers.size
        assert size <= 100_000 and 3 <= count < 30
        hits = answers.hits
        assert points_of((await c.get(url, params=questions[-1])).json()) == truth.expected(questions[-1])
        assert answers.hits == hits + 1
        assert points_of((await c.get(url, params=questions[0])).json()) == truth.expected(questions[0])
        assert answers.hits == hits + 1  # dropped long ago
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]


async def test_the_second_connection_reads_in_the_first_ones_snapshot(store: Store, database_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A write commits after the request's snapshot was taken and before its second connection imports it: both
    halves of the series answer as of the snapshot (the oracle before the write); the next request (once the rollup
    is rebuilt) sees the write."""
    from trainscope.api import rollup
    from trainscope.api.app import Database

    rnd = random.Random(9)
    truth = Truth()
    for metric in ("a", "b", "c"):
        await truth.write(store, metric, {s: rnd.gauss(0, 1) for s in range(0, 40_000, 2)})
    await store.rollup.settle()
    p = {"downsample": 100}
    before = truth.expected(p)
    spare = Database.spare
    helpers: list[int] = []
    extremes = rollup.extremes

    @contextlib.asynccontextmanager
    async def write_first(self: Database) -> AsyncIterator[Any]:
        if not helpers:  # once: every series gets a new extreme, committed now
            for metric, rows in truth.rows.items():
                await truth.write(store, metric, {max(rows): 500.0, min(rows) + 2: -500.0})
        async with spare(self) as conn:
            yield conn

    async def spy(conn: Any, plans: Any, more: Any = ()) -> None:
        helpers.append(len(more))
        await extremes(conn, plans, more)

    monkeypatch.setattr(Database, "spare", write_first)
    monkeypatch.setattr(rollup, "extremes", spy)
    async with client_for(ApiSettings(database_url, answer_cache_mb=0)) as c:
        url = f"/api/v1/workloads/{UID}/metrics/data"
        first = points_of((await c.get(url, params=p)).json())
        await store.rollup.settle()  # the write lowered the watermarks: rolled up again, the rollup answers again
        second = points_of((await c.get(url, params=p)).json())
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    assert helpers == [1, 1]  # both requests read with a second connection
    assert first == before
    assert second == truth.expected(p) != before


async def test_a_slow_reset_of_the_second_connection_is_no_503(store: Store, database_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper connection comes from the pool with a short wait (SPARE_WAIT); its release resets it on the
    server, which on a busy server takes longer than that. asyncpg bounds a release by the acquire's timeout unless
    told otherwise: the request then failed as 503 with its answer computed (seen under 20 concurrent clients)."""
    import asyncpg

    from trainscope.api import app as app_module
    from trainscope.api import rollup

    rnd = random.Random(3)
    truth = Truth()
    for metric in ("a", "b"):
        await truth.write(store, metric, {s: rnd.gauss(0, 1) for s in range(0, 40_000, 2)})
    await store.rollup.settle()
    reset = asyncpg.Connection.reset
    helpers: list[int] = []
    extremes = rollup.extremes

    async def slow_reset(self: asyncpg.Connection, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        # a busy server: the reset's query waits for a core, within the budget asyncpg gives the reset
        await asyncio.wait_for(asyncio.sleep(app_module.SPARE_WAIT * 3), timeout)
        await reset(self, timeout=timeout)

    async def spy(conn: Any, plans: Any, more: Any = ()) -> None:
        helpers.append(len(more))
        await extremes(conn, plans, more)

    monkeypatch.setattr(asyncpg.Connection, "reset", slow_reset)
    monkeypatch.setattr(rollup, "extremes", spy)
    p = {"downsample": 100}
    async with client_for(ApiSettings(database_url, answer_cache_mb=0)) as c:
        r = await c.get(f"/api/v1/workloads/{UID}/metrics/data", params=p)
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    assert helpers == [1]  # the second connection was used (and released)
    assert r.status_code == 200, r.text
    assert points_of(r.json()) == truth.expected(p)


async def test_last_n_and_the_downsampled_points_come_from_one_snapshot(store: Store, database_url: str,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`last=N&downsample=M`: where the last N points start is found in the answer's own snapshot. A write that
    commits just before the answer's snapshot is taken (after the series were looked up) is in both the bounds
    and the points, so the answer is exactly the oracle's for the last N points then; and a kept answer is served
    again without looking for the bounds once more."""
    truth = Truth()
    await truth.write(store, "loss", {s: math.sin(s / 50) for s in range(5_000)})
    await store.rollup.settle()
    p = {"downsample": 64, "last": 1_000}
    url = f"/api/v1/workloads/{UID}/metrics/data"
    async with client_for(ApiSettings(database_url)) as c:
        answers = c._transport.app.state.answers  # type: ignore[attr-defined]
        answer = answers.answer

        async def late_write(*args: Any) -> Any:  # the series are known; the snapshot is not taken yet
            await truth.write(store, "loss", {5_000 + i: 2.0 + i for i in range(400)})
            monkeypatch.setattr(answers, "answer", answer)
            return await answer(*args)

        monkeypatch.setattr(answers, "answer", late_write)
        calls = []
        bounds = queries.last_n_bounds_in

        async def counted(*args: Any) -> Any:
            calls.append(1)
            return await bounds(*args)

        monkeypatch.setattr(queries, "last_n_bounds_in", counted)
        body = (await c.get(url, params=p)).json()
        rows = truth.rows["loss"]
        last = sorted(rows)[-p["last"]:]
        keep = [(s, math.floor(rows[s][0] * 1000), rows[s][1]) for s in last]
        assert points_of(body)["loss"] == [(s, t, v) for s, t, v in ds.minmax_reference(keep, p["downsample"])]
        assert (await c.get(url, params=p)).json() == body and answers.hits == 1 and len(calls) == 1
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
