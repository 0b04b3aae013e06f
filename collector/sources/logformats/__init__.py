"""Training metrics out of log text: HF Trainer / LLaMA-Factory dicts, Megatron-LM, DeepSpeed and hand-written
loop lines, Lightning progress bars (TQDM and Rich), key=value pairs, JSON lines, user regexes and Katib-style
filters; and the run's end as the log shows it (a framework's normal end, a Python traceback).

Public API (also for other sources that read console logs):

- `LogParser(fmt, ...)`: a stateful parser for ONE stream (running step counts, totals live in it; `state()` /
  `LogParser(..., state=...)` carry them across restarts). `feed(line, ts, run, out)` appends points (plain
  `RawPoint` tuples); `feed_lines(lines, ts, run, out, limit)` does the same for many lines, bounded by a number
  of points, and parses runs of lines in a layout the stream printed before in bulk (exactly the points `feed`
  would give).
- `LineSplitter`: bytes chunks -> complete lines, correct across chunk boundaries, lines over a bound cut.
- `parse_text(text, fmt)`: the simple way: every (metric, value, step) in a text, in order.

One module per format family (hf, megatron, deepspeed, lightning, generic), the shared line machinery in
`lines`, the formats and their order in `registry`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.logformats.generic import MAX_COUNTED_NAMES, compile_katib, compile_patterns
from trainscope.collector.sources.logformats.lines import (
    MAX_LINE_BYTES,
    STEP_KEYS,
    TOTAL_KEYS,
    LineSplitter,
    decode_lines,
)
from trainscope.collector.sources.logformats.parser import NEAR_FULL, LogParser
from trainscope.collector.sources.logformats.registry import FORMATS
from trainscope.collector.sources.sink import PointSink

__all__ = [
    "FORMATS",
    "MAX_COUNTED_NAMES",
    "MAX_LINE_BYTES",
    "NEAR_FULL",
    "STEP_KEYS",
    "TOTAL_KEYS",
    "LineSplitter",
    "LogParser",
    "PointSink",
    "compile_katib",
    "compile_patterns",
    "decode_lines",
    "parse_text",
]


def parse_text(text: str | bytes, fmt: str = "auto", *, patterns: Iterable[str] = (),
               logging_steps: int | None = None) -> Iterator[tuple[str, float, int]]:
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
