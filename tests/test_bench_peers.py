"""The benches' peers and checks: each peer gives the same data as ours, and a wrong store is caught.

The benches time ours against a peer only after checking what both produced (bench/README.md); these tests hold
the peers and the checks themselves to that: on small inputs, the peer's answer equals the source's truth, and the
check fails on a store that lost a replacement.
"""

from __future__ import annotations

import sys
from pathlib import Path

import asyncpg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_eventfiles
import bench_ingest
import bench_logs

from trainscope.collector.store import Store
from trainscope.collector.store.codecs import init_connection

CASES = [("hf", False), ("megatron", False), ("hf", True), ("megatron", True), ("deepspeed", False),
         ("lightning", False), ("keyvalue", False), ("json", False)]


@pytest.mark.parametrize(("fmt", "noise"), CASES)
def test_log_peer_regex_gives_our_points(tmp_path: Path, fmt: str, noise: bool) -> None:
    path = tmp_path / "x.log"
    lines = bench_logs.write(path, fmt, 2_000, noise)
    ours = bench_logs.collected(bench_logs.ours, path)
    peer = bench_logs.collected(bench_logs.peer(fmt), path)
    assert ours == peer
    data_lines = lines // 2 if noise else lines
    assert len(ours) == data_lines * len(bench_logs.PEER[fmt][2])


@pytest.mark.parametrize("layout", ["simple", "tf2"])
def test_rustboard_peer_reads_every_scalar_as_written(tmp_path: Path, layout: str) -> None:
    steps, tags = 1_500, 2  # ~160 KB: above the 64 KiB from which the source's poll hands over columns
    path = bench_eventfiles.write_file(tmp_path, steps, tags, layout)
    assert path.stat().st_size > 64 * 1024
    truth = sorted(bench_eventfiles.event_accumulator(path))
    assert [(t, s, v) for t, s, _, v in truth] == sorted(
        (f"train/metric_{t}", s, bench_eventfiles.f32(1.0 / (s + t + 1))) for s in range(steps) for t in range(tags))
    for checksum in (False, True):
        server = bench_eventfiles.Rustboard(tmp_path, checksum)
        try:
            assert sorted(server.read_all(steps, tags)) == truth
        finally:
            assert server.close() >= 0.0
        assert server.load_cycle is not None  # its own log line was read
    assert sorted(bench_eventfiles.points_rows(bench_eventfiles.source_poll(path))) == truth


async def test_ingest_check_catches_a_lost_replacement(database_url: str) -> None:
    appended = bench_ingest.make_points(3, range(100))
    relogged = bench_ingest.make_points(3, range(50), ts_shift=lambda s: 10.0 if s % 2 else 0.0)
    store = await Store.open(database_url)
    admin = await asyncpg.connect(database_url)
    await init_connection(admin)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, init=init_connection)
    try:
        want = bench_ingest.expected(appended, relogged)
        await store.write("u", "tb", "tensorboard", appended, {"n": 1})
        await store.write("u", "tb", "tensorboard", relogged, {"n": 2})
        await bench_ingest.verify(admin, "ours", want)
        await admin.execute("TRUNCATE points")
        await bench_ingest.bench_unnest(pool, "peer", [appended, relogged])
        await bench_ingest.verify(admin, "peer", want)
        # A writer that dropped the newer observations must not pass.
        await admin.execute("TRUNCATE points")
        await bench_ingest.bench_unnest(pool, "peer", [appended])
        with pytest.raises(SystemExit, match="VERIFY FAILED for broken"):
            await bench_ingest.verify(admin, "broken", want)
    finally:
        await pool.close()
        await admin.close()
        await store.close()
