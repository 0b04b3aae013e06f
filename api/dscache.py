"""Downsampled answers shared between requests while the workload's data is unchanged (a dashboard polled by many
users asks the same question again and again).

The key holds the question (series, filters, `last` bounds, N) and the data version: the transaction ids (xmin) of
the workload's cursor rows. Every write of points commits its source's cursor row in the same transaction, and
deleting a workload's data deletes them, so any change to the points changes the version. Concurrent requests for
the same key wait for one computation (single flight). Bounded: the newest MAX_ENTRIES answers of at most
MAX_POINTS points each.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")
MAX_ENTRIES = 32
MAX_POINTS = 200_000

_VERSION = """
SELECT coalesce(array_agg(ARRAY[hashtext(source)::bigint, xmin::text::bigint] ORDER BY source), '{}')
FROM cursors WHERE workload_uid IN (SELECT DISTINCT workload_uid FROM series WHERE id = ANY($1::bigint[]))
"""


class AnswerCache:
    """LRU of computed answers, with one computation per key at a time."""

    def __init__(self, max_entries: int = MAX_ENTRIES):
        self._done: OrderedDict[Hashable, Any] = OrderedDict()
        self._running: dict[Hashable, asyncio.Future[Any]] = {}
        self._max = max_entries
        self.hits = self.misses = 0

    async def version(self, conn: asyncpg.Connection, series_ids: list[int]) -> tuple[tuple[int, int], ...]:
        rows = await conn.fetchval(_VERSION, series_ids)
        return tuple(tuple(r) for r in rows)

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[T]], size: Callable[[T], int]) -> T:
        if key in self._done:
            self._done.move_to_end(key)
            self.hits += 1
            return self._done[key]
        running = self._running.get(key)
        if running is not None:
            self.hits += 1
            return await asyncio.shield(running)
        self.misses += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._running[key] = fut
        try:
            value = await compute()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._running.pop(key, None)
        fut.set_result(value)
        if size(value) <= MAX_POINTS:
            self._done[key] = value
            while len(self._done) > self._max:
                self._done.popitem(last=False)
        return value
