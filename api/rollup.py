"""Downsampling from the writer's rollup (collector/store/rollup.py): the same answer as the scan of every point,
read from a few rows per bucket.

Each bucket's step range is covered by the coarsest whole blocks that fit in it (4,096, then 256, then 16 steps)
and, at its edges, by the points themselves; a pair of pieces of the same kind that meet at a bucket boundary is
read as one range and split at the boundary. Per (series, bucket) PostgreSQL returns the count and the min/max of
the {value, step} pairs: the lowest value with its lowest step and the highest value with its highest step, in
PostgreSQL's float order, i.e. exactly what the scan picks. Used only without time filters (the rollup has no
time) and for steps within +-2^53 (exact in the float8 pairs), when every bucket spans at least a 16-step block.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from trainscope.api.params import Filters

SHIFTS = (12, 8, 4)  # the rollup's block sizes, coarsest first (2^shift steps)
EXACT = 2**53
MIN_BUCKET_STEPS = 1 << SHIFTS[-1]

# OFFSET 0 keeps each LATERAL subquery a range scan per piece: flattened, the planner joined the pieces to a scan of
# the whole table (it cannot tell that the ranges are small and disjoint).
_EXTREMES = """
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
    AS r(sid, shift, lo, hi, cut, b)
)
SELECT sid, b, sum(n)::bigint AS n, min(lo) AS lo, max(hi) AS hi FROM (
    SELECT r.sid, r.b + (x.block >= r.cut)::int AS b, x.n, x.lo, x.hi
    FROM r CROSS JOIN LATERAL (SELECT block, n, lo, hi FROM rollup
                               WHERE series_id = r.sid AND shift = r.shift AND block >= r.lo AND block <= r.hi
                               OFFSET 0) x
    WHERE r.shift > 0
    UNION ALL
    SELECT r.sid, r.b + (p.step >= r.cut)::int, 1, ARRAY[p.value, p.step::float8], ARRAY[p.value, p.step::float8]
    FROM r CROSS JOIN LATERAL (SELECT step, value FROM points
                               WHERE series_id = r.sid AND step >= r.lo AND step <= r.hi OFFSET 0) p
    WHERE r.shift = 0
) y GROUP BY 1, 2
"""


def usable(f: Filters, los: Sequence[int], spans: Sequence[int], buckets: int) -> bool:
    """Whether the rollup answers this request exactly."""
    if f.start_ms is not None or f.end_ms is not None:
        return False
    return all(-EXACT < lo and lo + span - 1 < EXACT and span // buckets >= MIN_BUCKET_STEPS
               for lo, span in zip(los, spans, strict=True))


def _cover(a: int, b: int, shifts: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """[a, b] as (shift, first, last) pieces in step order: whole blocks of the coarsest size that fits, then finer
    ones at the edges, then points (shift 0, first and last are steps)."""
    if a > b:
        return []
    if not shifts:
        return [(0, a, b)]
    sh, finer = shifts[0], shifts[1:]
    first, last = -((-a) >> sh), ((b + 1) >> sh) - 1  # the whole blocks inside [a, b]
    if first > last:
        return _cover(a, b, finer)
    return [*_cover(a, (first << sh) - 1, finer), (sh, first, last), *_cover((last + 1) << sh, b, finer)]


def pieces(sid: int, lo: int, span: int, buckets: int) -> list[tuple[int, int, int, int, int, int]]:
    """(sid, shift, first, last, cut, bucket) ranges covering the series' buckets: a row of a range belongs to
    `bucket` below `cut` and to the next one from it (cut past the range: all in `bucket`)."""
    out: list[tuple[int, int, int, int, int, int]] = []
    start = lo
    for j in range(buckets):
        end = lo + -((-(j + 1) * span) // buckets) - 1  # the last step s with (s - lo) * buckets // span == j
        for sh, first, last in _cover(start, end, SHIFTS):
            prev = out[-1] if out else None
            # the same kind of piece continuing over the boundary from the previous bucket: one range, cut here
            if (prev is not None and prev[0] == sid and prev[1] == sh and prev[3] + 1 == first
                    and prev[5] == j - 1 and prev[4] > prev[3]):
                out[-1] = (sid, sh, prev[2], last, first, j - 1)
            else:
                out.append((sid, sh, first, last, last + 1, j))
        start = end + 1
    return out


async def extremes(conn: asyncpg.Connection, sids: Sequence[int], los: Sequence[int], spans: Sequence[int],
                   buckets: int) -> tuple[dict[int, int], dict[int, list[tuple[int, list[float], list[float]]]]]:
    """(series -> matching points, series -> [(bucket, {lowest value, step}, {highest value, step})])."""
    rows: list[tuple[int, int, int, int, int, int]] = []
    for sid, lo, span in zip(sids, los, spans, strict=True):
        rows.extend(pieces(sid, lo, span, buckets))
    cols = list(zip(*rows, strict=True))
    totals: dict[int, int] = {}
    found: dict[int, list[tuple[int, list[float], list[float]]]] = {}
    for r in await conn.fetch(_EXTREMES, *(list(c) for c in cols)):
        totals[r["sid"]] = totals.get(r["sid"], 0) + r["n"]
        found.setdefault(r["sid"], []).append((r["b"], r["lo"], r["hi"]))
    return totals, found
