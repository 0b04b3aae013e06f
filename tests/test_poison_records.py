"""One record PostgreSQL cannot hold never blocks its source: real tensorboardX event files with NaN, infinite and
1e30 wall times and a 3 KB tag, collected by the real TensorBoard source into a real PostgreSQL; and the store's
isolation of whatever the database still refuses (retried alone, then quarantined in rejected_points)."""

from __future__ import annotations

import math
import secrets
import uuid
from pathlib import Path

import asyncpg
from tensorboardX import SummaryWriter

from trainscope.collector.admit import MAX_NAME_BYTES
from trainscope.collector.collector import Collector, SourceState
from trainscope.collector.points import Point
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.collector.store.quarantine import write_isolating

from waiting import eventually

T0 = 1_700_000_000.0
BAD_WALLS = {5: math.nan, 6: math.inf, 7: -math.inf, 8: 1e30, 9: -5.0}


async def _rows(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _points(url: str, uid: str) -> dict[tuple[str, int], tuple[float, float]]:
    rows = await _rows(url, "SELECT s.metric, p.step, extract(epoch FROM p.ts)::float8 AS ts, p.value FROM points p "
                            "JOIN series s ON s.id = p.series_id WHERE s.workload_uid = $1", uid)
    return {(r["metric"], r["step"]): (r["ts"], r["value"]) for r in rows}


def _write(logdir: Path, steps: range, long_tag: str | None = None) -> None:
    with SummaryWriter(str(logdir), filename_suffix=f".{steps.start}") as w:
        for i in steps:
            w.add_scalar("loss", 1.0 / i, i, walltime=BAD_WALLS.get(i, T0 + i))
            if long_tag and i == steps.start:
                w.add_scalar(long_tag, 42.0, i, walltime=T0 + i)


async def test_bad_wall_times_and_a_3kb_tag_do_not_block_the_tensorboard_source(store: Store, database_url: str,
                                                                                 tmp_path: Path) -> None:
    logdir = tmp_path / "runs"
    long_tag = "tag/" + secrets.token_hex(1500)  # 3 KB that do not compress: over the btree entry limit either way
    _write(logdir, range(1, 21), long_tag)
    spec = parse_spec({"sources": [{"name": "tb", "tensorboard": {"logDir": str(logdir)}}], "pollInterval": "50ms"})
    uid = uuid.uuid4().hex
    now = [T0 + 10_000]
    c = Collector(uid, spec, store, name="wl", backoff_base=0.02, backoff_cap=0.1, clock=lambda: now[0])
    await c.start()
    try:
        await eventually(lambda: c.snapshot().step == 20)
        h = c.health["tb"]
        assert h.state == SourceState.HEALTHY and h.consecutive_failures == 0
        assert h.skipped.get("NameTooLong") == 1
        assert any("unusable wall time" in n for n in h.notes) and any("quarantined" in n for n in h.notes), h.notes
        stored = await _points(database_url, uid)
        # Every loss point is there with its value; a bad wall time became the previous point's (the source's own
        # time), never NaN or a date PostgreSQL cannot hold.
        assert set(stored) == {("loss", i) for i in range(1, 21)}
        for i in range(1, 21):
            ts, value = stored["loss", i]
            assert value == float(f"{1.0 / i:.7g}") or math.isclose(value, 1.0 / i, rel_tol=1e-6)
            assert ts == (T0 + 4 if i in BAD_WALLS else T0 + i), (i, ts)
        rejected = await _rows(database_url, "SELECT metric, step, value, reason FROM rejected_points "
                                             "WHERE workload_uid = $1", uid)
        assert [(r["metric"], int(r["step"]), r["value"]) for r in rejected] == [(long_tag, 1, 42.0)]
        assert rejected[0]["reason"].startswith(f"NameTooLong: metric name of {len(long_tag)} bytes")
        # ...and the source moves on: what the job writes next is stored too.
        _write(logdir, range(21, 31))
        await eventually(lambda: c.snapshot().step == 30)
        assert len(await _points(database_url, uid)) == 30
    finally:
        await c.stop()


async def test_rows_the_database_refuses_are_isolated_and_quarantined(store: Store, database_url: str) -> None:
    """Without the collector's checks in front: the store itself finds the refused rows by splitting the batch."""
    uid = uuid.uuid4().hex
    long_name = secrets.token_hex(1400)  # 2.8 KB of hex: PostgreSQL's own btree limit (program_limit_exceeded)
    good = [Point("loss", s, T0 + s, 1.0 / s) for s in range(1, 101)]
    batch = [*good[:30], Point("loss", 500, math.nan, 0.5), *good[30:70], Point(long_name, 7, T0, 7.0),
             *good[70:]]
    outcome = await write_isolating(store, uid, "tb", "tensorboard", batch, None, {"offset": 101}, None)
    assert (outcome.result.inserted, outcome.result.updated) == (100, 0)
    reasons = {p[0][:8]: why for p, why in outcome.rejected}
    assert set(reasons) == {"loss", long_name[:8]}
    assert "54000" in reasons[long_name[:8]] and "index row" in reasons[long_name[:8]]
    assert await store.load_cursor(uid, "tb") == {"offset": 101}
    assert await _points(database_url, uid) == {("loss", p.step): (p.ts, p.value) for p in good}
    rows = await _rows(database_url, "SELECT metric, step, ts, value FROM rejected_points WHERE workload_uid = $1 "
                                     "ORDER BY id", uid)
    got = {(r["metric"][:8], int(r["step"])): (r["ts"], r["value"]) for r in rows}
    assert got.keys() == {("loss", 500), (long_name[:8], 7)}
    assert math.isnan(got["loss", 500][0]) and got[long_name[:8], 7] == (T0, 7.0)
    # A retry of the same batch (a lost acknowledgement) stores nothing twice.
    again = await write_isolating(store, uid, "tb", "tensorboard", batch, None, {"offset": 101}, None)
    assert (again.result.inserted, again.result.updated) == (0, 0)
    assert len(await _points(database_url, uid)) == 100


def test_the_name_limit_is_what_the_docs_say() -> None:
    assert MAX_NAME_BYTES == 1024
    doc = (Path(__file__).resolve().parents[1] / "docs" / "store.md").read_text()
    assert "1024 bytes" in doc
