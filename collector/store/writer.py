"""The exactly-once writer's SQL steps; each runs on a connection inside the caller's transaction."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from trainscope.collector.points import Columns, RawPoint
from trainscope.collector.store import copybin

SeriesKey = tuple[str, str]  # (run, metric)
Record = tuple[int, int, float, float]  # (series_id, step, ts, value): a `points` row, in COPY order
POINT_COLUMNS = ("series_id", "step", "ts", "value")
METRIC = operator.itemgetter(0)
_STEP, _TS, _VALUE, RUN = (operator.itemgetter(i) for i in range(1, 5))

# Creates the missing series and reads the existing ones in one round trip. The SELECT runs on the statement's
# snapshot, so it never sees the rows `created` inserts: each key comes back from exactly one branch. A key
# created concurrently by another transaction comes back from neither; the caller asks again.
_RESOLVE_SERIES = """
WITH wanted AS (
    SELECT run, metric FROM unnest($3::text[], $4::text[]) AS w(run, metric)
), created AS (
    INSERT INTO series (workload_uid, source, kind, run, metric)
    SELECT $1, $2, $5, run, metric FROM wanted
    ON CONFLICT ON CONSTRAINT series_key DO NOTHING
    RETURNING id, run, metric
)
SELECT id, run, metric, NULL::bigint AS max_step FROM created
UNION ALL
SELECT s.id, s.run, s.metric, (SELECT max(p.step) FROM points p WHERE p.series_id = s.id)
FROM series s JOIN wanted w ON s.run = w.run AND s.metric = w.metric
WHERE s.workload_uid = $1 AND s.source = $2
"""

# The later observation in the source's own order wins (batches arrive in that order: file offset, log line
# order, W&B/TensorBoard write order), not the newer wall-clock ts: a run resumed from a checkpoint re-logs steps,
# possibly from a node whose clock is behind, and its values replace the abandoned branch's. The same observation
# again (a retried batch, an overlapping re-read) changes nothing and writes nothing: the staged rows are first
# compared with the stored ones (one index probe each, no lock), then only the rows that differ are updated and
# only the missing ones inserted. An INSERT ... ON CONFLICT DO UPDATE over all of them would lock every conflicting
# row even when its WHERE then skips it: a WAL record per identical row, and a full-page image for each page first
# touched after a checkpoint. Under READ COMMITTED the UPDATE re-checks a row another transaction changed meanwhile
# (EvalPlanQual) and the INSERT keeps ON CONFLICT for a row inserted meanwhile, so concurrent writers of the same
# point still end with the later commit's value, as before.
# A replaced point takes this transaction's id again (ingest_xid's default), so the API's stream sees the change.
# The staging table holds one row per key (merge() keeps the latest of a batch's duplicates).
_MERGE = """
WITH differ AS MATERIALIZED (
    SELECT s.series_id, s.step, s.ts, s.value, p.step IS NULL AS missing
    FROM points_stage s LEFT JOIN points p ON p.series_id = s.series_id AND p.step = s.step
    WHERE p.step IS NULL OR (p.ts, p.value) IS DISTINCT FROM (s.ts, s.value)
), replaced AS (
    UPDATE points p SET ts = d.ts, value = d.value, ingest_xid = DEFAULT
    FROM differ d
    WHERE NOT d.missing AND p.series_id = d.series_id AND p.step = d.step
      AND (p.ts, p.value) IS DISTINCT FROM (d.ts, d.value)
    RETURNING p.series_id, p.step
), added AS (
    INSERT INTO points AS p (series_id, step, ts, value)
    SELECT series_id, step, ts, value FROM differ WHERE missing
    ON CONFLICT (series_id, step) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value, ingest_xid = DEFAULT
    WHERE (p.ts, p.value) IS DISTINCT FROM (EXCLUDED.ts, EXCLUDED.value)
    RETURNING p.series_id, p.step, (p.xmax = 0) AS fresh
)
SELECT series_id, min(step) AS lo, max(step) AS hi, count(*) FILTER (WHERE fresh) AS inserted,
       count(*) FILTER (WHERE NOT fresh) AS updated
FROM (SELECT series_id, step, false AS fresh FROM replaced UNION ALL SELECT series_id, step, fresh FROM added) w
GROUP BY series_id
"""
# The staging table has no statistics, so the planner would join it to points by hashing the whole points table
# (a scan of every stored point per batch); each staged row is one primary-key probe instead. For this transaction
# only (SET LOCAL): the store's other statements plan as usual.
_PROBE_BY_KEY = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"



def save_cursor_sql(first: int = 1) -> str:
    """The cursor upsert with its parameters (uid, source, cursor) numbered from `first`, so that it can also run
    as a CTE of another statement of the write (rollup.lower: one round trip for both)."""
    a, b, c = (f"${i}" for i in range(first, first + 3))
    return (f"INSERT INTO cursors (workload_uid, source, cursor, updated_at) VALUES ({a}, {b}, {c}, now()) "
            "ON CONFLICT (workload_uid, source) DO UPDATE SET cursor = EXCLUDED.cursor, "
            "updated_at = EXCLUDED.updated_at")


_SAVE_CURSOR = save_cursor_sql()


async def resolve_series(conn: asyncpg.Connection, uid: str, source: str, kind: str,
                         keys: Iterable[SeriesKey]) -> dict[SeriesKey, tuple[int, int | None]]:
    """(run, metric) -> (series id, highest stored step or None), creating the series that do not exist."""
    wanted = set(keys)
    found: dict[SeriesKey, tuple[int, int | None]] = {}
    while wanted:
        runs, metrics = zip(*wanted, strict=True)
        for row in await conn.fetch(_RESOLVE_SERIES, uid, source, list(runs), list(metrics), kind):
            found[row["run"], row["metric"]] = (row["id"], row["max_step"])
        wanted -= found.keys()
    return found


@dataclass(slots=True)
class Rows:
    """A batch as `points` columns: parallel lists (a batch of tuples) or numpy arrays (a batch of `Columns`),
    one entry per row, in the batch's order."""

    sid: Any  # list[int] | np.ndarray (int64)
    step: Any  # list[int] | np.ndarray (int64)
    ts: Any  # list[float] | np.ndarray (float64)
    value: Any  # list[float] | np.ndarray (float64)
    # columnar rows made from `Columns`: each row's series index and each index's id (no sort to find the series)
    key: np.ndarray | None = None
    key_sid: list[int] | None = None

    def __len__(self) -> int:
        return len(self.sid)

    @property
    def columnar(self) -> bool:
        return isinstance(self.sid, np.ndarray)

    def take(self, index: Iterable[int]) -> Rows:
        """The rows at these positions, in that order (columnar rows: a numpy index or boolean mask too)."""
        if self.columnar:
            at = index if isinstance(index, np.ndarray) else np.fromiter(index, np.intp)
            return Rows(self.sid[at], self.step[at], self.ts[at], self.value[at])
        index = list(index)
        return Rows(*(list(map(col.__getitem__, index)) for col in (self.sid, self.step, self.ts, self.value)))

    def records(self) -> list[Record]:
        """Row tuples, for asyncpg's per-row COPY encoder."""
        if self.columnar:
            return list(zip(self.sid.tolist(), self.step.tolist(), self.ts.tolist(), self.value.tolist(),
                            strict=True))
        return list(zip(self.sid, self.step, self.ts, self.value, strict=True))


def _series_index(rows: Rows) -> tuple[list[int], np.ndarray]:
    """(the series ids, each row's index into them) of columnar rows."""
    if rows.key is not None and rows.key_sid is not None:
        return rows.key_sid, rows.key
    ids, inverse = np.unique(rows.sid, return_inverse=True)
    return ids.tolist(), inverse


def _column_bounds(rows: Rows) -> dict[int, tuple[int, int]]:
    """`step_bounds` of columnar rows: a few numpy passes, Python only per series."""
    ids, index = _series_index(rows)
    lo = np.full(len(ids), np.iinfo(np.int64).max)
    hi = np.full(len(ids), np.iinfo(np.int64).min)
    np.minimum.at(lo, index, rows.step)
    np.maximum.at(hi, index, rows.step)
    bounds: dict[int, tuple[int, int]] = {}
    for sid, a, b in zip(ids, lo.tolist(), hi.tolist(), strict=True):
        if a > b:
            continue  # a series index without rows
        if sid in bounds:  # two names stored as one series (see batches.storable)
            a, b = min(a, bounds[sid][0]), max(b, bounds[sid][1])
        bounds[sid] = (a, b)
    return bounds


def step_bounds(rows: Rows) -> dict[int, tuple[int, int]]:
    """series id -> (lowest, highest) step in the batch. When the batch's steps never decrease (sources send them
    in order) each series' first and last step are its bounds, found at C speed; otherwise one pass finds them."""
    if rows.columnar:
        return _column_bounds(rows)
    sids, steps = rows.sid, rows.step
    if all(map(operator.le, steps, itertools.islice(steps, 1, None))):
        last = dict(zip(sids, steps, strict=True))
        first = dict(zip(reversed(sids), reversed(steps), strict=True))
        return {sid: (first[sid], hi) for sid, hi in last.items()}
    bounds: dict[int, tuple[int, int]] = {}
    get = bounds.get
    for sid, step in zip(sids, steps, strict=True):
        b = get(sid)
        if b is None:
            bounds[sid] = (step, step)
        elif step < b[0]:
            bounds[sid] = (step, b[1])
        elif step > b[1]:
            bounds[sid] = (b[0], step)
    return bounds


_BELOW_ANY_STEP = -(2**63) - 1


def split_by_known(rows: Rows, known: dict[int, int]) -> tuple[Rows, Rows]:
    """(rows past their series' known highest step, the others): the first part can usually take COPY."""
    if rows.columnar:
        ids, inverse = _series_index(rows)
        floor = np.array([known.get(sid, 0) for sid in ids], np.int64)
        unknown = np.array([sid not in known for sid in ids], bool)
        past = unknown[inverse] | (rows.step > floor[inverse])
        return rows.take(past), rows.take(~past)
    floor = {sid: known.get(sid, _BELOW_ANY_STEP) for sid in set(rows.sid)}
    past = list(map(operator.gt, rows.step, map(floor.__getitem__, rows.sid)))
    return rows.take(itertools.compress(range(len(past)), past)), \
        rows.take(itertools.compress(range(len(past)), map(operator.not_, past)))


async def copy_rows(conn: asyncpg.Connection, table: str, rows: Rows) -> None:
    """COPY the rows into `table` (points or points_stage) in PostgreSQL's binary format, encoded column-wise
    (copybin.py); values only the per-row codecs handle (and reject with their errors) go through asyncpg's."""
    payload = copybin.encode(rows.sid, rows.step, rows.ts, rows.value)
    if payload is None:
        await conn.copy_records_to_table(table, records=rows.records(), columns=POINT_COLUMNS)
    else:
        # a memoryview: asyncpg takes bytes for a file name
        await conn.copy_to_table(table, source=memoryview(payload), columns=POINT_COLUMNS, format="binary")


async def merge(conn: asyncpg.Connection, rows: Rows) -> tuple[int, int, dict[int, tuple[int, int]]]:
    """Upsert via the staging table: (inserted, updated, series id -> (lowest, highest) step of the rows it
    inserted or replaced; rows equal to the stored ones are not among them). Handles overlaps, retries and in-batch
    duplicates: of a (series, step) given twice only the later row is kept (a statement may change a row once)."""
    if rows.columnar:
        order = np.lexsort((rows.step, rows.sid))  # stable: equal keys stay in the batch's order
        s, t = rows.sid[order], rows.step[order]
        later = (s[1:] == s[:-1]) & (t[1:] == t[:-1])  # the row is followed by a later one of the same key
        if later.any():
            rows = rows.take(np.sort(order[np.flatnonzero(~np.append(later, False))]))
    else:
        last = dict(zip(zip(rows.sid, rows.step, strict=True), itertools.count()))
        if len(last) != len(rows):
            rows = rows.take(sorted(last.values()))
    await copy_rows(conn, "points_stage", rows)
    await conn.execute(_PROBE_BY_KEY)
    out = await conn.fetch(_MERGE)
    return (sum(r["inserted"] for r in out), sum(r["updated"] for r in out),
            {r["series_id"]: (r["lo"], r["hi"]) for r in out})


_SAVE_RUN = """
INSERT INTO runs (workload_uid, source, run, info, updated_at) VALUES ($1, $2, $3, $4, now())
ON CONFLICT (workload_uid, source, run) DO UPDATE SET info = runs.info || EXCLUDED.info, updated_at = now()
"""


async def save_runs(conn: asyncpg.Connection, uid: str, source: str, runs: Mapping[str, Mapping[str, Any]]) -> None:
    """Merge each run's metadata into the `runs` table (new keys added, changed keys replaced)."""
    await conn.executemany(_SAVE_RUN, [(uid, source, run, dict(info)) for run, info in runs.items()])


async def save_cursor(conn: asyncpg.Connection, uid: str, source: str, cursor: object) -> None:
    """Upsert the source's cursor; in the points' transaction so both commit or neither."""
    await conn.execute(_SAVE_CURSOR, uid, source, cursor)


def series_keys(points: Sequence[RawPoint] | Columns) -> set[SeriesKey]:
    """The (run, metric) of every series in a batch."""
    if isinstance(points, Columns):
        return set(points.keys)
    return set(zip(map(RUN, points), map(METRIC, points), strict=True))


def to_rows(points: Sequence[RawPoint] | Columns, ids: dict[SeriesKey, int]) -> Rows:
    """Points -> `points` columns; KeyError when a series is not in `ids`. Column by column, at C speed (numpy
    arrays taken as they are from `Columns`)."""
    if isinstance(points, Columns):
        key_sid = [ids[k] for k in points.keys]
        return Rows(np.array(key_sid, np.int64)[points.key], points.step, points.ts, points.value, points.key,
                    key_sid)
    sids = list(map(ids.__getitem__, zip(map(RUN, points), map(METRIC, points), strict=True)))
    return Rows(sids, list(map(_STEP, points)), list(map(_TS, points)), list(map(_VALUE, points)))
