"""The downsampling rollup the writer keeps (table `rollup`, migration 0006): per series and block of steps, the
count and the extreme points, recomputed from `points` for every block a write touched, in the write's transaction.

Blocks are 2^shift steps, block = step >> shift, for SHIFTS = (4, 8, 12). A write passes, per series, the lowest and
highest step it wrote; every 16-step block in that range is recomputed from the points, every 256-step block from
its 16-step blocks (fresh ones from this statement, the others as stored) and every 4,096-step block likewise from
its 256-step blocks. Recomputing, never adjusting, keeps the rollup exact whatever a replaced point's new value.
"""

from __future__ import annotations

from collections.abc import Mapping

import asyncpg

SHIFTS = (4, 8, 12)

# One statement, one round trip. `t` holds each touched series' step range; b4/b8/b12 are the recomputed blocks of
# each level; a level's untouched sub-blocks come from the table (this statement's snapshot: unchanged by it).
_REFRESH = """
WITH t AS (SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS t(sid, lo, hi)),
b4 AS (
    SELECT p.series_id AS sid, p.step >> 4 AS block, count(*) AS n,
           min(ARRAY[p.value, p.step::float8]) AS lo, max(ARRAY[p.value, p.step::float8]) AS hi
    FROM t JOIN points p ON p.series_id = t.sid AND p.step >= (t.lo >> 4) << 4 AND p.step <= ((t.hi >> 4) << 4) + 15
    GROUP BY 1, 2
), b8 AS (
    SELECT sid, block >> 4 AS block, sum(n)::bigint AS n, min(lo) AS lo, max(hi) AS hi FROM (
        SELECT sid, block, n, lo, hi FROM b4
        UNION ALL
        SELECT r.series_id, r.block, r.n, r.lo, r.hi FROM t JOIN rollup r ON r.series_id = t.sid AND r.shift = 4
            AND r.block >= (t.lo >> 8) << 4 AND r.block <= ((t.hi >> 8) << 4) + 15
            AND (r.block < t.lo >> 4 OR r.block > t.hi >> 4)
    ) x GROUP BY 1, 2
), b12 AS (
    SELECT sid, block >> 4 AS block, sum(n)::bigint AS n, min(lo) AS lo, max(hi) AS hi FROM (
        SELECT sid, block, n, lo, hi FROM b8
        UNION ALL
        SELECT r.series_id, r.block, r.n, r.lo, r.hi FROM t JOIN rollup r ON r.series_id = t.sid AND r.shift = 8
            AND r.block >= (t.lo >> 12) << 4 AND r.block <= ((t.hi >> 12) << 4) + 15
            AND (r.block < t.lo >> 8 OR r.block > t.hi >> 8)
    ) x GROUP BY 1, 2
)
INSERT INTO rollup AS r (series_id, shift, block, n, lo, hi)
SELECT sid, 4, block, n, lo, hi FROM b4
UNION ALL SELECT sid, 8, block, n, lo, hi FROM b8
UNION ALL SELECT sid, 12, block, n, lo, hi FROM b12
ON CONFLICT (series_id, shift, block) DO UPDATE SET n = EXCLUDED.n, lo = EXCLUDED.lo, hi = EXCLUDED.hi
"""


async def refresh(conn: asyncpg.Connection, bounds: Mapping[int, tuple[int, int]]) -> None:
    """Recompute the rollup blocks covering each series' [lowest, highest] written step (inside the transaction
    that wrote them)."""
    if not bounds:
        return
    sids = list(bounds)
    await conn.execute(_REFRESH, sids, [bounds[s][0] for s in sids], [bounds[s][1] for s in sids])


async def forget(conn: asyncpg.Connection, uid: str) -> None:
    """Drop the rollup of a workload's series (with its points)."""
    await conn.execute("DELETE FROM rollup WHERE series_id IN (SELECT id FROM series WHERE workload_uid = $1)", uid)
