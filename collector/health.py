"""Training health: stalled runs, non-finite values, spikes and divergence, and sources that disagree.

Pure logic over points and a clock, so every detector is tested with synthetic series and deterministic time.
Detectors assume a lower-is-better metric such as a loss; they watch the primary metric unless
`spec.health.metrics` names others.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
import operator
import statistics
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainscope.collector.points import Columns, RawPoint, RunState

STALLED = "Stalled"
NON_FINITE = "NonFiniteMetric"
SPIKE = "MetricSpike"
DIVERGING = "MetricDiverging"
DISAGREE = "SourcesDisagree"
CONDITION_TYPES = (STALLED, NON_FINITE, SPIKE, DIVERGING, DISAGREE)
MAD_TO_SIGMA = 1.4826
_METRIC, _STEP, _VALUE, _RUN = (operator.itemgetter(i) for i in (0, 1, 3, 4))


def _median(ordered: list[float]) -> float:
    """statistics.median of an already sorted list (the same arithmetic)."""
    n = len(ordered)
    if n % 2:
        return ordered[n // 2]
    return (ordered[n // 2 - 1] + ordered[n // 2]) / 2


@dataclass(frozen=True, slots=True)
class HealthSpec:
    """`spec.health`, with the defaults that were measured on normal runs (docs/health.md)."""

    stall_after: float | None = None  # seconds; None: derived from the run's own step interval
    stall_factor: float = 10.0
    stall_floor: float = 600.0
    stall_ceiling: float = 7200.0
    metrics: tuple[str, ...] = ()  # globs; empty: the primary metric
    spike_window: int = 50
    spike_threshold: float = 8.0  # robust standard deviations (MAD x 1.4826) above the window's median
    spike_min_points: int = 20
    spike_clear_points: int = 10
    rising_span: int = 400  # points; 0 turns divergence detection off
    rising_min_increase: float = 0.25  # the last quarter's median over the first quarter's, relative
    disagreement_tolerance: float | None = None  # relative; None turns the check off

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, parse_duration: Any) -> HealthSpec:
        d = d or {}
        stall, spike, rising = d.get("stall") or {}, d.get("spike") or {}, d.get("rising") or {}
        base = cls()  # slotted dataclass: class attributes are descriptors, defaults live on an instance
        return cls(
            stall_after=parse_duration(stall["after"]) if "after" in stall else None,
            stall_factor=stall.get("factor", base.stall_factor),
            stall_floor=parse_duration(stall["floor"]) if "floor" in stall else base.stall_floor,
            stall_ceiling=parse_duration(stall["ceiling"]) if "ceiling" in stall else base.stall_ceiling,
            metrics=tuple(d.get("metrics", ())),
            spike_window=spike.get("window", base.spike_window),
            spike_threshold=spike.get("threshold", base.spike_threshold),
            spike_min_points=spike.get("minPoints", base.spike_min_points),
            spike_clear_points=spike.get("clearAfter", base.spike_clear_points),
            rising_span=rising.get("span", base.rising_span),
            rising_min_increase=rising.get("minIncrease", base.rising_min_increase),
            disagreement_tolerance=(d.get("disagreement") or {}).get("tolerance"),
        )


@dataclass(frozen=True, slots=True)
class Condition:
    """One health condition as status shows it; `status` is "True", "False" or "Unknown"."""

    type: str
    status: str
    reason: str
    message: str
    metric: str | None = None
    step: int | None = None
    value: float | None = None


@dataclass(slots=True)
class MetricWatch:
    """Spike, divergence and non-finite state of one series; fed only with steps beyond the last one seen, so a
    resumed run that re-logs steps is not judged twice."""

    spec: HealthSpec
    last_step: int | None = None
    window: deque[float] = field(default_factory=deque)
    rising: deque[float] = field(default_factory=deque)
    band: tuple[float, float] | None = None  # (median, scale) of the window, refreshed every few points
    band_age: int = 0
    non_finite: tuple[int, float] | None = None
    spike: tuple[int, float, float, float] | None = None  # step, value, median, scale
    calm: int = 0
    diverging: tuple[int, float, float] | None = None  # step, first-quarter median, last-quarter median
    rising_age: int = 0

    def observe(self, step: int, value: float) -> None:
        if self.last_step is not None and step <= self.last_step:
            return
        self.last_step = step
        if not math.isfinite(value):
            self.non_finite = (step, value)
            return
        self.non_finite = None
        self._check_spike(step, value)
        self.window.append(value)
        if len(self.window) > self.spec.spike_window:
            self.window.popleft()
        if self.spec.rising_span:
            self._check_rising(step, value)

    def observe_many(self, pairs: Iterable[tuple[int, float]]) -> None:
        """`observe` of each (step, value) in order; the same state as one `observe` per pair.

        A long run of pairs (a catch-up batch) is judged for spikes only at its end: a spike state is made by the
        last spike and the points after it, and a spike judgement depends only on the window and the band, which
        is recomputed from the window every tenth of it. So the pairs are first taken in without judging (window,
        divergence, counters), then the spike judgement runs again from the last band refresh that leaves at least
        `spike_clear_points` judged points behind it: a spike there sets the state as it would have; none there
        means any earlier spike has cleared."""
        pairs = pairs if isinstance(pairs, list) else list(pairs)
        spec = self.spec
        if len(pairs) < 4 * (spec.spike_clear_points + spec.spike_window) or not self._take_in(pairs):
            self._observe_each(pairs)

    def _take_in(self, pairs: list[tuple[int, float]]) -> bool:
        """`observe_many` judging spikes only at the end (see there); False, with nothing changed, when fewer
        than `spike_clear_points` judged points follow the last band refresh."""
        spec = self.spec
        size, least = spec.spike_window, spec.spike_min_points
        clear, refresh = spec.spike_clear_points, max(1, spec.spike_window // 10)
        rising, judge = spec.rising_span, max(1, spec.rising_span // 20)
        isfinite = math.isfinite
        last, non_finite = self.last_step, self.non_finite
        band_age, have_band, judged_points = self.band_age, self.band is not None, 0
        wlen, rlen, rising_age = len(self.window), len(self.rising), self.rising_age
        values: list[float] = []  # the finite values taken, in order
        add = values.append
        refreshes: list[tuple[int, int, int | None, int]] = []  # (pair index, len(values), last step, judged)
        judged: tuple[int, int] | None = None  # the last divergence judgement: (step, len(values))
        for i, (step, value) in enumerate(pairs):
            if last is not None and step <= last:
                continue
            before, last = last, step
            if not isfinite(value):
                non_finite = (step, value)
                continue
            non_finite = None
            if wlen >= least:
                if not have_band or band_age >= refresh:
                    have_band, band_age = True, 0
                    refreshes.append((i, len(values), before, judged_points))
                band_age += 1
                judged_points += 1
            add(value)
            if wlen < size:
                wlen += 1
            if rising:
                if rlen < rising:
                    rlen += 1
                rising_age += 1
                if rlen >= rising and rising_age >= judge:
                    rising_age, judged = 0, (step, len(values))
        start = next((r for r in reversed(refreshes) if judged_points - r[3] >= clear), None)
        if start is None:
            return False
        i, n, before, _ = start
        window = deque(_last(list(self.window), values, n, size))
        spike, calm, band, _ = self._judge_spikes(pairs, i, before, window)  # its band age is band_age
        self.spike, self.calm, self.band, self.band_age = spike, calm, band, band_age
        self.last_step, self.non_finite, self.rising_age = last, non_finite, rising_age
        self.window = deque(_last(list(self.window), values, len(values), size))
        if rising:
            rise = _last(list(self.rising), values, len(values), rising)
            if judged is not None:
                self._diverging(judged[0], _last(list(self.rising), values, judged[1], rising))
            self.rising = deque(rise)
        return True

    def _judge_spikes(self, pairs: list[tuple[int, float]], start: int, last: int | None,
                      window: deque[float]) -> tuple[Any, int, Any, int]:
        """Spike judgement of pairs[start:] from no spike, `window` before pairs[start] (a band refresh):
        (spike, calm, band, band age) at the end."""
        spec = self.spec
        size, least, threshold = spec.spike_window, spec.spike_min_points, spec.spike_threshold
        clear, refresh = spec.spike_clear_points, max(1, spec.spike_window // 10)
        spike, calm, band, age = None, 0, None, 0
        isfinite = math.isfinite
        for step, value in itertools.islice(pairs, start, None):
            if last is not None and step <= last:
                continue
            last = step
            if not isfinite(value):
                continue
            if len(window) >= least:
                if band is None or age >= refresh:
                    band, age = _band(window), 0
                age += 1
                med, scale = band
                if value > med + threshold * scale:
                    med, scale = band = _band(window)
                if value > med + threshold * scale:
                    spike, calm = (step, value, med, scale), 0
                elif spike is not None:
                    calm += 1
                    if calm >= clear:
                        spike, calm = None, 0
            window.append(value)
            if len(window) > size:
                window.popleft()
        return spike, calm, band, age

    def _observe_each(self, pairs: list[tuple[int, float]]) -> None:
        """`observe` of each pair, with the per-point work inlined."""
        spec = self.spec
        window, size, least = self.window, spec.spike_window, spec.spike_min_points
        threshold, clear, refresh = spec.spike_threshold, spec.spike_clear_points, max(1, spec.spike_window // 10)
        rising, rise, judge = spec.rising_span, self.rising, max(1, spec.rising_span // 20)
        isfinite = math.isfinite
        last = self.last_step
        # Each divergence judgement replaces the one before it, so of a batch's judgements only the last one counts:
        # it is made once, after the loop, on the values the window held then (`taken` are the values it received).
        before, taken = list(rise), []
        add = taken.append
        judged: tuple[int, int] | None = None  # (step, len(taken)) at the last judgement
        for step, value in pairs:
            if last is not None and step <= last:
                continue
            last = self.last_step = step
            if not isfinite(value):
                self.non_finite = (step, value)
                continue
            self.non_finite = None
            if len(window) >= least:  # _check_spike
                if self.band is None or self.band_age >= refresh:
                    self.band, self.band_age = _band(self.window), 0
                self.band_age += 1
                med, scale = self.band
                if value > med + threshold * scale:
                    med, scale = self.band = _band(self.window)
                if value > med + threshold * scale:
                    self.spike, self.calm = (step, value, med, scale), 0
                elif self.spike is not None:
                    self.calm += 1
                    if self.calm >= clear:
                        self.spike, self.calm = None, 0
            window.append(value)
            if len(window) > size:
                window.popleft()
            if rising:  # _check_rising
                rise.append(value)
                if len(rise) > rising:
                    rise.popleft()
                add(value)
                self.rising_age += 1
                if len(rise) >= rising and self.rising_age >= judge:
                    self.rising_age = 0
                    judged = (step, len(taken))
        if judged is not None:
            step, n = judged
            self._diverging(step, _last(before, taken, n, rising))

    def _check_spike(self, step: int, value: float) -> None:
        spec = self.spec
        if len(self.window) < spec.spike_min_points:
            return
        # The band moves slowly: recompute it every tenth of a window, and always before calling a spike.
        if self.band is None or self.band_age >= max(1, spec.spike_window // 10):
            self.band, self.band_age = _band(self.window), 0
        self.band_age += 1
        med, scale = self.band
        if value > med + spec.spike_threshold * scale:
            med, scale = self.band = _band(self.window)
        if value > med + spec.spike_threshold * scale:
            self.spike, self.calm = (step, value, med, scale), 0
        elif self.spike is not None:
            self.calm += 1
            if self.calm >= spec.spike_clear_points:
                self.spike, self.calm = None, 0  # calm counts only while a spike stands

    def _check_rising(self, step: int, value: float) -> None:
        span = self.spec.rising_span
        self.rising.append(value)
        if len(self.rising) > span:
            self.rising.popleft()
        self.rising_age += 1
        if len(self.rising) < span or self.rising_age < max(1, span // 20):
            return
        self._judge_rising(step)

    def _judge_rising(self, step: int) -> None:
        self.rising_age = 0
        self._diverging(step, list(self.rising))

    def _diverging(self, step: int, values: list[float]) -> None:
        """Judge whether the divergence window `values` rises quarter after quarter."""
        span = self.spec.rising_span
        quarter = span // 4
        q = [statistics.median(values[i * quarter:(i + 1) * quarter]) for i in range(4)]
        rising = q[0] < q[1] < q[2] < q[3] and q[3] - q[0] > self.spec.rising_min_increase * max(abs(q[0]), 1e-12)
        self.diverging = (step, q[0], q[3]) if rising else None


def _band(window: Iterable[float]) -> tuple[float, float]:
    """(median, robust scale) of a spike window."""
    med = _median(sorted(window))
    mad = _median(sorted(map(abs, map(operator.sub, window, itertools.repeat(med))))) * MAD_TO_SIGMA
    return med, max(mad, abs(med) * 1e-3, 1e-12)


def _last(before: list[float], values: list[float], n: int, size: int) -> list[float]:
    """The last `size` of `before` followed by values[:n]: a window after n more values."""
    return values[n - size:n] if n >= size else (before + values[:n])[-size:]


def _fmt(value: float) -> str:
    return format(value, ".6g")


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


class HealthMonitor:
    """Watches one Workload's monitored series and judges its conditions at a given time."""

    def __init__(self, spec: HealthSpec):
        self.spec = spec
        self.watches: dict[tuple[str, str, str], MetricWatch] = {}  # (source, run, metric)
        self._monitored: dict[str, bool] = {}
        self._primary: str | None = None
        self._recent: dict[tuple[str, str], deque[tuple[int, float]]] = {}  # (metric, source) -> (step, value)
        # Only Stalled changes with time alone; the others change only when points come, so they are judged again
        # only after an observe (the health loop asks every 2 s of each of up to thousands of Workloads).
        self._observed = 0
        self._judged: tuple[int, dict[str, Condition]] | None = None

    def monitors(self, metric: str, primary: str | None) -> bool:
        if primary != self._primary:
            self._primary, self._monitored = primary, {}
        verdict = self._monitored.get(metric)
        if verdict is None:
            globs = self.spec.metrics or ((primary,) if primary else ())
            verdict = self._monitored[metric] = any(fnmatch.fnmatchcase(metric, g) for g in globs)
        return verdict

    def observe(self, source: str, points: list[RawPoint] | Columns, primary: str | None) -> None:
        """Feed the monitored metrics' points of one batch (in the order the source gave them)."""
        self._observed += 1
        track = self.spec.disagreement_tolerance is not None
        if isinstance(points, Columns):
            watched_keys = [k for k, (_, metric) in enumerate(points.keys) if self.monitors(metric, primary)]
            if not watched_keys:
                return
            if track or len(watched_keys) > 1:  # interleaved series (or the recent values across runs): in order
                if len(watched_keys) < len(points.keys):
                    points = points.take(np.isin(points.key, watched_keys))
                points = points.points()
            else:  # one series: its (step, value) pairs straight from the columns
                (k,) = watched_keys
                run, metric = points.keys[k]
                sel = points.key == k if len(points.keys) > 1 else slice(None)
                watch = self.watches.get((source, run, metric))
                if watch is None:
                    watch = self.watches[(source, run, metric)] = MetricWatch(self.spec)
                watch.observe_many(zip(points.step[sel].tolist(), points.value[sel].tolist(), strict=True))
                return
        names = set(map(_METRIC, points))  # judged per name, not per point: a catch-up batch holds 50,000
        watched = {m for m in names if self.monitors(m, primary)}
        if not watched:
            return
        if len(watched) == 1 < len(names):
            points = list(itertools.compress(points, map(operator.eq, map(_METRIC, points),
                                                         itertools.repeat(next(iter(watched))))))
        elif len(watched) < len(names):
            points = [p for p in points if p[0] in watched]
        if track:  # the sources' recent values interleave runs: point by point
            for metric, step, _, value, run in points:
                key = (source, run, metric)
                watch = self.watches.get(key)
                if watch is None:
                    watch = self.watches[key] = MetricWatch(self.spec)
                watch.observe(step, value)
                recent = self._recent.setdefault((metric, source), deque(maxlen=256))
                recent.append((step, value))
            return
        # each series' watch sees its own points in order; series do not affect each other
        runs = set(map(_RUN, points))
        series: dict[tuple[str, str], list[tuple[int, float]]]
        if len(runs) == 1 and len(watched) == 1:
            series = {(next(iter(runs)), next(iter(watched))): list(zip(map(_STEP, points), map(_VALUE, points),
                                                                        strict=True))}
        else:
            series = {}
            for metric, step, _, value, run in points:
                series.setdefault((run, metric), []).append((step, value))
        for (run, metric), pairs in series.items():
            watch = self.watches.get((source, run, metric))
            if watch is None:
                watch = self.watches[(source, run, metric)] = MetricWatch(self.spec)
            watch.observe_many(pairs)

    def stall_threshold(self, step_interval: float | None) -> float:
        spec = self.spec
        if spec.stall_after is not None:
            return spec.stall_after
        derived = spec.stall_factor * step_interval if step_interval else spec.stall_floor
        return min(spec.stall_ceiling, max(spec.stall_floor, derived))

    def evaluate(self, now: float, *, run_state: RunState, step: int | None, step_ts: float | None,
                 step_interval: float | None, sources_ok: bool) -> dict[str, Condition]:
        """Every condition type, True while its cause lasts and False (or Unknown) otherwise."""
        if self._judged is None or self._judged[0] != self._observed:
            self._judged = (self._observed, self._judge())
        return {STALLED: self._stalled(now, run_state, step, step_ts, step_interval, sources_ok), **self._judged[1]}

    def _judge(self) -> dict[str, Condition]:
        """The conditions that only points change."""
        out = {}
        out[NON_FINITE] = self._worst(NON_FINITE, lambda w: w.non_finite, lambda k, v: (
            "NonFiniteValue", f"{k[2]} is {_fmt(v[1])} at step {v[0]} (source {k[0]}, run {k[1]})", v[0], v[1]))
        out[SPIKE] = self._worst(SPIKE, lambda w: w.spike, lambda k, v: (
            "SpikeAboveBand", f"{k[2]} jumped to {_fmt(v[1])} at step {v[0]}, above the recent median "
            f"{_fmt(v[2])} + {self.spec.spike_threshold:g} x {_fmt(v[3])}", v[0], v[1]))
        out[DIVERGING] = self._worst(DIVERGING, lambda w: w.diverging, lambda k, v: (
            "RisingSteadily", f"{k[2]} rose steadily over the last {self.spec.rising_span} points, from a median "
            f"of {_fmt(v[1])} to {_fmt(v[2])} (step {v[0]})", v[0], v[2]))
        out[DISAGREE] = self._disagreement()
        return out

    def _stalled(self, now: float, run_state: RunState, step: int | None, step_ts: float | None,
                 step_interval: float | None, sources_ok: bool) -> Condition:
        if run_state in (RunState.FINISHED, RunState.FAILED):
            return Condition(STALLED, "False", "RunEnded", f"the run is {run_state}")
        if step is None or step_ts is None:
            return Condition(STALLED, "False", "NoData", "no step seen yet")
        threshold = self.stall_threshold(step_interval)
        # Messages name the step's time, not its age: a message that changed with the clock would change the
        # Workload's status, and so cost a status write, every few seconds of every Workload between two steps.
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(step_ts))
        if now - step_ts <= threshold:
            return Condition(STALLED, "False", "Progressing", f"step {step} at {at}", step=step)
        if not sources_ok:
            return Condition(STALLED, "Unknown", "SourcesUnavailable",
                             f"no new step since {at}, but no source can be read", step=step)
        return Condition(STALLED, "True", "NoNewStep", f"no new step since step {step} at {at} "
                         f"(threshold {_duration(threshold)}) while the run is {run_state}", step=step)

    def _worst(self, ctype: str, state: Any, describe: Any) -> Condition:
        for key, watch in sorted(self.watches.items()):
            value = state(watch)
            if value is not None:
                reason, message, step, v = describe(key, value)
                return Condition(ctype, "True", reason, message, metric=key[2], step=step, value=v)
        return Condition(ctype, "False", "Normal", "no finding" if self.watches else "no monitored metric yet")

    def _disagreement(self) -> Condition:
        tol = self.spec.disagreement_tolerance
        if tol is None:
            return Condition(DISAGREE, "False", "Disabled", "spec.health.disagreement is not set")
        by_metric: dict[str, dict[str, dict[int, float]]] = {}
        for (metric, source), recent in self._recent.items():
            by_metric.setdefault(metric, {})[source] = dict(recent)
        for metric, sources in sorted(by_metric.items()):
            names = sorted(sources)
            for i, a in enumerate(names):
                for b in names[i + 1:]:
                    common = sources[a].keys() & sources[b].keys()
                    if not common:
                        continue
                    step = max(common)
                    va, vb = sources[a][step], sources[b][step]
                    if math.isfinite(va) and math.isfinite(vb) and abs(va - vb) > tol * max(abs(va), abs(vb)):
                        return Condition(DISAGREE, "True", "ValuesDiffer",
                                         f"{metric} at step {step}: {a}={_fmt(va)}, {b}={_fmt(vb)} "
                                         f"(tolerance {tol:g})", metric=metric, step=step, value=va)
        return Condition(DISAGREE, "False", "Agree", "sources agree within tolerance")


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """A condition changing status, as stored in `health_events` and posted as a Kubernetes event."""

    at: float
    condition: Condition


def transitions(previous: dict[str, Condition], current: dict[str, Condition], now: float) -> list[HealthEvent]:
    """Conditions whose status changed since the last evaluation (a first evaluation reports only True ones)."""
    events = []
    for ctype, cond in current.items():
        before = previous.get(ctype)
        if (before is None and cond.status == "True") or (before is not None and before.status != cond.status):
            events.append(HealthEvent(now, cond))
    return events
