"""Where a catch-up puts its points: runs of records of one layout as columns, the other records as tuples.

Two sinks: `PointSink` for the log parsers and the W&B source, `ColumnSink` for the event-file reader.

A log parser (or the W&B source) writes into a plain list of RawPoints; a `PointSink` is such a list (appends and
extends stay C calls) that also takes a run of records of one layout, read in bulk, as arrays (`add_run`): a log's
lines of one format, a W&B page's rows with the same keys. So a catch-up builds no tuple per point from the source
to the writer's COPY. `result()` gives the batch's points in the order they were read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain, cycle, repeat
from typing import Any, SupportsIndex

import numpy as np

from trainscope.collector.points import COLUMNS_FROM, Columns, Point, RawPoint


class PointSink(list):  # type: ignore[type-arg]
    """A list of the points parsed one by one, which also takes runs of lines parsed in bulk as columns (`add_run`).

    Until the first run it is a plain list (no Python-level method on the parser's per-line path); from then on it
    is a `_Chunked` sink: the runs and the tuples before them are kept as chunks, the list holds the tuples since.
    """

    __slots__ = ("_chunks", "_done")

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[Columns | list[RawPoint]] = []
        self._done = 0  # points in _chunks

    def _flush(self) -> None:
        n = list.__len__(self)
        if n:
            pts = list.__getitem__(self, slice(None))
            list.clear(self)
            self._chunks.append(Columns.from_points(pts) or pts)  # None: a point no column holds (a huge step)
            self._done += n

    def add_run(self, run: str, names: Sequence[str], steps: int | Sequence[int], ts: float | Sequence[float],
                values: list[float], lines: int) -> None:
        """`lines` lines of one layout: metric names[j] of line i has values[i * k + j] (k = len(names)), at step
        steps (one for all, or one per line) and time ts (one for all, or one per line)."""
        k = len(names)
        n = lines * k
        try:
            if len(set(names)) != k:
                raise ValueError("a metric twice in one line")
            if isinstance(steps, int):
                step = np.full(n, steps, np.int64)
            elif isinstance(steps, range):  # HF dicts without a step: every loggingSteps
                step = np.repeat(np.arange(steps.start, steps.stop, steps.step, dtype=np.int64), k)
            else:
                step = np.repeat(np.array(steps, np.int64), k)
            if len(step) != n:
                raise ValueError("steps do not match the lines")
            wall = np.full(n, ts, np.float64) if isinstance(ts, float | int) else \
                np.repeat(np.array(ts, np.float64), k)
            value = np.array(values, np.float64)
        except (ValueError, OverflowError, TypeError):  # as tuples: the collector gives each bad point its reason
            step_it = repeat(steps) if isinstance(steps, int) else chain.from_iterable(map(repeat, steps, repeat(k)))
            ts_it = repeat(ts) if isinstance(ts, float | int) else chain.from_iterable(map(repeat, ts, repeat(k)))
            self.extend(zip(cycle(names), step_it, ts_it, values, repeat(run)))
            return
        self._flush()
        self.__class__ = _Chunked  # len() and slices now count the chunks
        key = np.tile(np.arange(k, dtype=np.intp), lines)
        self._chunks.append(Columns([(run, m) for m in names], key, step, wall, value))
        self._done += n

    def result(self) -> list[RawPoint] | Columns:
        """Every point in order: columns when every chunk is columns and there are enough points, else tuples."""
        if not self._chunks or len(self) < COLUMNS_FROM:
            return [*chain.from_iterable(self._chunks), *list.__iter__(self)]
        self._flush()
        chunks = self._chunks
        if not all(isinstance(c, Columns) for c in chunks):
            return list(chain.from_iterable(chunks))
        if len(chunks) == 1:
            return chunks[0]  # type: ignore[return-value]
        index: dict[tuple[str, str], int] = {}
        keys = []
        for c in chunks:
            lut = np.fromiter((index.setdefault(k, len(index)) for k in c.keys), np.intp, len(c.keys))  # type: ignore[union-attr]
            keys.append(lut[c.key])  # type: ignore[union-attr]
        return Columns(list(index), np.concatenate(keys), *(np.concatenate([getattr(c, f) for c in chunks])
                                                           for f in ("step", "ts", "value")))


class _Chunked(PointSink):
    """A sink holding chunks: len() counts every point. Slices with a non-negative start are positions in the whole
    sink and must fall among the tuples not yet chunked (the parser only slices the points of the line it is
    parsing); negative ones are relative to the end, as in a list."""

    __slots__ = ()

    def __len__(self) -> int:
        return self._done + list.__len__(self)

    def _local(self, i: Any) -> Any:
        if isinstance(i, slice):
            start = i.start
            if start is not None and start >= 0:
                assert start >= self._done, "a slice of points already chunked"
                start -= self._done
            stop = i.stop
            if stop is not None and stop >= 0:
                stop -= self._done
            return slice(start, stop, i.step)
        if isinstance(i, SupportsIndex) and int(i) >= 0:
            return int(i) - self._done
        return i

    def __getitem__(self, i: Any) -> Any:
        return list.__getitem__(self, self._local(i))

    def __setitem__(self, i: Any, value: Any) -> None:
        list.__setitem__(self, self._local(i), value)

    def __delitem__(self, i: Any) -> None:
        list.__delitem__(self, self._local(i))


class ColumnSink:
    """Where scan() and read_file() can put scalars column by column instead of as a list of Points: a catch-up
    then builds no Python object per point. It behaves as the list `out` does for the scanner (len, append,
    extend: events decoded one by one still arrive as Points) and takes decoded blocks as arrays (add).

    columns() gives the series (run, tag) once and per point its series index, step, wall time and value.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], int] = {}
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._points: list[Point] = []  # points that came one by one, not in a chunk yet (kept in order)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def append(self, point: Point) -> None:
        self._points.append(point)
        self._n += 1

    def extend(self, points: Iterable[Point]) -> None:
        before = len(self._points)
        self._points.extend(points)
        self._n += len(self._points) - before

    def add(self, run: str, names: list[str], tid: np.ndarray, step: np.ndarray, wall: np.ndarray,
            value: np.ndarray) -> None:
        """Points of one run whose tags are names[tid[i]]."""
        if not len(tid):
            return
        self._flush()
        used = np.unique(tid)
        lut = np.zeros(int(used[-1]) + 1, np.intp)
        lut[used] = [self._key(run, names[i]) for i in used.tolist()]
        self._chunks.append((lut[tid], step, wall, value))
        self._n += len(tid)

    def _key(self, run: str, tag: str) -> int:
        k = self._keys.get((run, tag))
        if k is None:
            k = self._keys[(run, tag)] = len(self._keys)
        return k

    def _flush(self) -> None:
        if self._points:
            pts, self._points = self._points, []
            self._chunks.append((np.array([self._key(p[4], p[0]) for p in pts], np.intp),
                                 np.array([p[1] for p in pts], np.int64), np.array([p[2] for p in pts], np.float64),
                                 np.array([p[3] for p in pts], np.float64)))

    def columns(self) -> tuple[list[tuple[str, str]], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(series as (run, tag), per point: series index, step int64, wall time float64, value float64)."""
        self._flush()
        if not self._chunks:
            return [], np.zeros(0, np.intp), np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        key, step, wall, value = (np.concatenate(c) for c in zip(*self._chunks, strict=True))
        return list(self._keys), key, step, wall, value

    def points(self) -> list[Point]:
        """The same points as Points, in order (tests, and consumers that need them one by one)."""
        return list(map(Point._make, Columns(*self.columns())))
