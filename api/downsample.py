"""`downsample=N`: at most N points per series, min/max per step bucket, computed by PostgreSQL in two cheap passes.

Method (M4-like, without the bucket's first/last): a series' step range [lo, hi] (within the filters) is cut
into at most B = (N - 2) // 2 step buckets: by default B equal ones, bucket(step) = floor((step - lo) * B /
(hi - lo + 1)) in exact integer arithmetic; with `buckets=aligned`, buckets of a power-of-two width at multiples of
it (api/buckets.py); from each bucket the point with the lowest and the one with the highest value are kept, and the
series' first and last points always are. So the answer has at most 2B + 2 <= N points, keeps every local extreme
at the bucket's resolution (the global min and max included) and both ends. Ordering is PostgreSQL's float order:
NaN above +Infinity, so a NaN spike shows up as a bucket's maximum. Ties keep the lowest step for a minimum and the
highest for a maximum. A series with at most N points is returned whole.

How, in one REPEATABLE READ snapshot (see docs/api.md, Downsampling):
1. bounds: each series' first and last matching point (two index probes per series);
2. pass 1: plain float min(value), max(value), count(*) per (series, bucket) over the matching rows — no per-row
   array, which cost more than the scan itself. When the series make up most of the table, the scan is cut into
   page (ctid) ranges, one UNION ALL branch each, which PostgreSQL runs in parallel workers (Parallel Append); the
   planner would not split it itself, as it cannot tell that a bucket expression has few distinct values;
3. pass 2: only the rows whose value is one of the extremes found (a hashed `value = ANY(...)`), grouped by
   (series, bucket, value): lowest and highest step, their count and timestamp. A bucket whose extreme value occurs
   once is complete; ties are read by primary key.
Only the <= N chosen points per series cross the wire, never the series itself.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import asyncpg

from trainscope.api import rollup
from trainscope.api.buckets import EVEN, Grid, grid
from trainscope.api.params import Filters
from trainscope.api.queries import Row, Series, read_series, step_bounds, ts_clause

MIN_POINTS = 4
INT64_MAX = 2**63 - 1
# The ctid split pays off when a whole-table scan is the plan anyway: the series hold this share of the table's rows
# (planner's estimate), and the table is big enough for parallel workers to be worth starting.
SPLIT_MIN_SHARE = 0.3
SPLIT_MIN_PAGES = 1024  # 8 MB, PostgreSQL's min_parallel_table_scan_size


def buckets_for(max_points: int) -> int:
    return max(1, (max_points - 2) // 2)


def _order(value: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(value) else (0, value)  # PostgreSQL: NaN sorts above everything


def minmax_reference(rows: Sequence[Row], max_points: int, kind: str = EVEN) -> list[Row]:
    """The same selection computed in Python from all rows of one series (sorted by step): tests and the bench."""
    if len(rows) <= max_points:
        return list(rows)
    g = grid(rows[0][0], rows[-1][0], buckets_for(max_points), kind)
    low: dict[int, Row] = {}
    high: dict[int, Row] = {}
    for r in rows:
        b = g.of(r[0])
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


# Each series' first and last matching point: index probes (the ts filter, if any, is checked on the way).
_BOUNDS = """
SELECT s.sid, f.step AS lo, f.ts AS lo_ts, f.value AS lo_value, l.step AS hi, l.ts AS hi_ts, l.value AS hi_value,
       (SELECT rollup_upto FROM series WHERE id = s.sid) AS upto
FROM unnest($1::bigint[], $2::bigint[]) AS s(sid, lo0)
CROSS JOIN LATERAL (SELECT step, ts, value FROM points
                    WHERE series_id = s.sid AND step >= s.lo0 AND step <= $3 {ts} ORDER BY step LIMIT 1) f
CROSS JOIN LATERAL (SELECT step, ts, value FROM points
                    WHERE series_id = s.sid AND step >= s.lo0 AND step <= $3 {ts} ORDER BY step DESC LIMIT 1) l
"""

# Pass 1, one branch: per (series, bucket) the lowest and highest value and the number of points.
_PASS1 = ("SELECT p.series_id AS sid, {bucket} AS b, min(p.value) AS mn, max(p.value) AS mx, count(*) AS n "
          "{rows} GROUP BY 1, 2")
_PASS1_MERGE = "SELECT sid, b, min(mn) AS mn, max(mx) AS mx, sum(n)::bigint AS n FROM ({}) x GROUP BY 1, 2"

# Pass 2: the rows holding one of the extreme values, per (series, bucket, value); few rows pass the `= ANY`,
# so one query (PostgreSQL's own parallel scan, if it likes) does better than the page-range split.
_PASS2 = ("SELECT p.series_id AS sid, {bucket} AS b, p.value AS v, min(p.step) AS first, max(p.step) AS last, "
          "count(*) AS n, min(p.ts) AS ts {rows} GROUP BY 1, 2, 3")

# Points by key, one index probe each (OFFSET 0: never a join over the whole table).
_LOOKUP = ("SELECT k.sid, k.step, p.ts, p.value FROM unnest($1::bigint[], $2::bigint[]) AS k(sid, step) "
           "CROSS JOIN LATERAL (SELECT ts, value FROM points WHERE series_id = k.sid AND step = k.step OFFSET 0) p")


def _rows_sql(f: Filters, sids: Sequence[int], los: Sequence[int], his: Sequence[int], grids: Sequence[Grid],
              per_series_lo: bool, values: list[float] | None = None) -> tuple[str, str, list[object]]:
    """(FROM ... WHERE ..., bucket expression, args) for the matching rows of these series [holding `values`].

    The bucket is int8 arithmetic unless (step - org) * num could overflow (then numeric). When the series share one
    step range and grid (metrics logged together), they are constants and no join is needed (~15% cheaper).
    """
    args: list[object] = []

    def param(value: object, cast: str) -> str:
        args.append(value)
        return f"${len(args)}::{cast}"

    where = []
    if values is not None:  # first: PostgreSQL hashes this `= ANY` only ahead of the series' one (16.2)
        where.append(f"p.value = ANY({param(values, 'float8[]')})")
    num = grids[0].num  # the same for every series: B (even buckets) or 1 (aligned)
    exact = max(h - g.org + 1 for h, g in zip(his, grids, strict=True)) * num <= INT64_MAX
    den_type = "bigint" if exact else "numeric"
    if len(set(los)) == 1 and len(set(grids)) == 1:
        rows = "FROM points p"
        where.append(f"p.series_id = ANY({param(list(sids), 'bigint[]')})")
        org, den = param(grids[0].org, "bigint"), param(grids[0].den, den_type)
        lo = param(los[0], "bigint") if per_series_lo else ""
    else:
        rows = (f"FROM points p JOIN unnest({param(list(sids), 'bigint[]')}, {param(list(los), 'bigint[]')}, "
                f"{param([g.org for g in grids], 'bigint[]')}, {param([g.den for g in grids], den_type + '[]')}) "
                "AS s(sid, lo, org, den) ON p.series_id = s.sid")
        lo, org, den = "s.lo", "s.org", "s.den"
    bucket = (f"(p.step - {org}) * {num} / {den}" if exact
              else f"div((p.step::numeric - {org}) * {num}, {den})::bigint")
    if per_series_lo:  # `last`: the rows before each series' own first step are not in the answer
        where.append(f"p.step >= {lo}")
    if f.from_step is not None:
        where.append(f"p.step >= {param(f.from_step, 'bigint')}")
    if f.to_step is not None:
        where.append(f"p.step <= {param(f.to_step, 'bigint')}")
    if f.start_ms is not None:
        where.append(f"p.ts >= {param(f.start_ms, 'timestamptz')}")
    if f.end_ms is not None:
        where.append(f"p.ts < {param(f.end_ms + 1, 'timestamptz')}")
    return f"{rows} WHERE {' AND '.join(where) or 'TRUE'}", bucket, args


async def _estimate(conn: asyncpg.Connection, sql: str, *args: object) -> float:
    """The planner's row estimate of a query (it scales the table's statistics to its current size)."""
    plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args))
    return float(plan[0]["Plan"]["Plan Rows"])


async def page_ranges(conn: asyncpg.Connection, ids: Sequence[int]) -> list[str]:
    """ctid conditions splitting `points` for parallel workers, or [""] (one branch) when a split would not pay."""
    workers = int(await conn.fetchval("SELECT current_setting('max_parallel_workers_per_gather')"))
    pages = await conn.fetchval("SELECT pg_relation_size('points') / current_setting('block_size')::int")
    if workers < 1 or pages < SPLIT_MIN_PAGES:
        return [""]
    ours = await _estimate(conn, "SELECT 1 FROM points WHERE series_id = ANY($1::bigint[])", list(ids))
    if ours < SPLIT_MIN_SHARE * await _estimate(conn, "SELECT 1 FROM points"):
        return [""]
    n = max(2, workers)  # one branch per worker (the leader gathers, and takes a branch if one is left)
    cuts = [pages * i // n for i in range(1, n)]
    conds = [f" AND p.ctid < '({cuts[0]},0)'::tid"]
    conds += [f" AND p.ctid >= '({a},0)'::tid AND p.ctid < '({b},0)'::tid" for a, b in itertools.pairwise(cuts)]
    conds.append(f" AND p.ctid >= '({cuts[-1]},0)'::tid")  # open-ended: pages added since are scanned too
    return conds


def _union(template: str, merge: str, split: list[str], rows: str, **parts: object) -> str:
    """One branch per page range (UNION ALL, merged again by `merge`), or the plain query."""
    branches = [template.format(rows=rows + cond, **parts) for cond in split]
    return branches[0] if len(branches) == 1 else merge.format(" UNION ALL ".join(f"({b})" for b in branches))


def _same(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)  # PostgreSQL's float equality: NaN = NaN


async def downsample(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters, lower: dict[int, int],
                     max_points: int) -> Downsampled:
    """At most `max_points` points per series (see the module doc), in one consistent snapshot."""
    async with snapshot(conn):
        return await downsample_in(conn, series_, f, lower, max_points)


@contextlib.asynccontextmanager
async def snapshot(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """The REPEATABLE READ read-only transaction downsample_in runs in (one snapshot for all its queries)."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # work_mem: the per-bucket hash tables stay in memory; custom plans: a hashed `= ANY` needs a constant
        await conn.execute("SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan")
        yield


Spare = Callable[[], AbstractAsyncContextManager[asyncpg.Connection | None]]


async def downsample_in(conn: asyncpg.Connection, series_: Sequence[Series], f: Filters, lower: dict[int, int],
                        max_points: int, spare: Spare | None = None, buckets: str = EVEN) -> Downsampled:
    """downsample, inside the caller's snapshot(). `spare()`: another connection if one is free now (else None),
    which reads the rollup for half of the series in the same snapshot. `buckets`: api/buckets.py's kinds."""
    lo0, hi0 = step_bounds(f)
    by_id = {s.id: s for s in series_}
    nb = buckets_for(max_points)
    args: list[object] = [[s.id for s in series_], [max(lo0, lower.get(s.id, lo0)) for s in series_], hi0]
    bounds = await conn.fetch(_BOUNDS.format(ts=ts_clause(f, args)), *args)
    if not bounds:
        return Downsampled([(s, []) for s in series_], 0, False)
    sids = [b["sid"] for b in bounds]
    los, his = [b["lo"] for b in bounds], [b["hi"] for b in bounds]
    grids = [grid(b["lo"], b["hi"], nb, buckets) for b in bounds]
    plans = [rollup.plan(b["sid"], b["lo"], b["hi"], b["upto"], g) for b, g in zip(bounds, grids, strict=True)]
    if (f.start_ms is None and f.end_ms is None and all(plans)
            and any(p.shift and p.upto > p.lo for p in plans)):  # type: ignore[union-attr]
        totals, chosen = await _from_rollup(conn, bounds, plans, max_points, spare)  # type: ignore[arg-type]
    else:
        totals, chosen = await _scan(conn, f, bounds, sids, los, his, grids, max_points, bool(lower))
    result: dict[int, list[Row]] = {}
    for b in bounds:
        if b["sid"] not in chosen:  # small enough: the whole series, unchanged
            result[b["sid"]] = await read_series(conn, by_id[b["sid"]], f, b["lo"], b["hi"], max_points)
    missing = [(sid, step) for sid, keep in chosen.items() for step, row in keep.items() if row is None]
    if missing:  # the chosen points whose time (or tie) is still to be read: one query for every series
        sids_, steps_ = zip(*missing, strict=True)
        for row in await conn.fetch(_LOOKUP, list(sids_), list(steps_)):
            chosen[row["sid"]][row["step"]] = (row["step"], row["ts"], row["value"])
    for sid, keep in chosen.items():
        result[sid] = [keep[step] for step in sorted(keep)]  # type: ignore[misc]
    out = [(s, result.get(s.id, [])) for s in series_]
    reduced = any(n > max_points for n in totals.values())
    return Downsampled(out, sum(totals.values()), reduced)


def _point(pair: Sequence[float]) -> tuple[int, Row | None]:
    """(step, the point) of a rollup extreme {value, step, ts us}; None when its time is not exact in float8."""
    step, us = int(pair[1]), pair[2]
    return step, ((step, int(us) // 1000, pair[0]) if abs(us) < rollup.EXACT else None)


async def _from_rollup(conn: asyncpg.Connection, bounds: list[asyncpg.Record], plans: list[rollup.Plan],
                       max_points: int, spare: Spare | None) -> tuple[dict[int, int], dict[int, dict[int, Row | None]]]:
    """The same as _scan, from the store's rollup (api/rollup.py)."""
    if spare is None or len(plans) < 2:
        await rollup.extremes(conn, plans)
    else:
        async with spare() as helper:
            if helper is None:
                await rollup.extremes(conn, plans)
            else:  # the helper reads in this transaction's snapshot (exported, imported before any query)
                exported = await conn.fetchval("SELECT pg_export_snapshot()")
                if not re.fullmatch(r"[0-9A-F-]+", exported):  # it goes into the statement's text
                    raise ValueError(f"unexpected snapshot id {exported!r}")
                async with helper.transaction(isolation="repeatable_read", readonly=True):
                    await helper.execute(f"SET TRANSACTION SNAPSHOT '{exported}'; "
                                         "SET LOCAL plan_cache_mode = force_custom_plan")
                    await rollup.extremes(conn, plans, [helper])
    totals = {p.sid: p.total for p in plans}
    chosen: dict[int, dict[int, Row | None]] = {}
    for b, p in zip(bounds, plans, strict=True):
        if p.total <= max_points:
            continue
        keep: dict[int, Row | None] = {}
        for bucket in p.buckets.values():
            for pair in (bucket.lo, bucket.hi):
                if pair is not None:
                    step, row = _point(pair)
                    keep[step] = row
        keep[b["lo"]] = (b["lo"], b["lo_ts"], b["lo_value"])
        keep[b["hi"]] = (b["hi"], b["hi_ts"], b["hi_value"])
        chosen[p.sid] = keep
    return totals, chosen


async def _scan(conn: asyncpg.Connection, f: Filters, bounds: list[asyncpg.Record], sids: list[int], los: list[int],
                his: list[int], grids: list[Grid], max_points: int,
                per_series_lo: bool) -> tuple[dict[int, int], dict[int, dict[int, Row | None]]]:
    """Passes 1 and 2 over the matching points: (series -> matching points, series -> step -> chosen point, None
    where it is still to be read)."""
    split = await page_ranges(conn, sids)
    if len(split) > 1:  # each branch must scan its pages (TID Range Scan), not walk the whole primary key
        await conn.execute("SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off")
    rows, bucket, args = _rows_sql(f, sids, los, his, grids, per_series_lo)
    extremes = await conn.fetch(_union(_PASS1, _PASS1_MERGE, split, rows, bucket=bucket), *args)

    totals: dict[int, int] = {}
    for r in extremes:
        totals[r["sid"]] = totals.get(r["sid"], 0) + r["n"]
    big = [i for i, sid in enumerate(sids) if totals.get(sid, 0) > max_points]
    chosen: dict[int, dict[int, Row | None]] = {}  # sid -> step -> the point (None: to be read)
    for b in bounds:
        if totals.get(b["sid"], 0) > max_points:
            chosen[b["sid"]] = {b["lo"]: (b["lo"], b["lo_ts"], b["lo_value"]),
                                b["hi"]: (b["hi"], b["hi_ts"], b["hi_value"])}
    if big:
        values = {v for r in extremes if r["sid"] in chosen for v in (r["mn"], r["mx"])}
        if any(v != v for v in values):  # one NaN is enough (NaN = NaN in PostgreSQL)
            values = {v for v in values if v == v} | {math.nan}
        rows, bucket, args = _rows_sql(f, [sids[i] for i in big], [los[i] for i in big], [his[i] for i in big],
                                       [grids[i] for i in big], per_series_lo, list(values))
        found: dict[tuple[int, int], list[asyncpg.Record]] = {}
        for r in await conn.fetch(_PASS2.format(rows=rows, bucket=bucket), *args):
            found.setdefault((r["sid"], r["b"]), []).append(r)
        for r in extremes:
            keep = chosen.get(r["sid"])
            if keep is None:
                continue
            groups = found[(r["sid"], r["b"])]
            low = next(g for g in groups if _same(g["v"], r["mn"]))
            high = next(g for g in groups if _same(g["v"], r["mx"]))
            for g, step in ((low, low["first"]), (high, high["last"])):
                if keep.get(step) is None:
                    keep[step] = (step, g["ts"], g["v"]) if g["n"] == 1 else None
    if len(split) > 1:
        await conn.execute("SET LOCAL enable_indexscan = on; SET LOCAL enable_bitmapscan = on")
    return totals, chosen
