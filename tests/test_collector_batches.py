"""Column-wise bookkeeping of a batch gives exactly what point-by-point bookkeeping gives: latest values, the
Workload's step and its time, the pace (StepRate) and each source's newest time, over random runs with resumed
branches, several runs, interleaved series and equal steps. Pure functions, no database."""

from __future__ import annotations

import math
import operator
import random
import statistics
from collections import deque

import pytest

from trainscope.collector.collector import Collector, SourceHealth
from trainscope.collector.health import MAD_TO_SIGMA, HealthMonitor, HealthSpec, MetricWatch
from trainscope.collector.points import Batch
from trainscope.collector.progress import StepRate
from trainscope.collector.spec import parse_spec

from scripted import REGISTRY, SCHEMAS

T0 = 1_700_000_000.0


class ReferenceRate(StepRate):
    """StepRate.observe as it was written point by point (the oracle for observe_many)."""

    def observe(self, ts: float, step: int) -> None:
        if not math.isfinite(ts):
            return
        if self.samples and (step <= self.samples[-1][1] or ts < self.samples[-1][0]):
            return
        if self.samples:
            dt, ds = ts - self.samples[-1][0], step - self.samples[-1][1]
            self._age += 1
            if self._typical is None or self._age >= 64:
                self._typical, self._age = self.step_interval(), 0
            typical = self._typical
            if dt > self.restart_gap:
                pass
            elif typical and dt / ds > self.pause_factor * typical:
                self.active_seconds += typical * ds
                self.paused_seconds += dt - typical * ds
                self.pauses.append(dt - typical * ds)
            else:
                self.active_seconds += dt
        self.samples.append((ts, step))
        while len(self.samples) > 2 and self.samples[-1][0] - self.samples[0][0] > self.window:
            self.samples.popleft()


    def step_interval(self) -> float | None:
        dts, dss = self._columns()
        return statistics.median(map(operator.truediv, dts, dss)) if dts else None


def rate_state(r: StepRate) -> tuple:
    # step_interval: from the samples themselves in ReferenceRate, from the gaps kept beside them in StepRate
    return (list(r.samples), r.active_seconds, r.paused_seconds, list(r.pauses), r._typical, r._age,
            r.step_interval())


@pytest.mark.parametrize("seed", range(40))
def test_observe_many_equals_observe_one_by_one(seed: int) -> None:
    """Rounds of catch-up-like pairs (taken column-wise: times never going back, steps rising, now and then a
    pause or a restart gap) and of messy ones (time going back, NaN, steps repeated or going back)."""
    rnd = random.Random(seed)
    a, b = StepRate(window_seconds=500.0, max_samples=64), ReferenceRate(window_seconds=500.0, max_samples=64)
    ts, step = T0, 0
    orderly_rounds = 0
    for _ in range(30):
        pairs = []
        orderly = rnd.random() < 0.6
        for _ in range(rnd.randint(0, 600)):
            if orderly:
                ts += rnd.choice([0.5, 1.0, 1.0, 1.0, 1.1, 1.1, 0.0] * 30 + [30.0, 5000.0])
                step += rnd.choice([1, 1, 1, 2, 10])
            else:
                ts += rnd.choice([0.5, 1.0, 1.1, 30.0, 5000.0, -2.0])
                step += rnd.choice([1, 1, 1, 2, 10, 0, -3])
            pairs.append((math.nan if not orderly and rnd.random() < 0.05 else ts, step))
        orderly_rounds += len(pairs) >= 128 and a._orderly(pairs)
        a.observe_many(pairs)
        for p in pairs:
            b.observe(*p)
        assert rate_state(a) == rate_state(b)
        assert a.rate() == b.rate() and a.step_interval() == b.step_interval()
    assert orderly_rounds >= 5  # the column-wise path was taken


@pytest.mark.parametrize("seed", range(20))
def test_step_interval_kept_between_changes_equals_a_fresh_median(seed: int) -> None:
    """step_interval and rate keep their figures until the samples change: asked after every observe, rewind (cut
    back to a step, with the same or an earlier clock) and window slide, each equals the figure computed afresh."""
    rnd = random.Random(seed)
    r = StepRate(window_seconds=200.0, max_samples=32)
    ts, step = T0, 0
    for _ in range(600):
        op = rnd.random()
        if op < 0.8:
            ts += rnd.choice([0.5, 1.0, 1.0, 2.0, 30.0])
            step += rnd.choice([1, 1, 2, 5])
            r.observe(ts, step)
        elif r.samples:
            back = rnd.choice(list(r.samples))
            ts, step = back[0] + rnd.choice([0.0, 0.0, 0.25, -50.0]), back[1] + rnd.choice([0, 0, 1])
            r.rewind(ts, step)
        fresh = ReferenceRate.step_interval(r)
        assert r.step_interval() == fresh and r.step_interval() == fresh  # computed, then kept
        assert r.rate() == r._compute_rate() and r.rate() == r._compute_rate()


def make(spec_extra: dict | None = None) -> Collector:
    spec = parse_spec({"sources": [{"name": "s", "scripted": {"run": "x"}}], **(spec_extra or {})}, SCHEMAS)
    return Collector("uid", spec, store=None, name="wl", registry=REGISTRY)  # type: ignore[arg-type]


def state(c: Collector, h: SourceHealth) -> tuple:
    s = c.seen
    return dict(s.latest), s.max_step, s.max_step_ts, rate_state(s.rate), h.newest_ts, s.primary


def random_batches(rnd: random.Random) -> list[list[tuple]]:
    """Batches as sources give them: steps in order within a run, metric by metric at a step; now and then a
    resumed branch (steps again from an earlier checkpoint, later times), a second run, or a batch out of order."""
    batches, step, ts = [], 0, T0
    metrics = ["loss", "lr", "grad_norm"]
    for _ in range(12):
        batch: list[tuple] = []
        kind = rnd.random()
        if kind < 0.15 and step > 20:  # resumed from a checkpoint
            step -= rnd.randint(1, 20)
        run = "r2" if kind > 0.9 else "r1"
        for _ in range(rnd.randint(0, 60)):
            step += rnd.choice([1, 1, 2])
            ts += rnd.choice([1.0, 1.0, 1.5, 40.0])
            for m in rnd.sample(metrics, rnd.randint(1, 3)):
                batch.append((m, step, ts, rnd.random(), run))
        if kind > 0.8:
            rnd.shuffle(batch)  # not in step order: the point-by-point path
        elif rnd.random() < 0.4:  # series by series, each in step order (SwanLab's files, read metric by metric)
            batch.sort(key=lambda p: (p[4], metrics.index(p[0])))  # stable: steps stay in order per series
            if rnd.random() < 0.3 and batch:  # one series' block starts below its newest step: resumed
                m = batch[-1][0]
                lo = min(p[1] for p in batch if p[0] == m)
                batch += [(m, lo - rnd.randint(0, 5), ts + 1.0, rnd.random(), batch[-1][4])]
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", range(150))
def test_batch_bookkeeping_equals_point_by_point(seed: int) -> None:
    rnd = random.Random(seed)
    col, ref = make(), make()
    hc, hr = SourceHealth("s", "scripted"), SourceHealth("s", "scripted")
    ref.seen.rate, col.seen.rate = ReferenceRate(), StepRate()
    for batch in random_batches(rnd):
        col._absorb(col.spec.sources[0].name, hc, Batch(list(batch)), list(batch), len(batch))
        if batch:  # the oracle: every batch point by point
            hr.newest_ts = ref.seen.absorb_each(ref.spec.sources[0].name, list(batch), True, hr.newest_ts)
        ref._health.observe("s", batch, ref.seen.primary)
        assert state(col, hc) == state(ref, hr)
    assert col.snapshot().latest == ref.snapshot().latest


def test_monitored_names_judged_per_name_feed_the_same_points() -> None:
    c = make({"health": {"metrics": ["loss*"]}})
    pts = [("loss", s, T0 + s, 1.0 / s, "r") for s in range(1, 50)] + [("lr", 1, T0, 0.1, "r"),
                                                                       ("loss_eval", 3, T0, math.nan, "r")]
    c._health.observe("s", pts, None)
    assert set(c._health.watches) == {("s", "r", "loss"), ("s", "r", "loss_eval")}
    assert c._health.watches[("s", "r", "loss_eval")].non_finite is not None


class ReferenceWatch(MetricWatch):
    """MetricWatch as written point by point, its band from statistics.median (the oracle for observe_many)."""

    def _compute_band(self) -> tuple[float, float]:
        med = statistics.median(self.window)
        mad = statistics.median(abs(x - med) for x in self.window) * MAD_TO_SIGMA
        return med, max(mad, abs(med) * 1e-3, 1e-12)


def watch_state(w: MetricWatch) -> tuple:
    return tuple(list(v) if isinstance(v, deque) else v for k, v in
                 ((k, getattr(w, k)) for k in MetricWatch.__slots__) if k != "spec")


def loss_curve(rnd: random.Random, n: int) -> list[tuple[int, float]]:
    """A falling loss with noise, spikes, NaN/inf, rising stretches, repeated and resumed steps."""
    out, step, level = [], 0, 5.0
    for _ in range(n):
        step += rnd.choice([1, 1, 1, 2, 0, -5])
        level *= rnd.choice([0.999, 0.998, 1.0, 1.004])
        value = level * (1 + rnd.gauss(0, 0.02))
        r = rnd.random()
        value = value * 30 if r < 0.01 else math.nan if r < 0.015 else math.inf if r < 0.017 else value
        out.append((step, value))
    return out


@pytest.mark.parametrize("seed", range(30))
def test_health_watch_observe_many_equals_observe(seed: int) -> None:
    rnd = random.Random(seed)
    spec = HealthSpec(rising_span=rnd.choice([0, 40, 400]), spike_window=rnd.choice([20, 50]))
    a, b = MetricWatch(spec), ReferenceWatch(spec)
    for _ in range(8):
        pairs = loss_curve(rnd, rnd.randint(0, 3000))
        a.observe_many(pairs)
        for step, value in pairs:
            b.observe(step, value)
        assert watch_state(a) == watch_state(b)


@pytest.mark.parametrize("seed", range(10))
def test_health_monitor_batches_equal_points(seed: int) -> None:
    """A batch's monitored points per series, column-wise, leave the monitor as feeding them one by one."""
    rnd = random.Random(seed)
    spec = HealthSpec(metrics=("loss*",))
    a, b = HealthMonitor(spec), HealthMonitor(spec)
    for _ in range(6):
        batch = []
        for run in rnd.sample(["r1", "r2"], rnd.randint(1, 2)):
            for metric in rnd.sample(["loss", "loss_eval", "lr"], rnd.randint(1, 3)):
                batch += [(metric, s, T0 + s, v, run) for s, v in loss_curve(rnd, rnd.randint(0, 800))]
        rnd.shuffle(batch) if rnd.random() < 0.3 else batch.sort(key=lambda p: p[1])
        a.observe("s", batch, None)
        for metric, step, _, value, run in batch:  # the oracle: every monitored point by itself
            if b.monitors(metric, None):
                b.watches.setdefault(("s", run, metric), ReferenceWatch(spec)).observe(step, value)
        assert {k: watch_state(w) for k, w in a.watches.items()} == \
            {k: watch_state(w) for k, w in b.watches.items()}
