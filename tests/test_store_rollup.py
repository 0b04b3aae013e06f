"""The downsampling rollup the writer keeps, against a recomputation in Python from the stored points: after
appends, out-of-order writes, re-logged steps whose value goes up or down, NaN/inf and negative steps."""

from __future__ import annotations

import math
import random

import asyncpg
import pytest

from trainscope.collector.points import Point
from trainscope.collector.store import Store
from trainscope.collector.store.rollup import SHIFTS

T0 = 1_700_000_000.0


def _order(value: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(value) else (0, value)  # PostgreSQL's float order: NaN above everything


def expected(points: dict[tuple[int, int], float]) -> dict[tuple[int, int, int], tuple]:
    """(series, shift, block) -> (n, lowest (value, step), highest (value, step)) from (series, step) -> value."""
    out: dict[tuple[int, int, int], list] = {}
    for (sid, step), value in points.items():
        for shift in SHIFTS:
            k = (sid, shift, step >> shift)
            cur = out.get(k)
            lo_key, hi_key = (_order(value), step), (_order(value), step)
            if cur is None:
                out[k] = [1, (lo_key, value, step), (hi_key, value, step)]
                continue
            cur[0] += 1
            if lo_key < cur[1][0]:
                cur[1] = (lo_key, value, step)
            if hi_key > cur[2][0]:
                cur[2] = (hi_key, value, step)
    return {k: (n, (lo[1], lo[2]), (hi[1], hi[2])) for k, (n, lo, hi) in out.items()}


def _same(a: tuple, b: tuple) -> bool:
    """Equal, NaN equal to NaN (and 0.0 to -0.0, as PostgreSQL compares them)."""
    flat_a, flat_b = (a[0], *a[1], *a[2]), (b[0], *b[1], *b[2])
    return all(x == y or (x != x and y != y) for x, y in zip(flat_a, flat_b, strict=True))


async def stored(url: str) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int, int], tuple]]:
    conn = await asyncpg.connect(url)
    try:
        pts = {(r[0], r[1]): r[2] for r in await conn.fetch("SELECT series_id, step, value FROM points")}
        roll = {(r[0], r[1], r[2]): (r[3], (r[4][0], int(r[4][1])), (r[5][0], int(r[5][1])))
                for r in await conn.fetch("SELECT series_id, shift, block, n, lo, hi FROM rollup")}
    finally:
        await conn.close()
    return pts, roll


async def check(url: str) -> int:
    pts, roll = await stored(url)
    want = expected(pts)
    assert roll.keys() == want.keys()
    bad = [k for k in want if not _same(roll[k], want[k])]
    assert not bad, [(k, roll[k], want[k]) for k in bad[:5]]
    return len(roll)


async def test_rollup_follows_appends_and_replacements(store: Store, database_url: str) -> None:
    rnd = random.Random(4)
    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0]
    ts = {}

    def pts(metric: str, steps: list[int], shift_ts: float = 0.0, values: list[float] | None = None) -> list[Point]:
        out = []
        for i, s in enumerate(steps):
            v = values[i] if values else (rnd.choice(specials) if rnd.random() < 0.02 else rnd.gauss(0, 1))
            t = ts[metric, s] = ts.get((metric, s), T0 + s) + shift_ts
            out.append(Point(metric, s, t, v))
        return out

    # appends in batches, two series, one starting at negative steps
    for lo in range(-500, 9000, 1500):
        await store.write("u", "tb", "tensorboard", pts("a", list(range(lo, lo + 1500))) +
                          pts("b", list(range(lo + 600, lo + 2100, 3))), {"at": lo})
    assert await check(database_url) > 0
    # out of order, sparse, far away (blocks that straddle nothing written before)
    await store.write("u", "tb", "tensorboard", pts("a", [20_000, 9_700, 50_003, 9_699]), None)
    await check(database_url)
    # every extreme of a block replaced by a value that is no longer extreme (up and down), and ties
    pts_now, _ = await stored(database_url)
    sid_a = min(sid for sid, _ in pts_now)
    steps = sorted(s for sid, s in pts_now if sid == sid_a)[:4000]
    new = [rnd.choice([0.0, 0.0, 5.0, -5.0, math.nan]) for _ in steps]
    await store.write("u", "tb", "tensorboard", pts("a", steps, shift_ts=1.0, values=new), None)
    await check(database_url)
    # a single point replaced by a smaller and then a larger value
    for v in (-1e9, 1e9, 0.5):
        await store.write("u", "tb", "tensorboard", pts("a", [4096], shift_ts=1.0, values=[v]), None)
        await check(database_url)


async def test_forget_drops_the_rollup(store: Store, database_url: str) -> None:
    await store.write("gone", "tb", "tensorboard", [Point("m", s, T0 + s, float(s)) for s in range(100)], None)
    assert await check(database_url) > 0
    await store.forget_workload("gone", delete_data=True)
    assert await check(database_url) == 0


@pytest.mark.parametrize("keep", [False])
async def test_a_store_without_rollup_writes_none(database_url: str, keep: bool) -> None:
    s = await Store.open(database_url, keep_rollup=keep)
    try:
        await s.write("x", "tb", "tensorboard", [Point("m", 1, T0, 1.0)], None)
    finally:
        await s.close()
    assert (await stored(database_url))[1] == {}


async def test_the_migration_fills_the_rollup_of_points_stored_before_it(database_url: str) -> None:
    """Points written without the rollup (as before migration 0006), then the migration's own backfill statements:
    the same rollup as the writer keeps."""
    from trainscope.collector.store.migrate import available_migrations

    rnd = random.Random(9)
    s = await Store.open(database_url, keep_rollup=False)
    try:
        for lo in (-5000, 0, 70_000):
            await s.write("old", "tb", "tensorboard", [Point(m, st, T0 + st, rnd.choice([rnd.random(), math.nan]))
                                                       for st in range(lo, lo + 9000, 3) for m in ("a", "b")], None)
    finally:
        await s.close()
    sql = dict(available_migrations())["0006_rollup.sql"]
    backfill = sql[sql.index("INSERT INTO rollup"):]
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(backfill)
    finally:
        await conn.close()
    assert await check(database_url) > 3 * 9000 // 16
