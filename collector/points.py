"""The data that flows from a source to the store: points, batches and run state."""

from __future__ import annotations

import enum
import itertools
import operator
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, overload

import numpy as np

# A cursor is whatever JSON-serialisable value a source needs to resume (byte offsets, a last step...).
# It is stored in the same transaction as the points it covers.
Cursor = Any


class Point(NamedTuple):
    """One observation: a metric's value at a training step, with the SOURCE's timestamp (epoch seconds).

    The named form of `RawPoint`: what code outside the hot paths builds and reads.
    """

    metric: str
    step: int
    ts: float
    value: float
    run: str = ""


# The same five fields as a plain tuple: what batches carry. Sources on hot paths (the log parsers) emit these, as
# an exact tuple is half the cost of a NamedTuple to build and CPython's garbage collector stops tracking it
# (it never untracks a tuple subclass); consumers unpack `metric, step, ts, value, run = p` and never use names.
# A Point is a RawPoint, so a source may put either in a batch.
RawPoint = tuple[str, int, float, float, str]


class RunState(enum.StrEnum):
    """What the source says about the training run itself."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Batch:
    """What one `Source.poll` returns.

    `more` says the source stopped early to keep the batch bounded and should be polled again at once
    (catch-up of a long run). `skipped` counts input the source could not use (bad records, non-numeric
    values), by reason. `notes` are human-readable facts for the source's health (e.g. "HTTP mode is sampled").
    """

    points: list[RawPoint] | Columns  # Points or plain tuples of the same fields, or columns (a catch-up)
    cursor: Cursor = None
    state: RunState | None = None
    progress: float | None = None  # 0..1, when the source knows it
    total_steps: int | None = None
    eta_seconds: float | None = None  # a source that knows its own ETA (a hosted job's status API)
    more: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # facts about the source itself, kept for status
    # run label -> what the source knows of that run (display name, state, config...); stored with the points
    # in the `runs` table, merged key by key, for the API. JSON-serialisable values only.
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (reason, message) when the source read its input without error but cannot make data of it, e.g. a log
    # whose lines match no format ("NoMetricLines"): the source's health says so instead of Healthy.
    problem: tuple[str, str] | None = None


_METRIC, _STEP, _TS, _VALUE, _RUN = (operator.itemgetter(i) for i in range(5))


def _key_column(names: list[Any], index: dict[Any, int], n: int) -> np.ndarray:
    """Each point's series index. A catch-up batch repeats one pattern (every metric of a step, step after step)
    or holds each series in one stretch (read metric by metric): both are recognised with C-level comparisons of
    the names and laid out by numpy; otherwise one lookup per point."""
    k = len(index)
    if n % k == 0 and names[:k] * (n // k) == names:  # the same k names, in the same order, again and again
        return np.tile(np.fromiter(map(index.__getitem__, names[:k]), np.intp, k), n // k)
    starts = [0, *itertools.compress(range(1, n), map(operator.ne, itertools.islice(names, 1, None), names))]
    if len(starts) == k:  # each series in one stretch
        return np.repeat(np.arange(k, dtype=np.intp), np.diff([*starts, n]))
    return np.fromiter(map(index.__getitem__, names), np.intp, n)


# A batch of at least this many points is handled as columns: below it, numpy's fixed cost per call outweighs the
# per-point work it saves (a live run's poll brings a handful of points). Sources and the collector both use it.
COLUMNS_FROM = 64


class Columns:
    """A batch's points column by column: the distinct series (run, metric) once, then per point its series'
    index, step, time and value as numpy arrays, in the source's order. What a catch-up batch is from the
    collector's admission to the writer's COPY: each stage works on whole columns (no Python object per point).

    It reads as a sequence of RawPoints too (len, iteration, indexing, slicing), for the rare paths that go point
    by point (a point the database refuses, a resumed run)."""

    __slots__ = ("key", "keys", "step", "ts", "value")

    def __init__(self, keys: list[tuple[str, str]], key: np.ndarray, step: np.ndarray, ts: np.ndarray,
                 value: np.ndarray):
        self.keys = keys  # (run, metric) of each series index; every one has at least one point
        self.key = key  # intp: index into keys
        self.step = step  # int64
        self.ts = ts  # float64, epoch seconds
        self.value = value  # float64

    @classmethod
    def from_points(cls, points: Sequence[RawPoint]) -> Columns | None:
        """The points as columns; None when one does not fit them (a step beyond int64 or not an int, a
        non-numeric time or value): such a batch goes point by point, where each bad point gets its reason."""
        n = len(points)
        runs = set(map(_RUN, points))
        if len(runs) == 1:  # one run (the usual case): the metric alone names the series, no tuple per point
            run = next(iter(runs))
            names: list[Any] = list(map(_METRIC, points))
            index = {m: i for i, m in enumerate(dict.fromkeys(names))}
            keys = [(run, m) for m in index]
        else:
            names = list(zip(map(_RUN, points), map(_METRIC, points), strict=True))
            index = {k: i for i, k in enumerate(dict.fromkeys(names))}
            keys = list(index)
        key = _key_column(names, index, n)
        step = np.array(list(map(_STEP, points)))  # not fromiter: it would truncate a float step silently
        if step.dtype != np.int64 or step.ndim != 1 or len(step) != n:
            return None
        try:
            ts = np.fromiter(map(_TS, points), np.float64, n)
            value = np.fromiter(map(_VALUE, points), np.float64, n)
        except (TypeError, ValueError, OverflowError):
            return None
        return cls(keys, key, step, ts, value)

    def __len__(self) -> int:
        return len(self.key)

    def __iter__(self) -> Iterator[RawPoint]:
        keys = self.keys
        for k, step, ts, value in zip(self.key.tolist(), self.step.tolist(), self.ts.tolist(), self.value.tolist(),
                                      strict=True):
            run, metric = keys[k]
            yield (metric, step, ts, value, run)

    @overload
    def __getitem__(self, i: int) -> RawPoint: ...

    @overload
    def __getitem__(self, i: slice) -> Columns: ...

    def __getitem__(self, i: int | slice) -> RawPoint | Columns:
        if isinstance(i, slice):
            return self.take(i)
        run, metric = self.keys[int(self.key[i])]
        return (metric, int(self.step[i]), float(self.ts[i]), float(self.value[i]), run)

    def points(self) -> list[RawPoint]:
        """The points as tuples, in order."""
        return list(self)

    def take(self, index: Any) -> Columns:
        """The points at `index` (a slice, a boolean mask or positions), with only the series they belong to."""
        key = self.key[index]
        used = np.bincount(key, minlength=len(self.keys)) > 0
        if used.all():
            keys = self.keys
        else:
            renumber = np.cumsum(used) - 1
            keys = [k for k, u in zip(self.keys, used.tolist(), strict=True) if u]
            key = renumber[key]
        return Columns(keys, key, self.step[index], self.ts[index], self.value[index])

    def with_keys(self, keys: list[tuple[str, str]]) -> Columns:
        """The same points under other names (one per series, in the same order)."""
        return Columns(keys, self.key, self.step, self.ts, self.value)
