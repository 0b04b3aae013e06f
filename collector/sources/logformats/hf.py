"""HF Trainer / LLaMA-Factory: the printed log dicts, and the tqdm training bar that carries their step.

transformers 4.x prints `{'loss': 1.6858, 'grad_norm': 0.53, ...}` (floats, 4.x rounds the loss to 4 decimals);
5.x prints every float as a quoted `.4g` string: `{'loss': '3.906', 'grad_norm': '0.826', ...}`. Neither prints
the step. ProgressCallback writes the dict with `tqdm.write`, which clears the bar, writes the dict, and redraws
the bar at the global step the dict was logged at; so when a dict comes right after tqdm's clear, the first
training-bar frame after it carries the dict's step exactly (the frame before the dict may lag). A dict that
comes without the clear was written apart from the bar (stdout block-buffered in a pipe): its step is unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.lines import STEP_KEYS, TOTAL_KEYS, step_of

if TYPE_CHECKING:
    from trainscope.collector.sources.logformats.layout import Layout

_HF_PAIR = re.compile(r"'([^'\\]{1,256})': ([^,{}]+)")
HF_TOTAL = re.compile(r"(?:Total optimization steps|max_steps)\s*[=:]\s*([\d,]+)")
# HF's training bar has no description: "  17%|█▋        | 10/60 [00:00<00:03, 13.75it/s]"
_BAR = re.compile(r"\s*\d+%\|[^|]*\|\s*(\d+)/(\d+) \[[^\]]*(?:it/s|s/it)")
SUMMARY_KEY = "train_runtime"  # only the summary dict at the end of train() has it


class HFFormat:
    """LogParser's HF Trainer parser (a mixin: the state lives in LogParser)."""

    __slots__ = ()
    _hf_n: int
    _hf_step: int
    _bar: int
    _pend: list[Any] | None
    _clear: bool
    _layouts: dict[str, Layout]
    logging_steps: int | None
    total_steps: int | None
    nostep: int
    meta: dict[str, Any]

    def _learn(self, fmt: str, keys: tuple[str, ...], quoted: bool = False) -> None: ...

    def _ended(self, state: str, why: str) -> None: ...

    def _hf(self, s: str, ts: float, run: str, out: list[RawPoint], auto: bool) -> int:
        i = s.find("{'")
        lay = self._layouts.get("hf")
        if lay is not None:  # the dict layout this stream printed last: one regex match, no per-pair work
            m = lay.rx.match(s, i)
            if m is not None:
                try:
                    vals = list(map(float, m.groups()))
                except ValueError:
                    pass
                else:
                    if self._bar < 0:
                        return self._hf_emit(lay, vals, ts, run, out)
                    return self._hf_dict([(k, v) for k, v in zip(lay.names, vals, strict=True) if k is not None],
                                         None, lay.train, SUMMARY_KEY in lay.names, ts, run, out)
        j = s.rfind("}")
        if auto and "'epoch'" not in s and "loss'" not in s and SUMMARY_KEY not in s:
            return 0  # a dict that is not a Trainer log (a config dump)
        if j < i:
            return -1  # cut or broken
        step = None
        train = summary = False
        quoted = 0
        pairs = []
        keys = []
        for k, v in _HF_PAIR.findall(s, i, j + 1):
            if v[0] == "'" or v[-1] == "'":
                v = v.strip().strip("'")
                quoted += 1
            try:
                val = float(v)
            except ValueError:
                continue
            keys.append(k)
            if k in STEP_KEYS:
                step = step_of(v)
                continue
            if k == "loss":
                train = True
            elif k == SUMMARY_KEY:
                summary = True
            elif k in TOTAL_KEYS:
                total = step_of(v)
                if total:
                    self.total_steps = total
                continue
            pairs.append((k, val))
        if not pairs:
            return -1
        if len(keys) == s.count("': ", i, j) <= 64 and quoted in (0, len(keys)):  # all numeric: learn the layout
            self._learn("hf", tuple(keys), quoted > 0)
        if quoted:
            self.meta.setdefault("precision", "4 significant digits (transformers 5 prints values with .4g)")
        return self._hf_dict(pairs, step, train, summary, ts, run, out)

    def _hf_dict(self, pairs: list[tuple[str, float]], step: int | None, train: bool, summary: bool, ts: float,
                 run: str, out: list[RawPoint]) -> int:
        """Place one dict's values at their step: its own step field, the training bar's next frame, or (a log
        without a bar) the running count of training dicts x loggingSteps."""
        if self._pend is not None:  # the dict before this one never got a bar frame
            self._hf_unplaced(out)
        if summary:
            self._ended("finished", "HF Trainer printed its train summary")
            if step is None:  # train() ends at the bar's last frame
                step = max(self._bar, self._hf_step)
        if step is None and self._bar >= 0:
            if self._clear:  # written by tqdm.write: the next training-bar frame is its step
                self._pend = [train, ts, run, pairs]
                return len(pairs)
            self._pend = [train, ts, run, pairs]
            return self._hf_unplaced(out)
        step = self._hf_place(train, step)
        for k, val in pairs:
            out.append((k, step, ts, val, run))
        return len(pairs)

    def _hf_place(self, train: bool, step: int | None) -> int:
        """A dict's step: its own, else (a training dict) the running count of training dicts times loggingSteps,
        else (an eval dict) the last training step; a training dict moves the running step."""
        if train:
            self._hf_n += 1
            if step is None:
                step = self._hf_n * (self.logging_steps or 1)
            self._hf_step = step
        elif step is None:
            step = self._hf_step
        return step

    def _hf_unplaced(self, out: list[RawPoint]) -> int:
        """The pending dict without a bar frame of its own: placed by loggingSteps when the user set it, else
        skipped and counted (a guessed step would be a wrong one)."""
        train, ts, run, pairs = self._pend  # type: ignore[misc]
        self._pend = None
        if train:
            self._hf_n += 1
        if self.logging_steps is None:
            self.nostep += 1
            return 0
        step = self._hf_n * self.logging_steps if train else self._hf_step
        if train:
            self._hf_step = step
        for k, val in pairs:
            out.append((k, step, ts, val, run))
        return len(pairs)

    def _hf_bar(self, s: str, out: list[RawPoint]) -> bool:
        """A training-bar frame: it places a pending dict at its step and gives the run's length."""
        m = _BAR.match(s)
        if m is None:
            return False
        n, total = int(m.group(1)), int(m.group(2))
        if self.total_steps and total != self.total_steps:
            return True  # another bar (an evaluation's, drawn without nesting): not the training bar
        self._bar = n
        pend = self._pend
        if pend is not None:
            self._pend = None
            train, ts, run, pairs = pend
            if train:
                self._hf_n += 1
                self._hf_step = n
                self.total_steps = total or self.total_steps
            for k, val in pairs:
                out.append((k, n, ts, val, run))
        return True

    def _hf_emit(self, lay: Layout, vals: list[float], ts: float, run: str, out: list[RawPoint]) -> int:
        step = self._hf_step_of(lay, vals, 0)
        n = 0
        for k, v in zip(lay.names, vals, strict=True):
            if k is not None:
                out.append((k, step, ts, v, run))
                n += 1
        return n

    def _hf_steps(self, lay: Layout, vals: list[float], r: int) -> int | Iterable[int]:
        """The steps of `r` HF dicts in `lay` (their values in `vals`), and the running state after them, as
        `_hf_emit` gives them one by one."""
        if lay.step_at < 0 and lay.total_at < 0:
            if not lay.train:
                return self._hf_step
            ls = self.logging_steps or 1
            first = self._hf_n + 1
            self._hf_n += r
            self._hf_step = self._hf_n * ls
            return range(first * ls, self._hf_step + ls, ls)
        steps = []
        g = len(lay.names)
        for j in range(0, r * g, g):
            steps.append(self._hf_step_of(lay, vals, j))
        return steps

    def _hf_step_of(self, lay: Layout, vals: list[float], j: int) -> int:
        """The step of the HF dict whose values start at vals[j] (its own step field, else the running count),
        updating the running state and total steps as the dict says."""
        step: int | None = None
        if lay.step_at >= 0:
            v = vals[j + lay.step_at]
            step = int(v) if math.isfinite(v) and v == int(v) else None
        if lay.total_at >= 0:
            v = vals[j + lay.total_at]
            if math.isfinite(v) and v >= 1:
                self.total_steps = int(v)
        step = self._hf_place(lay.train, step)
        if SUMMARY_KEY in lay.names:
            self._ended("finished", "HF Trainer printed its train summary")
        return step
