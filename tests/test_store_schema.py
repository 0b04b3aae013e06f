"""Migrations, workloads and the read side of the store."""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest

from trainscope.collector.points import Point
from trainscope.collector.store import Store, StoreUnavailable, apply_migrations
from trainscope.collector.store.migrate import available_migrations

T0 = 1_700_000_000.0


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def names() -> list[str]:
    return [name for name, _ in available_migrations()]


async def test_migrations_apply_once_in_order(database_url: str) -> None:
    assert names() and names() == sorted(names())
    assert await apply_migrations(database_url) == names()
    assert await apply_migrations(database_url) == []
    store = await Store.open(database_url)
    try:
        assert await store.migrate() == []
    finally:
        await store.close()
    rows = await fetch(database_url, "SELECT name FROM schema_migrations ORDER BY name")
    assert [r["name"] for r in rows] == names()
    tables = await fetch(database_url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    assert {r["tablename"] for r in tables} == {"schema_migrations", "workloads", "series", "points", "cursors", "runs",
                                                       "health_events", "rejected_points", "rollup"}


async def test_concurrent_migrations_apply_each_file_exactly_once(database_url: str) -> None:
    results = await asyncio.gather(*(apply_migrations(database_url) for _ in range(6)))
    applied = [name for result in results for name in result]
    assert sorted(applied) == names()
    rows = await fetch(database_url, "SELECT name, count(*) AS n FROM schema_migrations GROUP BY name")
    assert {r["name"]: r["n"] for r in rows} == dict.fromkeys(names(), 1)


async def test_concurrent_store_opens_migrate_once(database_url: str) -> None:
    stores = await asyncio.gather(*(Store.open(database_url, max_size=2) for _ in range(4)))
    try:
        await stores[0].write("w", "tb", "tensorboard", [Point("loss", 1, T0, 1.0)], None)
        assert await stores[3].counts("w") == {("tb", "loss"): 1}
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    assert len(await fetch(database_url, "SELECT name FROM schema_migrations")) == len(names())


async def test_open_without_migrate_leaves_the_database_alone(database_url: str) -> None:
    store = await Store.open(database_url, migrate=False)
    await store.close()
    assert await fetch(database_url, "SELECT 1 FROM pg_tables WHERE tablename = 'points'") == []


async def test_register_workload_upserts_and_clears_deleted(store: Store, database_url: str) -> None:
    await store.register_workload("u1", "ns", "train-a", {"sources": [{"tensorboard": {"logDir": "/x"}}]})
    await store.register_workload("u1", "ns", "train-a", {"sources": [], "totalSteps": 10})
    rows = await fetch(database_url, "SELECT namespace, name, spec::text, deleted_at FROM workloads")
    assert len(rows) == 1
    assert (rows[0]["namespace"], rows[0]["name"], rows[0]["deleted_at"]) == ("ns", "train-a", None)
    assert rows[0]["spec"] == '{"sources": [], "totalSteps": 10}'
    await store.forget_workload("u1", delete_data=False)
    assert (await fetch(database_url, "SELECT deleted_at FROM workloads"))[0]["deleted_at"] is not None
    await store.register_workload("u1", "ns", "train-a", {})
    assert (await fetch(database_url, "SELECT deleted_at FROM workloads"))[0]["deleted_at"] is None


async def _fill(store: Store, uid: str) -> None:
    await store.register_workload(uid, "ns", uid, {})
    await store.write(uid, "tb", "tensorboard", [Point("loss", s, T0 + s, 1.0 / (s + 1)) for s in range(10)], 10)
    await store.write(uid, "logs", "log", [Point("loss", s, T0 + s, 2.0) for s in range(4)], {"offset": 99})


async def test_forget_workload_keeps_data_unless_asked(store: Store, database_url: str) -> None:
    await _fill(store, "u1")
    await _fill(store, "u2")
    await store.forget_workload("u1", delete_data=False)
    assert await store.counts("u1") == {("tb", "loss"): 10, ("logs", "loss"): 4}
    assert await store.load_cursor("u1", "logs") == {"offset": 99}

    await store.forget_workload("u1", delete_data=True)
    assert await store.counts("u1") == {}
    assert await store.latest("u1") == []
    assert await store.max_steps("u1") == {}
    assert await store.load_cursor("u1", "tb") is None
    assert await fetch(database_url, "SELECT 1 FROM series WHERE workload_uid = 'u1'") == []
    rows = await fetch(database_url, "SELECT deleted_at FROM workloads WHERE uid = 'u1'")
    assert rows[0]["deleted_at"] is not None
    # The other workload is untouched.
    assert await store.counts("u2") == {("tb", "loss"): 10, ("logs", "loss"): 4}
    assert await store.load_cursor("u2", "tb") == 10
    total = await fetch(database_url, "SELECT count(*) AS n FROM points")
    assert total[0]["n"] == 14
    # Writing again after a delete starts from scratch (no stale series ids in the store's caches).
    await store.write("u1", "tb", "tensorboard", [Point("loss", 3, T0, 0.5)], 1)
    assert await store.counts("u1") == {("tb", "loss"): 1}
    assert [(v.step, v.value) for v in await store.latest("u1")] == [(3, 0.5)]


async def test_latest_max_steps_and_counts(store: Store) -> None:
    await store.write("u1", "tb", "tensorboard", [
        *[Point("loss", s, T0 + s, 10.0 - s) for s in range(0, 100, 10)],
        *[Point("lr", s, T0 + s, 1e-4) for s in range(0, 95, 5)],
        Point("loss", 50, T0 + 50, 7.0, "eval-run"),
    ], None)
    await store.write("u1", "wandb", "wandb", [Point("loss", s, T0 + s + 0.5, math.nan) for s in range(120)], None)
    await store.write("u2", "tb", "tensorboard", [Point("loss", 1000, T0, 0.0)], None)

    latest = {(v.source, v.run, v.metric): v for v in await store.latest("u1")}
    assert set(latest) == {("tb", "", "loss"), ("tb", "", "lr"), ("tb", "eval-run", "loss"), ("wandb", "", "loss")}
    lv = latest["tb", "", "loss"]
    assert (lv.kind, lv.step, lv.ts, lv.value) == ("tensorboard", 90, T0 + 90, -80.0)
    assert (latest["tb", "", "lr"].step, latest["tb", "", "lr"].value) == (90, 1e-4)
    assert latest["tb", "eval-run", "loss"].step == 50
    w = latest["wandb", "", "loss"]
    assert (w.kind, w.step, w.ts) == ("wandb", 119, T0 + 119.5) and math.isnan(w.value)

    assert await store.max_steps("u1") == {"tb": 90, "wandb": 119}
    assert await store.counts("u1") == {("tb", "loss"): 11, ("tb", "lr"): 19, ("wandb", "loss"): 120}
    assert await store.max_steps("nobody") == {} and await store.counts("nobody") == {}
    assert await store.latest("nobody") == []


async def test_open_unreachable_raises_store_unavailable(tmp_path: object) -> None:
    dsn = "postgresql://postgres@/postgres?host=/nonexistent-trainscope-socket-dir"
    with pytest.raises(StoreUnavailable):
        await Store.open(dsn)
    with pytest.raises(StoreUnavailable):
        await apply_migrations(dsn)
