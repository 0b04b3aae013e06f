"""The writer's merge path (rows at or below a series' stored steps) and the write's last round trip (watermark and
cursor in one statement), against a real PostgreSQL: stored rows point for point, and which rows a write touched."""

from __future__ import annotations

import asyncio
import math
import random

import asyncpg
import pytest
from test_store_rollup import check

from trainscope.collector.points import Point
from trainscope.collector.store import Store, WriteResult, rollup, writer
from trainscope.collector.store.codecs import init_connection

T0 = 1_700_000_000.0
Row = tuple[float, float | str, int, int]  # ts, value (NaN as "nan"), ingest_xid, xmax


async def rows_of(conn: asyncpg.Connection, uid: str) -> dict[tuple[str, int], Row]:
    """(metric, step) -> (ts, value, ingest_xid, xmax): xmax stays 0 on a row no transaction locked or replaced."""
    rows = await conn.fetch(
        "SELECT s.metric, p.step, p.ts, p.value, p.ingest_xid, p.xmax::text::bigint AS xmax FROM points p "
        "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    # NaN as a string, so that two reads compare equal
    return {(r["metric"], r["step"]): (r["ts"], "nan" if math.isnan(r["value"]) else r["value"], r["ingest_xid"],
                                       r["xmax"]) for r in rows}


def same_value(a: float | str, b: float) -> bool:
    return a == "nan" if math.isnan(b) else a == b


def check_points(got: dict[tuple[str, int], Row], want: dict[tuple[str, int], tuple[float, float]]) -> None:
    assert got.keys() == want.keys()
    for key, (ts, value) in want.items():
        assert got[key][0] == ts and same_value(got[key][1], value), (key, got[key], (ts, value))


async def test_a_re_sent_batch_writes_no_row(store: Store, database_url: str) -> None:
    """Stored points sent again (a re-read after a restart, a retry after a lost acknowledgement) go through the
    merge and leave every stored row as it was: not replaced, not even locked (xmax 0, the same ingest_xid)."""
    pts = [Point(f"m{m}", s, T0 + s, s + m / 10) for s in range(2000) for m in range(3)]
    pts += [Point("nan", s, T0 + s, math.nan) for s in range(2000)]  # NaN is the same observation as NaN
    await store.write("re", "tb", "tensorboard", pts, {"at": 1})
    await store.rollup.settle()
    conn = await asyncpg.connect(database_url)
    try:
        await init_connection(conn)
        before = await rows_of(conn, "re")
        assert {row[3] for row in before.values()} == {0}
        marks = {r["metric"]: r["rollup_upto"] for r in await conn.fetch("SELECT metric, rollup_upto FROM series")}
        assert set(marks.values()) == {4096}
        resent = pts[len(pts) // 2:]  # below the stored highest step: the merge path, not the COPY one
        more = [Point("m0", s, T0 + s, 1.0) for s in range(4096, 4106)]
        store.rollup._queue.clear()  # what the first write queued (already built by settle)
        assert await store.write("re", "tb", "tensorboard", resent + more, {"at": 2}) == WriteResult(10, 0)
        after = await rows_of(conn, "re")
        assert {k: v for k, v in after.items() if k[1] < 2000} == before
        assert await store.load_cursor("re", "tb") == {"at": 2}
        # Nothing changed below the watermarks: none is lowered, no block is queued for building again; only the
        # series appended to is queued (for its new block).
        assert {r["metric"]: r["rollup_upto"] for r in await conn.fetch(
            "SELECT metric, rollup_upto FROM series")} == marks
        queued = {r["metric"] for r in await conn.fetch("SELECT metric FROM series WHERE id = ANY($1::bigint[])",
                                                         list(store.rollup._queue) + list(store.rollup._deferred))}
        assert queued <= {"m0"}
        # A batch that changes nothing at all still moves its cursor, in the same statement as the (empty) lowering.
        assert await store.write("re", "tb", "tensorboard", resent, {"at": 3}) == WriteResult(0, 0)
        assert await store.load_cursor("re", "tb") == {"at": 3}
        assert await rows_of(conn, "re") == after
    finally:
        await conn.close()


async def test_replacements_gaps_and_re_sends_in_one_batch(store: Store, database_url: str) -> None:
    """A batch below the stored steps mixing every case: replaced values, replaced times, identical re-sends,
    steps never stored (gaps), NaN/inf, and a step given twice. Point for point, the later observation wins;
    only the replaced rows take the batch's transaction id."""
    rnd = random.Random(18)
    first = [Point(f"m{m}", s, T0 + s, rnd.random()) for s in range(0, 3000, 2) for m in range(4)]
    await store.write("mix", "tb", "tensorboard", first, 1)
    want = {(p.metric, p.step): (p.ts, p.value) for p in first}
    batch: list[Point] = []
    replaced: set[tuple[str, int]] = set()
    for p in first:
        roll = rnd.random()
        if roll < 0.2:
            batch.append(Point(p.metric, p.step, p.ts, p.value + 1.0))  # new value, same ts
        elif roll < 0.3:
            batch.append(Point(p.metric, p.step, p.ts - 50.0, p.value))  # same value, older ts: replaces too
        elif roll < 0.35:
            batch.append(Point(p.metric, p.step, p.ts, rnd.choice([math.nan, math.inf, -math.inf])))
        elif roll < 0.8:
            batch.append(p)  # the same observation
        else:
            continue
        if batch[-1] != p:
            replaced.add((p.metric, p.step))
    gaps = [Point(f"m{m}", s, T0 + s, -1.0) for s in range(1, 2000, 2) for m in range(4)]
    batch += gaps
    batch.append(Point("m0", 1, T0, 123.0))  # step 1 again in the same batch: this later one is kept
    rnd.shuffle(batch[:-1])
    for p in batch:
        want[p.metric, p.step] = (p.ts, p.value)
    result = await store.write("mix", "tb", "tensorboard", batch, 2)
    assert result == WriteResult(inserted=len(gaps), updated=len(replaced))
    conn = await asyncpg.connect(database_url)
    try:
        await init_connection(conn)
        got = await rows_of(conn, "mix")
        check_points(got, want)
        # The replaced rows and the gaps carry the second write's transaction id; every other row the first's.
        xids = {key: row[2] for key, row in got.items()}
        first_xid = xids["m1", 0] if ("m1", 0) not in replaced else None
        second = {xids[k] for k in replaced | {(p.metric, p.step) for p in gaps}}
        assert len(second) == 1
        untouched = {xids[k] for k in want if k not in replaced and k[1] % 2 == 0}
        assert len(untouched) == 1 and untouched != second
        if first_xid is not None:
            assert untouched == {first_xid}
        # The whole batch once more: nothing to do, nothing written
        before = await rows_of(conn, "mix")
        assert await store.write("mix", "tb", "tensorboard", batch, 3) == WriteResult(0, 0)
        assert await rows_of(conn, "mix") == before
    finally:
        await conn.close()


async def test_a_fresh_process_merges_without_scanning_the_table(store: Store, database_url: str) -> None:
    """The merge probes the primary key once per staged row, whatever the planner would guess for a staging table
    without statistics: the plan it runs under the write's settings holds no scan of `points` (with 200,000 stored
    points and 5,000 staged ones, an unconstrained planner hashes the whole table)."""
    pts = [Point(f"m{m}", s, T0 + s, float(s)) for s in range(20_000) for m in range(10)]
    await store.write("plan", "tb", "tensorboard", pts, None)
    conn = await asyncpg.connect(database_url)
    try:
        await init_connection(conn)
        await conn.execute("ANALYZE points")
        async with conn.transaction():
            sid = await conn.fetchval("SELECT id FROM series WHERE workload_uid = 'plan' AND metric = 'm0'")
            rows = writer.Rows([sid] * 5000, list(range(5000)), [T0 + s + 1 for s in range(5000)], [0.5] * 5000)
            await writer.copy_rows(conn, "points_stage", rows)
            free = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + writer._MERGE))
            await conn.execute(writer._PROBE_BY_KEY)
            plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + writer._MERGE))
            assert "Seq Scan on points " in free  # the case the settings are for does arise here
            assert "Seq Scan on points " not in plan and "Index Scan using points_pkey" in plan
            assert [tuple(r) for r in await conn.fetch(writer._MERGE)] == [(sid, 0, 4999, 0, 5000)]
    finally:
        await conn.close()


async def test_watermark_and_cursor_in_one_statement(store: Store, database_url: str) -> None:
    """The write's last statement lowers the watermarks of the series it wrote below and saves the cursor; a series
    written above its watermark keeps it, and the cursor commits with the points (all or nothing)."""
    a = [Point("a", s, T0 + s, float(s)) for s in range(10_000)]
    b = [Point("b", s, T0 + s, float(s)) for s in range(10_000)]
    await store.write("wm", "tb", "tensorboard", a + b, {"n": 1})
    await store.rollup.settle()
    conn = await asyncpg.connect(database_url)
    try:
        await init_connection(conn)
        upto = {r["metric"]: r["rollup_upto"] for r in await conn.fetch(
            "SELECT metric, rollup_upto FROM series WHERE workload_uid = 'wm'")}
        assert upto == {"a": rollup.aligned(9999) + 4096, "b": rollup.aligned(9999) + 4096}
        # a step of "a" in its first block replaced, "b" appended above its watermark
        await store.write("wm", "tb", "tensorboard", [Point("a", 5000, T0, -1.0), Point("b", 20_000, T0, 1.0)],
                          {"n": 2})
        upto = {r["metric"]: r["rollup_upto"] for r in await conn.fetch(
            "SELECT metric, rollup_upto FROM series WHERE workload_uid = 'wm'")}
        assert upto == {"a": 4096, "b": rollup.aligned(9999) + 4096}
        assert await store.load_cursor("wm", "tb") == {"n": 2}
        # a cursor PostgreSQL refuses in the same statement leaves neither the points nor the lowered watermark
        with pytest.raises((TypeError, asyncpg.DataError)):  # the jsonb codec cannot encode it
            await store.write("wm", "tb", "tensorboard", [Point("a", 100, T0, -2.0)], {"n": object()})
        assert await conn.fetchval("SELECT value FROM points p JOIN series s ON s.id = p.series_id "
                                   "WHERE s.metric = 'a' AND s.workload_uid = 'wm' AND step = 100") == 100.0
        assert await conn.fetchval("SELECT rollup_upto FROM series WHERE workload_uid = 'wm' AND metric = 'a'") \
            == 4096
        assert await store.load_cursor("wm", "tb") == {"n": 2}
    finally:
        await conn.close()


async def test_a_series_rewritten_below_its_watermark_is_rebuilt_once_writes_pause(store: Store,
                                                                                    database_url: str) -> None:
    """A resumed run's catch-up re-logs steps below the watermark batch after batch: the builder leaves that series
    alone while the writes keep coming (each would undo its build) and builds it once they pause; a series only
    appended meanwhile stays queued as before. The rollup below the watermark is exact throughout."""
    conn = await asyncpg.connect(database_url)
    try:
        await store.write("re", "tb", "tensorboard", [Point(m, s, T0 + s, float(s % 101)) for s in range(20_000)
                                                      for m in ("resumed", "other")], 1)
        await store.rollup.settle()
        sids = {r["metric"]: r["id"] for r in await conn.fetch("SELECT id, metric FROM series")}
        top = rollup.aligned(19_999) + 4096
        assert await conn.fetchval("SELECT min(rollup_upto) FROM series") == top
        keeper = store.rollup
        await store.write("re", "tb", "tensorboard", [Point("resumed", s, T0, -1.0) for s in range(5000, 6000)]
                          + [Point("other", s, T0 + s, 1.0) for s in range(top, top + 100)], 2)
        assert await conn.fetchval("SELECT rollup_upto FROM series WHERE id = $1", sids["resumed"]) == 4096
        assert sids["resumed"] in keeper._deferred and sids["resumed"] not in keeper._queue
        assert sids["other"] not in keeper._deferred
        await check(conn)
        # An append to the resumed series (its branch passed the old top) queues it again at once.
        await store.write("re", "tb", "tensorboard", [Point("resumed", top + 5, T0, 2.0)], 3)
        assert sids["resumed"] not in keeper._deferred and sids["resumed"] in keeper._queue
        await store.write("re", "tb", "tensorboard", [Point("resumed", 100, T0, -2.0)], 4)  # lowered again
        assert sids["resumed"] in keeper._deferred
        for _ in range(400):  # writes have paused: the builder takes the series up again (within ~1 s)
            if await conn.fetchval("SELECT rollup_upto FROM series WHERE id = $1", sids["resumed"]) == top:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the lowered series was never rebuilt")
        assert not keeper._deferred
        assert await check(conn) > 2 * 16_384 // 16
    finally:
        await conn.close()
