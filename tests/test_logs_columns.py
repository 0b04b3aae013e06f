"""The logs source's catch-up batches as columns (runs of lines parsed in bulk, PointSink): the same points in the
same order, cursors, skip counts, run state and totals as the tuple path, on real framework output: the recorded
runs of tests/data/logruns/, HF Trainer's own log dicts as a run without a progress bar prints them, and Megatron
text; read whole, in bounded batches, and while the file grows mid-line."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.points import Columns
from trainscope.collector.sources import SourceContext, sink
from trainscope.collector.sources import logs as logs_module
from trainscope.collector.sources.logs import LogsSource

DATA = Path(__file__).parent / "data" / "logruns"
TEXTS = Path(__file__).parent / "logtexts"


class _Tuples(list):
    """The tuple path: a plain list to the parser (it parses no run as columns into it), its points as they are."""

    def result(self) -> list:
        return list(self)


def _hf_dicts(recording: str) -> Any:
    def make(tmp: Path) -> Path:
        """The log dicts of a recorded HF run, one per line, as Trainer prints them with disable_tqdm=True."""
        text = (DATA / recording / "console.log").read_text()
        dicts = re.findall(r"\{'loss'[^}]*\}", text)
        assert len(dicts) >= 5
        path = tmp / "hf_dicts.log"
        path.write_text("".join(d + "\n" for d in dicts * 20))
        return path
    return make


def _megatron(tmp: Path) -> Path:
    path = tmp / "megatron.log"
    path.write_text((TEXTS / "megatron_gpt.log").read_text() * 5)
    return path


CASES: list[tuple[str, Any, dict[str, Any]]] = [
    *((d.name, DATA / d.name / "console.log", {}) for d in sorted(DATA.iterdir()) if (d / "console.log").exists()),
    ("hf4_dicts", _hf_dicts("hf4_pipe"), {"format": "hf", "loggingSteps": 5}),
    ("hf4_dicts_auto", _hf_dicts("hf4_pipe"), {}),
    ("hf5_dicts", _hf_dicts("hf5_pipe"), {"format": "hf", "loggingSteps": 5}),  # quoted values: line by line
    ("megatron", _megatron, {"format": "megatron"}),
    ("megatron_auto", _megatron, {}),
]


def point(p: tuple) -> tuple:
    metric, step, ts, value, run = p
    return metric, step, ts, "nan" if math.isnan(value) else value, run


async def polls(path: Path, config: dict[str, Any], max_points: int, cursor: Any = None) -> list[tuple]:
    """Each poll until more=False, as comparable values; and whether the points came as Columns."""
    src = LogsSource({"path": str(path), **config}, SourceContext(max_batch_points=max_points, base_dir=path.parent))
    out = []
    while True:
        b = await src.poll(cursor)
        cursor = json.loads(json.dumps(b.cursor))
        out.append(([point(p) for p in b.points], cursor, b.more, b.skipped, b.state, b.total_steps, b.problem,
                    b.runs, b.notes, isinstance(b.points, Columns)))
        if not b.more:
            return out


def comparable(result: list[tuple]) -> list[tuple]:
    """Without the Columns flag and the files' inodes and paths (the growing test writes two files)."""
    return [(r[0], {k: {**st, "i": 0} for k, st in r[1]["streams"].items()}, *r[2:7],
             {run: {**info, "file": ""} for run, info in r[7].items()}, r[8]) for r in result]


def _input(case: Any, tmp: Path) -> Path:
    return case(tmp) if callable(case) else case


@pytest.mark.parametrize("max_points", [50_000, 13])
@pytest.mark.parametrize(("name", "case", "config"), CASES, ids=[c[0] for c in CASES])
async def test_columns_equal_the_tuple_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, case: Any,
                                            config: dict[str, Any], max_points: int):
    path = _input(case, tmp_path)
    monkeypatch.setattr(sink, "COLUMNS_FROM", 0)  # columns for any batch with a bulk-parsed run
    monkeypatch.setattr(logs_module, "PointSink", _Tuples)
    as_tuples = await polls(path, config, max_points)
    monkeypatch.setattr(logs_module, "PointSink", sink.PointSink)
    as_columns = await polls(path, config, max_points)
    assert sum(len(r[0]) for r in as_tuples) > 0
    assert comparable(as_columns) == comparable(as_tuples)
    assert not any(r[-1] for r in as_tuples)
    if name.startswith(("hf4_dicts", "megatron")) and max_points > 1000:  # parsed in bulk: columns
        assert any(r[-1] for r in as_columns)


GROWING = [c for c in CASES if c[0] in ("hf4_dicts", "megatron", "hf5_pipe", "megatron_auto")]


@pytest.mark.parametrize(("name", "case", "config"), GROWING, ids=[c[0] for c in GROWING])
async def test_growing_mid_line_columns_equal_the_tuple_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             name: str, case: Any, config: dict[str, Any]):
    full = _input(case, tmp_path).read_bytes()
    monkeypatch.setattr(sink, "COLUMNS_FROM", 0)

    async def grow(cls: type, where: str) -> list[tuple]:
        monkeypatch.setattr(logs_module, "PointSink", cls)
        path = tmp_path / where / "console.log"
        path.parent.mkdir()
        got, cursor, size = [], None, 0
        with path.open("wb") as f:
            while size < len(full):
                size = min(len(full), size + 701 + size % 389)  # cuts land mid-line, mid-number
                f.write(full[f.tell():size])
                f.flush()
                os.utime(path, (1_700_000_000.0, 1_700_000_000.0))  # a file's points take its mtime: the same here
                result = await polls(path, config, 40, cursor)
                cursor = result[-1][1]
                got += result
        return got

    as_tuples = await grow(_Tuples, "tuples")
    as_columns = await grow(sink.PointSink, "columns")
    assert comparable(as_columns) == comparable(as_tuples)
    if name != "hf5_pipe":
        assert any(r[-1] for r in as_columns)


def test_sink_slices_are_positions_in_the_whole_batch():
    out = sink.PointSink()
    out.add_run("r", ("a", "b"), [1, 2], 10.0, [1.0, 2.0, 3.0, 4.0], 2)
    out.append(("c", 3, 11.0, 5.0, "r"))
    out.append(("c", 4, 11.0, 6.0, "r"))
    assert len(out) == 6
    assert out[4:] == [("c", 3, 11.0, 5.0, "r"), ("c", 4, 11.0, 6.0, "r")] and out[-1:] == [("c", 4, 11.0, 6.0, "r")]
    out[4:] = [("c", 4, 11.0, 6.0, "r")]
    del out[5:]
    assert len(out) == 5
    sink.COLUMNS_FROM, before = 0, sink.COLUMNS_FROM
    try:
        cols = out.result()
    finally:
        sink.COLUMNS_FROM = before
    assert isinstance(cols, Columns)
    assert list(cols) == [("a", 1, 10.0, 1.0, "r"), ("b", 1, 10.0, 2.0, "r"), ("a", 2, 10.0, 3.0, "r"),
                          ("b", 2, 10.0, 4.0, "r"), ("c", 4, 11.0, 6.0, "r")]
    small = sink.PointSink()
    small.add_run("r", ("a",), 7, [1.0, 2.0], [1.0, 2.0], 2)
    assert small.result() == [("a", 7, 1.0, 1.0, "r"), ("a", 7, 2.0, 2.0, "r")]  # few points: tuples
    huge = sink.PointSink()
    huge.add_run("r", ("a",), [2**70, 1], 1.0, [1.0, 2.0], 2)  # a step no int64 holds: tuples, for the collector
    huge.extend([("b", 1, 1.0, 1.0, "r")] * 70)
    points = huge.result()
    assert isinstance(points, list) and points[:2] == [("a", 2**70, 1.0, 1.0, "r"), ("a", 1, 1.0, 2.0, "r")]
