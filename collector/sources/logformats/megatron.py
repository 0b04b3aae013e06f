"""Megatron-LM / Primus iteration and validation lines."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from trainscope.collector.points import RawPoint

if TYPE_CHECKING:
    from trainscope.collector.sources.logformats.layout import Layout

# " iteration      100/    5000 | consumed samples: 12800 | ... | lm loss: 2.345E+00 |"
_MEG_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_MEG_BROKEN = re.compile(r"\biteration\s+\d+\s*/")
_MEG_EVAL = re.compile(r"\b(validation|test) loss at (?:iteration (\d+)|[^|]*?)\s*\|")


class MegatronFormat:
    """LogParser's Megatron parser (a mixin: the state lives in LogParser)."""

    __slots__ = ()
    _last_step: int
    total_steps: int | None
    _layouts: dict[str, Layout]

    def _learn(self, fmt: str, keys: tuple[str, ...], quoted: bool = False) -> None: ...

    def _megatron(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        i = s.find("iteration ")
        m = _MEG_ITER.match(s, i) if i >= 0 else None
        if m is None:
            if "loss at " not in s:
                return -1 if i >= 0 and _MEG_BROKEN.search(s) else 0
            m = _MEG_EVAL.search(s)
            if m is None:
                return 0
            step = int(m.group(2)) if m.group(2) else self._last_step
            return self._fields(s[m.end():], m.group(1) + " ", step, ts, run, out)
        lay = self._layouts.get("megatron")
        if lay is not None:  # this stream's iteration-line layout: one regex match for every field
            lm = lay.rx.match(s, i)
            if lm is not None:
                g = lm.groups()
                try:
                    vals = list(map(float, g[2:]))
                except ValueError:
                    pass
                else:
                    return self._meg_emit(lay, g, vals, ts, run, out)
        step = int(m.group(1))
        self.total_steps = int(m.group(2)) or self.total_steps
        self._last_step = step
        rest = s[m.end():]
        n = self._fields(rest, "", step, ts, run, out)
        if n > 0 and n == rest.count("|") <= 64:  # every field numeric: learn the layout
            self._learn("megatron", tuple(p[0] for p in out[-n:]))
        return n

    def _meg_emit(self, lay: Layout, g: tuple[str, ...], vals: list[float], ts: float, run: str,
                  out: list[RawPoint]) -> int:
        step = int(g[0])
        self._last_step = step
        self.total_steps = int(g[1]) or self.total_steps
        for k, v in zip(lay.names, vals, strict=True):
            out.append((k, step, ts, v, run))  # type: ignore[arg-type]
        return len(vals)

    def _fields(self, rest: str, prefix: str, step: int, ts: float, run: str, out: list[RawPoint]) -> int:
        """Megatron's `| name: value |` fields."""
        n = 0
        for part in rest.split("|"):
            k, sep, v = part.rpartition(":")
            if not sep or not k or k.isspace():
                continue
            try:
                val = float(v)
            except ValueError:
                continue
            out.append((prefix + k.strip(), step, ts, val, run))
            n += 1
        return n if n else -1
