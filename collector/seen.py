"""What a Workload's collector has seen of its metrics: the newest point per series, the Workload's step with its
time and pace, and the primary metric. Fed once per stored batch, column-wise where a batch allows it (a catch-up
brings 50,000 points at a time), point by point where it must (a resumed branch, a batch out of order).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterable
from typing import Any

import numpy as np

from trainscope.collector.points import Columns, Point, RawPoint
from trainscope.collector.progress import StepRate, detect_primary_metric

_METRIC, _STEP, _TS, _RUN = (operator.itemgetter(i) for i in (0, 1, 2, 4))
SeriesKey = tuple[str, str, str]  # (source, run, metric)


def _stretches(steps: list[int], keys: list[Any]) -> list[int] | None:
    """Start indexes of the batch's stretches of nondecreasing steps when each new stretch starts where a series
    ends and each series' points lie together; None when not."""
    nxt = itertools.islice(steps, 1, None)
    if all(map(operator.le, steps, nxt)):
        return [0]
    drops = list(itertools.compress(range(1, len(steps)), map(operator.gt, steps, itertools.islice(steps, 1, None))))
    if len(drops) >= len(steps) // 2 or any(keys[i] == keys[i - 1] for i in drops):
        return None  # out of order, or steps going down within a series
    if sum(map(operator.ne, itertools.islice(keys, 1, None), keys)) + 1 != len(set(keys)):
        return None  # a series comes back after another
    return [0, *drops]


class Seen:
    """Latest values, the Workload's step (from sources whose steps are training steps) and its pace."""

    def __init__(self, primary: str | None = None):
        self.latest: dict[SeriesKey, RawPoint] = {}
        self.max_step: int | None = None
        self.max_step_ts: float | None = None
        self.rate = StepRate()
        self.fixed_primary = primary  # spec.primaryMetric: never guessed over
        self.primary: str | None = primary

    def set_primary(self, primary: str | None) -> None:
        """A new spec's primaryMetric (None: detect it from the metrics seen)."""
        self.fixed_primary = primary
        self.primary = primary or detect_primary_metric(m for _, _, m in self.latest)

    def forget_sources(self, keep: Iterable[str]) -> None:
        """Drop the series of sources no longer in the spec."""
        keep = set(keep)
        for key in [k for k in self.latest if k[0] not in keep]:
            del self.latest[key]

    def seed(self, source: str, point: Point, counts: bool) -> None:
        """One stored latest value (after a restart); `counts`: its source's steps are training steps."""
        self.latest[(source, point.run, point.metric)] = point
        if counts and (self.max_step is None or point.step > self.max_step):
            self.max_step, self.max_step_ts = point.step, point.ts

    def seeded(self) -> None:
        if not self.fixed_primary:
            self.primary = detect_primary_metric(m for _, _, m in self.latest)

    def absorb(self, source: str, points: list[RawPoint] | Columns, counts: bool,
               newest_ts: float | None) -> float | None:
        """Take in a stored batch of `source`; returns the source's newest time.

        Column-wise when no point of the batch can start a resumed branch: the batch is one or more stretches of
        nondecreasing steps, a new stretch starting only where a series ends and series lying together (a
        catch-up or a live run in step order; SwanLab's files read metric by metric), no series goes below its
        newest step, and no new series below the Workload's step may be another run taking over. Then the newest
        point per series is its last one and the pace is fed, in order, with the points that raise the
        Workload's step. Otherwise point by point, as `absorb_each`. C-level passes over the points; Python only
        per series and stretch."""
        if not points:
            return newest_ts
        if isinstance(points, Columns):
            return self._absorb_columns(source, points, counts, newest_ts)
        runs = set(map(_RUN, points))
        one_run = next(iter(runs)) if len(runs) == 1 else None
        # series keys within the batch: the metric alone when the batch holds one run (no tuple per point)
        keys: list[Any] = (list(map(_METRIC, points)) if one_run is not None
                           else list(zip(map(_RUN, points), map(_METRIC, points), strict=True)))
        raised: list[tuple[float, int]] = []
        if counts:
            steps = list(map(_STEP, points))
            stretches = _stretches(steps, keys)
            if stretches is None or not self._no_branch(source, steps, stretches, keys, one_run, runs):
                return self.absorb_each(source, points, counts, newest_ts)
            times = list(map(_TS, points))
            raised = self._raising(steps, times, stretches)
        latest = self.latest
        new_names = False
        for k, p in dict(zip(keys, points, strict=True)).items():
            key = (source, one_run, k) if one_run is not None else (source, *k)
            if not new_names and key not in latest:
                new_names = True
            latest[key] = p  # the later observation in the source's own order is the newest (docs/store.md)
        if raised:
            self.rate.observe_many(raised)
            self.max_step_ts, self.max_step = raised[-1]
        newest = max(map(_TS, points))
        if newest_ts is None or newest > newest_ts:
            newest_ts = newest
        if new_names and not self.fixed_primary:
            self.primary = detect_primary_metric(m for _, _, m in latest)
        return newest_ts

    def _absorb_columns(self, source: str, cols: Columns, counts: bool, newest_ts: float | None) -> float | None:
        """`absorb` of columns: the same judgement with numpy passes over the columns, Python per series and per
        raised step; point by point (`absorb_each`) where `absorb` would go so."""
        n, nkeys = len(cols), len(cols.keys)
        key, steps, times = cols.key, cols.step, cols.ts
        positions = np.arange(n)
        last = np.full(nkeys, -1, np.intp)
        np.maximum.at(last, key, positions)  # each series' newest point: its last one
        raised: list[tuple[float, int]] = []
        if counts:
            drops = (np.flatnonzero(steps[1:] < steps[:-1]) + 1).tolist()
            if drops:
                changes = int(np.count_nonzero(key[1:] != key[:-1]))
                at = np.array(drops)
                if len(drops) >= n // 2 or (key[at] == key[at - 1]).any() or changes + 1 != nkeys:
                    return self.absorb_each(source, cols.points(), counts, newest_ts)  # as `_stretches` judges
            stretches = [0, *drops]
            first = np.full(nkeys, n, np.intp)
            np.minimum.at(first, key, positions)
            if not self._no_branch_columns(source, cols, stretches, first.tolist()):
                return self.absorb_each(source, cols.points(), counts, newest_ts)
            raised = self._raising_columns(steps, times, stretches)
        latest = self.latest
        new_names = False
        for (run, metric), step, ts, value in zip(cols.keys, steps[last].tolist(), times[last].tolist(),
                                                  cols.value[last].tolist(), strict=True):
            k = (source, run, metric)
            if not new_names and k not in latest:
                new_names = True
            latest[k] = (metric, step, ts, value, run)  # the later observation in the source's order is the newest
        if raised:
            self.rate.observe_many(raised)
            self.max_step_ts, self.max_step = raised[-1]
        newest = float(times.max())
        if newest_ts is None or newest > newest_ts:
            newest_ts = newest
        if new_names and not self.fixed_primary:
            self.primary = detect_primary_metric(m for _, _, m in latest)
        return newest_ts

    def _raising_columns(self, steps: np.ndarray, times: np.ndarray, stretches: list[int]) -> list[tuple[float, int]]:
        """`_raising` of columns."""
        top = self.max_step
        out: list[tuple[float, int]] = []
        ends = [*stretches[1:], len(steps)]
        for a, b in zip(stretches, ends, strict=True):
            end_step = int(steps[b - 1])
            if top is not None and end_step <= top:
                continue
            lo = a if top is None else a + int(np.searchsorted(steps[a:b], top, side="right"))
            s, t = steps[lo:b], times[lo:b]
            firsts = np.empty(len(s), bool)  # the first point of each step (equal steps lie together)
            firsts[:1] = True
            np.not_equal(s[1:], s[:-1], out=firsts[1:])
            out += zip(t[firsts].tolist(), s[firsts].tolist(), strict=True)
            top = end_step
        return out

    def _no_branch_columns(self, source: str, cols: Columns, stretches: list[int], first: list[int]) -> bool:
        """`_no_branch` of columns (`first`: each series' first position)."""
        max_step = self.max_step
        steps = cols.step
        if max_step is None or (len(stretches) == 1 and int(steps[0]) >= max_step):
            return True
        tops = itertools.accumulate((int(steps[b - 1]) for b in stretches[1:]), max, initial=max_step)
        stretch_top = dict(zip(stretches, tops, strict=True))
        latest = self.latest
        runs: set[str] | None = None
        for (run, metric), i in zip(cols.keys, first, strict=True):
            step = int(steps[i])
            cur = latest.get((source, run, metric))
            if cur is not None:
                if step < cur[1]:
                    return False
                continue
            start = stretches[bisect.bisect_right(stretches, i) - 1]
            below = max(stretch_top[start], int(steps[i - 1])) if i > start else stretch_top[start]
            if step < below:
                if runs is None:
                    runs = {key[1] for key in latest if key[0] == source} | {r for r, _ in cols.keys}
                if len(runs) > 1:
                    return False
        return True

    def _raising(self, steps: list[int], times: list[float], stretches: list[int]) -> list[tuple[float, int]]:
        """(time, step) of the points that raise the Workload's step, in order: in each nondecreasing stretch, the
        first point of each step above the highest before it."""
        top = self.max_step
        out: list[tuple[float, int]] = []
        ends = [*stretches[1:], len(steps)]
        for a, b in zip(stretches, ends, strict=True):
            if top is not None and steps[b - 1] <= top:
                continue
            lo = a if top is None else bisect.bisect_right(steps, top, a, b)
            first = dict(zip(reversed(steps[lo:b]), reversed(times[lo:b]), strict=True))  # step -> 1st time
            out += zip(map(first.__getitem__, ascending := list(reversed(first))), ascending, strict=True)
            top = steps[b - 1]
        return out

    def _no_branch(self, source: str, steps: list[int], stretches: list[int], keys: list[Any],
                   one_run: str | None, batch_runs: set[str]) -> bool:
        """Whether no series of the batch goes below its newest step and no new series below the Workload's step
        may be another run taking over (see `absorb`)."""
        max_step = self.max_step
        if max_step is None or (len(stretches) == 1 and steps[0] >= max_step):
            return True  # nothing below the Workload's step (a series' newest step is at most that)
        firsts = dict(zip(reversed(keys), range(len(keys) - 1, -1, -1), strict=True))  # series -> 1st index
        tops = itertools.accumulate((steps[b - 1] for b in stretches[1:]), max, initial=max_step)
        stretch_top = dict(zip(stretches, tops, strict=True))  # stretch start -> the step before it
        latest = self.latest
        runs: set[str] | None = None
        for k, i in firsts.items():
            run, metric = (one_run, k) if one_run is not None else k
            cur = latest.get((source, run, metric))
            if cur is not None:
                if steps[i] < cur[1]:
                    return False  # re-logs steps below its newest: a resumed branch
                continue
            start = stretches[bisect.bisect_right(stretches, i) - 1]
            below = max(stretch_top[start], steps[i - 1]) if i > start else stretch_top[start]
            if steps[i] < below:  # a new series below the Workload's step: another run taking over?
                if runs is None:
                    runs = {key[1] for key in latest if key[0] == source} | batch_runs
                if len(runs) > 1:
                    return False
        return True

    def absorb_each(self, source: str, points: list[RawPoint], counts: bool, newest_ts: float | None) -> float | None:
        """`absorb`, point by point: follows a run resumed from a checkpoint (steps going back)."""
        latest = self.latest
        max_step = self.max_step
        new_names = False
        for p in points:
            metric, step, ts, _, run = p
            key = (source, run, metric)
            cur = latest.get(key)
            if cur is None:
                new_names = True
            latest[key] = p  # the later observation in the source's own order is the newest (docs/store.md)
            if counts:
                if max_step is None or step > max_step:
                    max_step = step
                    self.max_step_ts = ts
                    self.rate.observe(ts, step)
                elif step < max_step and self._resumed(key, cur, step, ts):
                    max_step = step  # the run went back to a checkpoint: follow the resumed branch
                    self.max_step_ts = ts
                    self.rate.rewind(ts, step)
            if newest_ts is None or ts > newest_ts:
                newest_ts = ts
        self.max_step = max_step
        if new_names and not self.fixed_primary:
            self.primary = detect_primary_metric(m for _, _, m in latest)
        return newest_ts

    def _resumed(self, key: SeriesKey, cur: RawPoint | None, step: int, ts: float) -> bool:
        """Whether a point below the Workload's step starts a resumed branch: its series logged a higher step
        before (re-logged after a restart from a checkpoint), or it is the first point of a run whose metric
        another run of the same source logged, newer than the step it is below (the job's pod was replaced)."""
        if cur is not None:
            return step < cur[1]
        if self.max_step_ts is None or ts <= self.max_step_ts:
            return False
        source, run, metric = key
        return any(k[0] == source and k[2] == metric and k[1] != run for k in self.latest)
