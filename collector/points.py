"""The data that flows from a source to the store: points, batches and run state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, NamedTuple

# A cursor is whatever JSON-serialisable value a source needs to resume (byte offsets, a last step...).
# It is stored in the same transaction as the points it covers.
Cursor = Any


class Point(NamedTuple):
    """One observation: a metric's value at a training step, with the SOURCE's timestamp (epoch seconds).

    The named form of `RawPoint`: what code outside the hot paths builds and reads.
    """

    metric: str
    step: int
    ts: float
    value: float
    run: str = ""


# The same five fields as a plain tuple: what batches carry. Sources on hot paths (the log parsers) emit these, as
# an exact tuple is half the cost of a NamedTuple to build and CPython's garbage collector stops tracking it
# (it never untracks a tuple subclass); consumers unpack `metric, step, ts, value, run = p` and never use names.
# A Point is a RawPoint, so a source may put either in a batch.
RawPoint = tuple[str, int, float, float, str]


class RunState(enum.StrEnum):
    """What the source says about the training run itself."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class Batch:
    """What one `Source.poll` returns.

    `more` says the source stopped early to keep the batch bounded and should be polled again at once
    (catch-up of a long run). `skipped` counts input the source could not use (bad records, non-numeric
    values), by reason. `notes` are human-readable facts for the source's health (e.g. "HTTP mode is sampled").
    """

    points: list[RawPoint]  # Points or plain tuples of the same fields
    cursor: Cursor = None
    state: RunState | None = None
    progress: float | None = None  # 0..1, when the source knows it
    total_steps: int | None = None
    eta_seconds: float | None = None  # a source that knows its own ETA (a hosted job's status API)
    more: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # facts about the source itself, kept for status
    # run label -> what the source knows of that run (display name, state, config...); stored with the points
    # in the `runs` table, merged key by key, for the API. JSON-serialisable values only.
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # (reason, message) when the source read its input without error but cannot make data of it, e.g. a log
    # whose lines match no format ("NoMetricLines"): the source's health says so instead of Healthy.
    problem: tuple[str, str] | None = None
