"""Column-wise bookkeeping of a batch gives exactly what point-by-point bookkeeping gives: latest values, the
Workload's step and its time, the pace (StepRate) and each source's newest time, over random runs with resumed
branches, several runs, interleaved series and equal steps. Pure functions, no database."""

from __future__ import annotations

import math
import random

import pytest

from trainscope.collector.collector import Collector, SourceHealth
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


def rate_state(r: StepRate) -> tuple:
    return list(r.samples), r.active_seconds, r.paused_seconds, list(r.pauses), r._typical, r._age


@pytest.mark.parametrize("seed", range(20))
def test_observe_many_equals_observe_one_by_one(seed: int) -> None:
    rnd = random.Random(seed)
    a, b = StepRate(window_seconds=500.0, max_samples=64), ReferenceRate(window_seconds=500.0, max_samples=64)
    ts, step = T0, 0
    for _ in range(30):
        pairs = []
        for _ in range(rnd.randint(0, 200)):
            ts += rnd.choice([0.5, 1.0, 1.1, 30.0, 5000.0, -2.0, math.nan])
            step += rnd.choice([1, 1, 1, 2, 10, 0, -3])
            pairs.append((ts, step))
        a.observe_many(pairs)
        for p in pairs:
            b.observe(*p)
        assert rate_state(a) == rate_state(b)
        assert a.rate() == b.rate() and a.step_interval() == b.step_interval()


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
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", range(40))
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
