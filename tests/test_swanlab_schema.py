"""SwanLab source: its config schema (through parse_spec, as a Workload sees it) and its pure helpers."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.points import RunState
from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.sources import swanlab_files as files
from trainscope.collector.sources.swanlab import ExperimentSelector, SwanLabSource, run_state, unwrap_config
from trainscope.collector.spec import parse_spec

from schemachecks import assert_constructor_says_exactly_one, assert_logdir_or_url_schema, assert_spec_error

SCHEMAS = {SwanLabSource.kind: SwanLabSource.schema}


def spec(block: dict[str, Any]) -> dict[str, Any]:
    return {"sources": [{"name": "swan", "swanlab": block}]}


@pytest.mark.parametrize("block", [
    {"logDir": "/mnt/shared/swanlog"},
    {"logDir": "swanlog", "metrics": {"include": ["train/*"], "exclude": ["*lr*"]}, "staleAfter": "30m"},
    {"url": "http://swanlab.ml.svc:5092", "experiments": {"names": ["sft"], "ids": [3], "runIds": ["run-x"]}},
    {"url": "https://host/prefix/", "timeout": "1m30s", "experiments": {}},
])
def test_valid_configs(block: dict[str, Any]):
    parsed = parse_spec(spec(block), SCHEMAS)
    assert parsed.sources[0].kind == "swanlab" and parsed.sources[0].config == block
    SwanLabSource(block, SourceContext())


@pytest.mark.parametrize(("block", "field", "words"), [
    ({}, "spec.sources[0].swanlab", "set exactly one of logDir or url"),
    ({"logDir": "/l", "url": "http://h"}, "spec.sources[0].swanlab", "set exactly one of logDir or url"),
    ({"logdir": "/l"}, "spec.sources[0].swanlab.logdir", "unknown field"),
    ({"logDir": ""}, "spec.sources[0].swanlab.logDir", "should be non-empty"),
    ({"url": "ftp://h"}, "spec.sources[0].swanlab.url", "does not match"),
    ({"url": "http://h", "timeout": "10"}, "spec.sources[0].swanlab.timeout", "is not a duration"),
    ({"url": "http://h", "staleAfter": "soon"}, "spec.sources[0].swanlab.staleAfter", "is not a duration"),
    ({"url": "http://h", "experiments": {"name": ["a"]}}, "spec.sources[0].swanlab.experiments.name",
     "unknown field"),
    ({"url": "http://h", "experiments": {"ids": ["3"]}}, "spec.sources[0].swanlab.experiments.ids[0]",
     "is not of type 'integer'"),
    ({"url": "http://h", "experiments": {"ids": [0]}}, "spec.sources[0].swanlab.experiments.ids[0]",
     "less than the minimum"),
    ({"logDir": "/l", "metrics": {"only": ["x"]}}, "spec.sources[0].swanlab.metrics.only", "unknown field"),
])
def test_invalid_configs_name_the_field(block: dict[str, Any], field: str, words: str):
    assert_spec_error(spec(block), SCHEMAS, field, words)


def test_constructor_says_exactly_one():
    assert_constructor_says_exactly_one(SwanLabSource)


def test_schema_is_structural_and_the_cel_rule_agrees():
    assert_logdir_or_url_schema(SwanLabSource.schema, "swanlab")


def test_relative_logdir_starts_at_the_base_dir(tmp_path: Path):
    src = SwanLabSource({"logDir": "swanlog"}, SourceContext(base_dir=tmp_path))
    assert src.log_dir == tmp_path / "swanlog"


# ---- helpers


def test_unwrap_config_keeps_logged_order_and_plain_values():
    wrapped = {"z": {"desc": "", "sort": 2, "value": 4}, "lr": {"desc": "", "sort": 0, "value": 3e-4},
               "opt": {"desc": "", "sort": 1, "value": {"name": "adam", "betas": [0.9, 0.99]}},
               "plain": 7, "nan": {"desc": "", "sort": 3, "value": float("nan")}}
    out = unwrap_config(wrapped)
    assert out == {"lr": 3e-4, "opt": {"name": "adam", "betas": [0.9, 0.99]}, "z": 4, "nan": "NaN", "plain": 7}
    assert list(out) == ["lr", "opt", "z", "nan", "plain"]
    json.dumps(out, allow_nan=False)
    assert unwrap_config(None) is None and unwrap_config([1]) is None


def test_status_mapping():
    assert [run_state(s) for s in (0, 1, -1, 2, None, "1")] == [
        RunState.RUNNING, RunState.FINISHED, RunState.FAILED, RunState.UNKNOWN, RunState.UNKNOWN, RunState.UNKNOWN]


def test_selector():
    exps = [files.Experiment(i, f"run-{i}", f"exp{i}", 0) for i in (3, 1, 2)]
    assert [e.id for e in ExperimentSelector(None).pick(exps)[0]] == [1, 2, 3]
    selector = ExperimentSelector({"names": ["exp2", "gone"], "ids": [3, 7], "runIds": ["run-1", "x"]})
    chosen, missing = selector.pick(exps)
    assert [e.id for e in chosen] == [1, 2, 3]
    assert missing == ["name 'gone'", "id 7", "run id 'x'"]


def test_log_files_are_read_in_numeric_order(tmp_path: Path):
    for name in ("10000.log", "2000.log", "1000.log", "9000.log", "_summary.json", "tmpab12"):
        (tmp_path / name).write_text("")
    assert files._log_files(tmp_path) == ["1000.log", "2000.log", "9000.log", "10000.log"]
    assert files._log_files(tmp_path / "missing") == []


@pytest.mark.parametrize(("record", "result"), [
    ({"index": 3, "data": 0.5, "create_time": "2026-01-02T03:04:05.123456+00:00"}, (3, 1767323045.123456, 0.5)),
    ({"index": 3, "data": 2, "create_time": "2026-01-02T03:04:05"}, (3, 1767323045.0, 2.0)),  # naive: UTC
    ({"index": 3, "data": None, "create_time": "2026-01-02T03:04:05"}, "non_numeric"),
    ({"index": 3, "data": ["a.png"], "create_time": "2026-01-02T03:04:05"}, "non_numeric"),
    ({"index": 3, "data": True, "create_time": "2026-01-02T03:04:05"}, "non_numeric"),
    ({"index": "3", "data": 1.0, "create_time": "2026-01-02T03:04:05"}, "bad_line"),
    ({"index": 3, "data": 1.0, "create_time": "yesterday"}, "bad_time"),
    ({"index": 3, "data": 1.0}, "bad_time"),
    ([1, 2], "bad_line"),
])
def test_parse_record(record: Any, result: Any):
    assert files.parse_record(record) == result


def test_half_written_lines_wait_and_bad_lines_are_counted(tmp_path: Path):
    folder = tmp_path / "logs" / "1"
    folder.mkdir(parents=True)
    good = [json.dumps({"index": i, "data": i / 2, "create_time": f"2026-01-02T03:04:0{i}+00:00"}) for i in range(4)]
    log = folder / "1000.log"
    log.write_text(good[0] + "\nnot json\n" + json.dumps({"index": 1, "data": "x", "create_time": "t"}) + "\n"
                   + good[1] + "\n" + good[2][:20])
    reader = files.FileReader(100, [], {}, [])
    new: dict[str, Any] = {}
    reader.read_tag(folder, "r/1", "loss", "r", {}, new)
    assert [(p[1], p[3]) for p in reader.points] == [(0, 0.0), (1, 0.5)]
    assert reader.skipped == {"bad_line": 1, "non_numeric": 1}
    with open(log, "a") as f:
        f.write(good[2][20:] + "\n" + good[3] + "\n")
    again = files.FileReader(100, [], {}, [])
    again.read_tag(folder, "r/1", "loss", "r", json.loads(json.dumps(new)), new)
    assert [(p[1], p[3]) for p in again.points] == [(2, 1.0), (3, 1.5)]
    assert new["r/1/1000.log"] == [log.stat().st_size, os.stat(log).st_ino]


async def test_logdir_missing_or_empty(tmp_path: Path):
    with pytest.raises(SourceError) as err:
        await SwanLabSource({"logDir": str(tmp_path / "nope")}, SourceContext()).poll(None)
    assert err.value.reason == "LogDirMissing" and "nope" in str(err.value)
    batch = await SwanLabSource({"logDir": str(tmp_path)}, SourceContext()).poll(None)
    assert batch.points == [] and batch.notes == [f"no runs.swanlab in {tmp_path} yet"]
    with pytest.raises(SourceError) as err:
        await SwanLabSource({"logDir": str(tmp_path), "experiments": {"names": ["sft"]}}, SourceContext()).poll(None)
    assert err.value.reason == "ExperimentNotFound" and "swanlab.init(mode='local')" in str(err.value)
    (tmp_path / "runs.swanlab").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(SourceError) as err:
        await SwanLabSource({"logDir": str(tmp_path)}, SourceContext()).poll(None)
    assert err.value.reason == "DatabaseUnreadable"


def test_crd_with_the_swanlab_kind_is_structural_and_validates_like_parse_spec():
    from test_crd import cluster_check, openapi_schema, structural_problems, workload

    from trainscope.collector.sources import REGISTRY
    from trainscope.operator.crd import build_crd

    crd = build_crd({**{k: c.schema for k, c in REGISTRY.items()}, **SCHEMAS})
    assert structural_problems(openapi_schema(crd), "openAPIV3Schema") == []
    ok, _, _ = cluster_check(workload(spec({"logDir": "/l", "experiments": {"names": ["sft"]}})), crd)
    assert ok == []
    both, _, _ = cluster_check(workload(spec({"logDir": "/l", "url": "http://h"})), crd)
    assert ("spec.sources[0].swanlab", "set exactly one of logDir or url") in both


def line_by_line(data: bytes, metric: str, run: str) -> list[tuple]:
    """The oracle for the column-wise reader: every complete line through json.loads and parse_record alone."""
    out = []
    for line in data[:data.rfind(b"\n")].split(b"\n"):
        if not line.strip():
            continue
        try:
            rec = files.parse_record(json.loads(line))
        except ValueError:
            continue
        if not isinstance(rec, str):
            out.append((metric, *rec, run))
    return out


def read_all(data: bytes, limit: int = 100_000) -> tuple[list[tuple], int]:
    import io

    reader = files.FileReader(limit, [], {}, [])
    points: list[tuple] = []
    offset = 0
    while True:
        offset, _ = reader._read(io.BytesIO(data), offset, len(data), "m", "r")
        points += reader.points
        if not reader.full:
            return points, offset
        reader = files.FileReader(limit, [], {}, [])


REAL = Path(__file__).parent / "data" / "swanlab_old"


@pytest.mark.parametrize("path", sorted(str(p.relative_to(REAL)) for p in REAL.rglob("*.log") if "logs" in p.parts),
                         ids=str)
def test_column_wise_lines_equal_line_by_line_on_real_files(path: str) -> None:
    """Files written by real swanlab versions (0.7.20's old NaN/INF strings fall back to line by line)."""
    data = (REAL / path).read_bytes()
    want = line_by_line(data, "m", "r")
    for limit in (100_000, 7):  # one batch, and batches cut inside a chunk
        got, offset = read_all(data, limit)
        assert [(m, s, t, "nan" if v != v else v, r) for m, s, t, v, r in got] == \
            [(m, s, t, "nan" if v != v else v, r) for m, s, t, v, r in want]
        assert offset == data.rfind(b"\n") + 1


def rec(i: int, data: Any = None, created: Any = "2026-01-02T03:04:05.123456+00:00") -> bytes:
    return json.dumps({"index": i, "data": i / 3 if data is None else data, "create_time": created}).encode()


@pytest.mark.parametrize("lines", [
    [rec(i) for i in range(50)],  # the common case: taken column-wise
    [rec(i, created=f"2026-01-02T03:04:{i % 60:02d}.5") for i in range(20)],  # naive times are UTC
    [rec(i, created="2026-01-02T11:04:05+08:00") for i in range(5)],  # another offset
    [rec(i, data=i) for i in range(5)] + [rec(9, data=2**70)],  # ints, one beyond int64
    [rec(0), b"", rec(1), b"   ", rec(2)],  # blank lines are passed over
    [rec(0), b"not json", rec(1)],  # a bad line is counted, the others kept
    [rec(0), rec(1) + b", " + rec(2), rec(3)],  # two values on one line: a bad line, not two points
    [rec(0), rec(1, data="NaN"), rec(2, data=True), rec(3, data=None)],  # old strings, bool, null
    [rec(0), json.dumps({"index": True, "data": 1.0, "create_time": "2026-01-02T03:04:05"}).encode()],
    [rec(0), rec(1, created="yesterday"), rec(2, created=5)],  # bad times
    [b"[" + rec(0), rec(1) + b"]"],  # brackets that would join lines into one value
    [b"1", b"\"x\"", b"null", rec(4)],  # not objects
    [b"\xef\xbb\xbf" + rec(0), rec(1)],  # a byte order mark
])
def test_column_wise_lines_equal_line_by_line_on_edge_cases(lines: list[bytes]) -> None:
    data = b"\n".join(lines) + b"\n" + rec(99)[:10]  # and a half-written last line
    want = line_by_line(data, "m", "r")
    for limit in (100_000, 2):
        got, offset = read_all(data, limit)
        assert [(m, s, t, "nan" if v != v else v, r) for m, s, t, v, r in got] == \
            [(m, s, t, "nan" if v != v else v, r) for m, s, t, v, r in want]
        assert offset == data.rfind(b"\n") + 1
