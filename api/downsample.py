"""`downsample=N`: at most N points per series, min/max per step bucket, computed by PostgreSQL in one pass.

Method (M4-like, without the bucket's first/last): a series' step range [lo, hi] (within the filters) is cut
into B = (N - 2) // 2 equal step buckets; from each bucket the point with the lowest and the one with the highest
value are kept, and the series' first and last points always are. So the answer has at most 2B + 2 <= N points,
keeps every local extreme at the bucket's resolution (the global min and max included) and both ends. Ordering is
PostgreSQL's float order: NaN above +Infinity, so a NaN spike shows up as a bucket's maximum. Ties keep the
lowest step for a minimum and the highest for a maximum. A series with at most N points is returned whole.

PostgreSQL aggregates min/max(ARRAY[value, step]) per (series, bucket) over the matching rows; only those
2B + 2 points per series cross the wire, never the series itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from trainscope.api.params import Filters
from trainscope.api.queries import Row, Series, read_series, step_bounds

MIN_POINTS = 4


def buckets_for(max_points: int) -> int:
    return max(1, (max_points - 2) // 2)


def bucket_of(step: int, lo: int, hi: int, nb: int) -> int:
    """The same float arithmetic as the SQL, so a Python oracle picks the same buckets."""
    return math.floor((float(step) - float(lo)) * float(nb) / (float(hi) - float(lo) + 1.0))


def _order(value: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(value) else (0, value)  # PostgreSQL: NaN sorts above everything


def minmax_reference(rows: Sequence[Row], max_points: int) -> list[Row]:
    """The same selection computed in Python from all rows of one series (sorted by step): tests and the bench."""
    if len(rows) <= max_points:
        return list(rows)
    lo, hi, nb = rows[0][0], rows[-1][0], buckets_for(max_points)
    low: dict[int, Row] = {}
    high: dict[int, Row] = {}
    for r in rows:
        b = bucket_of(r[0], lo, hi, nb)
        k = (_order(r[2]), r[0])
        if b not in low or k < (_order(low[b][2]), low[b][0]):
            low[b] = r
        if b not in high or k > (_order(high[b][2]), high[b][0]):
            high[b] = r
    keep = {rows[0][0]: rows[0], rows[-1][0]: rows[-1]}
    for r in (*low.values(), *high.values()):
        keep[r[0]] = r
    return [keep[s] for s in sorted(keep)]


@dataclass(frozen=True, slots=True)
class Downsampled:
    series: list[tuple[Series, list[Row]]]
    source_points: int  # matching points before reduction
    reduced: bool  # some series had more than max_points


_BOUNDS = """
SELECT s.sid, b.lo, b.hi
FROM unnest($1::bigint[], $2::bigint[]) AS s(sid, lo0)
CROSS JOIN LATERAL (
    SELECT min(step) AS lo, max(step) AS hi FROM points WHERE series_id = s.sid AND step >= s.lo0 AND step <= $3 {ts}
) b
WHERE b.lo IS NOT NULL
"""

_BUCKETS = """
SELECT x.sid, x.b, min(x.a) AS mn, max(x.a) AS mx, count(*) AS n
FROM (
    SELECT p.series_id AS sid,
           floor((p.step::float8 - s.lo::float8) * $4::float8 / (s.hi::float8 - s.lo::float8 + 1.0))::int AS b,
           ARRAY[p.value, p.step::float8] AS a
    FROM points p JOIN unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS s(sid, lo, hi) ON p.series_id = s.sid
    WHERE p.step >= s.lo AND p.step <= s.hi {ts}
) x
GROUP BY 1, 2
"""

# Index probes per series (a join on unnest() would be planned as a scan of the whole table).
_LOOKUP = "SELECT step, ts, value FROM points WHERE series_id = $1 AND step = ANY($2::bigint[]) ORDER BY step"


def _ts_clause(f: Filters, first: int, prefix: str = "") -> tuple[str, list[int]]:
    sql, args = "", []
    if f.start_ms is not None:
        args.append(f.start_ms)
        sql += f" AND {prefix}ts >= ${first + len(args) - 1}"
    if f.end_ms is not None:
        args.append(f.end_ms + 1)
        sql += f" AND {prefix}ts < ${first + len(args) - 1}"
    return sql, args


async def downsample(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters, lower: dict[int, int],
                     max_points: int) -> Downsampled:
    """At most `max_points` points per series (see the module doc), in one consistent snapshot."""
    lo0, hi0 = step_bounds(f)
    by_id = {s.id: s for s in series_}
    nb = buckets_for(max_points)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # One pass over many rows: let PostgreSQL hash-aggregate in memory and use its parallel workers.
        await conn.execute("SET LOCAL work_mem = '64MB'")
        await conn.execute("SET LOCAL parallel_setup_cost = 100")
        ts, ts_args = _ts_clause(f, 4)
        bounds = await conn.fetch(_BOUNDS.format(ts=ts), [s.id for s in series_],
                                  [max(lo0, lower.get(s.id, lo0)) for s in series_], hi0, *ts_args)
        if not bounds:
            return Downsampled([(s, []) for s in series_], 0, False)
        ts, ts_args = _ts_clause(f, 5, "p.")
        rows = await conn.fetch(_BUCKETS.format(ts=ts), [b["sid"] for b in bounds], [b["lo"] for b in bounds],
                                [b["hi"] for b in bounds], nb, *ts_args)
        totals: dict[int, int] = {}
        keep: dict[int, set[int]] = {b["sid"]: {b["lo"], b["hi"]} for b in bounds}
        for r in rows:
            totals[r["sid"]] = totals.get(r["sid"], 0) + r["n"]
            keep[r["sid"]].update((int(r["mn"][1]), int(r["mx"][1])))
        result: dict[int, list[Row]] = {}
        for b in bounds:
            sid = b["sid"]
            if totals.get(sid, 0) <= max_points:  # small enough: the whole series, unchanged
                result[sid] = await read_series(conn, by_id[sid], f, b["lo"], b["hi"], max_points)
            else:
                result[sid] = [tuple(r) for r in await conn.fetch(_LOOKUP, sid, sorted(keep[sid]))]
    out = [(s, result.get(s.id, [])) for s in series_]
    reduced = any(n > max_points for n in totals.values())
    return Downsampled(out, sum(totals.values()), reduced)
