"""The Store: one asyncpg pool per process, shared by every collector, with the exactly-once writer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg

from trainscope.collector.health import Condition, HealthEvent
from trainscope.collector.points import Columns, RawPoint
from trainscope.collector.store import rollup, writer
from trainscope.collector.store.codecs import init_connection, storable_json
from trainscope.collector.store.errors import StoreState, unavailable_as_store_error
from trainscope.collector.store.migrate import run_migrations
from trainscope.collector.store.model import LatestValue, RunInfo, StoreHealth, StoreUnavailable, WriteResult

# Seconds: a connection attempt, and one statement. A 200k-point batch takes ~2 s; a server that has not answered
# in a minute is treated as down (StoreUnavailable, reason Timeout).
CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0

_LATEST = """
SELECT s.source, s.kind, s.run, s.metric, p.step, p.ts, p.value
FROM series s
CROSS JOIN LATERAL (
    SELECT step, ts, value FROM points WHERE series_id = s.id ORDER BY step DESC LIMIT 1
) p
WHERE s.workload_uid = $1
ORDER BY s.source, s.run, s.metric
"""

_MAX_STEPS = """
SELECT s.source, max(m.step) AS step
FROM series s
CROSS JOIN LATERAL (SELECT max(step) AS step FROM points WHERE series_id = s.id) m
WHERE s.workload_uid = $1 AND m.step IS NOT NULL
GROUP BY s.source
"""

_COUNTS = """
SELECT s.source, s.metric, count(*) AS n
FROM series s JOIN points p ON p.series_id = s.id
WHERE s.workload_uid = $1
GROUP BY s.source, s.metric
"""

_REGISTER = """
INSERT INTO workloads (uid, namespace, name, spec) VALUES ($1, $2, $3, $4)
ON CONFLICT (uid) DO UPDATE SET namespace = EXCLUDED.namespace, name = EXCLUDED.name, spec = EXCLUDED.spec,
                                updated_at = now(), deleted_at = NULL
"""


async def _release(conn: asyncpg.Connection) -> None:
    """Reset of a connection going back to the pool: nothing. asyncpg rolls back a transaction left open before
    calling it; the store sets no session settings, LISTENs, keeps no cursors or advisory locks across a release
    (the migrator unlocks its own), so asyncpg's default reset (RESET ALL, UNLISTEN, CLOSE ALL, advisory unlock)
    would only add a round trip to every write."""


def storable_text(text: str) -> str:
    """`text` as PostgreSQL text can hold it (no NUL, no lone surrogate)."""
    out = storable_json(text)
    return out if isinstance(out, str) else str(text)


class Store:
    """Workloads, series, points and cursors in PostgreSQL; safe to share between tasks.

    Connection-level failures surface as StoreUnavailable (retry the same call later); the pool reconnects
    by itself once the server is back.
    """

    def __init__(self, pool: asyncpg.Pool, state: StoreState | None = None, *, timeout: float = COMMAND_TIMEOUT,
                 keep_rollup: bool = True):
        self._pool = pool
        # The downsampling rollup, built off the write path (store/rollup.py); off only to measure what it costs.
        self.rollup = rollup.Keeper(pool, enabled=keep_rollup)
        self.state = state or StoreState()
        self._timeout = timeout
        # (uid, source) -> {(run, metric): series id}. Filled only after a commit, so it never names a series
        # that a rolled-back transaction created.
        self._series: dict[tuple[str, str], dict[writer.SeriesKey, int]] = {}
        # series id -> highest step known to be stored; only decides whether to try the COPY fast path.
        self._max_step: dict[int, int] = {}

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10, migrate: bool = True,
                   state: StoreState | None = None, connect_timeout: float = CONNECT_TIMEOUT,
                   command_timeout: float = COMMAND_TIMEOUT, keep_rollup: bool = True) -> Store:
        """Connect a pool to `dsn` (and migrate); raises StoreUnavailable (with its reason) if the database
        cannot be used, and records the outcome in `state`.

        A server that accepts connections but never answers (a stopped postmaster) fails the connect after
        `connect_timeout` and any statement after `command_timeout` instead of hanging the caller.
        """
        state = state or StoreState()
        try:
            with unavailable_as_store_error():
                pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=init_connection,
                                                 reset=_release, timeout=connect_timeout,
                                                 command_timeout=command_timeout)
        except StoreUnavailable as err:
            state.failed(err)
            raise
        store = cls(pool, state, timeout=command_timeout, keep_rollup=keep_rollup)
        if migrate:
            try:
                await store.migrate()
            except BaseException:
                pool.terminate()  # close() would wait for a hung server to answer
                raise
        state.ok()
        store.rollup.start()
        return store

    async def close(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109 (a bound on the graceful part)
        """Close every connection of the pool (waits for those in use to be released, at most `timeout`, by
        default the command timeout: then they are dropped). False when some had to be dropped."""
        await self.rollup.close()
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout if timeout is None else timeout)
        except TimeoutError:
            self._pool.terminate()
            return False
        return True

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            with unavailable_as_store_error():
                # No limit on waiting for a free connection: with many collectors that is load, not an outage. A
                # hung server is caught by the connect and statement timeouts of the connections themselves.
                async with self._pool.acquire() as conn:
                    yield conn
        except StoreUnavailable as err:
            self.state.failed(err)
            raise
        self.state.ok()

    async def ping(self, limit: float = 5.0) -> StoreHealth:
        """Ask the database now (`SELECT 1`, at most `limit` seconds); the answer lands in `state` too."""
        with contextlib.suppress(StoreUnavailable):
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1", timeout=limit)
        return self.state.health

    async def migrate(self) -> list[str]:
        """Apply pending migrations; returns the names applied."""
        async with self._connection() as conn:
            return await run_migrations(conn)

    async def register_workload(self, uid: str, namespace: str, name: str, spec: dict[str, Any]) -> None:
        """Create or refresh a workload row; a re-created workload is no longer marked deleted."""
        async with self._connection() as conn:
            await conn.execute(_REGISTER, uid, namespace, name, spec)

    async def forget_workload(self, uid: str, *, delete_data: bool) -> None:
        """Mark the workload deleted; with `delete_data` also remove its series, points and cursors."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute("UPDATE workloads SET deleted_at = now(), updated_at = now() WHERE uid = $1", uid)
            if delete_data:
                await rollup.forget(conn, uid)
                await conn.execute(
                    "DELETE FROM points WHERE series_id IN (SELECT id FROM series WHERE workload_uid = $1)", uid)
                await conn.execute("DELETE FROM series WHERE workload_uid = $1", uid)
                await conn.execute("DELETE FROM cursors WHERE workload_uid = $1", uid)
                await conn.execute("DELETE FROM runs WHERE workload_uid = $1", uid)
                await conn.execute("DELETE FROM health_events WHERE workload_uid = $1", uid)
                await conn.execute("DELETE FROM rejected_points WHERE workload_uid = $1", uid)
        if delete_data:
            for key in [k for k in self._series if k[0] == uid]:
                for sid in self._series.pop(key).values():
                    self._max_step.pop(sid, None)

    async def load_cursor(self, uid: str, source: str) -> Any | None:
        """The cursor last committed by `write` for this source, or None."""
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT cursor FROM cursors WHERE workload_uid = $1 AND source = $2", uid, source)

    async def write(self, uid: str, source: str, kind: str, points: Sequence[RawPoint] | Columns, cursor: Any,
                    runs: Mapping[str, Mapping[str, Any]] | None = None) -> WriteResult:
        """Store a batch, its cursor and its runs' metadata in one transaction: all of it or nothing.

        Idempotent per (series, step): a later observation (in the order the source gives them) replaces the
        stored value whatever its ts; the same observation again (equal ts and value) is ignored, so a batch
        retried after a lost commit acknowledgement changes nothing.
        """
        try:
            return await self._write(uid, source, kind, points, cursor, runs, trust_cache=True)
        except asyncpg.UniqueViolationError:
            # The cache said "all new" and a step was stored after all (another writer, data deleted and
            # rewritten): nothing of the attempt stays; this time every row merges and the cache is refreshed.
            return await self._write(uid, source, kind, points, cursor, runs, trust_cache=False)

    async def _write(self, uid: str, source: str, kind: str, points: Sequence[RawPoint] | Columns, cursor: Any,
                     runs: Mapping[str, Mapping[str, Any]] | None, *, trust_cache: bool) -> WriteResult:
        """One transaction of `write`. With `trust_cache`, rows past the cached highest step of their series are
        COPied straight into points; a wrong cache then fails the COPY (unique violation) and the whole
        transaction, which `write` retries without it."""
        async with self._connection() as conn, conn.transaction():
            if runs:
                await writer.save_runs(conn, uid, source, runs)
            if not points:
                await writer.save_cursor(conn, uid, source, cursor)
                return WriteResult(0, 0)
            ids = self._series.setdefault((uid, source), {})
            created: dict[writer.SeriesKey, int] = {}
            known = self._max_step
            try:
                if not trust_cache:
                    raise KeyError  # ask the database for every series' id and highest step
                rows = writer.to_rows(points, ids)
            except KeyError:
                keys = writer.series_keys(points)
                resolved = await writer.resolve_series(conn, uid, source, kind, keys if not trust_cache
                                                       else keys - ids.keys())
                created = {key: sid for key, (sid, _) in resolved.items()}
                for sid, max_step in resolved.values():
                    if not trust_cache:  # the database's word replaces the cache's
                        known.pop(sid, None)
                    if max_step is not None:
                        known[sid] = max(max_step, known.get(sid, max_step))
                rows = writer.to_rows(points, {**ids, **created})
            bounds = writer.step_bounds(rows)
            # Steps past what this process knows is stored are almost surely new: COPY them (fast) and merge only
            # the others. No savepoint around the COPY: if the cache is wrong, its unique violation aborts the
            # transaction and write() starts again without trusting the cache.
            if not trust_cache:
                fresh, rest = None, rows
            elif all(sid not in known or lo > known[sid] for sid, (lo, _) in bounds.items()):
                fresh, rest = rows, None
            else:
                fresh, rest = writer.split_by_known(rows, known)
            inserted = updated = 0
            # what the write changed, per series: the rollup's watermark and builder need to know no more
            changed = bounds if rest is None else writer.step_bounds(fresh) if fresh else {}
            if fresh:
                await writer.copy_rows(conn, "points", fresh)
                inserted = len(fresh)
            if rest:
                merged_in, updated, merged = await writer.merge(conn, rest)
                inserted += merged_in
                for sid, (lo, hi) in merged.items():
                    was = changed.get(sid)
                    changed[sid] = (lo, hi) if was is None else (min(lo, was[0]), max(hi, was[1]))
            lowered: set[int] = set()
            if self.rollup.enabled:  # with the cursor, in one round trip
                lowered = await rollup.lower(conn, changed, writer.save_cursor_sql(3), uid, source, cursor)
            else:
                await writer.save_cursor(conn, uid, source, cursor)
        # Committed: only now may the caches learn about it.
        ids.update(created)
        for sid, (_, hi) in bounds.items():
            if sid not in known or hi > known[sid]:
                known[sid] = hi
        if changed:
            self.rollup.written(changed, lowered)
        return WriteResult(inserted, updated)

    async def reject(self, uid: str, source: str, kind: str, rejected: Sequence[tuple[RawPoint, str]]) -> None:
        """Keep points that cannot be stored as points, with why, in `rejected_points` (see store/quarantine.py)."""
        rows = [(uid, source, kind, storable_text(run), storable_text(metric), step, ts, value, storable_text(why))
                for (metric, step, ts, value, run), why in rejected]
        async with self._connection() as conn:
            await conn.executemany(
                "INSERT INTO rejected_points (workload_uid, source, kind, run, metric, step, ts, value, reason) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", rows)

    async def latest(self, uid: str) -> list[LatestValue]:
        """Per series of the workload, the point with the highest step."""
        async with self._connection() as conn:
            rows = await conn.fetch(_LATEST, uid)
        return [LatestValue(*r) for r in rows]

    async def max_steps(self, uid: str) -> dict[str, int]:
        """Per source name, the highest stored step (sources without points are absent)."""
        async with self._connection() as conn:
            rows = await conn.fetch(_MAX_STEPS, uid)
        return {r["source"]: r["step"] for r in rows}

    async def counts(self, uid: str) -> dict[tuple[str, str], int]:
        """(source, metric) -> number of stored points, summed over runs."""
        async with self._connection() as conn:
            rows = await conn.fetch(_COUNTS, uid)
        return {(r["source"], r["metric"]): r["n"] for r in rows}

    async def runs(self, uid: str) -> list[RunInfo]:
        """What the sources said about each run of the workload (display name, state, config...)."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT source, run, info, extract(epoch FROM updated_at)::float8 AS updated "
                "FROM runs WHERE workload_uid = $1 ORDER BY source, run", uid)
        return [RunInfo(r["source"], r["run"], r["info"], r["updated"]) for r in rows]

    async def add_health_events(self, uid: str, events: Sequence[HealthEvent]) -> None:
        """Append condition transitions to the workload's health history."""
        rows = [(uid, e.condition.type, e.condition.status, e.condition.reason, e.condition.message,
                 e.condition.metric, e.condition.step, e.condition.value, e.at) for e in events]
        async with self._connection() as conn:
            await conn.executemany(
                "INSERT INTO health_events (workload_uid, type, status, reason, message, metric, step, value, at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", rows)

    async def health_events(self, uid: str, limit: int = 100) -> list[HealthEvent]:
        """The newest `limit` transitions of the workload, oldest first."""
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT * FROM (SELECT id, type, status, reason, message, metric, step, value, at FROM health_events "
                "WHERE workload_uid = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id", uid, limit)
        return [HealthEvent(r["at"], Condition(r["type"], r["status"], r["reason"], r["message"], r["metric"],
                                               r["step"], r["value"])) for r in rows]
