"""The exactly-once writer's SQL steps; each runs on a connection inside the caller's transaction."""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import asyncpg

from trainscope.collector.points import RawPoint

SeriesKey = tuple[str, str]  # (run, metric)
Record = tuple[int, int, float, float]  # (series_id, step, ts, value): a `points` row, in COPY order
POINT_COLUMNS = ("series_id", "step", "ts", "value")
_SID = METRIC = operator.itemgetter(0)
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
# again (a retried batch, an overlapping re-read) changes nothing; xmax = 0 marks a freshly inserted row.
# A replaced point takes this transaction's id again (ingest_xid's default), so the API's stream sees the change.
# ON CONFLICT may touch a row only once per statement, so a batch holding a step twice is first reduced to one
# row per key (the latest in the batch); a batch without such duplicates skips that sort.
_MERGE = """
WITH merged AS (
    INSERT INTO points AS p (series_id, step, ts, value)
    {rows}
    ON CONFLICT (series_id, step) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value, ingest_xid = DEFAULT
    WHERE (p.ts, p.value) IS DISTINCT FROM (EXCLUDED.ts, EXCLUDED.value)
    RETURNING (p.xmax = 0) AS fresh
)
SELECT count(*) FILTER (WHERE fresh) AS inserted, count(*) FILTER (WHERE NOT fresh) AS updated FROM merged
"""
_MERGE_UNIQUE = _MERGE.format(rows="SELECT series_id, step, ts, value FROM points_stage")
_MERGE_DEDUP = _MERGE.format(rows="""SELECT DISTINCT ON (series_id, step) series_id, step, ts, value FROM points_stage
    ORDER BY series_id, step, ord DESC""")

_SAVE_CURSOR = """
INSERT INTO cursors (workload_uid, source, cursor, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (workload_uid, source) DO UPDATE SET cursor = EXCLUDED.cursor, updated_at = EXCLUDED.updated_at
"""


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


def step_bounds(records: Sequence[Record]) -> dict[int, tuple[int, int]]:
    """series id -> (lowest, highest) step in the batch. When the batch's steps never decrease (sources send them
    in order) each series' first and last step are its bounds, found at C speed; otherwise one pass finds them."""
    steps = list(map(_STEP, records))
    if all(map(operator.le, steps, itertools.islice(steps, 1, None))):
        sids = list(map(_SID, records))
        last = dict(zip(sids, steps, strict=True))
        first = dict(zip(reversed(sids), reversed(steps), strict=True))
        return {sid: (first[sid], hi) for sid, hi in last.items()}
    bounds: dict[int, tuple[int, int]] = {}
    get = bounds.get
    for sid, step, _, _ in records:
        b = get(sid)
        if b is None:
            bounds[sid] = (step, step)
        elif step < b[0]:
            bounds[sid] = (step, b[1])
        elif step > b[1]:
            bounds[sid] = (b[0], step)
    return bounds


def split_by_known(records: Sequence[Record], known: dict[int, int]) -> tuple[list[Record], list[Record]]:
    """(rows past their series' known highest step, the others): the first part can usually take COPY."""
    fresh: list[Record] = []
    rest: list[Record] = []
    add_fresh, add_rest = fresh.append, rest.append
    get = known.get
    for r in records:
        top = get(r[0])
        if top is None or r[1] > top:
            add_fresh(r)
        else:
            add_rest(r)
    return fresh, rest


async def copy_appending(conn: asyncpg.Connection, records: Sequence[Record]) -> bool:
    """COPY straight into points inside a savepoint; False (and nothing written) if any step already exists."""
    try:
        async with conn.transaction():
            await conn.copy_records_to_table("points", records=records, columns=POINT_COLUMNS)
    except asyncpg.UniqueViolationError:
        return False
    return True


async def merge(conn: asyncpg.Connection, records: Sequence[Record]) -> tuple[int, int]:
    """Upsert via the staging table: (inserted, updated). Handles overlaps, retries and in-batch duplicates."""
    if len({(sid, step) for sid, step, _, _ in records}) == len(records):
        await conn.copy_records_to_table("points_stage", records=records, columns=POINT_COLUMNS)
        row = await conn.fetchrow(_MERGE_UNIQUE)
    else:
        await conn.copy_records_to_table(
            "points_stage", records=[(*r, i) for i, r in enumerate(records)], columns=(*POINT_COLUMNS, "ord"))
        row = await conn.fetchrow(_MERGE_DEDUP)
    return row["inserted"], row["updated"]


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


def to_records(points: Sequence[RawPoint], ids: dict[SeriesKey, int]) -> list[Record]:
    """Points -> `points` rows; KeyError when a series is not in `ids`. Column by column, at C speed."""
    sids = map(ids.__getitem__, zip(map(RUN, points), map(METRIC, points), strict=True))
    return list(zip(sids, map(_STEP, points), map(_TS, points), map(_VALUE, points), strict=True))
