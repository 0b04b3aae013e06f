"""Training metrics out of log text: HF Trainer / LLaMA-Factory dicts, Megatron-LM, DeepSpeed, Lightning progress
bars, key=value pairs, JSON lines, user regexes and Katib-style filters.

Public API (also for other sources that read console logs):

- `LogParser(fmt, ...)`: a stateful parser for ONE stream (running step counts, totals live in it; `state()` /
  `LogParser(..., state=...)` carry them across restarts). `feed(line, ts, run, out)` appends points (plain
  `RawPoint` tuples); `feed_lines(lines, ts, run, out, limit)` does the same for many lines, bounded by a number
  of points, and parses runs of lines in a layout the stream printed before in bulk (exactly the points `feed`
  would give).
- `LineSplitter`: bytes chunks -> complete lines, correct across chunk boundaries, lines over a bound cut.
- `parse_text(text, fmt)`: the simple way: every (metric, value, step) in a text, in order.

Lines may carry ANSI colour codes, carriage-return progress redraws and torchrun rank prefixes; `feed` handles
all three. Each format is tried only after a cheap substring test, so lines that are not metrics cost little.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain, compress, cycle, repeat, takewhile
from typing import Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.userregex import compile_katib, compile_patterns  # noqa: F401  (RE2: linear time)

FORMATS = ("auto", "hf", "megatron", "deepspeed", "lightning", "keyvalue", "json", "none")
MAX_LINE_BYTES = 1 << 20  # a longer line is cut to this and counted, never held whole
MAX_COUNTED_NAMES = 256  # running step counters kept per stream (metrics logged without a step)
STEP_KEYS = frozenset({"step", "global_step", "global_steps", "current_steps", "_step", "iteration", "iter"})
TOTAL_KEYS = frozenset({"total_steps", "max_steps", "train_iters"})

NEAR_FULL = 256  # feed_lines: within this many points of the limit, a line is checkpointed so it can be put back
_JSON = json.JSONDecoder()
_groups = re.Match.groups
_WINDOW = 256  # lines parsed in bulk at a time: their strings, floats and points stay in the CPU's caches
_NOT_RANK = r"(?!\s*\[(?:rank|default)\d+\]:)"  # a line `feed` would take a torchrun rank prefix off
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_RANK = re.compile(r"\s*\[(?:rank|default)(\d+)\]:\s?")
_NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)"

# HF Trainer: str(dict) of floats, e.g. {'loss': 1.6858, 'grad_norm': 0.53, 'learning_rate': 2e-05, 'epoch': 0.02}
_HF_PAIR = re.compile(r"'([^'\\]{1,256})': ([^,{}]+)")
_HF_TOTAL = re.compile(r"(?:Total optimization steps|max_steps)\s*[=:]\s*([\d,]+)")
# Megatron-LM / Primus: " iteration      100/    5000 | consumed samples: 12800 | ... | lm loss: 2.345E+00 |"
_MEG_ITER = re.compile(r"iteration\s+(\d+)\s*/\s*(\d+)\s*\|")
_MEG_BROKEN = re.compile(r"\biteration\s+\d+\s*/")
_MEG_EVAL = re.compile(r"\b(validation|test) loss at (?:iteration (\d+)|[^|]*?)\s*\|")
# DeepSpeed: the pipeline engine, the engine's log_dist and the ThroughputTimer
_DS_STEPS = re.compile(r"\bsteps: (\d+) loss: (\S+) iter time \(s\): (\S+) samples/sec: (\S+)")
_DS_STEP = re.compile(r"\bstep=(\d+), skipped=(\d+), lr=\[\s*([^\],\s]+)")
_DS_TPUT = re.compile(r"\bglobal_step=(\d+),(.*)")
_DS_PAIR = re.compile(r"(\w+)=(" + _NUMBER + r")(?:GB)?(?=,|\s|$)")
# PyTorch Lightning TQDMProgressBar: "Epoch 3:  45%|####5     | 45/100 [00:05<00:06,  8.70it/s, v_num=0, loss=0.123]"
_PL_BAR = re.compile(r"\bEpoch (\d+)(?:/\d+)?:.*?(\d+)/(\d+|\?) *\[[^\]]*?(?:it/s|s/it)"
                     r"(?:,\s*([^\]]*))?\]")
_PL_PAIR = re.compile(r"([\w./-]+)=(" + _NUMBER + r")(?=,|\s|$)")
# generic pairs: key=value or key: value, single-token keys
_KV_PAIR = re.compile(r"(?<![\w.\-/\[])([A-Za-z_][\w.\-/]*)\s*[=:]\s*(" + _NUMBER + r")(?![\w.])")


def _step_of(text: str) -> int | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v == int(v) else None


class LogParser:
    """Parses one stream's lines into Points; keeps that stream's running state (see the module doc).

    `lines`, `parsed` (lines that gave points) and `failed` (lines that looked like metrics but did not parse)
    count what went through; `total_steps` is the run's length when the log printed it.
    """

    __slots__ = (
        "_counts",
        "_hf_n",
        "_hf_step",
        "_known",
        "_last_step",
        "_layouts",
        "_order",
        "_pl",
        "detected",
        "failed",
        "fmt",
        "katib",
        "lines",
        "logging_steps",
        "parsed",
        "patterns",
        "total_steps",
    )

    def __init__(self, fmt: str = "auto", *, patterns: Iterable[re.Pattern[str]] = (),
                 katib: Iterable[re.Pattern[str]] = (), logging_steps: int = 1,
                 state: dict[str, Any] | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
        self.fmt = fmt
        self.patterns = list(patterns)
        self.katib = list(katib)
        self.logging_steps = logging_steps
        self.lines = self.parsed = self.failed = 0
        self._layouts: dict[str, _Layout] = {}  # format -> the layout its last line had
        self._known: dict[tuple[str, tuple[str, ...]], _Layout] = {}
        self.restore(state)
        order = ("hf", "megatron", "deepspeed", "lightning", "json", "keyvalue")
        self._order = order if fmt == "auto" else ((fmt,) if fmt != "none" else ())

    def restore(self, state: dict[str, Any] | None) -> None:
        """Take up a stream where `state()` left it (None: the stream's start)."""
        s = state or {}
        self.detected: str | None = s.get("f")
        self.total_steps: int | None = s.get("t")
        self._hf_n: int = s.get("hn", 0)  # training dicts seen
        self._hf_step: int = s.get("hs", 0)  # step of the last training dict
        self._last_step: int = s.get("ls", 0)  # last step any step-carrying line gave (Megatron eval, kv)
        self._pl: list[int] = list(s.get("pl", (-1, 0, 0)))  # Lightning: epoch, batches before it, batches in it
        self._counts: dict[str, int] = dict(s.get("c", {}))

    def checkpoint(self) -> tuple[Any, ...]:
        """A cheap snapshot to `rollback` to (a line whose points do not fit in a batch is read again later)."""
        return (self.detected, self.total_steps, self._hf_n, self._hf_step, self._last_step, tuple(self._pl),
                dict(self._counts) if self._counts else None, self.lines, self.parsed, self.failed)

    def rollback(self, cp: tuple[Any, ...]) -> None:
        (self.detected, self.total_steps, self._hf_n, self._hf_step, self._last_step, pl, counts, self.lines,
         self.parsed, self.failed) = cp
        self._pl = list(pl)
        self._counts = counts or {}

    def state(self) -> dict[str, Any]:
        """The stream's running state, JSON-serialisable, for a cursor."""
        s: dict[str, Any] = {"hn": self._hf_n, "hs": self._hf_step, "ls": self._last_step}
        if self.detected:
            s["f"] = self.detected
        if self.total_steps:
            s["t"] = self.total_steps
        if self._pl[0] >= 0:
            s["pl"] = list(self._pl)
        if self._counts:
            s["c"] = dict(self._counts)
        return s

    # ---- many lines ----------------------------------------------------------------------------------------

    def feed_lines(self, lines: Sequence[str], ts: float | Sequence[float], run: str, out: list[RawPoint],
                   limit: int) -> tuple[int, bool]:
        """`feed` each line in order (`ts`: one time for all, or one per line) while `out` holds fewer than `limit`
        points; (lines taken, full). A line whose points would take a non-empty `out` past `limit` is not taken
        (the parser is as before it): it is read first next time. `out` full after a line: the lines after it are
        not taken either.

        Runs of lines in the layout this stream printed last (HF dicts, Megatron iteration lines) are parsed in
        bulk: one regex match per line, every value of the run through one `float` map, the Points built in one
        `extend`; the result, counts and state are exactly those of `feed` line by line."""
        one = not isinstance(ts, Sequence)
        n = len(lines)
        i = 0
        lay = self._fast()
        while i < n:
            if lay is not None:
                i += self._bulk(lay, lines, i, ts, one, run, out, limit)
                if len(out) >= limit:
                    return i, True
                if i >= n:
                    break
            # the line the run stopped at (not in the layout, or it would not fit), or any line without a layout
            start = len(out)
            cp = self.checkpoint() if start + NEAR_FULL >= limit else None
            self.feed(lines[i], ts if one else ts[i], run, out)  # type: ignore[index,arg-type]
            if len(out) >= limit:
                if len(out) > limit and cp is not None and start > 0:
                    del out[start:]
                    self.rollback(cp)
                    return i, True
                return i + 1, True
            i += 1
            lay = self._fast()
        return n, False

    def _fast(self) -> _Layout | None:
        """The layout the next line is matched against first by `feed`, when runs of it can be parsed in bulk."""
        if self.patterns or self.katib:
            return None
        order = self._order
        fmt = order[0] if len(order) == 1 else self.detected
        lay = self._layouts.get(fmt) if fmt == "hf" or fmt == "megatron" else None
        return lay if lay is not None and lay.whole is not None else None

    def _bulk(self, lay: _Layout, lines: Sequence[str], i: int, ts: float | Sequence[float], one: bool, run: str,
              out: list[RawPoint], limit: int) -> int:
        """Parse the run of lines from `i` that `feed` would read with `lay`'s regex and that fit below `limit`;
        return how many (0: line `i` is not one, or does not fit)."""
        k = len(lay.keep)
        n = len(lines)
        done = 0
        while True:
            w = min((limit - len(out)) // k, _WINDOW, n - i)
            if w <= 0:
                return done
            r = self._window(lay, lines, i, w, ts, one, run, out)
            done += r
            if r < w:
                return done
            i += r

    def _window(self, lay: _Layout, lines: Sequence[str], i: int, w: int, ts: float | Sequence[float], one: bool,
                run: str, out: list[RawPoint]) -> int:
        """`_bulk` on at most `w` lines."""
        k = len(lay.keep)
        ms = list(takewhile(bool, map(lay.whole, map(lines.__getitem__, range(i, i + w)))))
        if len(ms) < 2:  # none, or a lone line between others: the line path's own emitters, no bulk set-up
            return self._single(lay, ms[0], ts if one else ts[i], run, out) if ms else 0  # type: ignore[index]
        if lay.fmt == "hf":
            try:
                vals = list(map(float, chain.from_iterable(map(_groups, ms))))
            except ValueError:  # feed reads such a line another way: the run ends before it
                ms = ms[:_first_bad(ms, 0)]
                if not ms:
                    return 0
                vals = list(map(float, chain.from_iterable(map(_groups, ms))))
            r = len(ms)
            steps = self._hf_steps(lay, vals, r)
            if lay.mask is not None:
                vals = list(compress(vals, cycle(lay.mask)))
        else:
            flat = list(chain.from_iterable(map(_groups, ms)))
            try:
                vals = list(map(float, compress(flat, cycle(lay.mask))))  # type: ignore[arg-type]
            except ValueError:
                ms = ms[:_first_bad(ms, 2)]
                if not ms:
                    return 0
                flat = list(chain.from_iterable(map(_groups, ms)))
                vals = list(map(float, compress(flat, cycle(lay.mask))))  # type: ignore[arg-type]
            r = len(ms)
            g = k + 2
            steps = list(map(int, flat[0::g]))
            self._last_step = steps[-1]
            for total in reversed(flat[1::g]):
                if int(total):
                    self.total_steps = int(total)
                    break
        step_it = repeat(steps) if isinstance(steps, int) else chain.from_iterable(map(repeat, steps, repeat(k)))
        ts_it = repeat(ts) if one else chain.from_iterable(map(repeat, ts[i:i + r], repeat(k)))  # type: ignore[index]
        out.extend(zip(cycle(lay.keep), step_it, ts_it, vals, repeat(run)))  # plain tuples: see RawPoint
        self.lines += r
        self.parsed += r
        self.detected = lay.fmt
        return r

    def _single(self, lay: _Layout, m: re.Match[str], ts: float, run: str, out: list[RawPoint]) -> int:
        g = m.groups()
        try:
            vals = list(map(float, g if lay.fmt == "hf" else g[2:]))
        except ValueError:
            return 0
        if lay.fmt == "hf":
            self._hf_emit(lay, vals, ts, run, out)
        else:
            self._meg_emit(lay, g, vals, ts, run, out)
        self.lines += 1
        self.parsed += 1
        self.detected = lay.fmt
        return 1

    def _hf_steps(self, lay: _Layout, vals: list[float], r: int) -> int | Iterable[int]:
        """The steps of `r` HF dicts in `lay` (their values in `vals`), and the running state after them, as
        `_hf_emit` gives them one by one."""
        if lay.step_at < 0 and lay.total_at < 0:
            if not lay.train:
                return self._hf_step
            ls = self.logging_steps
            first = self._hf_n + 1
            self._hf_n += r
            self._hf_step = self._hf_n * ls
            return range(first * ls, self._hf_step + ls, ls) if ls else 0
        steps = []
        g = len(lay.names)
        for j in range(0, r * g, g):
            steps.append(self._hf_step_of(lay, vals, j))
        return steps

    def _hf_step_of(self, lay: _Layout, vals: list[float], j: int) -> int:
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
        if lay.train:
            self._hf_n += 1
            if step is None:
                step = self._hf_n * self.logging_steps
            self._hf_step = step
        elif step is None:
            step = self._hf_step
        return step

    # ---- one line ----------------------------------------------------------------------------------------

    def feed(self, line: str, ts: float, run: str, out: list[RawPoint]) -> int:
        """Parse one line (without its newline); append its points to `out`; return how many were added."""
        self.lines += 1
        if "\x1b" in line:
            line = _ANSI.sub("", line)
        if "]:" in line[:24]:
            m = _RANK.match(line)
            if m is not None:
                line = line[m.end():]
                if m.group(1) != "0":
                    run = f"{run}/rank{m.group(1)}" if run else f"rank{m.group(1)}"
        if "\r" not in line:
            n = self._segment(line, ts, run, out)
        else:  # progress-bar redraws: parse every segment, keep the last value per (metric, step)
            start = len(out)
            n = bad = 0
            for seg in line.split("\r"):
                if seg and not seg.isspace():
                    k = self._segment(seg, ts, run, out)
                    n, bad = (n + k, bad) if k >= 0 else (n, 1)
            if n == 0 and bad:
                n = -1
            elif n > 1:
                last = {(p[0], p[1]): p for p in out[start:]}
                if len(last) < len(out) - start:
                    out[start:] = last.values()
                    n = len(last)
        if n > 0:
            self.parsed += 1
        elif n < 0:
            self.failed += 1
            n = 0
        return n

    def _segment(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        """Points of one segment; -1 when it looked like a metrics line but nothing could be read."""
        n = 0
        order = self._order
        if self.detected is not None and len(order) > 1:  # the stream's own format first
            n = self._one(self.detected, s, ts, run, out)
        if n == 0:
            for fmt in order:
                if fmt != self.detected or len(order) == 1:
                    n = self._one(fmt, s, ts, run, out)
                    if n != 0:
                        if n > 0:
                            self.detected = fmt
                        break
        if n == 0 and ("optimization steps" in s or "max_steps" in s):
            m = _HF_TOTAL.search(s)
            if m is not None:
                self.total_steps = int(m.group(1).replace(",", "")) or self.total_steps
        if self.patterns or self.katib:
            bad = n < 0
            n = max(n, 0)
            for extra in (self._patterns if self.patterns else None, self._katib if self.katib else None):
                if extra is not None:
                    k = extra(s, ts, run, out)
                    n, bad = (n + k, bad) if k >= 0 else (n, True)
            return -1 if bad and not n else n
        return n

    def _one(self, fmt: str, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        auto = self.fmt == "auto"
        if fmt == "hf":
            return self._hf(s, ts, run, out, auto) if "{'" in s else 0
        if fmt == "megatron":
            return self._megatron(s, ts, run, out) if " loss" in s or "iteration" in s else 0
        if fmt == "deepspeed":
            return self._deepspeed(s, ts, run, out) if "step" in s else 0
        if fmt == "lightning":
            return self._lightning(s, ts, run, out) if "Epoch " in s else 0
        if fmt == "json":
            return self._json(s, ts, run, out, auto) if '{"' in s else 0
        if fmt == "keyvalue":
            if auto and "step" not in s and "iter" not in s:
                return 0
            return self._keyvalue(s, ts, run, out, auto)
        return 0

    # ---- formats -----------------------------------------------------------------------------------------

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
                    return self._hf_emit(lay, vals, ts, run, out)
        j = s.rfind("}")
        if auto and "'epoch'" not in s and "loss'" not in s:
            return 0  # a dict that is not a Trainer log (a config dump)
        if j < i:
            return -1  # cut or broken
        step = None
        train = False
        pairs = []
        keys = []
        for k, v in _HF_PAIR.findall(s, i, j + 1):
            if v[0] == "'" or v[-1] == "'":
                v = v.strip().strip("'")
            try:
                val = float(v)
            except ValueError:
                continue
            keys.append(k)
            if k in STEP_KEYS:
                step = _step_of(v)
                continue
            if k == "loss":
                train = True
            elif k in TOTAL_KEYS:
                total = _step_of(v)
                if total:
                    self.total_steps = total
                continue
            pairs.append((k, val))
        if not pairs:
            return -1
        if len(keys) == s.count("': ", i, j) <= 64:  # every value numeric: learn the layout
            self._learn("hf", tuple(keys))
        if train:
            self._hf_n += 1
            if step is None:
                step = self._hf_n * self.logging_steps
            self._hf_step = step
        elif step is None:
            step = self._hf_step
        for k, val in pairs:
            out.append((k, step, ts, val, run))
        return len(pairs)

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

    def _meg_emit(self, lay: _Layout, g: tuple[str, ...], vals: list[float], ts: float, run: str,
                  out: list[RawPoint]) -> int:
        step = int(g[0])
        self._last_step = step
        self.total_steps = int(g[1]) or self.total_steps
        for k, v in zip(lay.names, vals, strict=True):
            out.append((k, step, ts, v, run))
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

    def _learn(self, fmt: str, keys: tuple[str, ...]) -> None:
        """Remember a line layout as one anchored regex (a few per format; relearned when the fields change)."""
        cache = self._known
        lay = cache.get((fmt, keys))
        if lay is None:
            if len(cache) >= 32:
                cache.clear()
            lay = cache[(fmt, keys)] = _Layout(fmt, keys)
        self._layouts[fmt] = lay

    def _hf_emit(self, lay: _Layout, vals: list[float], ts: float, run: str, out: list[RawPoint]) -> int:
        step = self._hf_step_of(lay, vals, 0)
        n = 0
        for k, v in zip(lay.names, vals, strict=True):
            if k is not None:
                out.append((k, step, ts, v, run))
                n += 1
        return n

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

    def _lightning(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        if "it/s" not in s and "s/it" not in s:
            return 0
        m = _PL_BAR.search(s)
        if m is None or not m.group(4):
            return 0  # a bar without metrics in its postfix
        epoch, batch, per = int(m.group(1)), int(m.group(2)), m.group(3)
        pl = self._pl  # epoch, batches of the epochs before it, batches of it (for bars of unknown length)
        if epoch != pl[0]:
            if pl[0] >= 0:
                pl[1] += pl[2]
            pl[0], pl[2] = epoch, 0
        pl[2] = max(pl[2], batch)
        step = epoch * int(per) + batch if per != "?" else pl[1] + batch
        n = 0
        for k, v in _PL_PAIR.findall(m.group(4)):
            if k == "v_num":
                continue
            out.append((k, step, ts, float(v), run))
            n += 1
        if n:
            self._last_step = step
        return n

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
                step = _step_of(v) if step is None else step
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
                step = _step_of(gd["step"]) if gd.get("step") else None
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
                    step = _step_of(v)
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


class _Layout:
    """A learned line layout: one anchored regex whose groups are the values, and the metric name of each.

    `whole` (None when the keys hold a carriage return or an escape) fullmatches a line exactly when `feed` would
    read that line with `rx` and nothing else: no ANSI code, no carriage return, no torchrun rank prefix, `rx`
    at the first `{'` (HF) or `iteration ` (Megatron) of the line. `keep` are the names of the points of one
    line, `mask` which groups are their values (None: all).
    """

    __slots__ = ("fmt", "keep", "mask", "names", "rx", "step_at", "total_at", "train", "whole")

    def __init__(self, fmt: str, keys: tuple[str, ...]):
        self.fmt = fmt
        self.step_at = self.total_at = -1
        self.train = False
        plain = not any("\r" in k or "\x1b" in k for k in keys)
        if fmt == "hf":

            def dict_of(value: str) -> str:
                return r"\{" + ", ".join(f"'{re.escape(k)}': ({value})" for k in keys) + r"\}"

            self.rx = re.compile(dict_of(r"[^,{}]+"))
            # no rank prefix, no "{'" before the dict (atomic: it cannot end elsewhere); no \r or ESC anywhere
            # possessive `++`/`*+`: a value's class excludes what follows it, so no backtracking is ever useful
            whole = (_NOT_RANK + r"(?>[^{\r\x1b]*(?:\{(?!')[^{\r\x1b]*)*)" + dict_of(r"[^,{}\r\x1b]++")
                     + r"[^\r\x1b]*+")
            names: list[str | None] = []
            for at, k in enumerate(keys):
                if k in STEP_KEYS:
                    self.step_at = at
                elif k in TOTAL_KEYS:
                    self.total_at = at
                self.train = self.train or k == "loss"
                names.append(None if k in STEP_KEYS or k in TOTAL_KEYS else k)
            self.names = tuple(names)
            self.keep = tuple(k for k in names if k is not None)
            self.mask = None if len(self.keep) == len(names) else tuple(k is not None for k in names)
        else:  # megatron: iteration A/ B, then the fields

            def line_of(value: str, sp: str = " *") -> str:
                return (rf"iteration +(\d+){sp}/{sp}(\d+){sp}\|"
                        + "".join(f"{sp}{re.escape(k)}{sp}:{sp}({value}){sp}\\|" for k in keys))

            # Anchored at the end: text after the last field may not hold another `name: value |` field, or a
            # line that grew a field (a metric logged from some step on) would silently lose it.
            self.rx = re.compile(line_of(r"[^ |]+") + r"[^:|\r\x1b]*$")
            # no rank prefix, no "iteration " before the match (atomic, as above); no \r or ESC anywhere
            # possessive quantifiers (13% faster here): names are trimmed and a value's class excludes the space
            # and bar after it, so giving characters back could never lead to a match
            whole = (_NOT_RANK + r"(?>[^i\r\x1b]*(?:i(?!teration )[^i\r\x1b]*)*)"
                     + line_of(r"[^ |\r\x1b]++", " *+") + r"[^:|\r\x1b]*+")
            self.names = self.keep = keys
            self.mask = (False, False) + (True,) * len(keys)
        self.whole = re.compile(whole).fullmatch if plain and self.keep else None


def _first_bad(ms: list[re.Match[str]], skip: int) -> int:
    """Index of the first match whose values (groups after the first `skip`) are not all numbers."""
    for j, m in enumerate(ms):
        try:
            list(map(float, m.groups()[skip:]))
        except ValueError:
            return j
    return len(ms)


def _flatten(obj: dict[str, Any], prefix: str, out: list[tuple[str, float]], depth: int) -> None:
    for k, v in obj.items():
        name = prefix + k
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            out.append((name, float(v)))
        elif isinstance(v, dict) and depth < 3:
            _flatten(v, name + "/", out, depth + 1)


class LineSplitter:
    """Bytes chunks -> complete lines, across chunk boundaries, in bounded memory.

    `feed` returns pieces `(blob, nbytes)`: `blob` holds whole lines, each ending in b"\\n"; `nbytes` is how many
    input bytes they stand for. An unfinished line is held up to `max_line` bytes: one that grows past that keeps
    only its head (cut at its last carriage return, so a half-drawn progress bar is not read as a value); the
    rest is dropped as it arrives, the line is counted in `cut` and returned as a piece of its own whose `nbytes`
    includes what was dropped. A line that completes within the chunk in hand (with at most `max_line` held
    bytes before it) is passed on whole: it is in memory already. So memory stays within max_line + one chunk.
    """

    __slots__ = ("_dropped", "_dropping", "_tail", "cut", "max_line")

    def __init__(self, max_line: int = MAX_LINE_BYTES):
        self.max_line = max_line
        self.cut = 0
        self._tail = b""
        self._dropping = False
        self._dropped = 0

    @property
    def pending(self) -> int:
        """Bytes of an unfinished last line held (at most max_line)."""
        return len(self._tail)

    def feed(self, chunk: bytes) -> list[tuple[bytes, int]]:
        out: list[tuple[bytes, int]] = []
        if self._dropping:
            nl = chunk.find(b"\n")
            if nl < 0:
                self._dropped += len(chunk)
                return out
            out.append(self._finish_cut(nl + 1))
            chunk = chunk[nl + 1:]
        data = self._tail + chunk if self._tail else chunk
        nl = data.rfind(b"\n")
        if nl >= 0:
            out.append((data[:nl + 1], nl + 1))
            data = data[nl + 1:]
        if len(data) > self.max_line:
            self._dropping = True
            self._dropped = len(data) - self.max_line
            data = data[:self.max_line]
        self._tail = data
        return out

    def _finish_cut(self, more: int) -> tuple[bytes, int]:
        head = self._tail
        cr = head.rfind(b"\r")
        nbytes = len(head) + self._dropped + more
        self._tail, self._dropping, self._dropped = b"", False, 0
        self.cut += 1
        return (head[:cr] if cr > 0 else head[:0]) + b"\n", nbytes

    def flush(self) -> list[tuple[bytes, int]]:
        """The unfinished last line as a line (the stream has ended for good)."""
        if self._dropping:
            return [self._finish_cut(0)]
        if not self._tail:
            return []
        tail, self._tail = self._tail, b""
        return [(tail + b"\n", len(tail))]


def decode_lines(blob: bytes) -> list[str]:
    """A piece from LineSplitter -> its lines (str, no newline); bytes that are not UTF-8 become U+FFFD."""
    lines = blob.decode("utf-8", "replace").split("\n")
    lines.pop()
    return lines


def parse_text(text: str | bytes, fmt: str = "auto", *, patterns: Iterable[str] = (),
               logging_steps: int = 1) -> Iterator[tuple[str, float, int]]:
    """Every (metric, value, step) of a whole log text, in order (for tests and small console logs)."""
    if isinstance(text, str):
        text = text.encode("utf-8", "surrogatepass")
    parser = LogParser(fmt, patterns=compile_patterns(patterns), logging_steps=logging_steps)
    splitter = LineSplitter()
    out: list[RawPoint] = []
    for blob, _ in [*splitter.feed(text), *splitter.flush()]:
        for line in decode_lines(blob):
            out.clear()
            parser.feed(line, 0.0, "", out)
            for metric, step, _, value, _ in out:
                yield metric, value, step
