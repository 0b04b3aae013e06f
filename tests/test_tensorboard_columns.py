"""TensorBoard logDir catch-up batches as columns: the same points, cursors, counts and `more` as the list path,
on real tensorboardX event files (several runs, every scalar kind, skipped non-scalars), read whole, in bounded
batches and while the file grows mid-record."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.points import Columns
from trainscope.collector.sources import SourceContext
from trainscope.collector.sources import tensorboard as tb
from trainscope.collector.sources.tensorboard import TensorBoardSource

from tbfixtures import event_files, key, oracle, write_mixed_run


def source(logdir: Path, max_points: int) -> TensorBoardSource:
    return TensorBoardSource({"logDir": str(logdir)}, SourceContext(max_batch_points=max_points, base_dir=logdir))


async def polls(src: TensorBoardSource, cursor: Any = None) -> list[tuple[list[tuple], Any, bool, dict, bool]]:
    """Each poll until more=False: (points in order as comparable tuples (NaN == NaN), cursor, more, skipped, came
    as Columns)."""
    out = []
    while True:
        batch = await src.poll(cursor)
        cursor = json.loads(json.dumps(batch.cursor))
        out.append(([key(p) for p in batch.points], cursor, batch.more, batch.skipped,
                    isinstance(batch.points, Columns)))
        if not batch.more:
            return out


def strip(result: list[tuple]) -> list[tuple]:
    return [r[:4] for r in result]


@pytest.mark.parametrize("threshold", [0, 20_000])  # 20 kB: small files first as Points, then the big one's columns
@pytest.mark.parametrize("max_points", [50_000, 997, 7])
async def test_columns_equal_the_list_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_points: int,
                                           threshold: int):
    write_mixed_run(tmp_path, steps=400)
    sizes = sorted(f.stat().st_size for f in event_files(tmp_path))
    assert sizes[0] < 20_000 < sizes[-1]
    monkeypatch.setattr(tb, "COLUMNS_BYTES", 1 << 62)  # never columns
    as_list = await polls(source(tmp_path, max_points))
    monkeypatch.setattr(tb, "COLUMNS_BYTES", threshold)
    as_columns = await polls(source(tmp_path, max_points))
    assert not any(r[4] for r in as_list) and any(r[4] for r in as_columns)
    if threshold == 0:
        assert all(r[4] for r in as_columns if r[0])
    assert strip(as_columns) == strip(as_list)  # points in order, cursors, more, skipped counts: poll by poll
    points = [p for r in as_columns for p in r[0]]
    assert sorted(points) == oracle(tmp_path)
    skipped: dict[str, int] = {}
    for r in as_columns:
        for reason, n in r[3].items():
            skipped[reason] = skipped.get(reason, 0) + n
    assert skipped == {"histogram": 1, "image": 1, "non_scalar": 2}


async def test_default_threshold_gives_columns_to_a_catch_up_and_a_list_to_a_live_poll(tmp_path: Path):
    write_mixed_run(tmp_path / "src", steps=2000)
    full = event_files(tmp_path / "src" / "train")[0].read_bytes()
    assert len(full) > 2 * tb.COLUMNS_BYTES
    logdir = tmp_path / "run"
    logdir.mkdir()
    path = logdir / "events.out.tfevents.1.host"
    path.write_bytes(full[:len(full) - 500])
    src = source(logdir, 1_000_000)
    first = await polls(src)
    assert first[0][4]  # the backlog: columns
    path.write_bytes(full)
    second = await polls(src, first[-1][1])
    assert second[0][0] and not second[0][4]  # the last few records: a list
    assert sorted(first[0][0] + second[0][0]) == oracle(tmp_path / "src" / "train", only_run=".")


async def test_growing_file_mid_record_columns_equal_the_list_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write_mixed_run(tmp_path / "src", steps=300)
    full = event_files(tmp_path / "src" / "train")[0].read_bytes()

    async def grow(threshold: int, name: str) -> list[tuple]:
        monkeypatch.setattr(tb, "COLUMNS_BYTES", threshold)
        logdir = tmp_path / name / "train"
        logdir.mkdir(parents=True)
        path = logdir / "events.out.tfevents.1.host"
        src = source(tmp_path / name, 500)
        got, cursor, size = [], None, 0
        with path.open("wb") as f:
            while size < len(full):
                size = min(len(full), size + 3001 + size % 977)  # cuts land inside headers, payloads and CRCs
                f.write(full[f.tell():size])
                f.flush()
                result = await polls(src, cursor)
                cursor = result[-1][1]
                got += result
        return got

    as_list = await grow(1 << 62, "list")
    as_columns = await grow(0, "columns")
    assert any(r[4] for r in as_columns) and not any(r[4] for r in as_list)
    assert strip(as_columns) == strip(as_list)
    points = [p for r in as_columns for p in r[0]]
    assert sorted(points) == oracle(tmp_path / "src" / "train", only_run=".", label="train")
