"""W&B history rows into points (collector/sources/wandb.py reads the rows).

A row's numeric keys become points at its `_step` and `_timestamp`; nested dicts are flattened with '/', media
(`{"_type": ...}`) and text are counted as skipped. A catch-up page holds stretches of rows logged with the same
keys: each such stretch goes into the batch as columns (PointSink.add_run), with no tuple per point; a row that
columns would get wrong (a value that is not a plain number, a missing time) sends its stretch row by row, where
each value gets its reason. Either way the points, and their order, are the same.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson

from trainscope.collector.points import Point
from trainscope.collector.schema import MetricFilter
from trainscope.collector.sources.sink import PointSink

INT_FLOAT = 2**1023  # ints below this in magnitude convert to a float on the fast paths (beyond: the general walk)
LAYOUT_ROWS = 8  # consecutive rows with the same keys from which they are read as columns
_NUMBERS = frozenset({int, float})


def loads(text: str | bytes) -> Any:
    """JSON text as Python values: orjson (3-5x faster on a history page), or the standard library where orjson
    refuses what W&B may write (bare NaN/Infinity, a number beyond the float range, a lone surrogate). One
    difference stays: an integer beyond 64 bits comes back as a float (a value is stored as float8 either way; such
    a `_step` is skipped either way, as not an integer rather than out of range)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


class RowReader:
    """Rows of history into a batch's PointSink, through the source's `keys` filter (decided once per name)."""

    def __init__(self, keys: MetricFilter):
        self.keys = keys
        self.allowed: dict[str, bool] = {}

    def read(self, rows: list[dict[str, Any]], run: str, points: PointSink, limit: int,
             skipped: dict[str, int]) -> int:
        """Put the points of `rows` (a window's, by step) into `points` while the batch has room for each whole row
        (`limit` points; a first row always fits): how many rows were read."""
        i = 0
        for a, b in layouts(rows):
            i = a + (self.add_layout(points, rows[a:b], run, limit) if b - a >= LAYOUT_ROWS else 0)
            while i < b:  # the rest row by row
                mine: dict[str, int] = {}  # counted once the row is taken (else the next poll counts it)
                row_points = self.row_points(rows[i], run, mine)
                if points and len(points) + len(row_points) > limit:
                    return i
                points.extend(row_points)
                for reason, n in mine.items():
                    skipped[reason] = skipped.get(reason, 0) + n
                i += 1
            if i < b:
                return i
        return len(rows)

    def _allows(self, name: str) -> bool:
        ok = self.allowed.get(name)
        if ok is None:
            ok = self.allowed[name] = self.keys.allows(name)
        return ok

    def add_layout(self, points: PointSink, rows: list[dict[str, Any]], run: str, limit: int) -> int:
        """Rows with the same keys (in the same order) as columns, as many as the batch has room for: how many
        were taken. 0 when a value is not a plain number or a time is missing: those go row by row, where each
        gets its reason. The points and their order are those of `row_points`."""
        every = [k for k in reversed(rows[0]) if not k.startswith("_")]
        names = [k for k in every if self._allows(k)]
        k = len(names)
        take = len(rows) if k == 0 else min(len(rows), max((limit - len(points)) // k, 0 if len(points) else 1))
        rows = rows[:take]
        ts = [r.get("_timestamp") for r in rows]
        values = [r[name] for r in rows for name in every]  # every key: a dict under an excluded name has children
        types = set(map(type, values))
        if not rows or not set(map(type, ts)) <= _NUMBERS or not types <= _NUMBERS:
            return 0
        if k < len(every):
            values = [r[name] for r in rows for name in names]
        wall = np.array(ts, np.float64)
        if not np.isfinite(wall).all():
            return 0
        if int in types and any(not -INT_FLOAT < v < INT_FLOAT for v in values if type(v) is int):
            return 0  # (a Python loop over the values only when some are ints)
        if k:
            points.add_run(run, names, [r["_step"] for r in rows], wall.tolist(), values, take)
        return take

    def row_points(self, row: dict[str, Any], run: str, skipped: dict[str, int]) -> list[Point]:
        """Every numeric key of one history row; nested dicts are flattened with '/', media and text counted."""
        step, ts = row.get("_step"), row.get("_timestamp")
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            skipped["no_timestamp"] = skipped.get("no_timestamp", 0) + 1
            return []
        out: list[Point] = []
        ts = float(ts)
        allowed = self.allowed
        # The common row holds only numbers at its top level: one pass, in the order the general walk below
        # gives (last key first). Anything else (a nested dict, media, text, a huge int) takes that walk.
        for name, value in reversed(row.items()):
            kind = type(value)
            if kind is not float and kind is not int:
                if name.startswith("_"):
                    continue
                break
            if name.startswith("_"):
                continue
            ok = allowed.get(name)
            if ok is None:
                ok = self._allows(name)
            if ok:
                if kind is int and not -INT_FLOAT < value < INT_FLOAT:
                    break
                out.append(Point(name, step, ts, float(value), run))
        else:
            return out
        out = []
        stack: list[tuple[str, Any]] = [(k, v) for k, v in row.items() if not k.startswith("_")]
        while stack:
            name, value = stack.pop()
            if isinstance(value, dict) and "_type" not in value:
                stack.extend((f"{name}/{k}", v) for k, v in value.items())
                continue
            if not self._allows(name):
                continue
            if isinstance(value, float) or (isinstance(value, int) and not isinstance(value, bool)):
                try:
                    out.append(Point(name, step, ts, float(value), run))
                except OverflowError:  # an int beyond a double's range
                    skipped["non_numeric"] = skipped.get("non_numeric", 0) + 1
            else:
                reason = "media" if isinstance(value, dict) else "non_numeric"
                skipped[reason] = skipped.get(reason, 0) + 1
        return out


def layouts(rows: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """The stretches [a, b) of consecutive rows with the same keys in the same order."""
    out = []
    a, keys = 0, None
    for i, r in enumerate(rows):
        now = tuple(r)
        if now != keys:
            if i:
                out.append((a, i))
            a, keys = i, now
    if rows:
        out.append((a, len(rows)))
    return out


def window_rows(got: list[dict[str, Any]], lo: int, hi: int, skipped: dict[str, int]) -> list[dict[str, Any]]:
    """A window's rows with an integer `_step` in [lo, hi), by step (a server that answers outside the window is
    not trusted there); rows without one are counted in `skipped`."""
    steps = [r.get("_step") for r in got]
    if steps and set(map(type, steps)) == {int} and lo <= steps[0] and steps[-1] < hi and steps == sorted(steps):
        return got  # the common page: integer steps, in order, inside the window (checked in C, not row by row)
    rows = []
    for r in got:
        step = r.get("_step")
        if isinstance(step, float) and step.is_integer():
            step = r["_step"] = int(step)  # a row written as 5.0 (JSON has one number type)
        if isinstance(step, bool) or not isinstance(step, int):
            skipped["no_step"] = skipped.get("no_step", 0) + 1
        elif lo <= step < hi:
            rows.append(r)
    rows.sort(key=lambda r: r["_step"])
    return rows
