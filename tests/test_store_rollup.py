"""The downsampling rollup, on a real PostgreSQL, against a recomputation in Python from the stored points: every
block below a series' watermark must be exact at every moment — after appends, out-of-order writes, re-logged
steps whose value goes up or down, NaN/inf and negative steps, and when a write races the builder."""

from __future__ import annotations

import asyncio
import math
import random

import asyncpg

from trainscope.collector.points import Point
from trainscope.collector.store import Store, rollup
from trainscope.collector.store.rollup import SHIFTS

T0 = 1_700_000_000.0


def _order(value: float) -> tuple[int, float]:
    return (1, 0.0) if math.isnan(value) else (0, value)  # PostgreSQL's float order: NaN above everything


def expected(points: dict[tuple[int, int], float]) -> dict[tuple[int, int, int], tuple]:
    """(series, shift, block) -> (n, lowest (value, step), highest (value, step)) from (series, step) -> value."""
    out: dict[tuple[int, int, int], list] = {}
    for (sid, step), value in points.items():
        key = (_order(value), step)
        for shift in SHIFTS:
            k = (sid, shift, step >> shift)
            cur = out.get(k)
            if cur is None:
                out[k] = [1, (key, value, step), (key, value, step)]
                continue
            cur[0] += 1
            if key < cur[1][0]:
                cur[1] = (key, value, step)
            if key > cur[2][0]:
                cur[2] = (key, value, step)
    return {k: (n, (lo[1], lo[2]), (hi[1], hi[2])) for k, (n, lo, hi) in out.items()}


def _same(a: tuple, b: tuple) -> bool:
    """Equal, NaN equal to NaN (and 0.0 to -0.0, as PostgreSQL compares them)."""
    flat_a, flat_b = (a[0], *a[1], *a[2]), (b[0], *b[1], *b[2])
    return all(x == y or (x != x and y != y) for x, y in zip(flat_a, flat_b, strict=True))


async def check(conn: asyncpg.Connection) -> int:
    """Every block wholly below its series' watermark is exact (one snapshot); returns how many blocks that is."""
    async with conn.transaction(isolation="repeatable_read"):
        rows = await conn.fetch("SELECT series_id, step, value, (extract(epoch FROM ts) * 1000000)::bigint "
                                "FROM points")
        marks = {r[0]: r[1] for r in await conn.fetch("SELECT id, rollup_upto FROM series")}
        stored = await conn.fetch("SELECT series_id, shift, block, n, lo, hi FROM rollup")
    pts = {(r[0], r[1]): r[2] for r in rows}
    times = {(r[0], r[1]): r[3] for r in rows}
    assert all(u % 4096 == 0 for u in marks.values())

    def below(k: tuple[int, int, int]) -> bool:
        return (k[2] + 1) << k[1] <= marks[k[0]]

    roll = {}
    for sid, shift, block, n, lo, hi in stored:
        if below((sid, shift, block)):  # each extreme carries its point's time
            assert (lo[2], hi[2]) == (times[sid, int(lo[1])], times[sid, int(hi[1])])
            roll[sid, shift, block] = (n, (lo[0], int(lo[1])), (hi[0], int(hi[1])))

    want = {k: v for k, v in expected(pts).items() if below(k)}
    got = {k: v for k, v in roll.items() if below(k)}
    assert got.keys() == want.keys()
    bad = [k for k in want if not _same(got[k], want[k])]
    assert not bad, [(k, got[k], want[k]) for k in bad[:5]]
    return len(want)


async def test_rollup_follows_appends_and_replacements(store: Store, database_url: str) -> None:
    rnd = random.Random(4)
    specials = [math.nan, math.inf, -math.inf, 0.0, -0.0]
    ts: dict[tuple[str, int], float] = {}

    def pts(metric: str, steps: list[int], values: list[float] | None = None) -> list[Point]:
        out = []
        for i, s in enumerate(steps):
            v = values[i] if values else (rnd.choice(specials) if rnd.random() < 0.02 else rnd.gauss(0, 1))
            t = ts[metric, s] = ts.get((metric, s), T0 + s) + 1.0
            out.append(Point(metric, s, t, v))
        return out

    conn = await asyncpg.connect(database_url)
    try:
        # appends in batches, two series, one starting at negative steps; built after each
        for lo in range(-5000, 40_000, 9000):
            await store.write("u", "tb", "tensorboard", pts("a", list(range(lo, lo + 9000))) +
                              pts("b", list(range(lo + 600, lo + 9600, 3))), {"at": lo})
            await check(conn)
            await store.rollup.settle()
            await check(conn)
        marks = dict(await conn.fetch("SELECT metric, rollup_upto FROM series"))
        # settled: the last blocks too (a series not written for a while)
        assert marks == {"a": rollup.aligned(40_000 - 1) + 4096, "b": rollup.aligned(40_000 + 600 - 3) + 4096}
        assert await check(conn) > 2 * (40_000 // 16)
        # out of order, sparse, far away: below the watermark (lowered at once) and above it
        await store.write("u", "tb", "tensorboard", pts("a", [90_000, 9_700, 150_003, 9_699]), None)
        assert dict(await conn.fetch("SELECT metric, rollup_upto FROM series"))["a"] == rollup.aligned(9_699)
        await check(conn)
        await store.rollup.settle()
        await check(conn)
        # every extreme of many blocks replaced by values that are no longer extreme (up and down), and ties
        rows = await conn.fetch("SELECT step FROM points p JOIN series s ON s.id = p.series_id "
                                "WHERE s.metric = 'a' ORDER BY step LIMIT 20000")
        steps = [r[0] for r in rows][3000:]
        new = [rnd.choice([0.0, 0.0, 5.0, -5.0, math.nan]) for _ in steps]
        await store.write("u", "tb", "tensorboard", pts("a", steps[::-1], values=new[::-1]), None)
        await check(conn)
        await store.rollup.settle()
        assert await check(conn) > 2 * (40_000 // 16)
        # a single point replaced by a smaller and then a larger value, in a block built long ago
        for v in (-1e9, 1e9, 0.5):
            await store.write("u", "tb", "tensorboard", pts("a", [4096], values=[v]), None)
            await check(conn)
            await store.rollup.settle()
            await check(conn)
    finally:
        await conn.close()


async def _series_id(conn: asyncpg.Connection, uid: str) -> int:
    return await conn.fetchval("SELECT id FROM series WHERE workload_uid = $1", uid)


async def test_a_write_racing_the_builder_lowers_the_watermark_after_it(database_url: str) -> None:
    """The builder holds the series (it locked before reading the points); a write replaces steps inside the blocks
    being built and reaches its own lock: it waits, the builder commits a watermark above those steps without
    having seen them, and the write then lowers it in its own transaction: exact as soon as it commits."""
    store = await Store.open(database_url, keep_rollup=True)
    builder = await asyncpg.connect(database_url)
    watcher = await asyncpg.connect(database_url)
    try:
        await store.rollup.close()  # no background builds: this test plays the builder itself
        await store.write("r", "tb", "tensorboard", [Point("m", s, T0 + s, math.sin(s)) for s in range(50_000)], None)
        sid = await _series_id(builder, "r")
        tr = builder.transaction()
        await tr.start()
        upto = await builder.fetchval(rollup._CLAIM, sid)
        assert upto == rollup.NOTHING
        write = asyncio.create_task(store.write(
            "r", "tb", "tensorboard", [Point("m", s, T0 + s + 1, v) for s, v in ((100, -99.0), (30_000, 99.0))],
            None))
        for _ in range(500):  # until the write waits for the series row's lock (its points are in by then)
            if await watcher.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN "
                                      "('transactionid', 'tuple')"):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the write never waited for the builder")
        assert not write.done()
        assert await rollup.build_locked(builder, sid, upto, chunk=10**9) == "done"
        await tr.commit()
        await write
        assert await watcher.fetchval("SELECT rollup_upto FROM series WHERE id = $1", sid) == 0  # lowered
        await check(watcher)
        # the builder's rows of the replaced blocks were stale; built again they take the new values
        await store.rollup.settle()
        assert await check(watcher) > 50_000 // 16
        assert await watcher.fetchval("SELECT lo[1] FROM rollup WHERE series_id = $1 AND shift = 12 AND block = 0",
                                      sid) == -99.0
    finally:
        await builder.close()
        await watcher.close()
        await store.close()


async def test_the_builder_skips_a_series_a_write_holds(store: Store, database_url: str) -> None:
    """A write that locked its series first (its commit still to come) makes the builder pass it by, not wait."""
    await store.write("h", "tb", "tensorboard", [Point("m", s, T0 + s, float(s % 97)) for s in range(20_000)], None)
    await store.rollup.settle()
    writer = await asyncpg.connect(database_url)
    other = await asyncpg.connect(database_url)
    try:
        sid = await _series_id(writer, "h")
        async with writer.transaction():
            await writer.execute("UPDATE points SET value = -1 WHERE series_id = $1 AND step = 5", sid)
            await rollup.lower(writer, {sid: (5, 5)})
            assert await rollup.build_chunk(other, sid) == "busy"
            await check(other)  # the old version is still exact: nothing is committed yet
        await check(other)  # committed with the watermark lowered
        assert await other.fetchval("SELECT rollup_upto FROM series WHERE id = $1", sid) == 0
        assert await rollup.build_chunk(other, sid) == "done"
        assert await check(other) > 16_384 // 16
    finally:
        await writer.close()
        await other.close()


async def test_forget_drops_the_rollup(store: Store, database_url: str) -> None:
    await store.write("gone", "tb", "tensorboard", [Point("m", s, T0 + s, float(s)) for s in range(10_000)], None)
    await store.rollup.settle()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rollup") > 0
        await store.forget_workload("gone", delete_data=True)
        assert await conn.fetchval("SELECT count(*) FROM rollup") == 0
    finally:
        await conn.close()


async def test_points_stored_without_the_rollup_are_rolled_up_by_the_next_store(database_url: str) -> None:
    """Points written while nothing kept the rollup (as before migration 0006): a store opened later finds their
    series and rolls them up in the background."""
    rnd = random.Random(9)
    plain = await Store.open(database_url, keep_rollup=False)
    try:
        for lo in (-5000, 0, 70_000):
            await plain.write("old", "tb", "tensorboard", [Point(m, st, T0 + st, rnd.choice([rnd.random(), math.nan]))
                                                           for st in range(lo, lo + 9000, 3) for m in ("a", "b")],
                              None)
    finally:
        await plain.close()
    conn = await asyncpg.connect(database_url)
    store = await Store.open(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM rollup") == 0
        await store.rollup.settle()
        assert await check(conn) > 2 * 9000 // 16
        assert await conn.fetchval("SELECT min(rollup_upto) FROM series") == rollup.aligned(70_000 + 8997) + 4096
    finally:
        await store.close()
        await conn.close()


async def test_the_keeper_builds_in_the_background_after_writes(database_url: str) -> None:
    store = await Store.open(database_url)
    conn = await asyncpg.connect(database_url)
    try:
        store.rollup._idle = 0.0  # build as soon as it is woken (no write pace to protect here)
        store.rollup._quiet = 0.5  # the last block once the series was not written for half a second
        await store.write("bg", "tb", "tensorboard", [Point("m", s, T0 + s, float(s)) for s in range(10_000)], None)
        seen = []
        for _ in range(500):
            seen.append(await conn.fetchval("SELECT rollup_upto FROM series"))
            if seen[-1] == 12_288:
                break
            await asyncio.sleep(0.02)
        assert 8192 in seen and seen[-1] == 12_288  # the closed blocks first, then the last one
        await check(conn)
    finally:
        await store.close()
        await conn.close()
