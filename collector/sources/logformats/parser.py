"""LogParser: one stream's lines -> points, with its running state (steps, pending dicts, the run's end)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from itertools import chain, compress, cycle, repeat, takewhile
from typing import Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.deepspeed import DeepSpeedFormat
from trainscope.collector.sources.logformats.generic import GenericFormats
from trainscope.collector.sources.logformats.hf import HF_TOTAL, HFFormat
from trainscope.collector.sources.logformats.layout import Layout, first_bad
from trainscope.collector.sources.logformats.lightning import LightningFormat
from trainscope.collector.sources.logformats.lines import ANSI, NESTED, RANK, drop_nested_frames
from trainscope.collector.sources.logformats.megatron import MegatronFormat
from trainscope.collector.sources.logformats.registry import FINISH_LINES, FORMATS, PARSERS
from trainscope.collector.sources.sink import PointSink

NEAR_FULL = 256  # feed_lines: within this many points of the limit, a line is checkpointed so it can be put back
_groups = re.Match.groups
_WINDOW = 256  # lines parsed in bulk at a time: their strings, floats and points stay in the CPU's caches
_TRACEBACK = "Traceback (most recent call last):"
_TB_GLUE = ("During handling of the above exception", "The above exception was the direct cause", _TRACEBACK)
MAX_MESSAGE = 300


class LogParser(HFFormat, MegatronFormat, DeepSpeedFormat, LightningFormat, GenericFormats):
    """Parses one stream's lines into points; keeps that stream's running state.

    `lines`, `parsed` (lines that gave points), `failed` (lines that looked like metrics but did not parse) and
    `nostep` (HF dicts whose step could not be known) count what went through; `total_steps` is the run's length
    when the log printed it; `end` is "finished" or "failed" once the log shows the run's end (`end_message`
    says how); `meta` holds what the log says of the run (epochs, batches per epoch, printed precision).
    """

    __slots__ = (
        "_bar",
        "_clear",
        "_counts",
        "_hf_n",
        "_hf_on",
        "_hf_step",
        "_known",
        "_last_step",
        "_layouts",
        "_order",
        "_pend",
        "_pl",
        "_plv",
        "_rich",
        "_seen",
        "_tb",
        "detected",
        "end",
        "end_message",
        "failed",
        "fmt",
        "katib",
        "lines",
        "logging_steps",
        "meta",
        "nostep",
        "parsed",
        "patterns",
        "total_steps",
    )

    def __init__(self, fmt: str = "auto", *, patterns: Iterable[re.Pattern[str]] = (),
                 katib: Iterable[re.Pattern[str]] = (), logging_steps: int | None = None,
                 state: dict[str, Any] | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (one of {', '.join(FORMATS)})")
        self.fmt = fmt
        self.patterns = list(patterns)
        self.katib = list(katib)
        self.logging_steps = logging_steps  # None: not set by the user
        self.lines = self.parsed = self.failed = self.nostep = 0
        self._clear = False
        self._layouts: dict[str, Layout] = {}  # format -> the layout its last line had
        self._known: dict[tuple[str, tuple[str, ...], bool], Layout] = {}
        self._order = PARSERS[fmt]
        self._hf_on = "hf" in self._order
        self.restore(state)

    def restore(self, state: dict[str, Any] | None) -> None:
        """Take up a stream where `state()` left it (None: the stream's start)."""
        s = state or {}
        self.detected: str | None = s.get("f") if s.get("f") in self._order else None
        self.total_steps: int | None = s.get("t")
        self._hf_n: int = s.get("hn", 0)  # training dicts seen
        self._hf_step: int = s.get("hs", 0)  # step of the last training dict
        self._last_step: int = s.get("ls", 0)  # last step any step-carrying line gave (Megatron eval, kv)
        self._pl: list[int] = list(s.get("pl", (-1, 0, 0)))  # Lightning: epoch, batches before it, batches in it
        self._counts: dict[str, int] = dict(s.get("c", {}))
        self._bar: int = s.get("b", -1)  # HF: the training bar's last position (-1: no bar in this stream)
        pend = s.get("hp")  # HF: a dict waiting for the bar frame that carries its step
        self._pend: list[Any] | None = [pend[0], pend[1], pend[2], [tuple(p) for p in pend[3]]] if pend else None
        self._plv: dict[str, str] = dict(s.get("pv", {}))  # Lightning: validation values as last shown
        rich = s.get("rf")
        self._rich: list[int] | None = list(rich) if rich else None  # Rich: the frame wrapped lines belong to
        self._tb: str | None = s.get("tb")  # inside a traceback: the run label it is printed under
        self.end: str | None = s.get("e")
        self.end_message: str | None = s.get("em")
        self.meta: dict[str, Any] = dict(s.get("m", {}))
        self._seen = (s.get("L", 0), s.get("P", 0))  # lines and lines with points before this object's counts

    def state(self) -> dict[str, Any]:
        """The stream's running state, JSON-serialisable, for a cursor."""
        s: dict[str, Any] = {"hn": self._hf_n, "hs": self._hf_step, "ls": self._last_step}
        for key, value in (("f", self.detected), ("t", self.total_steps), ("c", dict(self._counts)),
                           ("hp", self._pend and [self._pend[0], self._pend[1], self._pend[2],
                                                  [list(p) for p in self._pend[3]]]),
                           ("pv", dict(self._plv)), ("rf", self._rich and list(self._rich)), ("tb", self._tb),
                           ("e", self.end), ("em", self.end_message), ("m", dict(self.meta))):
            if value:
                s[key] = value
        if self._pl[0] >= 0:
            s["pl"] = list(self._pl)
        if self._bar >= 0:
            s["b"] = self._bar
        s["L"], s["P"] = self._seen[0] + self.lines, self._seen[1] + self.parsed
        return s

    def read_so_far(self) -> tuple[int, int]:
        """(lines, lines that gave points) of the stream since its start, across restarts."""
        return self._seen[0] + self.lines, self._seen[1] + self.parsed

    def checkpoint(self) -> tuple[Any, ...]:
        """A snapshot to `rollback` to (a line whose points do not fit in a batch is read again later)."""
        return self.state(), self.lines, self.parsed, self.failed, self.nostep

    def rollback(self, cp: tuple[Any, ...]) -> None:
        state, self.lines, self.parsed, self.failed, self.nostep = cp
        self.restore(state)
        self._seen = (state["L"] - self.lines, state["P"] - self.parsed)

    def _ended(self, state: str, why: str) -> None:
        self.end, self.end_message = state, why[:MAX_MESSAGE]

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

    def _fast(self) -> Layout | None:
        """The layout the next line is matched against first by `feed`, when runs of it can be parsed in bulk."""
        if self.patterns or self.katib or self._tb is not None:
            return None
        order = self._order
        fmt = order[0] if len(order) == 1 else self.detected
        if fmt == "hf":
            if self._bar >= 0 or self._pend is not None:  # dicts take their steps from the bar: line by line
                return None
        elif fmt != "megatron":
            return None
        lay = self._layouts.get(fmt)  # type: ignore[arg-type]
        return lay if lay is not None and lay.whole is not None else None

    def _bulk(self, lay: Layout, lines: Sequence[str], i: int, ts: float | Sequence[float], one: bool, run: str,
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

    def _window(self, lay: Layout, lines: Sequence[str], i: int, w: int, ts: float | Sequence[float], one: bool,
                run: str, out: list[RawPoint]) -> int:
        """`_bulk` on at most `w` lines."""
        k = len(lay.keep)
        ms = list(takewhile(bool, map(lay.whole, map(lines.__getitem__, range(i, i + w)))))  # type: ignore[arg-type]
        if len(ms) < 2:  # none, or a lone line between others: the line path's own emitters, no bulk set-up
            return self._single(lay, ms[0], ts if one else ts[i], run, out) if ms else 0  # type: ignore[index]
        if lay.fmt == "hf":
            try:
                vals = list(map(float, chain.from_iterable(map(_groups, ms))))
            except ValueError:  # feed reads such a line another way: the run ends before it
                ms = ms[:first_bad(ms, 0)]
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
                ms = ms[:first_bad(ms, 2)]
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
        if isinstance(out, PointSink):  # a catch-up: the run as columns, no tuple per point
            out.add_run(run, lay.keep, steps, ts if one else ts[i:i + r], vals, r)  # type: ignore[arg-type,index]
        else:
            step_it = repeat(steps) if isinstance(steps, int) else chain.from_iterable(map(repeat, steps, repeat(k)))
            ts_it = repeat(ts) if one else chain.from_iterable(map(repeat, ts[i:i + r], repeat(k)))  # type: ignore
            out.extend(zip(cycle(lay.keep), step_it, ts_it, vals, repeat(run)))  # plain tuples: see RawPoint
        self.lines += r
        self.parsed += r
        self.detected = lay.fmt
        if self.end == "failed":
            self.end = self.end_message = None  # points after a crash: the run was resumed
        return r

    def _single(self, lay: Layout, m: re.Match[str], ts: float, run: str, out: list[RawPoint]) -> int:
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
        if self.end == "failed":
            self.end = self.end_message = None
        return 1

    def _learn(self, fmt: str, keys: tuple[str, ...], quoted: bool = False) -> None:
        """Remember a line layout as one anchored regex (a few per format; relearned when the fields change)."""
        cache = self._known
        lay = cache.get((fmt, keys, quoted))
        if lay is None:
            if len(cache) >= 32:
                cache.clear()
            lay = cache[(fmt, keys, quoted)] = Layout(fmt, keys, quoted)
        self._layouts[fmt] = lay

    # ---- one line ----------------------------------------------------------------------------------------

    def feed(self, line: str, ts: float, run: str, out: list[RawPoint]) -> int:
        """Parse one line (without its newline); append its points to `out`; return how many were added."""
        self.lines += 1
        if "\x1b" in line:
            if NESTED in line:
                line = drop_nested_frames(line)
            line = ANSI.sub("", line)
        if "]:" in line[:24]:
            m = RANK.match(line)
            if m is not None:
                line = line[m.end():]
                if m.group(1) != "0":
                    run = f"{run}/rank{m.group(1)}" if run else f"rank{m.group(1)}"
        if "\r" not in line:
            self._clear = False
            n = self._segment(line, ts, run, out)
        else:  # progress-bar redraws: parse every segment, keep the last value per (metric, step)
            start = len(out)
            n = bad = 0
            blank = False
            for seg in line.split("\r"):
                if not seg:
                    continue
                if seg.isspace():
                    blank = True  # tqdm's clear before a write
                    continue
                self._clear = blank
                blank = False
                k = self._segment(seg, ts, run, out)
                n, bad = (n + k, bad) if k >= 0 else (n, 1)
            self._clear = False
            if n == 0 and bad:
                n = -1
            elif n > 1:
                last = {(p[0], p[1]): p for p in out[start:]}
                if len(last) < len(out) - start:
                    out[start:] = last.values()
                    n = len(last)
        if n > 0:
            self.parsed += 1
            if self.end == "failed":
                self.end = self.end_message = None  # points after a crash: the run was resumed
        elif n < 0:
            self.failed += 1
            n = 0
        return n

    def _segment(self, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        """Points of one segment; -1 when it looked like a metrics line but nothing could be read.

        The stream's own format is tried first; only a segment it does not take pays for the other checks
        (a traceback, HF's training bar, the other formats, a run's length or end)."""
        if self._tb is not None and self._traceback(s, run):
            return 0
        if self._rich is not None:
            k = self._rich_more(s, ts, run, out)
            if k:
                return k
        det = self.detected
        n = self._one(det, s, ts, run, out) if det is not None else 0
        if n > 0:
            if "`" in s:
                self._finish_line(s)
        elif n == 0:
            n = self._others(s, ts, run, out, det)
        if self.patterns or self.katib:
            bad = n < 0
            n = max(n, 0)
            for extra in (self._patterns if self.patterns else None, self._katib if self.katib else None):
                if extra is not None:
                    k = extra(s, ts, run, out)
                    n, bad = (n + k, bad) if k >= 0 else (n, True)
            return -1 if bad and not n else n
        return n

    def _others(self, s: str, ts: float, run: str, out: list[RawPoint], det: str | None) -> int:
        """A segment the stream's own format did not take."""
        if _TRACEBACK in s:
            i = s.find(_TRACEBACK)
            n = self._others(s[:i], ts, run, out, det) if i > 0 else 0  # a bar frame before it still counts
            self._traceback(s[i:], run)
            return n
        if self._hf_on and "<" in s and self._hf_bar(s, out):  # tqdm frames: "[00:03<00:10, 13.75it/s]"
            return 0  # HF's training bar: it places a pending dict (counted on the dict's line)
        n = 0
        for fmt in self._order:
            if fmt != det:
                n = self._one(fmt, s, ts, run, out)
                if n != 0:
                    if n > 0:
                        self.detected = fmt
                    break
        if n == 0 and ("optimization steps" in s or "max_steps" in s):
            m = HF_TOTAL.search(s)
            if m is not None:
                self.total_steps = int(m.group(1).replace(",", "")) or self.total_steps
        if "`" in s:  # may follow a bar frame on the same segment
            self._finish_line(s)
        return n

    def _finish_line(self, s: str) -> None:
        for text, why in FINISH_LINES:
            if text in s:
                self._ended("finished", why)

    def _traceback(self, s: str, run: str) -> bool:
        """Python's traceback: indented frames, then the exception's line, which is the run's failure message
        (chained tracebacks continue with a glue line and another traceback). True: the segment is part of it.
        Lines of other ranks (another run label) may interleave: they are parsed as usual."""
        if self._tb is None:
            self._tb = run
            return True
        if run != self._tb:
            return False
        if s[:1].isspace() or s.startswith(_TB_GLUE) or s.startswith(("+", "|")):
            return True
        self._tb = None
        self._ended("failed", s.strip())
        return False

    def _one(self, fmt: str, s: str, ts: float, run: str, out: list[RawPoint]) -> int:
        auto = self.fmt == "auto"
        if fmt == "hf":
            return self._hf(s, ts, run, out, auto) if "{'" in s else 0
        if fmt == "megatron":
            return self._megatron(s, ts, run, out) if " loss" in s or "iteration" in s else 0
        if fmt == "deepspeed":
            return self._deepspeed(s, ts, run, out) if "step" in s else 0
        if fmt == "lightning":
            if "Epoch " not in s:
                return 0
            return self._lightning(s, ts, run, out) or self._rich_bar(s, ts, run, out)
        if fmt == "json":
            return self._json(s, ts, run, out, auto) if '{"' in s else 0
        if fmt == "keyvalue":
            if auto and "step" not in s and "iter" not in s:
                return 0
            return self._keyvalue(s, ts, run, out, auto)
        if fmt == "loop":  # in auto only lines with a loss: one cheap test first
            if ("oss" not in s) if auto else ("tep" not in s and "ter" not in s and "TEP" not in s and "TER" not in s):
                return 0
            return self._loop(s, ts, run, out, auto)
        return 0
