"""The database going away and coming back: StoreUnavailable, then recovery with nothing lost or doubled."""

from __future__ import annotations

import asyncio

import pytest

from trainscope.collector.points import Point
from trainscope.collector.store import Store, StoreUnavailable, WriteResult

T0 = 1_700_000_000.0


def batch(steps: range) -> list[Point]:
    return [Point(f"m{m}", s, T0 + s, s + m / 10) for s in steps for m in range(5)]


async def test_outage_then_recovery_loses_and_duplicates_nothing(restartable_pg) -> None:
    store = await Store.open(restartable_pg.url, min_size=2, max_size=4)
    try:
        assert await store.write("w", "tb", "tensorboard", batch(range(0, 100)), 100) == WriteResult(500, 0)

        await asyncio.to_thread(restartable_pg.stop)
        pending = batch(range(100, 200))
        with pytest.raises(StoreUnavailable):
            await store.write("w", "tb", "tensorboard", pending, 200)
        with pytest.raises(StoreUnavailable):
            await store.load_cursor("w", "tb")
        with pytest.raises(StoreUnavailable):
            await store.counts("w")

        await asyncio.to_thread(restartable_pg.start)
        # The caller retries the same batch; the pool has reconnected by itself.
        assert await store.write("w", "tb", "tensorboard", pending, 200) == WriteResult(500, 0)
        # A retry of a batch that did commit (its acknowledgement lost) is harmless.
        assert await store.write("w", "tb", "tensorboard", pending, 200) == WriteResult(0, 0)
        assert await store.counts("w") == {("tb", f"m{m}"): 200 for m in range(5)}
        assert await store.max_steps("w") == {"tb": 199}
        assert await store.load_cursor("w", "tb") == 200
    finally:
        await store.close()


async def test_store_opens_once_the_server_is_back(restartable_pg) -> None:
    await asyncio.to_thread(restartable_pg.stop)
    with pytest.raises(StoreUnavailable):
        await Store.open(restartable_pg.url)
    await asyncio.to_thread(restartable_pg.start)
    store = await Store.open(restartable_pg.url)
    try:
        assert await store.write("w", "tb", "tensorboard", batch(range(3)), "c") == WriteResult(15, 0)
    finally:
        await store.close()


async def test_server_restart_while_idle_is_invisible(restartable_pg) -> None:
    store = await Store.open(restartable_pg.url, min_size=3, max_size=3)
    try:
        await store.write("w", "tb", "tensorboard", batch(range(10)), 1)
        await asyncio.to_thread(restartable_pg.stop)
        await asyncio.to_thread(restartable_pg.start)
        # Every pooled connection died with the old server; the pool replaces them on acquire.
        for i in range(5):
            await store.write("w", "tb", "tensorboard", batch(range(10 + i, 11 + i)), 2 + i)
        assert await store.counts("w") == {("tb", f"m{m}"): 15 for m in range(5)}
    finally:
        await store.close()
