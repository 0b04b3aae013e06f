"""Every read the API makes. Nothing here writes: the pool's sessions are read-only.

Timestamps are integer milliseconds since the epoch on this side (the API's unit), converted exactly from
PostgreSQL's microseconds by the connection's codec: no floats, so `start`/`end` match what answers show.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

import asyncpg

from trainscope.api import rollup
from trainscope.api.datasources import data_source_of, kinds_of
from trainscope.api.params import Filters, Position, SeriesKey

_PG_EPOCH_US = 946_684_800 * 1_000_000  # PostgreSQL counts microseconds from 2000-01-01

Row = tuple[int, int, float]  # (step, timestamp ms, value)
Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]  # a pool connection for one short read


def _ms_to_pg(ms: int) -> tuple[int]:
    return (ms * 1000 - _PG_EPOCH_US,)


def _pg_to_ms(value: tuple[int]) -> int:
    return (value[0] + _PG_EPOCH_US) // 1000  # floor: a point at 12.9999 ms shows (and filters) as 12


async def init_connection(conn: asyncpg.Connection) -> None:
    """Codecs of the API's own pool: timestamptz <-> int ms, jsonb <-> Python."""
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=_ms_to_pg, decoder=_pg_to_ms,
                              format="tuple")
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=json.dumps, decoder=json.loads, format="text")


@dataclass(frozen=True, slots=True)
class Series:
    """One stored series of a workload."""

    id: int
    source: str
    kind: str
    run: str
    metric: str

    @property
    def data_source(self) -> str:
        return data_source_of(self.kind)

    @property
    def key(self) -> SeriesKey:
        return (self.metric, self.data_source, self.source, self.run)


# ---- workloads --------------------------------------------------------------------------------------------------

async def workload_exists(conn: asyncpg.Connection, uid: str) -> bool:
    """A workloads row, or at least one series under that uid (data written without registration)."""
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM workloads WHERE uid = $1) "
        "OR EXISTS (SELECT 1 FROM series WHERE workload_uid = $1)", uid)


async def uid_by_name(conn: asyncpg.Connection, namespace: str, name: str) -> str | None:
    """The uid of namespace/name: the live workload of that name, else the one seen last."""
    return await conn.fetchval(
        "SELECT uid FROM workloads WHERE namespace = $1 AND name = $2 "
        "ORDER BY deleted_at IS NULL DESC, updated_at DESC, uid LIMIT 1", namespace, name)


_WORKLOADS = """
SELECT w.uid, w.namespace, w.name, w.spec, w.created_at, w.updated_at, w.deleted_at
FROM workloads w
WHERE ($1::text IS NULL OR w.namespace = $1) AND ($2::text IS NULL OR w.name = $2)
  AND ($3 OR w.deleted_at IS NULL) AND ($4::text IS NULL OR w.uid = $4)
ORDER BY w.namespace, w.name, w.uid
"""

# The newest point of every series of the listed workloads (one backward index probe per series).
_LATEST = """
SELECT s.workload_uid, s.kind, s.metric, p.step, p.ts, p.value
FROM series s
CROSS JOIN LATERAL (SELECT step, ts, value FROM points WHERE series_id = s.id ORDER BY step DESC LIMIT 1) p
WHERE s.workload_uid = ANY($1::text[])
"""


async def workloads(conn: asyncpg.Connection, *, namespace: str | None = None, name: str | None = None,
                    uid: str | None = None, include_deleted: bool = True) -> list[asyncpg.Record]:
    return await conn.fetch(_WORKLOADS, namespace, name, include_deleted, uid)


# Each health condition's newest transition per workload: its current status, as the collector last stored it.
_CONDITIONS = """
SELECT DISTINCT ON (workload_uid, type) workload_uid, type, status, reason, message
FROM health_events WHERE workload_uid = ANY($1::text[])
ORDER BY workload_uid, type, id DESC
"""


async def current_conditions(conn: asyncpg.Connection, uids: Sequence[str]) -> list[asyncpg.Record]:
    """(workload_uid, type, status, reason, message) of the newest stored transition of each health condition."""
    return await conn.fetch(_CONDITIONS, list(uids))


async def latest_points(conn: asyncpg.Connection, uids: Sequence[str]) -> list[asyncpg.Record]:
    """(workload_uid, kind, metric, step, ts, value) of the newest point of each series."""
    return await conn.fetch(_LATEST, list(uids))


# ---- series and counts -----------------------------------------------------------------------------------------

async def series(conn: asyncpg.Connection, uid: str, f: Filters | None = None) -> list[Series]:
    """The workload's series matching the metric / data source / run filters, in answer order."""
    rows = await conn.fetch("SELECT id, source, kind, run, metric FROM series WHERE workload_uid = $1", uid)
    out = [Series(*r) for r in rows]
    if f is not None:
        if f.metrics is not None:
            wanted = set(f.metrics)
            out = [s for s in out if s.metric in wanted]
        if f.data_source is not None:
            kinds = set(kinds_of(f.data_source))
            out = [s for s in out if s.kind in kinds]
        if f.runs is not None:
            runs = set(f.runs)
            out = [s for s in out if s.run in runs]
    return sorted(out, key=lambda s: s.key)


async def counts(conn: asyncpg.Connection, ids: Sequence[int]) -> dict[int, int]:
    """series id -> number of stored points (index-only count per series)."""
    rows = await conn.fetch(
        "SELECT s.id, (SELECT count(*) FROM points WHERE series_id = s.id) AS n FROM unnest($1::bigint[]) AS s(id)",
        list(ids))
    return {r["id"]: r["n"] for r in rows}


async def runs(conn: asyncpg.Connection, uid: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT source, run, info, updated_at FROM runs WHERE workload_uid = $1 ORDER BY source, run", uid)


async def health_events(conn: asyncpg.Connection, uid: str, limit: int) -> list[asyncpg.Record]:
    """The newest `limit` health transitions of the workload, oldest first."""
    return await conn.fetch(
        "SELECT * FROM (SELECT id, type, status, reason, message, metric, step, value, at FROM health_events "
        "WHERE workload_uid = $1 ORDER BY id DESC LIMIT $2) e ORDER BY id", uid, limit)


# ---- points -----------------------------------------------------------------------------------------------------

class _Where:
    """The WHERE clause of a one-series read: step bounds always, time bounds when asked."""

    def __init__(self, f: Filters, first_param: int):
        self.sql = f"series_id = ${first_param} AND step >= ${first_param + 1} AND step <= ${first_param + 2}"
        self.ts_args: list[int] = []
        n = first_param + 3
        if f.start_ms is not None:
            self.sql += f" AND ts >= ${n}"
            self.ts_args.append(f.start_ms)
            n += 1
        if f.end_ms is not None:
            self.sql += f" AND ts < ${n}"  # inclusive on the millisecond shown: everything before end + 1 ms
            self.ts_args.append(f.end_ms + 1)
            n += 1
        self.next_param = n


def step_bounds(f: Filters) -> tuple[int, int]:
    lo = f.from_step if f.from_step is not None else -(2**63)
    hi = f.to_step if f.to_step is not None else 2**63 - 1
    return lo, hi


async def last_n_bounds(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters, n: int) -> dict[int, int]:
    """Per series, the lowest step of its last `n` points within the filters (absent: fewer than n points).
    Without time filters the rollup's per-block counts find it (about one block of points read, not all n), in one
    snapshot; otherwise, or where the rollup cannot say, the points are counted."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await last_n_bounds_in(conn, series_, f, n)


async def last_n_bounds_in(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters,
                           n: int) -> dict[int, int]:
    """last_n_bounds inside the caller's REPEATABLE READ snapshot (a downsampled answer's, so both agree)."""
    w = _Where(f, 1)
    sql = (f"SELECT step FROM points WHERE {w.sql} ORDER BY step DESC OFFSET ${w.next_param} LIMIT 1")
    lo, hi = step_bounds(f)
    out: dict[int, int] = {}
    for s in series_:
        known, step = (False, None) if w.ts_args else await rollup.last_n_start(conn, s.id, lo, hi, n)
        if not known:
            step = await conn.fetchval(sql, s.id, lo, hi, *w.ts_args, n - 1)
        if step is not None:
            out[s.id] = step
    return out


async def read_series(conn: asyncpg.Connection, s: Series, f: Filters, lo: int, hi: int,
                      limit: int) -> list[Row]:
    """Up to `limit` points of one series with lo <= step <= hi, by step."""
    w = _Where(f, 1)
    sql = f"SELECT step, ts, value FROM points WHERE {w.sql} ORDER BY step LIMIT ${w.next_param}"
    return [tuple(r) for r in await conn.fetch(sql, s.id, lo, hi, *w.ts_args, limit)]


def _start(s: Series, f: Filters, lower: dict[int, int], after: Position | None) -> int | None:
    """The first step to read of a series, or None when the cursor is past it."""
    lo = max(step_bounds(f)[0], lower.get(s.id, -(2**63)))
    if after is not None:
        if s.key < after.key:
            return None
        if s.key == after.key:
            if after.step >= 2**63 - 1:
                return None
            lo = max(lo, after.step + 1)
    return lo


async def read_page(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters, lower: dict[int, int],
                    after: Position | None, limit: int) -> tuple[list[tuple[Series, Row]], bool]:
    """One keyset page: up to `limit` points in (series key, step) order after `after`; and whether more exist."""
    out: list[tuple[Series, Row]] = []
    hi = step_bounds(f)[1]
    for s in series_:
        lo = _start(s, f, lower, after)
        if lo is None:
            continue
        want = limit + 1 - len(out)  # one more than fits tells whether another page exists
        out.extend((s, r) for r in await read_series(conn, s, f, lo, hi, want))
        if len(out) > limit:
            return out[:limit], True
    return out, False


async def iter_points(acquire: Acquire, series_: Sequence[Series], f: Filters, lower: dict[int, int],
                      chunk: int = 5000) -> AsyncIterator[tuple[Series, list[Row]]]:
    """Every matching point, series by series, in chunks of at most `chunk` (keyset reads: bounded memory).

    Each chunk takes a pool connection for its one statement and gives it back before the chunk is written, so a
    client that reads slowly (or not at all) holds no connection and no transaction while it waits.
    """
    hi = step_bounds(f)[1]
    for s in series_:
        lo = _start(s, f, lower, None)
        assert lo is not None
        while True:
            async with acquire() as conn:
                rows = await read_series(conn, s, f, lo, hi, chunk)
            if rows:
                yield s, rows
            if len(rows) < chunk or rows[-1][0] >= hi:
                break
            lo = rows[-1][0] + 1


def ts_clause(f: Filters, args: list[Any], column: str = "ts") -> str:
    """` AND column >= $n AND column < $m` for the filters' start/end (ms, end inclusive); values appended to `args`."""
    sql = ""
    if f.start_ms is not None:
        args.append(f.start_ms)
        sql += f" AND {column} >= ${len(args)}"
    if f.end_ms is not None:
        args.append(f.end_ms + 1)
        sql += f" AND {column} < ${len(args)}"
    return sql


# ---- iteration times --------------------------------------------------------------------------------------------

# The next `chunk` distinct steps from $2: each series contributes at most its own next `chunk` steps (an index
# range), which always contain the first `chunk` distinct steps of them all; per step the earliest point wins.
_ITERATIONS = """
SELECT DISTINCT ON (p.step) p.step, p.ts, s.kind
FROM unnest($1::bigint[]) AS x(sid)
CROSS JOIN LATERAL (SELECT step, ts FROM points WHERE series_id = x.sid AND step >= $2 AND step <= $3 {ts}
                    ORDER BY step LIMIT $4) p
JOIN series s ON s.id = x.sid
ORDER BY p.step, p.ts, s.kind
LIMIT $4
"""


async def iteration_times(acquire: Acquire, ids: Sequence[int], f: Filters,
                          chunk: int = 5000) -> AsyncIterator[list[tuple[int, int, str]]]:
    """Per distinct step of the series, its earliest timestamp and that point's kind, by step.

    Keyset pages of `chunk` steps, one short statement each on a connection held only for it (never across a
    write to the client): a stalled reader keeps no transaction open.
    """
    lo, hi = step_bounds(f)
    args: list[Any] = [list(ids), lo, hi, chunk]
    sql = _ITERATIONS.format(ts=ts_clause(f, args))
    while True:
        async with acquire() as conn:
            rows = await conn.fetch(sql, *args)
        if rows:
            yield [tuple(r) for r in rows]
        if len(rows) < chunk or rows[-1][0] >= hi:
            return
        args[1] = rows[-1][0] + 1


# ---- the fleet overview -----------------------------------------------------------------------------------------

# Every series of the listed workloads with its lowest and newest point (two index probes per series).
_SERIES_ENDS = """
SELECT s.workload_uid, s.id, s.source, s.kind, s.run, s.metric, lo.step AS first_step, hi.step, hi.ts
FROM series s
CROSS JOIN LATERAL (SELECT step FROM points WHERE series_id = s.id ORDER BY step LIMIT 1) lo
CROSS JOIN LATERAL (SELECT step, ts FROM points WHERE series_id = s.id ORDER BY step DESC LIMIT 1) hi
WHERE s.workload_uid = ANY($1::text[])
"""

# Per series, the first point at or after each of n evenly spaced steps between its first and last step (one index
# probe each, whatever the series' length), and its newest point. numeric: no bigint overflow on huge step ranges.
_SPARK = """
SELECT c.id, p.step, p.value
FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS c(id, lo, hi)
CROSS JOIN LATERAL generate_series(0, $4::int - 1) AS g(i)
CROSS JOIN LATERAL (
    SELECT step, value FROM points
    WHERE series_id = c.id AND step >= c.lo + floor((c.hi - c.lo)::numeric * g.i / greatest($4::int - 1, 1))::bigint
    ORDER BY step LIMIT 1) p
ORDER BY c.id, p.step
"""

# Per series, its newest `$2` points' (step, ts): the recent pace.
_TAIL = """
SELECT c.id, p.step, p.ts
FROM unnest($1::bigint[]) AS c(id)
CROSS JOIN LATERAL (SELECT step, ts FROM points WHERE series_id = c.id ORDER BY step DESC LIMIT $2) p
"""


async def series_ends(conn: asyncpg.Connection, uids: Sequence[str]) -> list[asyncpg.Record]:
    """(workload_uid, id, source, kind, run, metric, first_step, step, ts) of every series of the workloads."""
    return await conn.fetch(_SERIES_ENDS, list(uids))


async def sparklines(conn: asyncpg.Connection, ends: Sequence[tuple[int, int, int]],
                     n: int) -> list[asyncpg.Record]:
    """(id, step, value) at about `n` evenly spaced steps of each (series id, first step, last step)."""
    if not ends:
        return []
    ids, los, his = (list(col) for col in zip(*ends, strict=True))
    return await conn.fetch(_SPARK, ids, los, his, n)


async def tails(conn: asyncpg.Connection, ids: Sequence[int], n: int) -> list[asyncpg.Record]:
    """(id, step, ts) of the newest `n` points of each series."""
    return await conn.fetch(_TAIL, list(ids), n) if ids else []
