"""Reading pods' logs as the kubelet serves them (GET pods/{name}/log?timestamps=true&follow=false&sinceTime=...).

What the kubelet does, and what this module does about it (pkg/kubelet/kuberuntime/logs/logs.go; the CRI log format
of the container runtime, e.g. containerd's internal/cri/io/logger.go):

- Every line starts with the time the runtime stamped it, formatted with the node's own offset
  (`2026-12-04T18:00:00.123456789+08:00` on a +08:00 node): any RFC 3339 offset is read exactly.
- `sinceTime` is applied per CRI record at whole seconds (the API's metav1.Time drops the fraction), so an answer
  repeats the lines of the cursor's second: the cursor keeps that second and how many lines of it were taken, and
  skips them. It also keeps the last line taken (nanosecond time and a CRC of its text), to check that the line
  where the skipping ends is that line.
- The runtime splits a line longer than its buffer (16 KiB) into partial (P) records, each stamped; the kubelet joins
  them into one line carrying the first record's time. When sinceTime falls after the first record of such a line,
  the answer starts with the rest of it and no timestamp: that line was taken before (it precedes the cursor's
  line), so it is passed over without being counted.
- Log rotation (kubelet's container log manager renames the file; the API serves only the current one) drops the
  oldest lines: when the cursor's last line is no longer in the answer, what came between it and the first line
  still there may be lost. That gap is reported (a note and `skipped.lost_to_rotation`); lines are never read twice.
- `previous=true` serves the instance before the latest; while a container waits in CrashLoopBackOff the latest
  (current) instance is the dead one. A dead instance's unfinished last line is final and is taken.
"""

from __future__ import annotations

import datetime
import zlib
from typing import Any

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.base import ContainerState, PodRef, SourceError
from trainscope.collector.sources.logparsers import LineSplitter, LogParser, decode_lines

_SECONDS: dict[str, int] = {}  # 'YYYY-MM-DDTHH:MM:SS' + offset -> epoch seconds (a poll sees few distinct ones)


def stamp_ns(token: str) -> int | None:
    """An RFC 3339 time with any offset and up to 9 fraction digits -> nanoseconds since the epoch (None: not one)."""
    if len(token) < 20 or token[10] != "T":
        return None
    if token[-1] in "Zz":
        body, offset = token[:-1], "+00:00"
    elif len(token) >= 25 and token[-6] in "+-" and token[-3] == ":":
        body, offset = token[:-6], token[-6:]
    else:
        return None
    key = body[:19] + offset
    sec = _SECONDS.get(key)
    if sec is None:
        try:
            sec = int(datetime.datetime.fromisoformat(key).timestamp())
        except ValueError:
            return None
        if len(_SECONDS) > 4096:
            _SECONDS.clear()
        _SECONDS[key] = sec
    frac = body[19:]
    if not frac:
        return sec * 1_000_000_000
    digits = frac[1:]
    if frac[0] != "." or not digits.isdigit() or len(digits) > 9:
        return None
    return sec * 1_000_000_000 + int(digits) * 10 ** (9 - len(digits))


def rfc3339(second: int) -> str:
    """A sinceTime: whole seconds, UTC."""
    return datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).isoformat(timespec="milliseconds")


def _crc(text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"))


class Feed:
    """Feeds one read (a response or a file region) to a stream's parser, bounded by the batch limit."""

    __slots__ = ("full", "limit", "out", "parser", "run")

    def __init__(self, parser: LogParser, run: str, out: list[RawPoint], limit: int):
        self.parser, self.run, self.out, self.limit = parser, run, out, limit
        self.full = False

    def lines(self, lines: list[str], ts: float | list[float]) -> int:
        """Parse lines in order (one time for all, or one per line) until the batch is full; how many were taken.
        A line whose points do not fit in a batch that already has some is not taken (see LogParser.feed_lines)."""
        taken, full = self.parser.feed_lines(lines, ts, self.run, self.out, self.limit)
        self.full = self.full or full
        return taken


class NotALog(ValueError):
    """A pods/log answer whose lines carry no kubelet timestamp (asked for with timestamps=true): something else
    answered, e.g. a proxy's HTML error page with status 200. Counting its lines would make the next poll skip as
    many real lines."""


class Position:
    """Where a stream is in one container instance's log, advanced line by line through one answer.

    Cursor fields (in the stream's cursor dict): `s` the second asked for (sinceTime), `k` how many timestamped lines
    of that answer were taken, `t`/`h` the last taken line's time (ns) and text CRC. `t` without `h` means "take only
    lines after t" (after a rotation gap, when nothing after it was there yet).
    """

    __slots__ = ("first", "fresh", "gaps", "held", "last_crc", "last_ns", "second", "seen", "skip", "stamped",
                 "unstamped")

    def __init__(self, st: dict[str, Any]):
        self.second, self.seen = int(st.get("s") or 0), int(st.get("k") or 0)
        self.last_ns: int | None = st.get("t")
        self.last_crc: int | None = st.get("h")
        self.skip = self.seen if self.last_ns is None or self.last_crc is not None else 0
        self.held: list[tuple[int, str]] = []  # lines passed over while skipping, until the last one is checked
        self.first = True  # no line of this answer seen yet
        self.fresh = True  # no line of this answer consumed yet: `seen` is still the stored count
        self.stamped = False
        self.unstamped = 0  # lines without a timestamp after the first (a record split around a skipped one)
        self.gaps: list[tuple[int, int | None]] = []  # (last line taken, first line found) around lost lines

    def save(self, st: dict[str, Any]) -> None:
        st["s"], st["k"] = self.second, self.seen
        for key, value in (("t", self.last_ns), ("h", self.last_crc)):
            if value is None:
                st.pop(key, None)
            else:
                st[key] = value

    def take(self, lines: list[str], feed: Feed) -> bool:
        """Feed the lines after the position; False when the batch is full (the position is after the last line
        taken)."""
        order: list[tuple[int, str, bool]] = []  # (ns, text, fed) of the lines this call consumes, in order
        after = self.last_ns if self.last_crc is None and self.skip == 0 else None
        for line in lines:
            sp = line.find(" ")
            ns = stamp_ns(line[:sp]) if sp > 0 else None
            if ns is None:
                if self.first and self.second:  # the rest of a line begun before sinceTime: taken before
                    self.first = False
                    continue
                if not self.stamped:
                    raise NotALog(line[:80])
                self.unstamped += 1
                continue
            self.first, self.stamped = False, True
            text = line[sp + 1:]
            if self.skip:
                self.skip -= 1
                self.held.append((ns, text))
                if not self.skip:
                    resolved, gap = self._resolve()
                    order += resolved
                    if gap is not None:  # the cursor's line is gone: what is not after it was taken before
                        after = gap
                continue
            if after is not None and ns <= after:
                order.append((ns, text, False))
                continue
            order.append((ns, text, True))
        return self._consume(order, feed)

    def finish(self, feed: Feed) -> bool:
        """The answer ended: if it held fewer lines than were skipped last time, check them now."""
        if self.skip and self.last_ns is not None:
            return self._consume(self._resolve()[0], feed)
        return True

    def _resolve(self) -> tuple[list[tuple[int, str, bool]], int | None]:
        """The skipped lines, checked: normally the last is the cursor's line; else the log was rotated. Returns
        them as consumed lines (fed: new ones) and, after a gap, the time up to which lines were taken before."""
        held, self.held, self.skip = self.held, [], 0
        last = self.last_ns
        if last is None:  # a cursor from before the check existed: trust the count
            return [(ns, text, False) for ns, text in held], None
        mine = [i for i, (ns, text) in enumerate(held) if ns == last and _crc(text) == self.last_crc]
        if mine and mine[-1] == len(held) - 1:
            return [(ns, text, False) for ns, text in held], None
        if mine:  # older lines of the second were rotated away; the cursor's line is there, the rest is new
            j = mine[-1]
            return [(ns, text, i > j) for i, (ns, text) in enumerate(held)], None
        newer = [ns for ns, _ in held if ns > last]
        self.gaps.append((last, newer[0] if newer else None))
        if not held:  # nothing of the second left: from now on, take only what comes after the cursor's line
            self.last_crc = None
        return [(ns, text, ns > last) for ns, text in held], last

    def _consume(self, order: list[tuple[int, str, bool]], feed: Feed) -> bool:
        fed = [(ns, text) for ns, text, f in order if f]
        taken = feed.lines([t for _, t in fed], [ns / 1e9 for ns, _ in fed]) if fed else 0
        n = 0
        last: tuple[int, str] | None = None
        # The answer starts at the cursor's second, and every timestamped line of it is consumed in order (the
        # skipped ones too, once checked), so the count of the second starts again from 0 with each answer; adding
        # to the stored count made it grow with every poll, until the skip ran past the cursor's line and a later
        # line with the same time and text (a repeated warning) was taken for it, losing the lines between.
        second, seen = self.second, 0 if self.fresh else self.seen
        for ns, text, f in order:
            if f:
                if n == taken:
                    break
                n += 1
            sec = ns // 1_000_000_000
            if sec > second:
                second, seen = sec, 1
            elif sec == second:
                seen += 1
            last = (ns, text)
        if last is not None:
            self.second, self.seen, self.fresh = second, seen, False
            self.last_ns, self.last_crc = last[0], _crc(last[1])
        return not feed.full


def dead(pod: PodRef, container: str) -> bool:
    """Whether the container's latest instance has ended (its log will not grow): terminated, or waiting to be
    restarted (CrashLoopBackOff) after a run, or the pod is done."""
    state = pod.states.get(container) or ContainerState()
    if pod.phase in ("Succeeded", "Failed") or state.exit_code is not None:
        return True
    return state.waiting is not None and state.last_exit_code is not None


def reason_of(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return "Forbidden" if status in (401, 403) else "KubeError"
    return "Unreachable"


async def read_instance(reader: Any, namespace: str, pod: str, container: str, st: dict[str, Any], feed: Feed,
                        notes: list[str], skipped: dict[str, int], *, previous: bool,
                        final: bool) -> tuple[bool, int]:
    """Read one container instance's log after the stream's position; (read to its end, lines cut).

    `final`: the instance has ended, so an unfinished last line is complete. Rotation gaps become notes and
    `skipped["lost_to_rotation"]`.
    """
    pos = Position(st)
    stream = reader.stream_log(namespace, pod, container, since_time=rfc3339(pos.second) if pos.second else None,
                               follow=False, previous=previous)
    splitter = LineSplitter()
    ended = False
    try:
        try:
            async for chunk in stream:
                for blob, _ in splitter.feed(chunk):
                    if not pos.take(decode_lines(blob), feed):
                        return False, splitter.cut
            if final:
                for blob, _ in splitter.flush():
                    if not pos.take(decode_lines(blob), feed):
                        return False, splitter.cut
            ended = pos.finish(feed)
            return ended, splitter.cut
        finally:
            await stream.aclose()
            pos.save(st)
            for since, until in pos.gaps:
                skipped["lost_to_rotation"] = skipped.get("lost_to_rotation", 0) + 1
                notes.append(f"{pod}/{container}: the log was rotated before it was read to its end: lines after "
                             f"{_iso(since)}" + (f" and before {_iso(until)}" if until else "") + " may be lost")
            if pos.unstamped:
                skipped["unstamped"] = skipped.get("unstamped", 0) + pos.unstamped
    except SourceError:
        raise
    except NotALog as e:
        raise SourceError(f"the answer for the log of {pod}/{container} is not a pod log (a line without a "
                          f"kubelet timestamp: {e.args[0]!r})", reason="BadResponse") from None
    except Exception as e:
        status = getattr(e, "status", None)
        if status not in (400, 404):
            raise SourceError(f"cannot read the log of {pod}/{container}: {e}", reason=reason_of(e)) from e
        # not started yet, no previous instance, or the pod went away: nothing more to read there now
        what = "the previous instance of " if previous else ""
        notes.append(f"{pod}/{container}: no log for {what}the container (HTTP {status})")
        return status == 404 or previous, splitter.cut
