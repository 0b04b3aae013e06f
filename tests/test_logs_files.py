"""The logs source in path mode (files that grow, get replaced, globs, huge lines) and its config schema."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from trainscope.collector.points import Point
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.logs import LogsSource
from trainscope.collector.spec import parse_spec
from trainscope.operator.crd import spec_crd_schema, to_structural

from schemachecks import assert_cel_rule, assert_spec_error, assert_structural

SCHEMAS = {"logs": LogsSource.schema}


async def poll_all(config: dict[str, Any], cursor: Any, base: Path,
                   limit: int = 7) -> tuple[Any, list[Point], list[Any]]:
    """Poll until nothing new, a fresh source each time, the cursor through JSON as the store keeps it."""
    points: list[Point] = []
    batches = []
    while True:
        src = LogsSource(config, SourceContext(base_dir=base, max_batch_points=limit))
        batch = await src.poll(cursor)
        await src.aclose()
        cursor = json.loads(json.dumps(batch.cursor))
        points += batch.points
        batches.append(batch)
        if not batch.more:
            return cursor, points, batches


def kv(first: int, last: int) -> str:
    return "".join(f"step={s} loss={1 / s:.6f} acc={s / 1000}\n" for s in range(first, last + 1))


def values(points: list[Point]) -> list[tuple[str, str, int, float]]:
    return [(p.run, p.metric, p.step, p.value) for p in map(Point._make, points)]


def expected(run: str, first: int, last: int) -> list[tuple[str, str, int, float]]:
    out = []
    for s in range(first, last + 1):
        out += [(run, "loss", s, float(f"{1 / s:.6f}")), (run, "acc", s, s / 1000)]
    return out


async def test_a_growing_file_is_read_exactly_once(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_text(kv(1, 10))
    config = {"path": "train.log", "format": "keyvalue"}  # relative to the base dir
    cursor, points, batches = await poll_all(config, None, tmp_path)
    assert values(points) == expected("train.log", 1, 10)
    assert all(len(b.points) <= 7 for b in batches) and len(batches) == 4  # 3 lines (6 points) per batch
    assert cursor["streams"]["train.log"]["o"] == log.stat().st_size
    assert {p[2] for p in points} == {log.stat().st_mtime}  # files have no kubelet time: the file's mtime

    with log.open("a") as f:
        f.write(kv(11, 12) + "step=13 loss=0.0")  # a line still being written
    cursor, new, _ = await poll_all(config, cursor, tmp_path)
    assert values(new) == expected("train.log", 11, 12)
    with log.open("a") as f:
        f.write("76923\n" + kv(14, 15))
    cursor, new, batches = await poll_all(config, cursor, tmp_path)
    assert values(new) == [("train.log", "loss", 13, 0.076923), *expected("train.log", 14, 15)]
    assert batches[-1].info["lines"] >= 3 and batches[-1].info["parsedLines"] >= 3
    cursor, new, _ = await poll_all(config, cursor, tmp_path)
    assert new == []


async def test_replaced_or_truncated_files_are_read_again(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_text(kv(1, 5))
    config = {"path": str(log), "format": "keyvalue"}
    cursor, _, _ = await poll_all(config, None, tmp_path, limit=1000)
    log.write_text(kv(1, 2))  # truncated (a new run of the job)
    cursor, points, batches = await poll_all(config, cursor, tmp_path, limit=1000)
    assert values(points) == expected("train.log", 1, 2) and "read again" in batches[0].notes[0]
    new = tmp_path / "new.log"
    new.write_text(kv(1, 9))
    os.replace(new, log)  # rotated: same name, another file
    cursor, points, _ = await poll_all(config, cursor, tmp_path, limit=1000)
    assert values(points) == expected("train.log", 1, 9)


async def test_globs_name_runs_by_their_path(tmp_path: Path):
    for name, n in (("a/rank0.log", 3), ("b/rank0.log", 2), ("a/x/deep.log", 1)):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(kv(1, n))
    _, points, batches = await poll_all({"path": str(tmp_path / "**" / "*.log")}, None, tmp_path, limit=1000)
    assert {p.run for p in map(Point._make, points)} == {"a/rank0.log", "b/rank0.log", "a/x/deep.log"}
    assert batches[0].info["files"] == 3 and set(batches[0].runs) == {"a/rank0.log", "b/rank0.log", "a/x/deep.log"}
    _, none, batches = await poll_all({"path": str(tmp_path / "*.txt")}, None, tmp_path)
    assert none == [] and "no file matches" in batches[0].notes[0]
    with pytest.raises(SourceError) as err:
        await poll_all({"path": "missing.log"}, None, tmp_path)
    assert err.value.reason == "LogFileMissing"


async def test_a_huge_line_in_a_file_is_cut_counted_and_passed(tmp_path: Path):
    log = tmp_path / "train.log"
    log.write_bytes(kv(1, 2).encode() + b"x" * (3 << 20) + b" step=99 loss=9\n" + kv(3, 4).encode())
    cursor, points, batches = await poll_all({"path": str(log)}, None, tmp_path, limit=1000)
    assert values(points) == expected("train.log", 1, 4)
    assert sum(b.skipped.get("line_too_long", 0) for b in batches) == 1
    assert cursor["streams"]["train.log"]["o"] == log.stat().st_size


async def test_totals_and_health_counts(tmp_path: Path):
    log = tmp_path / "gpt.log"
    log.write_text(" iteration        1/     400 | lm loss: 2.0 |\n iteration        2/     400 | lm loss: oops |\n"
                   "garbage\n")
    _, points, batches = await poll_all({"path": str(log)}, None, tmp_path)
    assert values(points) == [("gpt.log", "lm loss", 1, 2.0)]
    assert batches[0].total_steps == 400 and batches[0].skipped == {"unparsed": 1}
    assert batches[0].info["lines"] == 3 and batches[0].info["parsedLines"] == 1


# ---- the config schema ----------------------------------------------------------------------------------------------


def spec(block: dict[str, Any]) -> dict[str, Any]:
    return {"sources": [{"name": "log", "logs": block}]}


@pytest.mark.parametrize("block", [
    {"pods": {}},
    {"pods": {"selector": {"matchLabels": {"job": "gpt"}}, "container": "trainer", "ranks": [0],
              "rankLabel": "training.kubeflow.org/replica-index"}, "format": "megatron"},
    {"path": "/logs/*.log", "format": "hf", "loggingSteps": 10},
    {"path": "train.log", "format": "none", "patterns": [r"loss (?P<loss>\S+)"]},
    {"path": "train.log", "filter": {"metricsFormat": [r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)"]}},
])
def test_valid_configs(block: dict[str, Any]):
    parsed = parse_spec(spec(block), SCHEMAS)
    assert parsed.sources[0].kind == "logs" and parsed.sources[0].config == block
    LogsSource(block, SourceContext())


@pytest.mark.parametrize(("block", "field", "words"), [
    ({}, "spec.sources[0].logs", "set exactly one of pods or path"),
    ({"pods": {}, "path": "x"}, "spec.sources[0].logs", "set exactly one of pods or path"),
    ({"path": "x", "format": "xml"}, "spec.sources[0].logs.format", "is not one of"),
    ({"pods": {"rank": [0]}}, "spec.sources[0].logs.pods.rank", "unknown field"),
    ({"pods": {"ranks": [-1]}}, "spec.sources[0].logs.pods.ranks[0]", "less than the minimum"),
    ({"path": "x", "loggingSteps": 0}, "spec.sources[0].logs.loggingSteps", "less than the minimum"),
])
def test_invalid_configs_name_the_field(block: dict[str, Any], field: str, words: str):
    assert_spec_error(spec(block), SCHEMAS, field, words)


@pytest.mark.parametrize(("block", "words"), [
    ({"path": "x", "format": "none"}, "format none needs patterns or filter"),
    ({"path": "x", "patterns": ["(?P<metric>x)"]}, "needs named groups"),
    ({"path": "x", "patterns": ["(oops"]}, "not a supported regex"),
    ({"path": "x", "filter": {"metricsFormat": ["loss=(\\d+)"]}}, "two groups"),
])
def test_constructor_rejects_what_the_schema_cannot_see(block: dict[str, Any], words: str):
    with pytest.raises(SourceError, match=words) as err:
        LogsSource(block, SourceContext())
    assert err.value.reason == "BadConfig"


def test_schema_is_structural_and_the_cel_rules_agree():
    schema = LogsSource.schema
    assert_structural(schema, "logs", open_object=lambda name: name.endswith("matchLabels"))
    to_structural(schema, "logs")
    assert "logs" in spec_crd_schema({**SCHEMAS})["properties"]["sources"]["items"]["properties"]
    one_of, none_needs = (r["rule"] for r in schema["x-kubernetes-validations"])
    assert_cel_rule(one_of, [({"pods": {}}, True), ({"path": "x"}, True), ({}, False),
                             ({"pods": {}, "path": "x"}, False)])
    assert_cel_rule(none_needs, [({"path": "x"}, True), ({"path": "x", "format": "none"}, False),
                                 ({"path": "x", "format": "none", "patterns": ["(?P<a>1)"]}, True),
                                 ({"path": "x", "format": "hf"}, True)])
