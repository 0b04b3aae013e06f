"""TensorBoard source: its config schema (through parse_spec, as a Workload sees it) and its Event decoder."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboardX.proto.event_pb2 import Event
from tensorboardX.proto.summary_pb2 import Summary

from trainscope.collector.sources import SourceContext
from trainscope.collector.sources.tensorboard import TensorBoardSource
from trainscope.collector.sources.tfevents import EventScanner, decode_event, frame
from trainscope.collector.spec import parse_spec

from schemachecks import assert_constructor_says_exactly_one, assert_logdir_or_url_schema, assert_spec_error
from tbfixtures import tensor_summary


def spec(block: dict[str, Any]) -> dict[str, Any]:
    return {"sources": [{"name": "tb", "tensorboard": block}]}


@pytest.mark.parametrize("block", [
    {"logDir": "/logs/run"},
    {"logDir": "runs", "tags": {"include": ["train/*"], "exclude": ["*lr*"]}},
    {"url": "http://tensorboard.ml.svc:6006"},
    {"url": "https://host/some/prefix/", "timeout": "1m30s"},
])
def test_valid_configs(block: dict[str, Any]):
    parsed = parse_spec(spec(block))
    assert parsed.sources[0].kind == "tensorboard" and parsed.sources[0].config == block
    TensorBoardSource(block, SourceContext())


@pytest.mark.parametrize(("block", "field", "words"), [
    ({}, "spec.sources[0].tensorboard", "set exactly one of logDir or url"),
    ({"tags": {"include": ["x"]}}, "spec.sources[0].tensorboard", "set exactly one of logDir or url"),
    ({"logDir": "/l", "url": "http://h"}, "spec.sources[0].tensorboard", "set exactly one of logDir or url"),
    ({"logdir": "/l"}, "spec.sources[0].tensorboard.logdir", "unknown field"),
    ({"logDir": ""}, "spec.sources[0].tensorboard.logDir", "should be non-empty"),
    ({"url": "ftp://h"}, "spec.sources[0].tensorboard.url", "does not match"),
    ({"url": "http://h", "timeout": "10"}, "spec.sources[0].tensorboard.timeout", "is not a duration"),
    ({"logDir": "/l", "tags": {"only": ["x"]}}, "spec.sources[0].tensorboard.tags.only", "unknown field"),
])
def test_invalid_configs_name_the_field(block: dict[str, Any], field: str, words: str):
    assert_spec_error(spec(block), None, field, words)


def test_constructor_says_exactly_one():
    assert_constructor_says_exactly_one(TensorBoardSource)


def test_schema_is_structural_and_the_cel_rule_agrees():
    assert_logdir_or_url_schema(TensorBoardSource.schema, "tensorboard")


# ---- the decoder, against protobuf's own encoder

finite_or_special = st.floats(width=32, allow_nan=True, allow_infinity=True)
tags = st.text(min_size=0, max_size=40)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def _f32(v: float) -> float:
    return struct.unpack("<f", struct.pack("<f", v))[0]


simple_event = st.lists(st.tuples(tags, finite_or_special), min_size=1, max_size=3).map(
    lambda vs: (Summary(value=[Summary.Value(tag=t, simple_value=v) for t, v in vs]), [(t, _f32(v)) for t, v in vs]))


@st.composite
def tensor_event(draw: st.DrawFn) -> tuple[Summary, list]:
    tag = draw(tags)
    dtype = draw(st.sampled_from(["DT_FLOAT", "DT_DOUBLE", "DT_HALF"]))
    value = draw(st.floats(width={"DT_FLOAT": 32, "DT_DOUBLE": 64, "DT_HALF": 16}[dtype]))
    summary = tensor_summary(tag, dtype, value, content=draw(st.booleans()), metadata=draw(st.booleans()),
                             shape=draw(st.sampled_from([(), (1,), (1, 1)])))
    return summary, [(tag, value)]


@settings(max_examples=300, deadline=None, database=None)  # no .hypothesis/ folder in the repo
@given(st.lists(st.tuples(st.floats(allow_nan=False, allow_infinity=False, min_value=0), int64,
                          st.one_of(simple_event, tensor_event())), max_size=20))
def test_decoder_matches_protobuf(events: list):
    data = b""
    expected = []
    for wall, step, (summary, values) in events:
        data += frame(Event(wall_time=wall, step=step, summary=summary).SerializeToString())
        expected += [(t, step, wall, v, "r") for t, v in values]
    out: list = []
    skipped: dict[str, int] = {}
    scanner = EventScanner(lambda tag: True)
    for _ in range(2):  # the second pass takes the fast paths for layouts learnt in the first
        out.clear()
        pos, outcome, _ = scanner.scan(data, 0, "r", out, 10**9, skipped)
        assert pos == len(data) and outcome is None and skipped == {}
        assert [_k(p) for p in out] == [_k(p) for p in expected]


def _k(p: tuple) -> tuple:
    return tuple("nan" if isinstance(x, float) and math.isnan(x) else x for x in p)


def test_decode_event_reads_other_fields_as_nothing():
    ev = Event(wall_time=1.5, step=3, file_version="brain.Event:2")
    assert decode_event(ev.SerializeToString()) == (1.5, 3, [])
