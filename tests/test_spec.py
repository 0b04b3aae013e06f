"""parse_spec / parse_duration / MetricFilter: the operator's own check of a Workload spec."""

from __future__ import annotations

import copy

import pytest

from trainscope.collector.spec import (
    MAX_SOURCES,
    MetricFilter,
    SourceSpec,
    SpecError,
    WorkloadSpec,
    parse_duration,
    parse_spec,
    spec_schema,
)

KINDS = {
    "tensorboard": {"type": "object", "additionalProperties": False,
                    "properties": {"logDir": {"type": "string"}, "url": {"type": "string"}}},
    "wandb": {"type": "object", "additionalProperties": False, "required": ["project"],
              "properties": {"project": {"type": "string"}, "entity": {"type": "string"}}},
}
TB = {"logDir": "/runs/a"}


def parse(spec):
    return parse_spec(spec, KINDS)


# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("1m", 60.0), ("1m30s", 90.0), ("500ms", 0.5), ("2h", 7200.0), ("1.5h", 5400.0),
    ("1h30m", 5400.0), ("0.25s", 0.25), ("1h1m1s", 3661.0), ("90m", 5400.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "1d", "-1s", "1m 30s", " 30s", "30S", "1.s", ".5s", "1w", "30sec"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


# --- defaults ----------------------------------------------------------------------------------------------------


def test_defaults():
    ws = parse({"sources": [{"tensorboard": TB}]})
    assert ws == WorkloadSpec(sources=(SourceSpec("tensorboard", "tensorboard", TB),))
    assert ws.poll_interval == 30.0
    assert ws.total_steps is None and ws.primary_metric is None
    assert ws.retain_data is True
    assert ws.prometheus_metrics == () and ws.selector == {}
    assert ws.metrics == MetricFilter() and ws.metrics.allows("anything/at_all")


def test_all_fields():
    spec = {
        "selector": {"matchLabels": {"job-name": "x"},
                     "matchExpressions": [{"key": "role", "operator": "In", "values": ["worker"]}]},
        "sources": [{"name": "train", "tensorboard": TB}, {"wandb": {"project": "p", "entity": "e"}}],
        "totalSteps": 1000,
        "pollInterval": "1m30s",
        "primaryMetric": "train/loss",
        "metrics": {"include": ["train/*"], "exclude": ["*grad*"]},
        "prometheus": {"metrics": ["train/loss"]},
        "retainData": False,
    }
    ws = parse(spec)
    assert ws.sources == (SourceSpec("train", "tensorboard", TB), SourceSpec("wandb", "wandb", {"project": "p",
                                                                                                 "entity": "e"}))
    assert ws.poll_interval == 90.0 and ws.total_steps == 1000 and ws.primary_metric == "train/loss"
    assert ws.metrics == MetricFilter(("train/*",), ("*grad*",))
    assert ws.prometheus_metrics == ("train/loss",)
    assert ws.retain_data is False
    assert ws.selector["matchLabels"] == {"job-name": "x"}


def test_parse_does_not_share_or_mutate_input():
    spec = {"sources": [{"tensorboard": {"logDir": "/a"}}]}
    before = copy.deepcopy(spec)
    ws = parse(spec)
    assert spec == before
    ws.sources[0].config["logDir"] = "/changed"
    assert spec["sources"][0]["tensorboard"]["logDir"] == "/a"


def test_default_registry_is_used():
    ws = parse_spec({"sources": [{"tensorboard": {"logDir": "/runs"}}]})
    assert ws.sources[0].kind == "tensorboard"


# --- names -------------------------------------------------------------------------------------------------------


def test_names_default_to_kind():
    ws = parse({"sources": [{"tensorboard": TB}, {"wandb": {"project": "p"}}]})
    assert [(s.name, s.kind) for s in ws.sources] == [("tensorboard", "tensorboard"), ("wandb", "wandb")]


def test_same_kind_twice_needs_names():
    ws = parse({"sources": [{"name": "train", "tensorboard": TB}, {"name": "eval", "tensorboard": TB}]})
    assert [s.name for s in ws.sources] == ["train", "eval"]
    ws = parse({"sources": [{"name": "eval", "tensorboard": TB}, {"tensorboard": TB}]})
    assert [s.name for s in ws.sources] == ["eval", "tensorboard"]
    with pytest.raises(SpecError) as info:
        parse({"sources": [{"tensorboard": TB}, {"tensorboard": TB}]})
    assert info.value.field == "spec.sources[1].name"
    assert "duplicate source name 'tensorboard'" in info.value.message


def test_max_sources():
    ok = {"sources": [{"name": f"s{i}", "tensorboard": TB} for i in range(MAX_SOURCES)]}
    assert len(parse(ok).sources) == MAX_SOURCES
    with pytest.raises(SpecError) as info:
        parse({"sources": [*ok["sources"], {"name": "extra", "tensorboard": TB}]})
    assert info.value.field == "spec.sources"


# --- metric filter -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("include", "exclude", "metric", "allowed"), [
    ((), (), "loss", True),
    (("train/*",), (), "train/loss", True),
    (("train/*",), (), "eval/loss", False),
    (("train/*",), ("*grad*",), "train/grad_norm", False),
    ((), ("*grad*",), "train/loss", True),
    (("loss",), (), "Loss", False),  # case-sensitive: metric names are
    (("lr", "loss"), (), "lr", True),
    (("layer_?",), (), "layer_1", True),
    (("layer_?",), (), "layer_10", False),
    (("*",), ("*",), "loss", False),  # exclude wins
])
def test_metric_filter(include, exclude, metric, allowed):
    assert MetricFilter(include, exclude).allows(metric) is allowed


def test_metric_filter_from_dict():
    assert MetricFilter.from_dict(None) == MetricFilter()
    assert MetricFilter.from_dict({"include": ["a"]}) == MetricFilter(("a",), ())


# --- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "field", "message"), [
    (None, "spec", "must be an object"),
    ([], "spec", "must be an object"),
    ({}, "spec.sources", "required field is missing"),
    ({"sources": [{"tensorboard": TB}], "extra": 1}, "spec.extra", "unknown field"),
    ({"sources": [{"tensorboard": TB, "wandb": {"project": "p"}}]}, "spec.sources[0]", "exactly one source kind"),
    ({"sources": [{"name": "x"}]}, "spec.sources[0]", "one of: tensorboard, wandb"),
    ({"sources": [{"wandb": {}}]}, "spec.sources[0].wandb.project", "required field is missing"),
    ({"sources": [{"wandb": {"project": "p", "team": "t"}}]}, "spec.sources[0].wandb.team", "unknown field"),
    ({"sources": [{"tensorboard": TB}], "pollInterval": "soon"}, "spec.pollInterval", "soon"),
    ({"sources": [{"tensorboard": TB}], "totalSteps": 0}, "spec.totalSteps", "minimum"),
    ({"sources": [{"tensorboard": TB}], "selector": {"matchExpressions": [{"key": "k", "operator": "Has"}]}},
     "spec.selector.matchExpressions[0].operator", "is not one of"),
    ({"sources": [{"tensorboard": TB}], "selector": {"matchLabels": {"a": "b"}, "labels": {}}},
     "spec.selector.labels", "unknown field"),
    ({"sources": [{"name": "", "tensorboard": TB}]}, "spec.sources[0].name", ""),
])
def test_errors_name_the_field(spec, field, message):
    with pytest.raises(SpecError) as info:
        parse(spec)
    assert info.value.field == field, str(info.value)
    assert message in info.value.message
    assert str(info.value) == f"{field}: {info.value.message}"


def test_shallowest_error_is_reported_first():
    with pytest.raises(SpecError) as info:
        parse({"sources": [{"wandb": {}}], "bogus": True})
    assert info.value.field == "spec.bogus"


def test_spec_error_is_a_value_error():
    assert issubclass(SpecError, ValueError)


def test_spec_schema_has_one_property_per_kind():
    item = spec_schema(KINDS)["properties"]["sources"]["items"]
    assert set(item["properties"]) == {"name", "pollInterval", "tensorboard", "wandb"}


def test_a_source_may_poll_at_its_own_interval() -> None:
    spec = parse_spec({"pollInterval": "30s", "sources": [
        {"name": "job", "pollInterval": "5m", "tensorboard": {"logDir": "/a"}},
        {"name": "tb", "tensorboard": {"logDir": "/b"}}]})
    assert [(s.name, s.poll_interval) for s in spec.sources] == [("job", 300.0), ("tb", None)]
    with pytest.raises(SpecError) as err:
        parse_spec({"sources": [{"pollInterval": "0s", "tensorboard": {"logDir": "/a"}}]})
    assert err.value.field == "spec.sources[0].pollInterval"
