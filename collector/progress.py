"""Step rate and ETA from the source timestamps of new steps, and the run state of several sources combined."""

from __future__ import annotations

import functools
import itertools
import math
import operator
import re
import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from trainscope.collector.points import RunState

# Names tried, in order, when the spec names no primary metric.
_LOSS_NAMES = ("loss", "train/loss", "train_loss", "train/lm_loss", "lm loss", "lm_loss", "training_loss")
_LOSS_LIKE = re.compile(r"(^|[/_\s.-])loss($|[/_\s.-])", re.IGNORECASE)
_EVAL_LIKE = re.compile(r"(^|[/_\s.-])(eval|val|valid|validation|test)($|[/_\s.-])", re.IGNORECASE)


def detect_primary_metric(metrics: Iterable[str]) -> str | None:
    """The metric to show as Loss: a well-known name, else the shortest training loss-like one."""
    names = set(metrics)
    for name in _LOSS_NAMES:
        if name in names:
            return name
    lossy = [m for m in names if _LOSS_LIKE.search(m) and not _EVAL_LIKE.search(m)]
    lossy = lossy or [m for m in names if "loss" in m.lower()]
    return min(lossy, key=lambda m: (len(m), m)) if lossy else None


def combine_run_states(states: Iterable[RunState | None]) -> RunState:
    """One state for the Workload: a failed source wins, then a running one, then finished."""
    seen = {s for s in states if s is not None}
    for state in (RunState.FAILED, RunState.RUNNING, RunState.FINISHED):
        if state in seen:
            return state
    return RunState.UNKNOWN


class JobPhase:
    """The training job's own state, as its adapter reads it from the job object (operator/jobs/)."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    NOT_FOUND = "NotFound"  # never seen (yet): the jobRef names no existing job
    DELETED = "Deleted"  # seen once, gone now
    KIND_NOT_SERVED = "KindNotServed"  # the cluster does not serve the job's kind (no CRD)


ENDED_PHASES = frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.DELETED})


@dataclass(frozen=True, slots=True)
class JobState:
    """What the job says about the run: a JobPhase plus the job's own reason and message."""

    phase: str
    reason: str = ""
    message: str = ""

    @property
    def ended(self) -> bool:
        return self.phase in ENDED_PHASES


def combine_with_job(sources: RunState, job: JobState | None) -> RunState:
    """The run state once the job is known: the job decides whether the run ended; sources add detail.

    A job that is still alive means the run is running, whatever a source's log text claims (the job may
    restart a crashed rank). An ended job ends the run: failed if the job or a source says so, else finished.
    """
    if job is None or job.phase in (JobPhase.NOT_FOUND, JobPhase.KIND_NOT_SERVED):
        return sources
    if job.phase == JobPhase.FAILED or (job.ended and sources == RunState.FAILED):
        return RunState.FAILED
    if job.phase == JobPhase.SUCCEEDED:
        return RunState.FINISHED
    if job.phase == JobPhase.DELETED:  # ended without a verdict of its own: what the sources saw
        return sources if sources in (RunState.FINISHED, RunState.FAILED) else RunState.UNKNOWN
    return RunState.RUNNING if job.phase == JobPhase.RUNNING or sources != RunState.UNKNOWN else RunState.UNKNOWN


_FIRST, _SECOND = operator.itemgetter(0), operator.itemgetter(1)
_ORDERLY_MIN = 128  # fewer pairs (a live run's poll) go pair by pair


class StepRate:
    """Steps per second over a recent window of (source time, step) samples, ignoring pauses.

    Fed with each new highest step and its source timestamp, so a restarted operator that catches up on history
    measures the run's own pace, not the catch-up speed. Intervals much slower than the median (an evaluation
    phase, a restart from a checkpoint) are left out, so the rate is the pace while training runs.
    """

    def __init__(self, window_seconds: float = 1800.0, max_samples: int = 512, pause_factor: float = 5.0,
                 restart_gap: float = 3600.0):
        self.window = window_seconds
        self.pause_factor = pause_factor
        self.restart_gap = restart_gap  # longer gaps are restarts: neither pace nor expected pauses
        self.samples: deque[tuple[float, int]] = deque(maxlen=max_samples)
        # seconds per step between consecutive samples (one fewer than samples, kept with them): the median of
        # these is refreshed every 64 new steps, so a catch-up must not rebuild them from the samples each time
        self._gaps: deque[float] = deque(maxlen=max(1, max_samples - 1))
        self.active_seconds = 0.0  # over the whole run seen: time spent stepping...
        self.paused_seconds = 0.0  # ...and in pauses (evaluations, checkpoints)
        self.pauses: deque[float] = deque(maxlen=256)  # each pause's length, for the ETA's share of recurring ones
        self._typical: float | None = None
        self._age = 0
        self._median_key: tuple[int, int, tuple[float, int], tuple[float, int]] | None = None
        self._median = 0.0
        self._rate_key: tuple[int, int, tuple[float, int], tuple[float, int]] | None = None
        self._rate: float | None = None

    def observe(self, ts: float, step: int) -> None:
        self.observe_many(((ts, step),))

    def observe_many(self, pairs: Iterable[tuple[float, int]]) -> None:
        """`observe` of each (ts, step) in order; a catch-up batch brings thousands of new steps at once."""
        if isinstance(pairs, list) and len(pairs) >= _ORDERLY_MIN and self._orderly(pairs):
            self._observe_orderly(pairs)
            return
        self._observe_each(pairs)

    def _orderly(self, pairs: list[tuple[float, int]]) -> bool:
        """Whether every pair would be taken: finite times that never go back, steps that always rise."""
        ts, steps = list(map(_FIRST, pairs)), list(map(_SECOND, pairs))
        if not math.isfinite(sum(ts)) or not all(map(operator.le, ts, itertools.islice(ts, 1, None))):
            return False
        if not all(map(operator.lt, steps, itertools.islice(steps, 1, None))):
            return False
        return not self.samples or (steps[0] > self.samples[-1][1] and ts[0] >= self.samples[-1][0])

    def _observe_orderly(self, pairs: list[tuple[float, int]]) -> None:
        """`_observe_each` of pairs that are all taken, column-wise between two refreshes of the typical interval
        (every 64 samples); the same sums in the same order, so the same state to the last bit."""
        samples, gaps, window, gap, factor = self.samples, self._gaps, self.window, self.restart_gap, self.pause_factor
        i, n = 0, len(pairs)
        if not samples:
            samples.append(pairs[0])
            i = 1
        while i < n:
            if self._typical is None or self._age + 1 >= 64:  # the next pair refreshes it: that one alone
                self._observe_each(pairs[i:i + 1])
                i += 1
                continue
            chunk = pairs[i:i + 63 - self._age]
            ts, steps = list(map(_FIRST, chunk)), list(map(_SECOND, chunk))
            last_ts, last_step = samples[-1]
            dts = list(map(operator.sub, ts, [last_ts, *ts[:-1]]))
            dss = list(map(operator.sub, steps, [last_step, *steps[:-1]]))
            typical = self._typical
            if max(dts) <= gap and (not typical or max(map(operator.truediv, dts, dss)) <= factor * typical):
                self.active_seconds = functools.reduce(operator.add, dts, self.active_seconds)
                self._age += len(chunk)
                gaps.extend(map(operator.truediv, dts, dss))
                samples.extend(chunk)
                while len(samples) > 2 and ts[-1] - samples[0][0] > window:
                    samples.popleft()
                    gaps.popleft()
            else:  # a pause or a restart in this stretch: pair by pair
                self._observe_each(chunk)
            i += len(chunk)

    def _observe_each(self, pairs: Iterable[tuple[float, int]]) -> None:
        samples, gaps, window, gap, factor = self.samples, self._gaps, self.window, self.restart_gap, self.pause_factor
        typical, age = self._typical, self._age
        isfinite = math.isfinite
        try:
            for ts, step in pairs:
                if not isfinite(ts):
                    continue
                if samples:
                    last_ts, last_step = samples[-1]
                    if step <= last_step or ts < last_ts:
                        continue
                    dt, ds = ts - last_ts, step - last_step
                    age += 1
                    if typical is None or age >= 64:  # a median per step would slow a long catch-up
                        typical, age = self.step_interval(), 0
                    if dt > gap:
                        pass
                    elif typical and dt / ds > factor * typical:
                        self.active_seconds += typical * ds
                        self.paused_seconds += dt - typical * ds
                        self.pauses.append(dt - typical * ds)
                    else:
                        self.active_seconds += dt
                    gaps.append(dt / ds)
                samples.append((ts, step))
                while len(samples) > 2 and ts - samples[0][0] > window:
                    samples.popleft()
                    gaps.popleft()
        finally:
            self._typical, self._age = typical, age

    def rewind(self, ts: float, step: int) -> None:
        """The run went back to `step` (resumed from a checkpoint): forget the samples at or above it, then
        measure on from there."""
        while self.samples and self.samples[-1][1] >= step:
            self.samples.pop()
            if self._gaps:
                self._gaps.pop()
        if self.samples and ts < self.samples[-1][0]:
            self.samples.clear()  # the resumed node's clock is behind: start the window afresh
            self._gaps.clear()
        self.observe(ts, step)

    def _columns(self) -> tuple[list[float], list[int]]:
        """(seconds, steps) between consecutive samples, column-wise at C speed (a catch-up asks every 64 steps)."""
        if len(self.samples) < 2:
            return [], []
        ts, steps = zip(*self.samples, strict=True)
        return list(map(operator.sub, ts[1:], ts)), list(map(operator.sub, steps[1:], steps))

    def step_interval(self) -> float | None:
        """Median seconds per step over the window (the run's own rhythm, for the stall threshold)."""
        # samples' steps strictly increase (observe skips the others, rewind drops those above), so every ds > 0
        if not self._gaps:
            return None
        # The health check asks every few seconds whether or not a step came: sorting the window each time was a
        # tenth of an operator's CPU at 1,000 Workloads. Kept until the samples change.
        key = self._key()
        if key == self._median_key:
            return self._median
        ordered = sorted(self._gaps)  # statistics.median's arithmetic, without its copy of a deque
        n = len(ordered)
        self._median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        self._median_key = key
        return self._median

    def _key(self) -> tuple[int, int, tuple[float, int], tuple[float, int]] | None:
        """What tells whether the samples changed: they only grow at the end, leave at the front or are cut back
        at the end (rewind), so their two ends and counts do."""
        samples = self.samples
        return (len(samples), len(self._gaps), samples[0], samples[-1]) if samples else None

    def rate(self) -> float | None:
        """Steps per second while stepping (pauses left out); kept until the samples change, as each status
        publication asks for it."""
        key = self._key()
        if key != self._rate_key:
            self._rate, self._rate_key = self._compute_rate(), key
        return self._rate

    def _compute_rate(self) -> float | None:
        dts, dss = self._columns()
        if not dts:
            return None
        per_step = list(map(operator.truediv, dts, dss))
        limit = self.pause_factor * statistics.median(per_step)
        active = [i for i, v in enumerate(per_step) if v <= limit]
        seconds = sum(map(dts.__getitem__, active))
        if seconds <= 0:
            return None
        return sum(map(dss.__getitem__, active)) / seconds

    def pause_overhead(self) -> float:
        """Recurring paused time per second of stepping so far (0.1: evaluations add 10% to the remaining time).

        Only pauses that recur count: one with another of about its length (within 2x) seen. A one-off gap (the
        job stopped and resumed, a demo run again a minute later) is no forecast of the time left: counted, it
        turned a 70-second remainder at 20 steps/s into an ETA of 19 minutes.
        """
        if self.active_seconds <= 0 or len(self.pauses) < 2:
            return 0.0
        ps = sorted(self.pauses)
        recurring = sum(p for i, p in enumerate(ps)
                        if (i > 0 and ps[i - 1] * 2 >= p) or (i + 1 < len(ps) and p * 2 >= ps[i + 1]))
        return recurring / self.active_seconds


def eta_seconds(step: int | None, total: int | None, rate: float | None, pause_overhead: float = 0.0) -> float | None:
    """Seconds until `total` at `rate` steps/s plus the run's usual share of pauses; None when unknown."""
    if step is None or not total or not rate or rate <= 0:
        return None
    return max(0.0, (total - step) / rate * (1.0 + pause_overhead))


def format_duration(seconds: float | None) -> str | None:
    """Compact human duration for status columns: 45s, 12m, 1h20m, 2d3h."""
    if seconds is None or not math.isfinite(seconds):
        return None
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m}m{s:02d}s" if m < 10 and s else f"{m}m"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h{m:02d}m" if m else f"{h}h"
    d, h = divmod(h, 24)
    return f"{d}d{h}h" if h else f"{d}d"
