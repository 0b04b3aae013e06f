"""The writer's column-wise binary COPY encoder (collector/store/copybin.py): byte for byte what the per-row codecs
send, and through a real PostgreSQL the stored rows equal the input exactly (read back independently of our
timestamptz codec). Also the write path that trusts the step cache when the cache is wrong."""

from __future__ import annotations

import math
import struct
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
from hypothesis import given
from hypothesis import strategies as st

from trainscope.collector.points import Point
from trainscope.collector.store import Store, WriteResult
from trainscope.collector.store.codecs import encode_ts
from trainscope.collector.store.copybin import HEADER, TRAILER, encode

T0 = 1_700_000_000.0
INT64 = st.integers(-(2**63), 2**63 - 1)
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def per_row(sid: list[int], step: list[int], ts: list[float], value: list[float]) -> bytes:
    """The reference: each row packed on its own with the store's per-row timestamptz codec."""
    row = struct.Struct(">hiqiqiqid")
    return HEADER + b"".join(row.pack(4, 8, a, 8, b, 8, encode_ts(c)[0], 8, d)
                             for a, b, c, d in zip(sid, step, ts, value, strict=True)) + TRAILER


@given(st.lists(st.tuples(INT64, INT64,
                          # 1714..2285: where the column-wise path applies (beyond, the per-row path takes over)
                          st.floats(-8.0e9, 9.9e9) | st.integers(-8_000_000_000, 9_900_000_000),
                          st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**63), 2**63 - 1)),
                max_size=40))
def test_encoding_is_the_per_row_codecs_byte_for_byte(rows: list[tuple[int, int, float, float]]) -> None:
    cols = [list(c) for c in zip(*rows, strict=True)] if rows else [[], [], [], []]
    got = encode(*cols)
    assert got is not None
    # NaN payloads compare as bytes here, so a NaN value must keep its bit pattern too
    assert got == per_row(*cols)


def test_ts_rounding_matches_the_codec_at_half_microseconds() -> None:
    # x.5 µs after the float's own rounding: round-half-even in both, and negative (before 2000, before 1970)
    stamps = [T0 + k * 0.5e-6 for k in range(-7, 8)] + [946684800.0000005, 946684799.9999995, -0.5e-6, -86400.5e-6,
                                                         0.0, -1.0, 1e-7, 4_102_444_800.999999]
    cols = [list(range(len(stamps))), [0] * len(stamps), stamps, [0.0] * len(stamps)]
    assert encode(*cols) == per_row(*cols)


def test_values_the_column_path_cannot_encode_exactly_go_per_row() -> None:
    assert encode([1], [1], [math.nan], [0.0]) is None  # non-finite ts: the per-row codec raises its ValueError
    assert encode([1], [1], [math.inf], [0.0]) is None
    assert encode([1], [1], [4e13], [0.0]) is None  # year ~3.2 million: past 2^53 µs
    assert encode([1], [2**63], [T0], [0.0]) is None  # step beyond bigint: asyncpg's OverflowError
    assert encode([1], [1], [T0], [2**1024]) is None  # int beyond float: asyncpg's OverflowError
    assert encode([1], [1.5], [T0], [0.0]) is None  # not an int step
    assert encode([], [], [], []) == HEADER + TRAILER


async def read_back(url: str, uid: str, *, as_datetime: bool = True) -> dict[tuple[str, int],
                                                                              tuple[datetime | None, int, float]]:
    """(metric, step) -> (ts as asyncpg's own aware datetime, ts in µs since 2000 computed by PostgreSQL, value):
    no codec of ours on this connection. Past year 9999 a datetime cannot hold ts: None then."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            f"SELECT s.metric, p.step, {'p.ts' if as_datetime else 'NULL'} AS ts, "
            "(extract(epoch FROM p.ts - '2000-01-01 00:00:00+00') * 1000000)::bigint AS us, p.value "
            "FROM points p JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    finally:
        await conn.close()
    return {(r["metric"], r["step"]): (r["ts"], r["us"], r["value"]) for r in rows}


async def test_stored_rows_equal_the_input_exactly(store: Store, database_url: str) -> None:
    # Wall times from timezone-aware datetimes with microseconds (sources convert offsets to epoch seconds): the
    # stored instant is the same instant, to the microsecond, whatever the offset was.
    zones = [timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=45)), timezone(timedelta(hours=14)),
             UTC, timezone(timedelta(hours=-12))]
    aware = [datetime(2024, 3, 10, 2, 30, 0, 999_999, tzinfo=zones[0]), datetime(1999, 12, 31, 23, 59, 59, 1, zones[1]),
             datetime(2000, 1, 1, 0, 0, 0, 0, zones[3]), datetime(1970, 1, 1, 0, 0, 0, 1, zones[3]),
             datetime(2038, 1, 19, 3, 14, 8, 500_000, zones[2]), datetime(2100, 2, 28, 23, 59, 59, 999_999, zones[4])]
    values = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308]
    steps = [-(2**63), -1, 0, 1, 2**62, 2**63 - 1]
    pts = [Point("exact", step, dt.timestamp(), v) for step, dt, v in zip(steps, aware, values, strict=True)]
    # and a long appending series with sub-µs float noise in ts (rounded to the nearest µs, half to even)
    pts += [Point("long", s, T0 + s * 0.1 + 1e-7, s / 3) for s in range(-500, 5000)]
    assert await store.write("w1", "tb", "tensorboard", pts, {"at": 1}) == WriteResult(len(pts), 0)
    got = await read_back(database_url, "w1")
    assert len(got) == len(pts)
    for step, dt, v in zip(steps, aware, values, strict=True):
        ts, us, value = got["exact", step]
        assert ts == dt and us == (dt - PG_EPOCH) // timedelta(microseconds=1)
        assert struct.pack(">d", value) == struct.pack(">d", v)  # NaN, the infinities and -0.0 bit for bit
    for s in range(-500, 5000):
        ts, us, value = got["long", s]
        assert us == round((T0 + s * 0.1 + 1e-7 - 946_684_800) * 1_000_000) and value == s / 3
    # The same rows again through the merge path (staging table, also binary COPY): nothing changes.
    assert await store.write("w1", "tb", "tensorboard", pts, {"at": 2}) == WriteResult(0, 0)
    assert bitwise(await read_back(database_url, "w1")) == bitwise(got)


def bitwise(rows: dict) -> dict:
    """Rows with values as their bytes, so that NaN equals NaN."""
    return {k: (ts, us, struct.pack(">d", v)) for k, (ts, us, v) in rows.items()}


async def test_a_batch_the_column_path_refuses_is_stored_per_row(store: Store, database_url: str) -> None:
    # An int wall time beyond 2^53 µs from 2000 (still a valid timestamptz): the per-row codec computes it exactly.
    far = 10**12  # year 33658
    await store.write("w1", "tb", "tensorboard", [Point("far", 1, far, 1.0), Point("far", 2, T0, 2.0)], None)
    got = await read_back(database_url, "w1", as_datetime=False)
    assert got["far", 1][1] == (far - 946_684_800) * 1_000_000
    assert got["far", 2][1] == round((T0 - 946_684_800) * 1_000_000)


async def test_a_stale_step_cache_costs_a_retry_not_a_point(store: Store, database_url: str) -> None:
    """Another process stores steps this store's cache does not know: the cache-trusting COPY fails on them, the
    whole transaction is redone as a merge, and the result is exactly as if the cache had been right."""
    first = [Point(f"m{m}", s, T0 + s, float(s)) for s in range(10) for m in range(2)]
    await store.write("w1", "tb", "tensorboard", first, "c1")  # this store now knows: highest step 9
    other = await Store.open(database_url, min_size=1, max_size=1, migrate=False)
    try:
        theirs = [Point(f"m{m}", s, T0 + s, float(s)) for s in range(10, 20) for m in range(2)]
        await other.write("w1", "tb", "tensorboard", theirs, "c2")
    finally:
        await other.close()
    # steps 10..19 again (five of them changed), 20..29 new: all past what this store's cache knows
    ours = [Point(f"m{m}", s, T0 + s, float(s) + (s % 2) * (s < 20)) for s in range(10, 30) for m in range(2)]
    assert await store.write("w1", "tb", "tensorboard", ours, "c3") == WriteResult(20, 10)
    got = await read_back(database_url, "w1")
    want = {(p.metric, p.step): p.value for p in first + ours}
    assert {k: v[2] for k, v in got.items()} == want
    assert await store.load_cursor("w1", "tb") == "c3"
    # the cache was refreshed from the database: the next appending batch takes the fast path and is counted
    more = [Point(f"m{m}", s, T0 + s, 0.5) for s in range(30, 40) for m in range(2)]
    assert await store.write("w1", "tb", "tensorboard", more, "c4") == WriteResult(20, 0)
