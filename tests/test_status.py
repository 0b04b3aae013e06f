"""Snapshot -> status, progress and ETA arithmetic, and the Prometheus exposition, without kopf."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trainscope.collector.collector import Latest, Snapshot, SourceHealth, SourceState
from trainscope.collector.points import RunState
from trainscope.collector.progress import (
    StepRate,
    combine_run_states,
    detect_primary_metric,
    eta_seconds,
    format_duration,
)
from trainscope.operator.gauges import METRICS, Exported, WorkloadExporter
from trainscope.operator.status import (
    MAX_LATEST,
    build_status,
    coarse_seconds,
    metric_value,
    status_patch,
)

NOW = 1_700_000_000.0


def snap(**kw) -> Snapshot:
    health = SourceHealth("tb", "tensorboard", state=SourceState.HEALTHY, last_success=NOW - 1, points=10,
                          newest_ts=NOW - 5)
    base = dict(step=500, total_steps=1000, progress=0.5, throughput=2.0, eta_seconds=250.0, primary_metric="loss",
                latest={"loss": Latest(1.25, 500, NOW - 5, "tb", "."), "lr": Latest(3e-4, 500, NOW - 5, "tb", ".")},
                run_state=RunState.RUNNING, sources=(health,), last_point_ts=NOW - 5, taken_at=NOW)
    base.update(kw)
    return Snapshot(**base)


@pytest.mark.parametrize(("names", "expected"), [
    (["lr", "train/loss", "eval/loss"], "train/loss"),
    (["lr", "loss", "train/loss"], "loss"),
    (["eval_loss", "train/lm_loss_scaled", "acc"], "train/lm_loss_scaled"),
    (["validation/loss"], "validation/loss"),
    (["accuracy", "lr"], None),
])
def test_primary_metric_is_detected_from_loss_like_names(names, expected):
    assert detect_primary_metric(names) == expected


def test_step_rate_uses_source_time_and_ignores_old_steps():
    rate = StepRate(window_seconds=100)
    for i in range(11):
        rate.observe(1000.0 + 10 * i, 100 * i)  # 10 steps/s of source time
    rate.observe(5000.0, 50)  # a step behind the newest: ignored
    assert rate.rate() == pytest.approx(10.0)
    rate.observe(1200.0, 1100)  # the window keeps only the last 100 s of source time
    assert rate.samples[0][0] >= 1100.0
    assert eta_seconds(500, 1000, 10.0) == 50.0
    assert eta_seconds(500, None, 10.0) is None
    assert eta_seconds(1200, 1000, 10.0) == 0.0


def test_run_states_combine_failed_over_running_over_finished():
    assert combine_run_states([RunState.FINISHED, RunState.RUNNING]) == RunState.RUNNING
    assert combine_run_states([RunState.RUNNING, RunState.FAILED]) == RunState.FAILED
    assert combine_run_states([None, RunState.FINISHED]) == RunState.FINISHED
    assert combine_run_states([None]) == RunState.UNKNOWN


@pytest.mark.parametrize(("seconds", "text"), [(42, "42s"), (125, "2m05s"), (3600, "1h"), (4980, "1h23m"),
                                               (90000, "1d1h"), (None, None), (math.inf, None)])
def test_durations_are_compact(seconds, text):
    assert format_duration(seconds) == text


def test_status_carries_step_progress_eta_and_primary_metric():
    status = build_status(snap(), now=NOW, generation=3)
    assert status["phase"] == "Collecting"
    assert status["step"] == 500 and status["totalSteps"] == 1000 and status["progress"] == 50.0
    assert status["eta"] == "4m10s" and status["etaSeconds"] == 250
    assert status["primaryMetric"] == {"name": "loss", "value": 1.25, "step": 500}
    assert status["lossText"] == "1.25"
    assert status["observedGeneration"] == 3
    assert status["sources"][0] == {"name": "tb", "kind": "tensorboard", "state": "Healthy", "points": 10,
                                    "lastSuccessTime": "2023-11-14T22:13:19Z", "lagSeconds": 5}
    ready, healthy = status["conditions"]
    assert (ready["type"], ready["status"], healthy["type"], healthy["status"]) == (
        "Ready", "True", "SourcesHealthy", "True")


def test_non_finite_values_are_spelled_out_because_json_has_no_nan():
    latest = {"loss": Latest(math.nan, 7, NOW, "tb", "."), "x": Latest(-math.inf, 7, NOW, "tb", ".")}
    status = build_status(snap(latest=latest), now=NOW)
    assert status["primaryMetric"]["value"] == "NaN" and status["lossText"] == "NaN"
    assert status["latest"] == {"loss": "NaN", "x": "-Infinity"}
    assert metric_value(math.inf) == "Infinity" and metric_value(0.123456789) == 0.123457


def test_latest_is_bounded_and_keeps_primary_and_exported_first():
    latest = {f"m{i:05d}": Latest(float(i), 1, NOW + i, "tb", ".") for i in range(10_000)}
    latest["loss"] = Latest(2.0, 1, NOW - 100, "tb", ".")
    latest["zz/exported"] = Latest(3.0, 1, NOW - 100, "tb", ".")
    status = build_status(snap(latest=latest), now=NOW, exported=["zz/exported"])
    keys = list(status["latest"])
    assert len(keys) == MAX_LATEST
    assert keys[:2] == ["loss", "zz/exported"]
    assert keys[2] == "m09999"  # then the most recently updated


def test_failing_source_degrades_phase_and_conditions_name_it():
    bad = SourceHealth("tb2", "tensorboard", state=SourceState.FAILING, last_error="log directory /x does not exist",
                       last_error_reason="LogDirMissing", consecutive_failures=3)
    status = build_status(snap(sources=(*snap().sources, bad)), now=NOW)
    assert status["phase"] == "Degraded"
    ready, healthy = status["conditions"]
    assert ready["status"] == "True"  # one source still collects
    assert healthy["status"] == "False" and healthy["reason"] == "LogDirMissing"
    assert "tb2" in healthy["message"] and "/x" in healthy["message"]
    assert status["sources"][1]["lastError"] == "log directory /x does not exist"


def test_run_state_sets_terminal_phases_and_invalid_spec_is_pending_with_condition():
    assert build_status(snap(run_state=RunState.FINISHED), now=NOW)["phase"] == "Succeeded"
    assert build_status(snap(run_state=RunState.FAILED), now=NOW)["phase"] == "Failed"
    pending = build_status(snap(step=None, sources=(SourceHealth("tb", "tensorboard"),)), now=NOW)
    assert pending["phase"] == "Pending"
    invalid = build_status(None, now=NOW, spec_error="spec.pollInterval: 'x' does not match")
    assert invalid["phase"] == "Pending"
    assert invalid["conditions"][0]["reason"] == "InvalidSpec"
    assert "spec.pollInterval" in invalid["conditions"][0]["message"]
    waiting = build_status(None, now=NOW, waiting="database unavailable: refused")
    assert waiting["conditions"][0]["reason"] == "WaitingForStore"


def test_condition_transition_time_holds_while_status_holds():
    first = build_status(snap(), now=NOW)
    later = build_status(snap(), now=NOW + 60, previous=first)
    assert later["conditions"][0]["lastTransitionTime"] == first["conditions"][0]["lastTransitionTime"]
    bad = SourceHealth("tb", "tensorboard", state=SourceState.FAILING, last_error="boom")
    flipped = build_status(snap(sources=(bad,)), now=NOW + 120, previous=later)
    assert flipped["conditions"][1]["lastTransitionTime"] == "2023-11-14T22:15:20Z"


def test_status_patch_only_when_changed_and_nulls_what_disappeared():
    now_status = build_status(snap(), now=NOW)
    assert status_patch(now_status, {**now_status, "lastUpdateTime": "x"}, NOW) is None
    current = {**now_status, "latest": {"loss": 1.25, "lr": 3e-4, "old": 9.0}, "stale": 1}
    patch = status_patch(now_status, current, NOW)
    assert patch["latest"] == {"old": None}  # only the difference; unchanged keys are not resent
    assert patch["stale"] is None and patch["lastUpdateTime"] == "2023-11-14T22:13:20Z"
    assert "step" not in patch
    assert "primaryMetric" not in patch  # an unchanged object is left out, not sent as {}


def test_lag_is_coarse_so_idle_runs_do_not_rewrite_status():
    assert [coarse_seconds(s) for s in (5, 99, 123, 1234, 98765)] == [5, 99, 120, 1200, 99000]


def test_exporter_exposes_documented_metrics_per_workload():
    registry = CollectorRegistry()
    bad = SourceHealth("tb2", "tensorboard", state=SourceState.FAILING, errors={"Timeout": 2},
                       skipped={"bad_crc": 1}, polls=4, poll_seconds=0.5)
    workloads = [Exported("ns", "wl", ("lo*",), snap(sources=(*snap().sources, bad)))]
    registry.register(WorkloadExporter(lambda: workloads, store_up=lambda: True))
    text = generate_latest(registry).decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted({"namespace": "ns", "workload": "wl", **labels}.items())))]

    assert value("trainscope_metric_value", source="tb", metric="loss") == 1.25
    with pytest.raises(KeyError):  # only metrics matching spec.prometheus.metrics are exported
        value("trainscope_metric_value", source="tb", metric="lr")
    assert value("trainscope_workload_step") == 500
    assert value("trainscope_workload_progress_ratio") == 0.5
    assert value("trainscope_workload_phase", phase="Degraded") == 1
    assert value("trainscope_workload_phase", phase="Collecting") == 0
    assert value("trainscope_source_up", source="tb2", kind="tensorboard") == 0
    assert value("trainscope_source_up", source="tb", kind="tensorboard") == 1
    assert value("trainscope_source_errors_total", source="tb2", kind="tensorboard", reason="Timeout") == 2
    assert value("trainscope_source_skipped_total", source="tb2", kind="tensorboard", reason="bad_crc") == 1
    assert value("trainscope_source_poll_duration_seconds_count", source="tb2", kind="tensorboard") == 4
    exposed = {fam.name for fam in text_string_to_metric_families(text)}
    documented = {m.removesuffix("_total") for m in METRICS}
    assert exposed == documented
    workloads.clear()  # a deleted Workload's series disappear with it
    assert "namespace=" not in generate_latest(registry).decode()


def test_every_exported_metric_is_documented():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "status-and-metrics.md").read_text()
    for name in METRICS:
        assert f"`{name}`" in doc, name
