"""What a Workload's collector has seen of its metrics: the newest point per series, the Workload's step with its
time and pace, and the primary metric. Fed once per stored batch, column-wise where a batch allows it (a catch-up
brings 50,000 points at a time), point by point where it must (a resumed branch, a batch out of order).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Iterable

from trainscope.collector.points import Point, RawPoint
from trainscope.collector.progress import StepRate, detect_primary_metric

_METRIC, _STEP, _TS, _RUN = (operator.itemgetter(i) for i in (0, 1, 2, 4))
SeriesKey = tuple[str, str, str]  # (source, run, metric)


def _nondecreasing(values: list[int]) -> bool:
    return all(map(operator.le, values, itertools.islice(values, 1, None)))


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

    def absorb(self, source: str, points: list[RawPoint], counts: bool, newest_ts: float | None) -> float | None:
        """Take in a stored batch of `source`; returns the source's newest time. Column-wise when the batch's
        steps never decrease from the Workload's step on (a catch-up, a live run): no point can then start a
        resumed branch, so the newest point per series is its last one and each new step's first point feeds
        the pace. Otherwise point by point."""
        if not points:
            return newest_ts
        steps = list(map(_STEP, points))
        max_step = self.max_step
        if not _nondecreasing(steps) or (counts and max_step is not None and steps[0] < max_step):
            return self.absorb_each(source, points, counts, newest_ts)
        times = list(map(_TS, points))
        latest = self.latest
        last = dict(zip(zip(map(_RUN, points), map(_METRIC, points), strict=True), points, strict=True))
        new_names = False
        for (run, metric), p in last.items():
            key = (source, run, metric)
            if not new_names and key not in latest:
                new_names = True
            latest[key] = p  # the later observation in the source's own order is the newest (docs/store.md)
        if counts and (max_step is None or steps[-1] > max_step):
            first = dict(zip(reversed(steps), reversed(times), strict=True))  # step -> time of its 1st point
            ascending = list(reversed(first))  # inserted in descending order
            if max_step is not None:
                ascending = ascending[bisect.bisect_right(ascending, max_step):]
            self.rate.observe_many(zip(map(first.__getitem__, ascending), ascending, strict=True))
            max_step = ascending[-1]
            self.max_step, self.max_step_ts = max_step, first[max_step]
        newest = max(times)
        if newest_ts is None or newest > newest_ts:
            newest_ts = newest
        if new_names and not self.fixed_primary:
            self.primary = detect_primary_metric(m for _, _, m in latest)
        return newest_ts

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
