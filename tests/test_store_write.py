"""The exactly-once writer against a real PostgreSQL: what is stored, point for point."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import asyncpg
import pytest

from trainscope.collector.points import Point
from trainscope.collector.store import Store, WriteResult
from trainscope.collector.store.codecs import init_connection

T0 = 1_700_000_000.0
Stored = dict[tuple[str, str, str, int], tuple[float, float]]


async def stored_points(url: str, uid: str) -> Stored:
    """(source, run, metric, step) -> (ts, value), read straight from the tables."""
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        rows = await conn.fetch(
            "SELECT s.source, s.run, s.metric, p.step, p.ts, p.value FROM points p "
            "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    return {(r["source"], r["run"], r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


async def stored_cursor(url: str, uid: str, source: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        await init_connection(conn)
        return await conn.fetchval("SELECT cursor FROM cursors WHERE workload_uid = $1 AND source = $2", uid, source)
    finally:
        await conn.close()


def expected(*batches: list[Point], source: str = "tb") -> Stored:
    """What the store must hold after writing `batches` in order into an empty workload.

    The later observation in the order written wins, within a batch and across batches, whatever its ts.
    """
    out: Stored = {}
    for points in batches:
        for p in points:
            out[source, p.run, p.metric, p.step] = (p.ts, p.value)
    return out


def grid(metrics: int, steps: range, *, run: str = "", ts0: float = T0, scale: float = 1.0) -> list[Point]:
    return [Point(f"m{m}", s, ts0 + s, scale * (s + m / 100), run) for s in steps for m in range(metrics)]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


async def test_append_only_batch_is_stored_exactly(store: Store, database_url: str) -> None:
    pts = grid(3, range(100)) + grid(2, range(50), run="run-b")
    result = await store.write("w1", "tb", "tensorboard", pts, {"offset": 42})
    assert result == WriteResult(inserted=len(pts), updated=0)
    assert await stored_points(database_url, "w1") == expected(pts)
    assert await store.load_cursor("w1", "tb") == {"offset": 42}


async def test_appending_batches_extend_the_series(store: Store, database_url: str) -> None:
    first, second = grid(4, range(0, 30)), grid(4, range(30, 60))
    assert await store.write("w1", "tb", "tensorboard", first, 1) == WriteResult(len(first), 0)
    assert await store.write("w1", "tb", "tensorboard", second, 2) == WriteResult(len(second), 0)
    assert await stored_points(database_url, "w1") == expected(first, second)
    assert await store.load_cursor("w1", "tb") == 2


async def test_same_batch_twice_changes_nothing(store: Store, database_url: str) -> None:
    pts = grid(5, range(20))
    await store.write("w1", "tb", "tensorboard", pts, {"c": 1})
    before = await stored_points(database_url, "w1")
    assert await store.write("w1", "tb", "tensorboard", pts, {"c": 1}) == WriteResult(0, 0)
    assert await stored_points(database_url, "w1") == before == expected(pts)


async def test_retry_from_a_fresh_process_changes_nothing(store: Store, database_url: str) -> None:
    """A batch committed whose acknowledgement was lost is sent again by a restarted collector (empty caches)."""
    pts = grid(5, range(20))
    await store.write("w1", "tb", "tensorboard", pts, {"c": 1})
    other = await Store.open(database_url, migrate=False)
    try:
        assert await other.write("w1", "tb", "tensorboard", pts, {"c": 1}) == WriteResult(0, 0)
        # ...and appending from there takes the normal route.
        more = grid(5, range(20, 25))
        assert await other.write("w1", "tb", "tensorboard", more, {"c": 2}) == WriteResult(len(more), 0)
    finally:
        await other.close()
    assert await stored_points(database_url, "w1") == expected(pts, grid(5, range(20, 25)))


async def test_overlap_later_observation_replaces_the_same_one_is_ignored(store: Store, database_url: str) -> None:
    """The later observation in the source's order wins, whatever its ts (a run resumed from a checkpoint on a node
    whose clock is behind re-logs steps); the same observation again changes nothing."""
    old = [Point("loss", s, T0 + s, float(s)) for s in range(10)]
    await store.write("w1", "tb", "tensorboard", old, "a")
    again = [
        Point("loss", 5, T0 + 100, -5.0),  # newer ts: replaces
        Point("loss", 6, T0 + 6.000001, -6.0),  # newer by a microsecond: replaces
        Point("loss", 7, T0 + 6, -7.0),  # older ts (the resumed node's clock is behind): replaces all the same
        Point("loss", 8, T0 - 1e6, -8.0),  # much older: replaces
        Point("loss", 9, T0 + 9, 9.0),  # the same observation (ts and value): changes nothing
        *[Point("loss", s, T0 + s, float(s)) for s in range(10, 15)],  # new steps
    ]
    assert await store.write("w1", "tb", "tensorboard", again, "b") == WriteResult(inserted=5, updated=4)
    got = await stored_points(database_url, "w1")
    want = {("tb", "", "loss", s): (T0 + s, float(s)) for s in range(15)}
    want["tb", "", "loss", 5] = (T0 + 100, -5.0)
    want["tb", "", "loss", 6] = (T0 + 6.000001, -6.0)
    want["tb", "", "loss", 7] = (T0 + 6, -7.0)
    want["tb", "", "loss", 8] = (T0 - 1e6, -8.0)
    assert got == want
    assert await store.load_cursor("w1", "tb") == "b"
    # the whole batch again (a retry after a lost acknowledgement): nothing changes
    assert await store.write("w1", "tb", "tensorboard", again, "b") == WriteResult(inserted=0, updated=0)
    assert await stored_points(database_url, "w1") == want


async def test_duplicates_within_a_batch_keep_the_later_one(store: Store, database_url: str) -> None:
    pts = [
        Point("loss", 1, T0 + 10, 1.0),
        Point("loss", 1, T0 + 30, 3.0),
        Point("loss", 1, T0 + 20, 2.0),  # the later in the batch: kept, though its ts is older
        Point("loss", 2, T0 + 5, 5.0),
        Point("loss", 2, T0 + 5, 6.0),  # equal ts: the later one in the batch
        Point("acc", 1, T0, 0.5),
    ]
    assert await store.write("w1", "tb", "tensorboard", pts, None) == WriteResult(inserted=3, updated=0)
    assert await stored_points(database_url, "w1") == {
        ("tb", "", "loss", 1): (T0 + 20, 2.0),
        ("tb", "", "loss", 2): (T0 + 5, 6.0),
        ("tb", "", "acc", 1): (T0, 0.5),
    }
    # Duplicates that also overlap stored rows: the batch's last one replaces the stored one.
    pts = [Point("loss", 1, T0 + 40, 4.0), Point("loss", 1, T0 + 50, 7.0), Point("loss", 1, T0 + 1, 0.0)]
    assert await store.write("w1", "tb", "tensorboard", pts, None) == WriteResult(inserted=0, updated=1)
    assert (await stored_points(database_url, "w1"))["tb", "", "loss", 1] == (T0 + 1, 0.0)


async def test_non_finite_values_round_trip(store: Store, database_url: str) -> None:
    specials = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    pts = [Point("v", i, T0 + i, v) for i, v in enumerate(specials)]
    await store.write("w1", "tb", "tensorboard", pts, None)
    got = await stored_points(database_url, "w1")
    for i, v in enumerate(specials):
        ts, value = got["tb", "", "v", i]
        assert ts == T0 + i
        assert same(value, v) and math.copysign(1, value) == math.copysign(1, v)
    assert math.isnan(got["tb", "", "v", 0][1])
    assert math.isinf(got["tb", "", "v", 1][1]) and got["tb", "", "v", 1][1] > 0
    assert math.isinf(got["tb", "", "v", 2][1]) and got["tb", "", "v", 2][1] < 0
    # A newer observation may turn a finite value into NaN and back.
    await store.write("w1", "tb", "tensorboard", [Point("v", 3, T0 + 100, math.nan)], None)
    assert math.isnan((await stored_points(database_url, "w1"))["tb", "", "v", 3][1])
    await store.write("w1", "tb", "tensorboard", [Point("v", 0, T0 + 100, 1.5)], None)
    assert (await stored_points(database_url, "w1"))["tb", "", "v", 0] == (T0 + 100, 1.5)
    latest = {lv.metric: lv for lv in await store.latest("w1")}
    assert latest["v"].step == 5 and latest["v"].value == 1.7976931348623157e308


async def test_timestamps_come_back_as_the_same_floats(store: Store, database_url: str) -> None:
    stamps = [0.0, -86400.5, 946684800.0, T0 + 0.123456, 1_234_567_890.000001, 4_102_444_800.999999]
    await store.write("w1", "tb", "tensorboard", [Point("t", i, ts, 0.0) for i, ts in enumerate(stamps)], None)
    got = await stored_points(database_url, "w1")
    assert [got["tb", "", "t", i][0] for i in range(len(stamps))] == stamps


async def test_empty_batch_still_saves_the_cursor(store: Store, database_url: str) -> None:
    assert await store.load_cursor("w1", "tb") is None
    assert await store.write("w1", "tb", "tensorboard", [], {"files": {"a": 10}}) == WriteResult(0, 0)
    assert await store.load_cursor("w1", "tb") == {"files": {"a": 10}}
    await store.write("w1", "tb", "tensorboard", [], [1, "two", 3.5, None, True])
    assert await store.load_cursor("w1", "tb") == [1, "two", 3.5, None, True]
    assert await stored_points(database_url, "w1") == {}


async def test_cursors_are_per_workload_and_source(store: Store) -> None:
    await store.write("w1", "tb", "tensorboard", grid(1, range(3)), "w1-tb")
    await store.write("w1", "logs", "log", grid(1, range(3)), "w1-logs")
    await store.write("w2", "tb", "tensorboard", grid(1, range(3)), "w2-tb")
    assert await store.load_cursor("w1", "tb") == "w1-tb"
    assert await store.load_cursor("w1", "logs") == "w1-logs"
    assert await store.load_cursor("w2", "tb") == "w2-tb"
    assert await store.load_cursor("w2", "logs") is None


# Fits the wire format (int64 microseconds) but lies past PostgreSQL's last timestamp (year 294276): the server
# rejects it, in the middle of a COPY or of the staging COPY.
BAD_TS = 9_224_318_400_000.0

# Not JSON: the cursor's statement fails AFTER the points went in (what PostgreSQL itself would refuse, NUL or
# NaN, is stored in a storable form: see test_cursor_and_run_metadata_postgres_would_refuse_are_stored).
BAD_CURSOR = {"pos": object()}


async def test_cursor_rejected_after_points_leaves_neither(store: Store, database_url: str) -> None:
    good = grid(3, range(10))
    await store.write("w1", "tb", "tensorboard", good, "c1")
    more = grid(3, range(10, 20)) + grid(1, range(5), run="new-run")  # appends and a new series
    with pytest.raises(asyncpg.DataError, match="not JSON serializable"):
        await store.write("w1", "tb", "tensorboard", more, BAD_CURSOR)
    assert await stored_points(database_url, "w1") == expected(good)
    assert await store.load_cursor("w1", "tb") == "c1"
    # Nothing of the failed attempt lingers in the store's caches: the same batch goes in completely.
    assert await store.write("w1", "tb", "tensorboard", more, "c2") == WriteResult(len(more), 0)
    assert await stored_points(database_url, "w1") == expected(good, more)
    assert await store.load_cursor("w1", "tb") == "c2"


async def test_point_rejected_in_overlapping_batch_leaves_nothing(store: Store, database_url: str) -> None:
    good = grid(2, range(10))
    await store.write("w1", "tb", "tensorboard", good, "c1")
    # Overlapping (merge path) with one timestamp past PostgreSQL's year 294276 limit.
    bad = [Point("m0", 3, T0 + 99, 9.0), Point("m0", 50, BAD_TS, 1.0), Point("m1", 11, T0, 1.0)]
    with pytest.raises(asyncpg.PostgresError):
        await store.write("w1", "tb", "tensorboard", bad, "c2")
    assert await stored_points(database_url, "w1") == expected(good)
    assert await store.load_cursor("w1", "tb") == "c1"


async def test_point_rejected_in_appending_batch_leaves_nothing(store: Store, database_url: str) -> None:
    good = grid(2, range(10))
    await store.write("w1", "tb", "tensorboard", good, "c1")
    bad = [*grid(2, range(10, 20)), Point("m0", 20, BAD_TS, 1.0)]
    with pytest.raises(asyncpg.PostgresError):
        await store.write("w1", "tb", "tensorboard", bad, "c2")
    assert await stored_points(database_url, "w1") == expected(good)
    assert await store.load_cursor("w1", "tb") == "c1"


async def test_cancelled_write_is_all_or_nothing(store: Store, database_url: str) -> None:
    pts = grid(10, range(20_000))
    task = asyncio.create_task(store.write("w1", "tb", "tensorboard", pts, "done"))
    await asyncio.sleep(0.02)
    task.cancel()
    try:
        await task
        committed = True
    except asyncio.CancelledError:
        committed = False
    got = await stored_points(database_url, "w1")
    cursor = await store.load_cursor("w1", "tb")
    if committed or cursor == "done":
        assert (got, cursor) == (expected(pts), "done")
    else:
        assert (got, cursor) == ({}, None)
    # Whatever happened, writing the batch again converges on exactly the batch.
    await store.write("w1", "tb", "tensorboard", pts, "done")
    assert await stored_points(database_url, "w1") == expected(pts)


async def test_many_series_in_one_batch(store: Store, database_url: str) -> None:
    pts = [Point(f"layer{m}/grad_norm", s, T0 + s, m * 1000.0 + s, f"r{m % 3}") for m in range(2000) for s in range(5)]
    assert await store.write("w1", "tb", "tensorboard", pts, 1) == WriteResult(len(pts), 0)
    more = [Point(p.metric, p.step + 5, p.ts + 5, p.value, p.run) for p in pts]
    assert await store.write("w1", "tb", "tensorboard", more, 2) == WriteResult(len(more), 0)
    assert await stored_points(database_url, "w1") == expected(pts, more)
    counts = await store.counts("w1")
    assert len(counts) == 2000 and set(counts.values()) == {10}


async def test_batch_of_200k_points(store: Store, database_url: str) -> None:
    pts = grid(20, range(10_000))
    assert len(pts) == 200_000
    assert await store.write("w1", "tb", "tensorboard", pts, {"step": 9999}) == WriteResult(200_000, 0)
    assert await stored_points(database_url, "w1") == expected(pts)
    # The same 200k again, half of them with a newer observation.
    again = [Point(p.metric, p.step, p.ts + 1, -p.value) if p.step % 2 else p for p in pts]
    assert await store.write("w1", "tb", "tensorboard", again, {"step": 9999}) == WriteResult(0, 100_000)
    got = await stored_points(database_url, "w1")
    assert got == expected(pts, again)
    assert got["tb", "", "m3", 7] == (T0 + 8, -(7 + 0.03))


async def test_concurrent_writers_for_sources_and_workloads(store: Store, database_url: str) -> None:
    async def feed(uid: str, source: str) -> None:
        for b in range(5):
            pts = grid(4, range(b * 100, (b + 1) * 100), run=source)
            overlap = grid(4, range(b * 100 - 10, b * 100), ts0=T0 + 1, run=source) if b else []
            await store.write(uid, source, "tensorboard", overlap + pts, {"batch": b})

    sources = ["tb", "wandb", "logs", "swanlab"]
    await asyncio.gather(*(feed(uid, src) for uid in ("w1", "w2", "w3") for src in sources))
    for uid in ("w1", "w2", "w3"):
        got = await stored_points(database_url, uid)
        assert len(got) == len(sources) * 4 * 500
        for src in sources:
            assert await store.load_cursor(uid, src) == {"batch": 4}
            assert got[src, src, "m1", 95] == (T0 + 1 + 95, 95.01)  # re-sent with a newer ts
            assert got[src, src, "m1", 495] == (T0 + 495, 495.01)
        assert await store.max_steps(uid) == dict.fromkeys(sources, 499)


async def test_two_processes_racing_on_the_same_new_series(store: Store, database_url: str) -> None:
    """Two collectors (two pools) writing the same new batch: each series is created once, points once."""
    other = await Store.open(database_url, migrate=False)
    try:
        pts = grid(50, range(200))
        results = await asyncio.gather(*(s.write("w1", "tb", "tensorboard", pts, "c") for s in (store, other)))
    finally:
        await other.close()
    assert sum(r.inserted for r in results) == len(pts)
    assert sum(r.updated for r in results) == 0
    assert await stored_points(database_url, "w1") == expected(pts)
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM series") == 50
    finally:
        await conn.close()


async def test_run_metadata_is_stored_with_the_batch_and_merged(store):
    p = [Point("loss", 1, 1_700_000_000.0, 1.0, "run-a")]
    await store.write("wl-runs", "wandb", "wandb", p, {"c": 1},
                      runs={"run-a": {"displayName": "llama-7b", "state": "running"}})
    await store.write("wl-runs", "wandb", "wandb", [], {"c": 2}, runs={"run-a": {"state": "finished"}})
    [info] = await store.runs("wl-runs")
    assert (info.source, info.run) == ("wandb", "run-a")
    assert info.info == {"displayName": "llama-7b", "state": "finished"}
    await store.forget_workload("wl-runs", delete_data=True)
    assert await store.runs("wl-runs") == []


async def test_cursor_and_run_metadata_postgres_would_refuse_are_stored(store: Store, database_url: str) -> None:
    """jsonb refuses NUL, unpaired surrogates and NaN: such a cursor or run config (a W&B config may hold NaN, a
    run name NUL) used to fail every retry of its batch, blocking the source. They are stored as U+FFFD and as
    the strings "NaN"/"Infinity"; the points go in with them."""
    cursor = {"runs": {"r\x00n": 5}, "pos": "\ud800x", "pair": "\U0001F600", "lr": math.nan, "plain": "a\\u0000"}
    runs = {"run-a": {"config": {"lr": math.inf, "name": "x\x00y", "warmup": -math.inf}, "state": "running"}}
    pts = [Point("loss", 1, T0, 1.0, "run-a")]
    assert await store.write("w1", "wb", "wandb", pts, cursor, runs=runs) == WriteResult(1, 0)
    assert await store.load_cursor("w1", "wb") == {"runs": {"r\ufffdn": 5}, "pos": "\ufffdx", "pair": "\U0001F600",
                                                    "lr": "NaN", "plain": "a\\u0000"}
    [info] = await store.runs("w1")
    assert info.info == {"config": {"lr": "Infinity", "name": "x\ufffdy", "warmup": "-Infinity"}, "state": "running"}
    assert await stored_points(database_url, "w1") == expected(pts, source="wb")
