"""One batch on its way from a source to the store: the source's health record, what is stored of a batch
(the spec's metric filter, names PostgreSQL can hold), what the store refused, and the poll started ahead while
the previous batch is written (catch-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from trainscope.collector.points import Batch, Columns, RawPoint, RunState
from trainscope.collector.scrub import scrub
from trainscope.collector.sources import Source
from trainscope.collector.spec import MetricFilter
from trainscope.collector.store.quarantine import Outcome

log = logging.getLogger(__name__)

_METRIC, _RUN = operator.itemgetter(0), operator.itemgetter(4)


class SourceState:
    """Health states of one source, as shown in status."""

    STARTING = "Starting"
    HEALTHY = "Healthy"
    FAILING = "Failing"
    WAITING = "WaitingForStore"  # the source is fine; the database is not
    STOPPED = "Stopped"
    FINISHED = "Finished"  # the job ended and the source had its final poll


@dataclass(slots=True)
class SourceHealth:
    """What the operator reports per source. Counters are cumulative for this process."""

    name: str
    kind: str
    state: str = SourceState.STARTING
    last_success: float | None = None
    last_error: str | None = None
    last_error_reason: str | None = None
    consecutive_failures: int = 0
    points: int = 0  # stored points (inserted, from the store at start plus this process's writes)
    newest_ts: float | None = None
    run_state: RunState | None = None
    progress: float | None = None
    total_steps: int | None = None
    eta_seconds: float | None = None
    notes: tuple[str, ...] = ()
    skipped: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # by reason
    polls: int = 0
    poll_seconds: float = 0.0  # sum over polls
    last_poll_seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def lag(self, now: float) -> float | None:
        return None if self.newest_ts is None else max(0.0, now - self.newest_ts)

    @property
    def healthy(self) -> bool:
        return self.state in (SourceState.HEALTHY, SourceState.STARTING, SourceState.FINISHED)


# ---- how big a batch is -------------------------------------------------------------------------------------

# What one point of a catch-up batch holds in memory at most on its way, measured with tracemalloc on TensorBoard
# and training-log batches: the source's tuple with its floats (~176 bytes), its columns (32) and its binary COPY
# row (50, and the joined stream once more while it is sent).
POINT_BYTES = 310
DEFAULT_BATCH_BYTES = 16 << 20  # ~54,000 points a batch; two batches are in flight during a catch-up
MIN_BATCH_POINTS = 1000


def batch_points(max_batch_bytes: int, max_batch_points: int | None = None) -> int:
    """How many points a source may put in one batch so that the batch holds about `max_batch_bytes` of memory
    (never fewer than 1,000), capped by `max_batch_points` when given."""
    by_bytes = max(MIN_BATCH_POINTS, max_batch_bytes // POINT_BYTES)
    return by_bytes if max_batch_points is None else min(by_bytes, max_batch_points)


# ---- what is stored of a batch ------------------------------------------------------------------------------------


def select(points: list[RawPoint] | Columns, flt: MetricFilter,
           allowed: dict[str, bool]) -> list[RawPoint] | Columns:
    """Apply spec.metrics include/exclude before storing (judged once per name, remembered in `allowed`, then one
    pass keeps the rest)."""
    if not flt.include and not flt.exclude:
        return points
    if isinstance(points, Columns):
        for _, metric in points.keys:
            if metric not in allowed:
                allowed[metric] = flt.allows(metric)
        keep = [allowed[m] for _, m in points.keys]
        return points if all(keep) else points.take(np.array(keep)[points.key])
    names = set(map(_METRIC, points))
    for metric in names - allowed.keys():
        allowed[metric] = flt.allows(metric)
    kept = {m for m in names if allowed[m]}
    if len(kept) == len(names):
        return points
    return [p for p in points if p[0] in kept]


def storable(points: list[RawPoint] | Columns) -> list[RawPoint] | Columns:
    """Names with a NUL character (legal in a TensorBoard tag) as U+FFFD: PostgreSQL text cannot hold NUL, and one
    such name made every write of its batch fail, so the source retried the same batch forever."""
    if isinstance(points, Columns):
        if not any("\x00" in n for key in points.keys for n in key):
            return points
        return points.with_keys([(r.replace("\x00", "\ufffd"), m.replace("\x00", "\ufffd")) for r, m in points.keys])
    names = set(map(_METRIC, points))
    names.update(map(_RUN, points))
    if not any("\x00" in n for n in names):  # judged per distinct name: a catch-up batch holds 50,000 points
        return points
    return [(m.replace("\x00", "\ufffd"), step, ts, value, run.replace("\x00", "\ufffd"))
            for m, step, ts, value, run in points]


def note_rejections(health: SourceHealth, notes: list[str], outcome: Outcome) -> None:
    """Retimed and quarantined points show in the source's notes (this batch) and skipped counts (cumulative)."""
    notes = list(notes)
    refused = [(p, why) for p, why in outcome.rejected if not why.startswith(("NameTooLong", "StepOutOfRange"))]
    if refused:
        p, why = refused[0]
        notes.append(f"the database refused {len(refused)} point(s), quarantined in rejected_points: e.g. "
                     f"{p[0][:80]!r} step {p[1]}: {why[:200]}")
    if outcome.runs_dropped:
        notes.append(f"the database refused the run metadata of this batch: {outcome.runs_dropped[:200]}")
    for _, why in outcome.rejected:
        reason = why.split(":", 1)[0] if why.startswith(("NameTooLong", "StepOutOfRange")) else "RejectedByStore"
        health.skipped[reason] = health.skipped.get(reason, 0) + 1
    if notes:
        health.notes = (*health.notes, *(scrub(n) for n in notes))
        log.warning("source %s: %s", health.name, "; ".join(notes))


def unrefused(points: list[RawPoint] | Columns, outcome: Outcome) -> list[RawPoint]:
    """The points of a batch the database stored, without those it refused (quarantined)."""
    if isinstance(points, Columns):  # its refused points are tuples made from it: matched by series and step
        refused_at = {(p[4], p[0], p[1]) for p, _ in outcome.rejected}
        return [p for p in points if (p[4], p[0], p[1]) not in refused_at]
    refused = {id(p) for p, _ in outcome.rejected}
    return [p for p in points if id(p) not in refused]


# ---- the poll started ahead -----------------------------------------------------------------------------------


class Ahead(NamedTuple):
    """A poll started while the previous batch was still being written (catch-up): the next batch is read while
    the database commits the last one. Its cursor follows a batch not yet committed; if that write fails, the
    poll's batch is dropped and the source reads again from the committed cursor.

    The poll is given the very cursor being written (and the write holds that batch's run facts): no copy, as a
    source never changes a cursor it was given or returned (the Source protocol, collector/sources/base.py)."""

    task: asyncio.Future[Batch]
    started: float  # time.monotonic() at its start
    final: bool  # it started after the job ended
    ended: list[float]  # time.monotonic() when the poll finished
    prepared: list[Any]  # what is stored of its batch (`prepare`'s answer), once judged


def poll_ahead(source: Source, cursor: Any, final: bool, prepare: Callable[[Batch], Any]) -> Ahead:
    """Start the next poll now, from the cursor of the batch about to be written; as soon as it returns, what is
    stored of its batch is judged (`prepare`: the metric filter, admission), still while the last batch is
    written, so the next write can start at once."""
    ended: list[float] = []
    prepared: list[Any] = []

    async def read() -> Batch:
        try:
            batch = await source.poll(cursor)
        finally:
            ended.append(time.monotonic())
        with contextlib.suppress(Exception):  # judged again, and any failure reported, when the batch is taken
            prepared.append(prepare(batch))
        return batch

    return Ahead(asyncio.ensure_future(read()), time.monotonic(), final, ended, prepared)


async def drop_ahead(ahead: Ahead | None, stopping: asyncio.Event, patience: float, *, wait: bool = True) -> None:
    """Abandon a poll started ahead. It is let finish first (unless the collector stops), so the source never
    runs two polls at once (a poll may be running in a worker thread, which cancelling would not stop)."""
    if ahead is None:
        return
    if wait and not ahead.task.done():
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait({ahead.task, stop}, timeout=patience, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
    ahead.task.cancel()
    await asyncio.gather(ahead.task, return_exceptions=True)
