"""The downsampling rollup (table `rollup`, migration 0006): per series and block of steps, the count and the
extreme points, which the API reads for `downsample=N` instead of every point.

Exact at every moment, and nearly free for the writer. Each series has a watermark (`series.rollup_upto`, a
multiple of 4,096): every block wholly below it is exact in `rollup`; the API answers from the rollup below it and
from the points above it. Two parties keep that true:

- a write that stores a step below the watermark lowers it, in the write's own transaction (`lower`: one statement
  that locks the write's series rows and lowers the watermarks, sent with the cursor upsert). Appends never land
  below it;
- the builder (`build_chunk`, run in the background by `Keeper`) aggregates the points between the watermark and
  the series' last closed 4,096-step block, at most CHUNK_POINTS points per transaction, and raises the watermark
  in the same transaction.

Concurrency (READ COMMITTED): the builder locks the series row (FOR NO KEY UPDATE SKIP LOCKED: it never waits for a
writer) before it reads a point; a writer locks the same row after its points are written and before it commits.
So a write whose points the builder did not see cannot commit before the builder has: its lock waits for the
builder's commit, then reads the raised watermark and lowers it again if its steps lie below. A write that locked
first makes the builder skip the series until it has committed. Lock order: points, then the series row, for
everyone; the builder reads points without locks, so no cycle. A writer waits at most for one chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping

import asyncpg

log = logging.getLogger(__name__)

SHIFTS = (4, 6, 8, 10, 12)  # blocks of 16, 64, 256, 1,024 and 4,096 steps
TOP = SHIFTS[-1]
NOTHING = -(2**63)  # a watermark below every step: nothing rolled up yet
CHUNK_POINTS = 65_536  # points aggregated per builder transaction (what a writer may wait for, ~tens of ms)


def aligned(step: int) -> int:
    """The watermark that keeps `step` above it: the start of its 4,096-step block."""
    return (step >> TOP) << TOP


# One statement, one round trip: lock the write's series rows in id order (so two writers of the same series
# cannot deadlock; MATERIALIZED keeps the locking query whole), then lower the watermark of each series whose lowest
# written step lies below the LOCKED row's watermark. Waiting for the lock, READ COMMITTED returns the row as the
# builder committed it; the UPDATE, whose scan still sees the older version, re-checks the join against the locked
# values (EvalPlanQual), so the decision is always taken on the newest watermark. `{also}`: another data-modifying
# statement of the write run as a CTE in the same round trip (the cursor upsert), parameters from $3.
_LOWER = """
WITH also AS ({also}), locked AS MATERIALIZED (
    SELECT id, rollup_upto FROM series WHERE id = ANY($1::bigint[]) ORDER BY id FOR NO KEY UPDATE
), written AS (
    SELECT sid, lo FROM unnest($1::bigint[], $2::bigint[]) AS t(sid, lo)
)
UPDATE series s SET rollup_upto = (w.lo >> {top}) << {top}
FROM locked l JOIN written w ON w.sid = l.id
WHERE s.id = l.id AND w.lo < l.rollup_upto
RETURNING s.id
"""


async def lower(conn: asyncpg.Connection, bounds: Mapping[int, tuple[int, int]], also: str = "SELECT",
                *args: object) -> set[int]:
    """In a write's transaction, after its points: lock the series rows and lower the watermark of each series
    whose lowest written step lies below it (aligned to its 4,096-step block); returns the series lowered. `also`
    (a statement taking `args` as $3...) runs in the same round trip."""
    sids = list(bounds)
    rows = await conn.fetch(_LOWER.format(also=also, top=TOP), sids, [bounds[sid][0] for sid in sids], *args)
    return {r["id"] for r in rows}


_CLAIM = "SELECT rollup_upto FROM series WHERE id = $1 FOR NO KEY UPDATE SKIP LOCKED"
_LAST = "SELECT step FROM points WHERE series_id = $1 ORDER BY step DESC LIMIT 1"
_NTH = "SELECT step FROM points WHERE series_id = $1 AND step >= $2 ORDER BY step OFFSET $3 LIMIT 1"
_CLEAR = "DELETE FROM rollup WHERE series_id = $1 AND block >= $2::bigint >> shift AND block < $3::bigint >> shift"
_TS_US = "(extract(epoch FROM ts) * 1000000)::float8"
# Blocks of [$2, $3) from the points, then each level from the one below (one statement, one pass over the points).
_BUILD = (
    f"WITH b{SHIFTS[0]} AS (SELECT step >> {SHIFTS[0]} AS block, count(*) AS n, "
    f"min(ARRAY[value, step::float8, {_TS_US}]) AS lo, max(ARRAY[value, step::float8, {_TS_US}]) AS hi "
    "FROM points WHERE series_id = $1 AND step >= $2 AND step < $3 GROUP BY 1)"
    + "".join(f", b{b} AS (SELECT block >> {b - a} AS block, sum(n)::bigint AS n, min(lo) AS lo, max(hi) AS hi "
              f"FROM b{a} GROUP BY 1)" for a, b in itertools.pairwise(SHIFTS))
    + " INSERT INTO rollup (series_id, shift, block, n, lo, hi) "
    + " UNION ALL ".join(f"SELECT $1, {sh}, block, n, lo, hi FROM b{sh}" for sh in SHIFTS)
)
_RAISE = "UPDATE series SET rollup_upto = $2 WHERE id = $1"


async def build_chunk(conn: asyncpg.Connection, sid: int, chunk: int = CHUNK_POINTS, *, whole: bool = False) -> str:
    """Roll up the next closed blocks of one series (at most about `chunk` points) in one transaction; `whole`:
    the block of its last step too (a series that stopped growing; an append there lowers the watermark again).

    Returns "done" (nothing left to roll up), "more" (call again) or "busy" (a writer holds the series now).
    """
    async with conn.transaction():
        upto = await conn.fetchval(_CLAIM, sid)
        if upto is None:  # locked by a writer, or the series is gone
            return "busy" if await conn.fetchval("SELECT 1 FROM series WHERE id = $1", sid) else "done"
        return await build_locked(conn, sid, upto, chunk, whole=whole)


async def build_locked(conn: asyncpg.Connection, sid: int, upto: int, chunk: int = CHUNK_POINTS, *,
                       whole: bool = False) -> str:
    """The body of build_chunk, inside a transaction that holds the series row's lock (watermark `upto`)."""
    last = await conn.fetchval(_LAST, sid)
    if last is None:
        return "done"
    target = aligned(last)  # blocks wholly below the last step's block: closed, appends land above them
    if whole and target + (1 << TOP) <= 2**63 - 1:
        target += 1 << TOP
    if upto >= target:
        return "done"
    end = target
    nth = await conn.fetchval(_NTH, sid, upto, chunk)
    if nth is not None and aligned(nth) + (1 << TOP) < end:
        end = aligned(nth) + (1 << TOP)
    await conn.execute(_CLEAR, sid, upto, end)  # blocks left from before the watermark was lowered
    await conn.execute(_BUILD, sid, upto, end)
    await conn.execute(_RAISE, sid, end)
    return "more" if end < target else "done"


async def forget(conn: asyncpg.Connection, uid: str) -> None:
    """Drop the rollup of a workload's series; their rows are locked first, so a chunk being built commits first."""
    await conn.execute("WITH s AS (SELECT id FROM series WHERE workload_uid = $1 FOR UPDATE) "
                       "DELETE FROM rollup WHERE series_id IN (SELECT id FROM s)", uid)


_BEHIND = """
SELECT s.id FROM series s
CROSS JOIN LATERAL (SELECT step FROM points WHERE series_id = s.id ORDER BY step DESC LIMIT 1) p
WHERE s.rollup_upto < (p.step >> 12) << 12 OR ($1 AND s.rollup_upto <= p.step)
"""


class Keeper:
    """Builds the rollup of the series a Store writes, in the background and off the write path.

    While writes keep coming it builds at most `duty` of the time (a chunk, then a pause `1/duty - 1` times as
    long), so a catch-up keeps its pace; once no write came for `idle` seconds it builds without pauses. A series
    whose watermark a write lowered (steps re-logged below it) waits for that pause: while a resumed run's
    catch-up keeps re-logging it, each batch would lower the watermark again and undo the build. A database
    error leaves the series queued and is retried with a back-off: the points are safe in `points`, and the API
    answers from them above the watermark meanwhile.
    """

    def __init__(self, pool: asyncpg.Pool, *, enabled: bool = True, duty: float = 0.1, idle: float = 1.0,
                 chunk: int = CHUNK_POINTS, quiet: float = 30.0):
        self.enabled = enabled
        self._pool = pool
        self._duty, self._idle, self._chunk = duty, idle, chunk
        self._queue: dict[int, None] = {}  # series to look at, oldest first
        self._deferred: set[int] = set()  # series lowered by a write: built once writes pause for `idle`
        # series -> when last written: its last, still open block is rolled up once it was not written for `quiet`
        # seconds (appends would lower the watermark again at once while it grows)
        self._written: dict[int, float] = {}
        self._quiet = quiet
        self._wake = asyncio.Event()
        self._last_write = 0.0
        self._task: asyncio.Task[None] | None = None
        self._scan_stored = True  # look for series stored before (or by a store without) the rollup, once
        self._closed = False

    def start(self) -> None:
        """Start the background builder (from a running event loop)."""
        if self.enabled and self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="rollup-keeper")

    def written(self, series_ids: Iterable[int], lowered: Iterable[int] = ()) -> None:
        """Called after a write committed: these series may have closed blocks to roll up; `lowered`: those whose
        watermark the write lowered."""
        if not self.enabled:
            return
        self._last_write = now = time.monotonic()
        ids = list(series_ids)
        low = set(lowered)
        for sid in ids:
            if sid in low:
                self._deferred.add(sid)
                self._queue.pop(sid, None)
            else:
                self._deferred.discard(sid)
                self._queue[sid] = None
        self._written.update(dict.fromkeys(ids, now))
        self._wake.set()
        self.start()

    async def close(self) -> None:
        """Stop the background builder (what is queued stays queued: `settle` still builds it)."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def settle(self) -> None:
        """Roll up every series now, the last blocks too, without pauses (tests, benches, a quiet moment)."""
        if not self.enabled:
            return
        async with self._pool.acquire() as conn:
            todo = [r["id"] for r in await conn.fetch(_BEHIND, True)]
        for sid in todo:
            while True:
                async with self._pool.acquire() as conn:
                    state = await build_chunk(conn, sid, self._chunk, whole=True)
                if state == "done":
                    break
                if state == "busy":
                    await asyncio.sleep(0.01)
        self._written.clear()
        self._deferred.clear()

    async def _find_stored(self) -> None:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(_BEHIND, False)
        self._queue.update(dict.fromkeys(r["id"] for r in rows))
        self._scan_stored = False

    async def _run(self) -> None:
        backoff = 1.0
        self._wake.set()
        whole: set[int] = set()
        while True:
            # sleep until the next series has been quiet long enough, writes paused for the deferred ones, or a
            # write wakes us
            deadlines = [min(self._written.values()) + self._quiet] if self._written else []
            if self._deferred:
                deadlines.append(self._last_write + self._idle)
            if deadlines:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), max(min(deadlines) - time.monotonic(), 0.0))
                now = time.monotonic()
                if self._deferred and now - self._last_write >= self._idle:
                    self._queue.update(dict.fromkeys(self._deferred))
                    self._deferred.clear()
                for sid, at in list(self._written.items()):
                    if now - at >= self._quiet:
                        del self._written[sid]
                        whole.add(sid)
                        self._queue[sid] = None
            else:
                await self._wake.wait()
            self._wake.clear()
            try:
                if self._scan_stored:
                    await self._find_stored()
                while self._queue:
                    sid = next(iter(self._queue))
                    started = time.monotonic()
                    async with self._pool.acquire() as conn:
                        last = sid in whole and sid not in self._written
                        state = await build_chunk(conn, sid, self._chunk, whole=last)
                    if state == "done":
                        self._queue.pop(sid, None)
                        whole.discard(sid)
                    else:  # to the back: other series get their turn
                        self._queue.pop(sid, None)
                        self._queue[sid] = None
                    spent = time.monotonic() - started
                    if time.monotonic() - self._last_write < self._idle:
                        await asyncio.sleep(spent * (1 / self._duty - 1))
                    elif state == "busy":
                        await asyncio.sleep(0.01)
                    else:
                        await asyncio.sleep(0)
                backoff = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as err:  # an outage or a timeout: retry later, the queue is kept
                log.debug("rollup: %s; retrying in %.0fs", err, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                self._wake.set()
