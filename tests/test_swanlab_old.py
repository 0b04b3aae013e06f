"""Log directories written by swanlab 0.4.12 and 0.7.20 (tests/data/swanlab_old, recorded by its record.py in a
separate venv per version): those releases wrote NaN and +-Inf as the strings "NaN" and "INF". The swanlab source
reads them in logDir mode and through a real `swanlab watch` (url mode), equal to the files point for point."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.swanlab import SwanLabSource

from swanfixtures import swan_env, swanlab_watch

DATA = Path(__file__).parent / "data" / "swanlab_old"
VERSIONS = ["0.4.12", "0.7.20"]
STEPS = 20


def logged(step: int) -> float:
    """What record.py logged for train/loss (its value())."""
    return {3: math.nan, 5: math.inf, 7: -math.inf}.get(step, 1.0 / (step + 1))


def truth(logdir: Path) -> dict[tuple[str, int], Any]:
    """(metric, step) -> value straight from the .log files, the old strings decoded as swanlab meant them."""
    import sqlite3

    db = sqlite3.connect(logdir / "runs.swanlab")
    tags = db.execute("SELECT e.run_id, t.name, t.folder FROM tag t JOIN experiment e ON e.id = t.experiment_id "
                      "WHERE t.type = 'line'").fetchall() if _has_folder(db) else \
        db.execute("SELECT e.run_id, t.name, t.id FROM tag t JOIN experiment e ON e.id = t.experiment_id").fetchall()
    db.close()
    out: dict[tuple[str, int], Any] = {}
    for run_id, name, folder in tags:
        for path in (logdir / run_id / "logs" / str(folder)).glob("*.log"):
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                v = rec["data"]
                out[(name, rec["index"])] = {"NaN": "nan", "INF": math.inf}.get(v, v) if isinstance(v, str) else v
    return out


def _has_folder(db: Any) -> bool:
    return any(row[1] == "folder" for row in db.execute("PRAGMA table_info(tag)"))


def norm(points: list) -> dict[tuple[str, int], Any]:
    return {(p[0], p[1]): ("nan" if math.isnan(p[3]) else p[3]) for p in points}


async def drain(src: SwanLabSource) -> list:
    points: list = []
    cursor = None
    for _ in range(50):
        batch = await src.poll(cursor)
        points += batch.points
        cursor = json.loads(json.dumps(batch.cursor))
        assert not batch.skipped.get("non_numeric"), batch.skipped
        if not batch.more:
            return points
    raise AssertionError("never caught up")


@pytest.fixture(params=VERSIONS)
def logdir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    out = tmp_path / request.param
    shutil.copytree(DATA / request.param, out)  # swanlab watch may migrate the catalog: never the committed copy
    return out


async def test_log_dir_mode_reads_the_old_strings(logdir: Path) -> None:
    src = SwanLabSource({"logDir": str(logdir)}, SourceContext())
    points = await drain(src)
    await src.aclose()
    got = norm(points)
    assert got == truth(logdir)
    loss = {step: v for (metric, step), v in got.items() if metric == "train/loss"}
    assert sorted(loss) == list(range(STEPS))
    assert loss[3] == "nan" and loss[5] == math.inf
    assert loss[7] == math.inf  # logged -inf: swanlab <= 0.7 wrote "INF" for both signs
    assert all(loss[s] == logged(s) for s in range(STEPS) if s not in (3, 5, 7))


async def test_url_mode_reads_the_old_strings(logdir: Path, tmp_path: Path) -> None:
    with swanlab_watch(logdir, swan_env(tmp_path / "env")) as (url, _):
        src = SwanLabSource({"url": url}, SourceContext())
        points = await drain(src)
        await src.aclose()
    got = norm(points)
    want = {k: v for k, v in truth(logdir).items() if k[0].startswith("train/")}
    assert {k: v for k, v in got.items() if k[0].startswith("train/")} == want
