"""Downsampling from the store's rollup (collector/store/rollup.py): the same answer as the scan of every point,
read from about one rollup row per block boundary a bucket has instead of every point.

Per series, below its watermark (`series.rollup_upto`) the rollup's blocks are exact; above it the points are read
(the newest blocks, and whatever the store has not rolled up yet). A bucket's extremes are found in rounds:
1. the blocks of a level where every bucket spans at least MIN_BLOCKS blocks, plus the points above the watermark,
   grouped per bucket in PostgreSQL: blocks wholly inside a bucket give its count and extremes; the few that
   straddle a bucket boundary (or an end of the range) come back as they are;
2. a straddling block matters only if its lowest or highest {value, step} could beat what a bucket it touches has
   found so far (at a bucket's edge of a rising or falling curve it usually can); those are opened, all in one
   query: around the cut each holds, the blocks of every finer level and the points of the finest block holding
   it, the pieces wholly on one side grouped per bucket in PostgreSQL.
The rollup's extremes carry their point's time; the points read as such do not (converting every point's time
costs more than reading the few chosen ones again: their time is NaN here, and the caller reads them by key).
Used only without time filters
(the rollup has no per-point time ranges) and for steps within +-2^53 (exact in the float8 extremes).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from trainscope.api.buckets import Grid

SHIFTS = (12, 10, 8, 6, 4)  # the rollup's block sizes, coarsest first (2^shift steps)
FANOUT_SHIFT = 2  # a block holds 4 blocks of the next finer level
EXACT = 2**53
INT64_MAX = 2**63 - 1
MIN_BLOCKS = 4  # blocks per bucket at the level read first (fewer: most blocks would straddle)
TAIL_MAX = 1 << 18  # steps above the watermark read as points; more (a backlog not rolled up yet): the scan


def _key(pair: Sequence[float]) -> tuple[tuple[int, float], float]:
    """PostgreSQL's order of {value, step, ...} arrays: NaN above every number, then the step."""
    v = pair[0]
    return ((1, 0.0) if math.isnan(v) else (0, v)), pair[1]


@dataclass(slots=True)
class Bucket:
    lo: list[float] | None = None  # {value, step, ts us} of the lowest point (lowest step on ties)
    hi: list[float] | None = None  # ... of the highest point (highest step on ties)

    def add(self, lo: list[float], hi: list[float]) -> None:
        if self.lo is None or _key(lo) < _key(self.lo):
            self.lo = lo
        if self.hi is None or _key(hi) > _key(self.hi):
            self.hi = hi


@dataclass(slots=True)
class Plan:
    """One series' request: its matching step range, watermark and buckets."""

    sid: int
    lo: int
    hi: int
    upto: int
    grid: Grid
    shift: int = 0  # the level read first
    total: int = 0
    buckets: dict[int, Bucket] = field(default_factory=dict)

    def bucket(self, step: int) -> int:
        return self.grid.of(step)


def plan(sid: int, lo: int, hi: int, upto: int, grid: Grid) -> Plan | None:
    """The series' plan, or None when the rollup cannot answer it exactly and cheaply."""
    p = Plan(sid, lo, hi, upto, grid)
    if lo <= -EXACT or hi >= EXACT or (hi - grid.org + 1) * grid.num > INT64_MAX:
        return None
    if hi - max(lo, upto) + 1 > TAIL_MAX:
        return None
    if grid.aligned:  # only the range's ends straddle: the coarsest fitting level, however few blocks a bucket holds
        p.shift = next((sh for sh in SHIFTS if (1 << sh) <= grid.den), 0)
    else:
        p.shift = next((sh for sh in SHIFTS if (MIN_BLOCKS << sh) <= grid.width), 0)
    return p if p.shift or upto <= lo else None


# Round 1. Per series: the blocks of its level below the watermark, and the points above it. Blocks wholly inside
# one bucket (and the points) are grouped per bucket; the others (straddling a boundary or an end of the range)
# come back one row each, with `b` NULL. OFFSET 0 keeps each LATERAL a range scan of its own.
_ROUND1 = """
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[], $9::bigint[])
    AS r(sid, shift, b0, b1, lo, hi, org, den, tail)
), x AS (
    SELECT r.sid, x.block, x.n, x.lo AS plo, x.hi AS phi, r.shift,
           CASE WHEN (x.block << r.shift) >= r.lo AND ((x.block + 1) << r.shift) - 1 <= r.hi
                     AND ((x.block << r.shift) - r.org) * $10 / r.den
                         = (((x.block + 1) << r.shift) - 1 - r.org) * $10 / r.den
                THEN ((x.block << r.shift) - r.org) * $10 / r.den END AS b
    FROM r CROSS JOIN LATERAL (SELECT block, n, lo, hi FROM rollup
                               WHERE series_id = r.sid AND shift = r.shift AND block >= r.b0 AND block <= r.b1
                               OFFSET 0) x
    WHERE r.b0 <= r.b1
)
SELECT sid, b, NULL::bigint AS block, 0 AS shift, sum(n)::bigint AS n, min(plo) AS lo, max(phi) AS hi
FROM x WHERE b IS NOT NULL GROUP BY sid, b
UNION ALL
SELECT sid, NULL, block, shift, n, plo, phi FROM x WHERE b IS NULL
UNION ALL
SELECT r.sid, (p.step - r.org) * $10 / r.den, NULL, 0, count(*),
       min(ARRAY[p.value, p.step::float8, 'NaN']),
       max(ARRAY[p.value, p.step::float8, 'NaN'])
FROM r CROSS JOIN LATERAL (SELECT step, ts, value FROM points
                           WHERE series_id = r.sid AND step >= r.tail AND step <= r.hi OFFSET 0) p
GROUP BY 1, 2
"""

# Opening straddling blocks, all in one query: for each, the blocks of every finer level around the cut it holds
# (shift > 0: blocks `first`..`last` of that level) and the points of the finest block holding the cut (shift 0:
# steps `first`..`last`). A block still holding the cut, or reaching outside the range, is left out: its parts are
# among the finer rows. What remains is grouped per bucket in PostgreSQL.
_OPEN = """
WITH r AS MATERIALIZED (
    SELECT * FROM unnest($1::bigint[], $2::int[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                         $7::bigint[], $8::bigint[]) AS r(sid, shift, first, last, lo, hi, org, den)
), x AS (
    SELECT r.sid, x.n, x.lo AS plo, x.hi AS phi, x.block << r.shift AS s0, ((x.block + 1) << r.shift) - 1 AS s1,
           r.lo, r.hi, r.org, r.den
    FROM r CROSS JOIN LATERAL (SELECT block, n, lo, hi FROM rollup
                               WHERE series_id = r.sid AND shift = r.shift AND block >= r.first AND block <= r.last
                               OFFSET 0) x
    WHERE r.shift > 0
    UNION ALL
    SELECT r.sid, 1, ARRAY[p.value, p.step::float8, 'NaN'],
           ARRAY[p.value, p.step::float8, 'NaN'], p.step, p.step,
           r.lo, r.hi, r.org, r.den
    FROM r CROSS JOIN LATERAL (SELECT step, ts, value FROM points
                               WHERE series_id = r.sid AND step >= r.first AND step <= r.last OFFSET 0) p
    WHERE r.shift = 0
)
SELECT sid, (s0 - org) * $9 / den AS b, sum(n)::bigint AS n, min(plo) AS lo, max(phi) AS hi
FROM x WHERE s0 >= lo AND s1 <= hi AND (s0 - org) * $9 / den = (s1 - org) * $9 / den
GROUP BY 1, 2
"""


def _matters(p: Plan, first: int, last: int, lo: list[float], hi: list[float]) -> bool:
    """Whether a block over steps [first, last] must be opened: it reaches outside the range, or its extremes could
    beat those found so far in a bucket it touches."""
    if first < p.lo or last > p.hi:
        return True
    for b in range(p.bucket(first), p.bucket(last) + 1):
        have = p.buckets.get(b)
        if have is None or have.lo is None or have.hi is None:
            return True
        if _key(lo) < _key(have.lo) or _key(hi) > _key(have.hi):
            return True
    return False


def _cut(p: Plan, first: int, last: int) -> int:
    """The first step of a straddling block's right part: a range end, or the bucket boundary inside it."""
    if first < p.lo:
        return p.lo
    if last > p.hi:
        return p.hi + 1
    b = p.bucket(last)  # the block holds one boundary (a bucket spans 4+ blocks): the first step of bucket b
    return p.grid.start(b)


def _opening(p: Plan, shift: int, block: int) -> list[tuple[int, int, int, int, int, int, int, int]]:
    """The pieces that cover a straddling block around its cut, finest last."""
    first, last = block << shift, ((block + 1) << shift) - 1
    cut = _cut(p, first, last)
    out = []
    parent = block
    for finer in range(shift - FANOUT_SHIFT, SHIFTS[-1] - 1, -FANOUT_SHIFT):
        out.append((p.sid, finer, parent << FANOUT_SHIFT, ((parent + 1) << FANOUT_SHIFT) - 1, p.lo, p.hi,
                    p.grid.org, p.grid.den))
        parent = cut >> finer
        if parent << finer == cut:  # the cut falls on a block boundary: nothing finer straddles it
            return out
    out.append((p.sid, 0, parent << SHIFTS[-1], ((parent + 1) << SHIFTS[-1]) - 1, p.lo, p.hi, p.grid.org,
                p.grid.den))
    return out


async def extremes(conn: asyncpg.Connection, plans: Sequence[Plan],
                   helpers: Sequence[asyncpg.Connection] = ()) -> None:
    """Fill each plan's total and per-bucket extremes (in the caller's snapshot). `helpers`: more connections in
    the same snapshot (see downsample.py); the series are shared out among them, so PostgreSQL answers on several
    cores at once."""
    conns = [conn, *helpers][:len(plans)]
    if len(conns) > 1:
        await asyncio.gather(*(_extremes(c, plans[i::len(conns)]) for i, c in enumerate(conns)))
    else:
        await _extremes(conn, plans)


async def _extremes(conn: asyncpg.Connection, plans: Sequence[Plan]) -> None:
    by_sid = {p.sid: p for p in plans}
    cols: list[list[int]] = [[] for _ in range(9)]
    for p in plans:
        below_hi = min(p.hi, p.upto - 1)
        b0, b1 = (p.lo >> p.shift, below_hi >> p.shift) if p.shift and p.upto > p.lo else (1, 0)
        for c, v in zip(cols, (p.sid, p.shift, b0, b1, p.lo, p.hi, p.grid.org, p.grid.den, max(p.lo, p.upto)),
                        strict=True):
            c.append(v)
    num = plans[0].grid.num  # the same for every series
    straddling: list[asyncpg.Record] = []
    for r in await conn.fetch(_ROUND1, *cols, num):
        p = by_sid[r["sid"]]
        if r["b"] is not None:
            p.total += r["n"]
            p.buckets.setdefault(r["b"], Bucket()).add(r["lo"], r["hi"])
        else:
            straddling.append(r)
    pieces: list[tuple[int, int, int, int, int, int, int, int]] = []
    for r in straddling:
        p, shift, block = by_sid[r["sid"]], r["shift"], r["block"]
        first, last = block << shift, ((block + 1) << shift) - 1
        if _matters(p, first, last, r["lo"], r["hi"]):
            pieces.extend(_opening(p, shift, block))
        else:  # wholly inside the range, extremes beaten on both sides: only its count matters
            p.total += r["n"]
    if pieces:
        for r in await conn.fetch(_OPEN, *(list(c) for c in zip(*pieces, strict=True)), num):
            p = by_sid[r["sid"]]
            p.total += r["n"]
            p.buckets.setdefault(r["b"], Bucket()).add(r["lo"], r["hi"])


# ---- where the last n points start ---------------------------------------------------------------------------------

# The series' watermark and its first and last step within [lo, hi], in one snapshot (one statement).
_RANGE = """
SELECT (SELECT rollup_upto FROM series WHERE id = $1) AS upto,
       (SELECT step FROM points WHERE series_id = $1 AND step >= $2 AND step <= $3 ORDER BY step LIMIT 1) AS first,
       (SELECT step FROM points WHERE series_id = $1 AND step >= $2 AND step <= $3 ORDER BY step DESC LIMIT 1)
           AS last
"""
_COUNT = "SELECT count(*) FROM points WHERE series_id = $1 AND step >= $2 AND step <= $3"
_NTH_DESC = ("SELECT step FROM points WHERE series_id = $1 AND step >= $2 AND step <= $3 "
             "ORDER BY step DESC OFFSET $4 LIMIT 1")
# The highest coarsest-level block (of blocks b0..b1) at which the count from b1 down reaches $5, with its own count
# and that running count.
_CROSSING = """
SELECT block, n, cum FROM (
    SELECT block, n, sum(n) OVER (ORDER BY block DESC) AS cum FROM rollup
    WHERE series_id = $1 AND shift = $2 AND block >= $3 AND block <= $4) x
WHERE cum >= $5 ORDER BY block DESC LIMIT 1
"""
_BLOCKS_SUM = ("SELECT coalesce(sum(n), 0)::bigint FROM rollup "
               "WHERE series_id = $1 AND shift = $2 AND block >= $3 AND block <= $4")


async def last_n_start(conn: asyncpg.Connection, sid: int, lo: int, hi: int, n: int) -> tuple[bool, int | None]:
    """The lowest step of the series' last `n` points with lo <= step <= hi, counted with the rollup's per-block
    counts (the points of about one block read, not all n): (True, the step, or None when fewer than n points
    match), or (False, None) when the rollup cannot say cheaply (the caller counts points instead). Call it in one
    snapshot (REPEATABLE READ): the watermark, the blocks and the points must agree."""
    r = await conn.fetchrow(_RANGE, sid, lo, hi)
    if r["first"] is None:  # no point in the range (the statement always gives one row)
        return True, None
    upto, lo, hi = r["upto"], r["first"], r["last"]
    shift = SHIFTS[0]
    size = 1 << shift
    first_full = -(-lo // size)  # the first block wholly at or above lo
    last_full = (min(hi, upto - 1) + 1) // size - 1  # the last block wholly at or below hi and the watermark
    if last_full < first_full or hi - max(lo, upto) + 1 > TAIL_MAX:
        return False, None
    # above the whole blocks: the rest of hi's block below the watermark and the points above it (few steps)
    above = (last_full + 1) << shift
    have = await conn.fetchval(_COUNT, sid, above, hi) if above <= hi else 0
    if have >= n:
        return True, await conn.fetchval(_NTH_DESC, sid, above, hi, n - 1)
    need = n - have
    row = await conn.fetchrow(_CROSSING, sid, shift, first_full, last_full, need)
    if row is not None:  # in that block: its (need - counted above it)-th point from its top
        start = row["block"] << shift
        return True, await conn.fetchval(_NTH_DESC, sid, start, start + size - 1, need - (row["cum"] - row["n"]) - 1)
    need -= await conn.fetchval(_BLOCKS_SUM, sid, shift, first_full, last_full)
    below = (first_full << shift) - 1  # the part of lo's block under the whole blocks
    return True, (await conn.fetchval(_NTH_DESC, sid, lo, below, need - 1) if lo <= below else None)
