"""PyTorch Lightning's progress bars: TQDMProgressBar and RichProgressBar, in a pipe or a terminal.

Both count batches within an epoch from 1 and show the metrics logged with `prog_bar=True` after each batch;
Lightning's own loggers (CSV, TensorBoard) count global steps from 0. So a frame at batch n (of N per epoch) of
epoch e holds the values of global step e x N + n - 1; a frame at batch 0 holds nothing new. Validation values
stay in the bar after the validation that produced them: they are taken once, when they change, at the step of
the epoch's last batch (Lightning validates at the end of each epoch by default).

TQDM prints `Epoch 3:  45%|####5 | 45/100 [00:05<00:06, 8.70it/s, v_num=0, train_loss=0.123]` (values with
tqdm's 3 significant digits, padded: `1.780`); Rich prints `Epoch 2/2 ━━━━ 8/8 0:00:00 • 0:00:00 142.64it/s
v_num: 0.000 train_loss: 0.689`, metrics that do not fit wrapped onto the next lines, values with `.3f`. In a
pipe Rich draws only its final frame.
"""

from __future__ import annotations

import re
from typing import Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.lines import NUMBER

_PL_BAR = re.compile(r"\bEpoch (\d+)(?:/\d+)?:.*?(\d+)/(\d+|\?) *\[[^\]]*?(?:it/s|s/it)"
                     r"(?:,\s*([^\]]*))?\]")
_PL_PAIR = re.compile(r"([\w./-]+)=(" + NUMBER + r")(?=,|\s|$)")
_RICH_BAR = re.compile(r"\s*Epoch (\d+)/(\d+|\?)\s.*?\s(\d+)/(\d+|\?)\s+[-\d:]+\s+•\s+[-\d:]+\s*"
                       r"(?:[\d.]+(?:it/s|s/it))?\s*(.*)$")
_RICH_PAIR = re.compile(r"([\w./-]+): (" + NUMBER + r")(?=\s|$)")
_RICH_MORE = re.compile(r"\s{8,}(?:[\w./-]+: " + NUMBER + r"\s*)+$")
_VAL_LIKE = re.compile(r"(^|[/_.-])(val|valid|validation|test|eval)($|[/_.-])", re.IGNORECASE)
TQDM_PRECISION = "3 significant digits (Lightning's TQDM bar)"
RICH_PRECISION = "3 decimals (Lightning's Rich bar)"


class LightningFormat:
    """LogParser's Lightning parser (a mixin: the state lives in LogParser)."""

    __slots__ = ()
    _last_step: int
    _pl: list[int]
    _plv: dict[str, str]
    _rich: list[int] | None
    total_steps: int | None
    meta: dict[str, Any]

    def _lightning(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        if "it/s" not in s and "s/it" not in s:
            return 0
        m = _PL_BAR.search(s)
        if m is None:
            return 0
        postfix = m.group(4)
        self.meta["precision"] = TQDM_PRECISION
        return self._pl_frame(int(m.group(1)), int(m.group(2)), m.group(3), None,
                              _PL_PAIR.findall(postfix) if postfix else (), ts, run, out)

    def _rich_bar(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        m = _RICH_BAR.match(s)
        if m is None:
            return 0
        self.meta["precision"] = RICH_PRECISION
        epoch, n, per = int(m.group(1)), int(m.group(3)), m.group(4)
        last = m.group(2)
        self._rich = [epoch, n, int(per) if per != "?" else -1]
        return self._pl_frame(epoch, n, per, int(last) if last != "?" else None, _RICH_PAIR.findall(m.group(5)),
                              ts, run, out)

    def _rich_more(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        """Metrics Rich wrapped onto the lines below its frame: they belong to that frame's step."""
        frame = self._rich
        if frame is None or _RICH_MORE.match(s) is None:
            self._rich = None
            return 0
        epoch, n, per = frame
        return self._pl_frame(epoch, n, str(per) if per >= 0 else "?", None, _RICH_PAIR.findall(s), ts, run, out,
                              bookkeep=False)

    def _pl_frame(self, epoch: int, n: int, per: str, last_epoch: int | None, pairs: Any, ts: float, run: str,
                  out: list[RawPoint], bookkeep: bool = True) -> int:
        pl = self._pl  # epoch, batches of the epochs before it, batches of it (for bars of unknown length)
        if bookkeep:
            if epoch != pl[0]:
                if pl[0] >= 0:
                    pl[1] += pl[2]
                pl[0], pl[2] = epoch, 0
            pl[2] = max(pl[2], n)
            meta = self.meta
            meta["epochs"] = max(meta.get("epochs", 0), epoch + 1)
            if per != "?":
                meta["batchesPerEpoch"] = int(per)
                if last_epoch is not None:  # Rich shows the last epoch: the run's length
                    self.total_steps = (last_epoch + 1) * int(per)
        base = epoch * int(per) if per != "?" else pl[1]
        step = base + n - 1  # batch 0: a frame before the epoch's first batch, no training value of its own
        end_prev = base - 1  # the last step of the epoch before
        plv = self._plv
        k_out = 0
        for k, v in pairs:
            if k == "v_num":
                continue
            at = step
            if n == 0 and not _VAL_LIKE.search(k):
                continue  # a reset frame: the values of the epoch before, at no new step
            if _VAL_LIKE.search(k):
                if plv.get(k) == v:
                    continue  # the bar still shows the last validation's value
                plv[k] = v
                if (per == "?" or n < int(per)) and end_prev >= 0:
                    at = end_prev  # first shown after the epoch rolled over: computed at the end of the last one
            if at < 0:
                continue
            out.append((k, at, ts, float(v), run))
            k_out += 1
        if k_out:
            self._last_step = max(step, 0)
        return k_out
