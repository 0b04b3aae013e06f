"""`last=N`: where each series' last N points start, found with the rollup's per-block counts, against the stored
points counted in Python, on a real PostgreSQL: sparse and negative steps, gaps of whole blocks, NaN values, step
ranges cutting blocks, a watermark below the last block, lowered by a write or never raised (the points counted)."""

from __future__ import annotations

import math
import random

import asyncpg

from trainscope.api import queries, rollup
from trainscope.api.params import filters
from trainscope.collector.points import Point
from trainscope.collector.store import Store

T0 = 1_700_000_000.0
BIG = 2**63 - 1


def _oracle(steps: list[int], lo: int, hi: int, n: int) -> int | None:
    inside = [s for s in steps if lo <= s <= hi]
    return inside[-n] if len(inside) >= n else None


async def _stored(conn: asyncpg.Connection) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for sid, step in await conn.fetch("SELECT series_id, step FROM points ORDER BY series_id, step"):
        out.setdefault(sid, []).append(step)
    return out


def _cases(rnd: random.Random, steps: list[int]) -> list[tuple[int, int, int]]:
    """(lo, hi, n): the whole series, ranges cut at random steps (inside blocks), n from 1 to beyond the count."""
    out = [(-BIG - 1, BIG, 1), (-BIG - 1, BIG, len(steps)), (-BIG - 1, BIG, len(steps) + 1)]
    for _ in range(60):
        a, b = sorted(rnd.choice(steps) + rnd.randint(-5000, 5000) for _ in range(2))
        lo, hi = rnd.choice([(a, b), (-BIG - 1, b), (a, BIG)])
        inside = sum(lo <= s <= hi for s in steps)
        out.append((lo, hi, rnd.choice([1, 2, max(1, inside // 3), max(1, inside - 1), inside + 1,
                                        rnd.randint(1, inside + 2)])))
    return out


async def _check_all(conn: asyncpg.Connection, rnd: random.Random) -> tuple[int, int]:
    """Every case of every series against the oracle; returns (cases the rollup answered, cases counted)."""
    known = counted = 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        for sid, steps in (await _stored(conn)).items():
            for lo, hi, n in _cases(rnd, steps):
                ok, step = await rollup.last_n_start(conn, sid, lo, hi, n)
                if ok:
                    known += 1
                    assert step == _oracle(steps, lo, hi, n), (sid, lo, hi, n)
                else:
                    counted += 1
    return known, counted


def _points(metric: str, steps: list[int], rnd: random.Random) -> list[Point]:
    return [Point(metric, s, T0 + s, math.nan if rnd.random() < 0.02 else rnd.gauss(0, 1)) for s in steps]


async def test_last_n_from_the_rollup_equals_counting_the_points(store: Store, database_url: str) -> None:
    rnd = random.Random(18)
    dense = list(range(-3000, 70_000))
    sparse = sorted(rnd.sample(range(0, 400_000), 9_000))
    gappy = [s for s in range(0, 60_000) if not 8192 <= s < 8192 * 3]  # two empty blocks
    await store.write("u", "tb", "tensorboard", _points("dense", dense, rnd) + _points("sparse", sparse, rnd)
                      + _points("gappy", gappy, rnd), {"at": 1})
    conn = await asyncpg.connect(database_url)
    try:
        # nothing rolled up yet: every case is counted
        known, counted = await _check_all(conn, rnd)
        assert known == 0 and counted > 0
        await store.rollup.settle()
        known, counted = await _check_all(conn, rnd)
        assert known > counted  # the rollup answers most of them
        # a write below the watermark lowers it (the blocks above it no longer count), then the builder catches up
        await store.write("u", "tb", "tensorboard", _points("dense", [5, 70_500, 70_501], rnd), None)
        known, _ = await _check_all(conn, rnd)
        assert known > 0
        await store.rollup.settle()
        known, counted = await _check_all(conn, rnd)
        assert known > counted
    finally:
        await conn.close()


async def test_last_n_bounds_with_and_without_time_filters(store: Store, database_url: str) -> None:
    rnd = random.Random(5)
    steps = list(range(0, 50_000, 2))
    await store.write("u", "tb", "tensorboard", _points("a", steps, rnd) + _points("b", steps[::3], rnd), {"at": 1})
    await store.rollup.settle()
    conn = await asyncpg.connect(database_url)
    await queries.init_connection(conn)  # the API pool's codecs (times as int ms)
    try:
        series = await queries.series(conn, "u")
        by_metric = {s.metric: s.id for s in series}
        for n in (1, 7, 4_000, 8_333, 8_334, 25_000, 25_001):
            got = await queries.last_n_bounds(conn, series, filters(from_step=1_001, to_step=45_555), n)
            want = {by_metric[m]: _oracle(st, 1_001, 45_555, n) for m, st in (("a", steps), ("b", steps[::3]))}
            assert got == {k: v for k, v in want.items() if v is not None}, n
        # with a time filter the points are counted (the rollup has no per-point times); ts = T0 + step
        start_ms = int((T0 + 10_000) * 1000)
        got = await queries.last_n_bounds(conn, series, filters(start=start_ms), 100)
        assert got == {by_metric["a"]: steps[-100], by_metric["b"]: steps[::3][-100]}
        got = await queries.last_n_bounds(conn, series, filters(start=int((T0 + 49_990) * 1000)), 100)
        assert got == {}
    finally:
        await conn.close()
