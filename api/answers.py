"""Answers shared between requests that ask the same bounded question (`downsample=N`): a dashboard watched by many
users asks the same thing over and over; it is computed once and served again while it is still the exact answer.

Exact at every moment: an answer is kept with the snapshot it was computed in (S). A request takes its own snapshot
(S') and serves the kept answer only if no point of its series was written by a transaction visible in S' but not
in S — every write sets `points.ingest_xid` to its transaction (migration 0003; a replacement sets it again), which
the live stream relies on as well. One probe of the BRIN index on ingest_xid, over the rows written since S. Once
confirmed, the entry's snapshot moves to S', so the next check only looks at what came later. The series themselves
are part of the key (a new series, or a workload deleted and created again, is another question); the store deletes
points only together with their series.

Concurrent requests for an answer being computed wait for it, then check it like any kept answer (a write that
committed meanwhile makes them compute their own). Memory is bounded: the least recently used answers are dropped
beyond `max_bytes`; an answer larger than a quarter of it is not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

import asyncpg
from fastapi.responses import Response

from trainscope.api.downsample import snapshot

_SNAPSHOT = "SELECT txid_current_snapshot()::text"
# A point of these series written by a transaction the kept answer's snapshot did not see (and ours does).
_CHANGED = """
SELECT EXISTS (SELECT 1 FROM points
               WHERE series_id = ANY($1::bigint[]) AND ingest_xid >= txid_snapshot_xmin($2::text::txid_snapshot)
                 AND NOT txid_visible_in_snapshot(ingest_xid, $2::text::txid_snapshot))
"""
_KEPT_HEADERS = ("x-total-count", "x-downsampled", "content-disposition")


@dataclass(slots=True)
class Kept:
    snapshot: str
    body: bytes
    media_type: str | None
    headers: dict[str, str]

    @property
    def size(self) -> int:
        return len(self.body) + 256

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=self.headers)


class Answers:
    """Kept answers, keyed by the question (workload, filters, N, format, the series' ids); see the module doc."""

    def __init__(self, max_bytes: int = 64 << 20):
        self.max_bytes = max_bytes
        self._kept: OrderedDict[Hashable, Kept] = OrderedDict()
        self._bytes = 0
        self._computing: dict[Hashable, asyncio.Future[None]] = {}
        self.hits = self.misses = 0

    async def answer(self, conn: asyncpg.Connection, key: Hashable, series_ids: Sequence[int],
                     compute: Callable[[asyncpg.Connection], Awaitable[Response]]) -> Response:
        """The answer to `key` in a snapshot taken now: the kept one if still exact, else `compute(conn)` (run
        inside that REPEATABLE READ snapshot, which it must not leave) and kept."""
        if self.max_bytes <= 0:
            async with snapshot(conn):
                return await compute(conn)
        running = self._computing.get(key)
        if running is not None:  # the same question is being answered: wait, then check it as a kept answer
            with contextlib.suppress(Exception):
                await asyncio.shield(running)
        done: asyncio.Future[None] | None = None
        if key not in self._computing:  # claimed before any await: requests arriving now wait for this one
            done = self._computing[key] = asyncio.get_running_loop().create_future()
        try:
            # snapshot()'s settings from the start: the check below needs a custom plan (a generic one may read
            # every point of the series instead of the few written since: seconds instead of a millisecond)
            async with snapshot(conn):
                now = await conn.fetchval(_SNAPSHOT)  # the transaction's snapshot (its first statement)
                kept = self._kept.get(key)
                if kept is not None and not await conn.fetchval(_CHANGED, list(series_ids), kept.snapshot):
                    kept.snapshot = now  # still exact at `now`: later checks start from here
                    self._kept.move_to_end(key)
                    self.hits += 1
                    return kept.response()
                self.misses += 1
                response = await compute(conn)
                self._keep(key, now, response)
                return response
        finally:
            if done is not None:
                del self._computing[key]
                done.set_result(None)

    def _keep(self, key: Hashable, snap: str, response: Response) -> None:
        headers = {k: v for k, v in response.headers.items() if k in _KEPT_HEADERS}
        kept = Kept(snap, bytes(response.body), response.media_type, headers)
        old = self._kept.pop(key, None)
        if old is not None:
            self._bytes -= old.size
        if kept.size * 4 > self.max_bytes:
            return
        self._kept[key] = kept
        self._bytes += kept.size
        while self._bytes > self.max_bytes:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= dropped.size

    @property
    def size(self) -> tuple[int, int]:
        """(answers kept, their bytes)."""
        return len(self._kept), self._bytes

