"""The line machinery every format shares: bytes -> complete lines in bounded memory, the regexes that clean a
line (ANSI codes, torchrun rank prefixes) and the number syntax the formats accept."""

from __future__ import annotations

import math
import re

MAX_LINE_BYTES = 1 << 20  # a longer line is cut to this and counted, never held whole
STEP_KEYS = frozenset({"step", "global_step", "global_steps", "current_steps", "_step", "iteration", "iter"})
TOTAL_KEYS = frozenset({"total_steps", "max_steps", "train_iters"})

ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
RANK = re.compile(r"\s*\[(?:rank|default)(\d+)\]:\s?")
NOT_RANK = r"(?!\s*\[(?:rank|default)\d+\]:)"  # a line `feed` would take a torchrun rank prefix off
NUMBER = r"[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|nan|NaN|NAN|inf|Inf|INF|infinity|Infinity)"
# tqdm's cursor-up: a bar at position >= 1 (HF's evaluation bar, Lightning's validation bar) draws its frame
# and moves the cursor back up; such frames are never the training bar.
NESTED = "\x1b[A"


def step_of(text: str) -> int | None:
    """A printed step ("40", "40.0") as an int; None when it is not a whole, finite number."""
    try:
        v = float(text)
    except ValueError:
        return None
    return int(v) if math.isfinite(v) and v == int(v) else None


def drop_nested_frames(line: str) -> str:
    """The line without the redraws of nested tqdm bars (segments holding a cursor-up and a bar's rate)."""
    segs = line.split("\r")
    keep = [s for s in segs if NESTED not in s or not ("it/s" in s or "s/it" in s)]
    return "\r".join(keep) if len(keep) < len(segs) else line


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
        """Complete lines of what was fed so far, as pieces (see the class doc)."""
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
