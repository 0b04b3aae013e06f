"""Step rate and ETA from the source timestamps of new steps, and the run state of several sources combined."""

from __future__ import annotations

import itertools
import math
import operator
import re
import statistics
from collections import deque
from collections.abc import Iterable

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
        self.active_seconds = 0.0  # over the whole run seen: time spent stepping...
        self.paused_seconds = 0.0  # ...and in pauses (evaluations, checkpoints), for the ETA
        self._typical: float | None = None
        self._age = 0

    def observe(self, ts: float, step: int) -> None:
        if not math.isfinite(ts):
            return
        if self.samples and (step <= self.samples[-1][1] or ts < self.samples[-1][0]):
            return
        if self.samples:
            dt, ds = ts - self.samples[-1][0], step - self.samples[-1][1]
            self._age += 1
            if self._typical is None or self._age >= 64:  # a median per step would slow a long catch-up
                self._typical, self._age = self.step_interval(), 0
            typical = self._typical
            if dt > self.restart_gap:
                pass
            elif typical and dt / ds > self.pause_factor * typical:
                self.active_seconds += typical * ds
                self.paused_seconds += dt - typical * ds
            else:
                self.active_seconds += dt
        self.samples.append((ts, step))
        while len(self.samples) > 2 and self.samples[-1][0] - self.samples[0][0] > self.window:
            self.samples.popleft()

    def _intervals(self) -> list[tuple[float, int]]:
        return [(t1 - t0, s1 - s0) for (t0, s0), (t1, s1) in itertools.pairwise(self.samples)]

    def step_interval(self) -> float | None:
        """Median seconds per step over the window (the run's own rhythm, for the stall threshold)."""
        samples = self.samples
        if len(samples) < 2:
            return None
        # Column-wise (a catch-up calls this every 64 new steps): steps strictly increase, so every ds > 0.
        ts, steps = zip(*samples, strict=True)
        return statistics.median(map(operator.truediv, map(operator.sub, ts[1:], ts), map(operator.sub, steps[1:],
                                                                                              steps)))

    def rate(self) -> float | None:
        intervals = self._intervals()
        if not intervals:
            return None
        typical = statistics.median(dt / ds for dt, ds in intervals)
        active = [(dt, ds) for dt, ds in intervals if dt / ds <= self.pause_factor * typical]
        seconds = sum(dt for dt, _ in active)
        if seconds <= 0:
            return None
        return sum(ds for _, ds in active) / seconds


    def pause_overhead(self) -> float:
        """Paused time per second of stepping so far (0.1: evaluations add 10% to the remaining time)."""
        return self.paused_seconds / self.active_seconds if self.active_seconds > 0 else 0.0


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
