"""DeepSpeed's engine lines, and the lines hand-written training loops print (`step 40: loss 2.3125`,
`iter 40 | loss 2.31 | lr 1e-4`, `Epoch 1 Step 40 loss=2.31`): at DeepSpeed's default log level the engine
prints nothing per step, so the loop's own line is what a DeepSpeed job's log holds."""

from __future__ import annotations

import re

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.lines import NUMBER

# the pipeline engine, the engine's log_dist (log_level info) and the ThroughputTimer
_DS_STEPS = re.compile(r"\bsteps: (\d+) loss: (\S+) iter time \(s\): (\S+) samples/sec: (\S+)")
_DS_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+), lr=\[\s*([^\],\s]+)")
_DS_TPUT = re.compile(r"\bglobal_step=(\d+),(.*)")
_DS_PAIR = re.compile(r"(\w+)=(" + NUMBER + r")(?:GB)?(?=,|\s|$)")
# a loop's step: "step 40", "Step: 40", "iter 40/1000", "iteration #40", "global_step 40"
_LOOP_STEP = re.compile(r"(?<![\w/=.-])(?:global[_ ])?(?:step|iter|iteration)\s*[:=#]?\s*(\d+)(?:\s*/\s*(\d+))?"
                        r"(?![\w.])", re.IGNORECASE)
# then "name value", "name: value" or "name=value" pairs
_LOOP_PAIR = re.compile(r"(?<![\w.\-/])([A-Za-z_][\w.\-/]*?)(?:\s*[:=]\s*|\s+)(" + NUMBER + r")(?![\w.:/])")


class DeepSpeedFormat:
    """LogParser's DeepSpeed and training-loop parsers (a mixin: the state lives in LogParser)."""

    __slots__ = ()
    _last_step: int
    total_steps: int | None

    def _deepspeed(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        if "steps: " in s:
            m = _DS_STEPS.search(s)
            if m is None:
                return -1 if " loss: " in s and "iter time" in s else 0
            step = int(m.group(1))
            pairs = (("loss", m.group(2)), ("iter time (s)", m.group(3)), ("samples/sec", m.group(4)))
        elif "skipped=" in s:
            m = _DS_STEP.search(s)
            if m is None:
                return -1 if "step=" in s and "lr=" in s else 0
            step = int(m.group(1))
            pairs = (("skipped", m.group(2)), ("lr", m.group(3)))
        elif "SamplesPerSec=" in s:
            m = _DS_TPUT.search(s)
            if m is None:
                return -1
            step = int(m.group(1))
            pairs = tuple(_DS_PAIR.findall(m.group(2)))
        else:
            return 0
        n = 0
        for k, v in pairs:
            try:
                val = float(v)
            except ValueError:
                continue
            out.append((k, step, ts, val, run))
            n += 1
        if n:
            self._last_step = step
        return n if n else -1

    def _loop(self, s: str, ts: float, run: str, out: list[RawPoint], auto: bool) -> int:
        """A hand-written loop's line: a step token, then name/value pairs; in `auto` only lines with a loss."""
        m = _LOOP_STEP.search(s)
        if m is None:
            return 0
        pairs = _LOOP_PAIR.findall(s, m.end())
        if not pairs or (auto and not any("loss" in k.lower() for k, _ in pairs)):
            return 0
        step = int(m.group(1))
        if m.group(2):
            self.total_steps = int(m.group(2)) or self.total_steps
        for k, v in pairs:
            out.append((k, step, ts, float(v), run))
        self._last_step = step
        return len(pairs)
