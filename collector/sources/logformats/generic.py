"""Formats without a framework: key=value pairs, JSON lines, the user's own regexes and Katib-style filters, and
the running-count step every format falls back on when a line carries no step."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.lines import NUMBER, STEP_KEYS, TOTAL_KEYS, step_of
from trainscope.collector.sources.userregex import compile_katib, compile_patterns  # noqa: F401  (RE2: linear time)

MAX_COUNTED_NAMES = 256  # running step counters kept per stream (metrics logged without a step)
_JSON = json.JSONDecoder()
# generic pairs: key=value or key: value, single-token keys
_KV_PAIR = re.compile(r"(?<![\w.\-/\[])([A-Za-z_][\w.\-/]*)\s*[=:]\s*(" + NUMBER + r")(?![\w.])")


def _flatten(obj: dict[str, Any], prefix: str, out: list[tuple[str, float]], depth: int) -> None:
    for k, v in obj.items():
        name = prefix + k
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out.append((name, float(v)))
        elif isinstance(v, dict) and depth < 3:
            _flatten(v, name + "/", out, depth + 1)


class GenericFormats:
    """LogParser's keyvalue, json, patterns and filter parsers (a mixin: the state lives in LogParser)."""

    __slots__ = ()
    _counts: dict[str, int]
    _last_step: int
    total_steps: int | None
    patterns: list[re.Pattern[str]]
    katib: list[re.Pattern[str]]

    def _json(self, s: str, ts: float, run: str, out: list[RawPoint], auto: bool) -> int:
        try:
            obj, _ = _JSON.raw_decode(s, s.find('{"'))
        except ValueError:
            return -1
        if not isinstance(obj, dict):
            return -1
        flat: list[tuple[str, float]] = []
        step = None
        _flatten(obj, "", flat, 0)
        pairs = []
        for k, v in flat:
            if k in STEP_KEYS:
                step = int(v) if math.isfinite(v) and v == int(v) else step
            elif k in TOTAL_KEYS:
                if math.isfinite(v) and v >= 1:
                    self.total_steps = int(v)
            else:
                pairs.append((k, v))
        if step is None and auto:
            return 0  # a structured log record, not a metrics record
        if not pairs:
            return 0
        return self._emit(pairs, step, ts, run, out)

    def _keyvalue(self, s: str, ts: float, run: str, out: list[RawPoint], auto: bool) -> int:
        step = None
        pairs = []
        for k, v in _KV_PAIR.findall(s):
            if k.lower() in STEP_KEYS:
                step = step_of(v) if step is None else step
            else:
                pairs.append((k, float(v)))
        if (auto and step is None) or not pairs:
            return 0
        return self._emit(pairs, step, ts, run, out)

    def _patterns(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        n = 0
        bad = False
        for rx in self.patterns:
            for m in rx.finditer(s):
                gd = m.groupdict()
                step = step_of(gd["step"]) if gd.get("step") else None
                if "value" in gd:
                    pairs = [(gd.get("metric") or "value", gd["value"])]
                else:
                    pairs = [(k, v) for k, v in gd.items() if k != "step" and v is not None]
                good = []
                for k, v in pairs:
                    try:
                        good.append((k.strip(), float(v)))
                    except (TypeError, ValueError):
                        bad = True
                if good:
                    n += self._emit(good, step, ts, run, out)
        return n if n or not bad else -1

    def _katib(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        pairs: list[tuple[str, float]] = []
        step = None
        bad = False
        for rx in self.katib:
            for m in rx.finditer(s):
                k, v = m.group(1), m.group(2)
                try:
                    val = float(v)
                except (TypeError, ValueError):
                    bad = True
                    continue
                if k.lower() in STEP_KEYS:
                    step = step_of(v)
                else:
                    pairs.append((k.strip(), val))
        if pairs:
            return self._emit(pairs, step, ts, run, out)
        return -1 if bad else 0

    def _emit(self, pairs: list[tuple[str, float]], step: int | None, ts: float, run: str,
              out: list[RawPoint]) -> int:
        """Points of one line; without a step in the line, each metric's own running count is its step."""
        if step is not None:
            self._last_step = step
            for k, v in pairs:
                out.append((k, step, ts, v, run))
            return len(pairs)
        counts = self._counts
        n = 0
        for k, v in pairs:
            c = counts.get(k)
            if c is None:
                if len(counts) >= MAX_COUNTED_NAMES:
                    continue
                c = 0
            counts[k] = c + 1
            out.append((k, c + 1, ts, v, run))
            n += 1
        return n if n else -1
