"""Health detectors on synthetic series with deterministic time: true positives, known false positives, clearing."""

from __future__ import annotations

import math
import random
import time

import pytest

from trainscope.collector.health import (
    DISAGREE,
    DIVERGING,
    NON_FINITE,
    SPIKE,
    STALLED,
    HealthMonitor,
    HealthSpec,
    transitions,
)
from trainscope.collector.points import Point, RunState
from trainscope.collector.progress import StepRate, eta_seconds

T0 = 1_700_000_000.0


def loss_curve(steps: int, *, seed: int = 0, noise: float = 0.02, warmup: int = 0) -> list[float]:
    """A normal training loss: fast decay to a floor, multiplicative noise, optional LR warm-up bump."""
    rng = random.Random(seed)
    out = []
    for s in range(1, steps + 1):
        base = 2.5 * math.exp(-s / 600) + 0.4
        if warmup and s < warmup:  # loss wobbles up while the learning rate warms up
            base *= 1 + 0.15 * math.sin(math.pi * s / warmup)
        out.append(base * (1 + rng.gauss(0, noise)))
    return out


def feed(monitor: HealthMonitor, values: list[float], *, start: int = 1, source: str = "tb", metric: str = "loss",
         dt: float = 2.0) -> None:
    monitor.observe(source, [Point(metric, start + i, T0 + dt * (start + i), v, "r") for i, v in enumerate(values)],
                    "loss")


def judge(monitor: HealthMonitor, *, now: float, step: int, step_ts: float, interval: float = 2.0,
          state: RunState = RunState.RUNNING, sources_ok: bool = True):
    return monitor.evaluate(now, run_state=state, step=step, step_ts=step_ts, step_interval=interval,
                            sources_ok=sources_ok)


def test_stall_threshold_derives_from_the_run_rhythm_within_floor_and_ceiling():
    m = HealthMonitor(HealthSpec())
    assert m.stall_threshold(2.0) == 600  # 10 x 2 s, raised to the 10 min floor
    assert m.stall_threshold(120.0) == 1200  # a slow run: 10 x 2 min
    assert m.stall_threshold(3600.0) == 7200  # capped at the 2 h ceiling
    assert HealthMonitor(HealthSpec(stall_after=90)).stall_threshold(2.0) == 90


def test_stall_fires_after_the_threshold_and_clears_with_a_new_step():
    m = HealthMonitor(HealthSpec())
    last = T0 + 1000
    assert judge(m, now=last + 590, step=500, step_ts=last)[STALLED].status == "False"
    stalled = judge(m, now=last + 601, step=500, step_ts=last)[STALLED]
    assert (stalled.status, stalled.reason, stalled.step) == ("True", "NoNewStep", 500)
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last))
    assert stalled.message == f"no new step since step 500 at {at} (threshold 10m00s) while the run is running"
    # the messages name the step's time, never its age: they stay the same (so does the status) until a new step
    assert judge(m, now=last + 900, step=500, step_ts=last)[STALLED] == stalled
    progressing = judge(m, now=last + 10, step=500, step_ts=last)[STALLED]
    later = judge(m, now=last + 50, step=500, step_ts=last)[STALLED]
    assert progressing.message == f"step 500 at {at}" == later.message
    assert judge(m, now=last + 700, step=501, step_ts=last + 690)[STALLED].status == "False"
    assert judge(m, now=last + 5000, step=500, step_ts=last, state=RunState.FINISHED)[STALLED].reason == "RunEnded"
    assert judge(m, now=last + 5000, step=500, step_ts=last, sources_ok=False)[STALLED].status == "Unknown"


def test_an_evaluation_pause_shorter_than_the_floor_is_not_a_stall():
    m = HealthMonitor(HealthSpec())
    rate = StepRate()
    t = T0
    for s in range(1, 2001):
        t += 300.0 if s % 500 == 0 else 1.0  # a 5-minute evaluation every 500 steps
        rate.observe(t, s)
        if s % 500 == 0:
            assert judge(m, now=t - 1, step=s - 1, step_ts=t - 300, interval=rate.step_interval())[
                STALLED].status == "False"
    assert rate.rate() == pytest.approx(1.0)  # pauses do not drag the pace down...
    assert rate.pause_overhead() == pytest.approx(4 * 299 / 2000, rel=0.01)  # ...but the ETA expects more of them
    assert eta_seconds(2000, 3000, rate.rate()) == pytest.approx(1000)
    assert eta_seconds(2000, 3000, rate.rate(), rate.pause_overhead()) == pytest.approx(1000 * (1 + 4 * 299 / 2000),
                                                                                        rel=0.01)


def test_non_finite_value_is_reported_with_metric_and_step_then_clears():
    m = HealthMonitor(HealthSpec())
    feed(m, [1.0, 0.9, math.nan])
    cond = judge(m, now=T0 + 10, step=3, step_ts=T0 + 6)[NON_FINITE]
    assert (cond.status, cond.metric, cond.step) == ("True", "loss", 3)
    assert "loss is nan at step 3" in cond.message
    feed(m, [math.inf], start=4)
    assert "inf at step 4" in judge(m, now=T0 + 10, step=4, step_ts=T0 + 8)[NON_FINITE].message
    feed(m, [0.8], start=5)
    assert judge(m, now=T0 + 12, step=5, step_ts=T0 + 10)[NON_FINITE].status == "False"


def test_metrics_other_than_the_primary_are_ignored_unless_listed():
    m = HealthMonitor(HealthSpec())
    feed(m, [math.nan], metric="grad_norm")
    assert judge(m, now=T0, step=1, step_ts=T0)[NON_FINITE].status == "False"
    listed = HealthMonitor(HealthSpec(metrics=("grad_*",)))
    feed(listed, [math.nan], metric="grad_norm")
    assert judge(listed, now=T0, step=1, step_ts=T0)[NON_FINITE].metric == "grad_norm"


def test_a_spike_is_caught_and_clears_after_calm_points():
    m = HealthMonitor(HealthSpec())
    values = loss_curve(3000)
    feed(m, values[:2000])
    assert judge(m, now=T0, step=2000, step_ts=T0)[SPIKE].status == "False"
    feed(m, [values[2000] * 4], start=2001)
    spike = judge(m, now=T0, step=2001, step_ts=T0)[SPIKE]
    assert (spike.status, spike.step, spike.reason) == ("True", 2001, "SpikeAboveBand")
    feed(m, values[2001:2010], start=2002)
    assert judge(m, now=T0, step=2010, step_ts=T0)[SPIKE].status == "True"  # 9 calm points: not yet
    feed(m, values[2010:2011], start=2011)
    assert judge(m, now=T0, step=2011, step_ts=T0)[SPIKE].status == "False"


def test_steady_rise_is_divergence_and_a_falling_loss_is_not():
    m = HealthMonitor(HealthSpec())
    feed(m, loss_curve(1000))
    assert judge(m, now=T0, step=1000, step_ts=T0)[DIVERGING].status == "False"
    rng = random.Random(3)
    feed(m, [0.5 * (1 + i / 400) * (1 + rng.gauss(0, 0.02)) for i in range(400)], start=1001)
    cond = judge(m, now=T0, step=1400, step_ts=T0)[DIVERGING]
    assert cond.status == "True" and "rose steadily" in cond.message
    feed(m, [0.4] * 400, start=1401)
    assert judge(m, now=T0, step=1800, step_ts=T0)[DIVERGING].status == "False"


@pytest.mark.parametrize("seed", range(5))
def test_known_false_positives_stay_quiet(seed):
    """Warm-up noise, a learning-rate warm-up bump and a resumed run re-logging steps raise nothing."""
    m = HealthMonitor(HealthSpec())
    noisy_start = [v * (1 + random.Random(seed).gauss(0, 0.3)) if i < 50 else v
                   for i, v in enumerate(loss_curve(4000, seed=seed, noise=0.03, warmup=300))]
    feed(m, noisy_start[:3000])
    feed(m, [v * 1.3 for v in noisy_start[2500:3000]], start=2501)  # resumed at 2500: re-logged steps ignored
    feed(m, noisy_start[3000:], start=3001)
    found = {t: c.status for t, c in judge(m, now=T0, step=4000, step_ts=T0).items() if c.status != "False"}
    assert found == {}


def test_sources_that_disagree_beyond_tolerance():
    m = HealthMonitor(HealthSpec(disagreement_tolerance=0.05))
    feed(m, [1.0, 0.9, 0.8], source="wandb")
    feed(m, [1.0, 0.9, 0.81], source="log")
    assert judge(m, now=T0, step=3, step_ts=T0)[DISAGREE].status == "False"
    feed(m, [0.7], start=4, source="wandb")
    feed(m, [0.9], start=4, source="log")
    cond = judge(m, now=T0, step=4, step_ts=T0)[DISAGREE]
    assert cond.status == "True" and "step 4" in cond.message and "log=0.9" in cond.message
    assert judge(HealthMonitor(HealthSpec()), now=T0, step=1, step_ts=T0)[DISAGREE].reason == "Disabled"


def test_transitions_report_changes_only():
    m = HealthMonitor(HealthSpec())
    first = judge(m, now=T0 + 700, step=1, step_ts=T0)
    assert [e.condition.type for e in transitions({}, first, T0)] == [STALLED]  # only True ones at first
    again = judge(m, now=T0 + 800, step=1, step_ts=T0)
    assert transitions(first, again, T0) == []
    cleared = judge(m, now=T0 + 800, step=2, step_ts=T0 + 799)
    [event] = transitions(again, cleared, T0 + 800)
    assert (event.condition.type, event.condition.status, event.at) == (STALLED, "False", T0 + 800)


def test_a_one_off_gap_does_not_inflate_the_eta_but_recurring_pauses_do():
    """A run stopped and resumed once (a demo run again 80 s later) keeps an ETA that agrees with its pace."""
    rate = StepRate()
    t = T0
    for s in range(1, 1501):
        t += 0.05 + (80.0 if s == 700 else 0.0)  # 20 steps/s, one 80-second gap at step 700
        rate.observe(t, s)
    assert rate.rate() == pytest.approx(20.0)
    assert rate.pause_overhead() == 0.0
    assert eta_seconds(1500, 3000, rate.rate(), rate.pause_overhead()) == pytest.approx(75.0)
    # the same gap twice more (a checkpoint every 500 steps): now it is the run's rhythm
    for s in range(1501, 2501):
        t += 0.05 + (80.0 if s % 500 == 0 else 0.0)
        rate.observe(t, s)
    assert rate.pause_overhead() == pytest.approx(3 * 79.95 / (2500 * 0.05), rel=0.01)
