"""One Collector per Workload: a task per source that polls, filters, stores and tracks health.

It knows nothing of where the spec came from (a Kubernetes object or a YAML file) and nothing of Prometheus:
the operator reads `snapshot()` and turns it into status and gauges.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import copy
import itertools
import logging
import operator
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from trainscope.collector.admit import admit
from trainscope.collector.health import STALLED, Condition, HealthEvent, HealthMonitor, transitions
from trainscope.collector.points import Batch, Point, RawPoint, RunState
from trainscope.collector.progress import (
    JobPhase,
    JobState,
    StepRate,
    combine_run_states,
    combine_with_job,
    detect_primary_metric,
    eta_seconds,
)
from trainscope.collector.scrub import remember_secret, scrub
from trainscope.collector.sources import REGISTRY, Source, SourceContext, SourceError, SourceFactory
from trainscope.collector.sources.base import PodLogReader, SecretResolver, counts_training_steps
from trainscope.collector.spec import MetricFilter, SourceSpec, WorkloadSpec
from trainscope.collector.store import Store, StoreHealth, StoreUnavailable
from trainscope.collector.store.quarantine import Outcome, write_isolating

log = logging.getLogger(__name__)

# While the database is away, retry at least this often: the source's backoff (up to backoff_cap, 300 s by default)
# is meant for rate-limited APIs; behind a 60 s database outage it left collection idle for minutes afterwards.
STORE_RETRY_MAX = 5.0
STORE_RETRY_REFUSED = 30.0  # the database refused us (credentials, missing database, privilege)

_METRIC, _STEP, _TS, _RUN = (operator.itemgetter(i) for i in (0, 1, 2, 4))


class _Ahead(NamedTuple):
    """A poll started while the previous batch was still being written (catch-up): the next batch is read while
    the database commits the last one. Its cursor follows a batch not yet committed; if that write fails, the
    poll's batch is dropped and the source reads again from the committed cursor."""

    task: asyncio.Future[Batch]
    started: float  # time.monotonic() at its start
    final: bool  # it started after the job ended
    ended: list[float]  # time.monotonic() when it finished (set by a done callback)


def _nondecreasing(values: list[int]) -> bool:
    return all(map(operator.le, values, itertools.islice(values, 1, None)))


def _note_rejections(health: SourceHealth, notes: list[str], outcome: Outcome) -> None:
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


def _storable(points: list[RawPoint]) -> list[RawPoint]:
    """Names with a NUL character (legal in a TensorBoard tag) as U+FFFD: PostgreSQL text cannot hold NUL, and one
    such name made every write of its batch fail, so the source retried the same batch forever."""
    names = set(map(_METRIC, points))
    names.update(map(_RUN, points))
    if not any("\x00" in n for n in names):  # judged per distinct name: a catch-up batch holds 50,000 points
        return points
    return [(m.replace("\x00", "\ufffd"), step, ts, value, run.replace("\x00", "\ufffd"))
            for m, step, ts, value, run in points]


def _remembering(resolve: SecretResolver | None) -> SecretResolver | None:
    """The resolver, teaching the scrubber each value it hands out (so no error text can carry it)."""
    if resolve is None:
        return None

    async def resolved(ref: dict[str, str]) -> str:
        value = await resolve(ref)
        remember_secret(value)
        return value

    return resolved


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


@dataclass(frozen=True, slots=True)
class Latest:
    """The newest value of one metric in a Workload."""

    value: float
    step: int
    ts: float
    source: str
    run: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the operator shows for a Workload, computed from what the collector has seen."""

    step: int | None
    total_steps: int | None
    progress: float | None  # 0..1
    throughput: float | None  # steps per second
    eta_seconds: float | None
    primary_metric: str | None
    latest: dict[str, Latest]
    run_state: RunState
    sources: tuple[SourceHealth, ...]
    last_point_ts: float | None
    taken_at: float
    health: tuple[Condition, ...] = ()
    step_ts: float | None = None  # source time of the highest step
    store: StoreHealth | None = None  # the database as this process last found it (StoreReady)
    job: JobState | None = None  # the training job's state when spec.jobRef names one

    @property
    def primary(self) -> Latest | None:
        return self.latest.get(self.primary_metric) if self.primary_metric else None


@dataclass(slots=True)
class Backoff:
    """Exponential backoff with full jitter, reset on success."""

    base: float = 1.0
    cap: float = 300.0
    attempt: int = 0

    def next(self, at_least: float | None = None) -> float:
        self.attempt += 1
        delay = random.uniform(self.base, min(self.cap, self.base * 2**self.attempt))
        return max(delay, at_least or 0.0)

    def reset(self) -> None:
        self.attempt = 0


class Collector:
    """Drives one Workload's sources: poll, filter, write exactly once, keep health and latest values."""

    def __init__(
        self,
        uid: str,
        spec: WorkloadSpec,
        store: Store,
        *,
        namespace: str = "default",
        name: str = "",
        base_dir: Path | None = None,
        resolve_secret: SecretResolver | None = None,
        pods: PodLogReader | None = None,
        max_batch_points: int = 50_000,
        registry: Mapping[str, SourceFactory] | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        health_interval: float = 2.0,
        poll_timeout: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        self.uid, self.namespace, self.name = uid, namespace, name
        self.spec = spec
        self.store = store
        self._ctx = SourceContext(namespace=namespace, workload=name, selector=spec.selector,
                                  base_dir=base_dir or Path.cwd(), max_batch_points=max_batch_points,
                                  resolve_secret=_remembering(resolve_secret), pods=pods)
        self._registry = REGISTRY if registry is None else registry
        self._backoff = (backoff_base, backoff_cap)
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.health: dict[str, SourceHealth] = {}
        self._latest: dict[tuple[str, str, str], RawPoint] = {}  # (source, run, metric) -> newest point
        self._max_step: int | None = None
        self._rate = StepRate()
        self._allowed: dict[str, bool] = {}
        self._max_step_ts: float | None = None
        self._primary: str | None = spec.primary_metric
        self._health = HealthMonitor(spec.health)
        self._health_interval = health_interval
        # A whole poll's deadline: HTTP clients time out per read, so a server trickling an endless answer one byte
        # at a time would otherwise hold the source forever, still shown as healthy.
        self._poll_timeout = poll_timeout
        self._conditions: dict[str, Condition] = {}
        self._unsaved_events: list[HealthEvent] = []
        self.job: JobState | None = None
        self._job_ended = asyncio.Event()  # wakes sleeping sources for their final poll

    def set_job(self, job: JobState | None) -> None:
        """The training job's state (from the operator). Once it has ended, each source polls once more and stops."""
        self.job = job
        if job is not None and job.ended:
            self._job_ended.set()

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Seed latest values from the store (so status is right after a restart) and start a task per source."""
        self._stopping.clear()
        await self._seed_from_store()
        for src in self.spec.sources:
            health = self.health.setdefault(src.name, SourceHealth(src.name, src.kind))
            health.state = SourceState.STARTING
            self._tasks[src.name] = asyncio.create_task(self._run_source(src, health), name=f"{self.name}/{src.name}")
        self._health_task = asyncio.create_task(self._watch_health(), name=f"{self.name}/health")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop every source task; a write under way is allowed to commit first."""
        self._stopping.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None
            await self._save_events()  # one last try; transitions still unsaved are lost with the process
        for health in self.health.values():
            health.state = SourceState.STOPPED

    async def reconfigure(self, spec: WorkloadSpec) -> None:
        """Restart with a new spec; cursors live in the store, so each source resumes where it was."""
        await self.stop()
        if spec.health != self.spec.health:
            self._health = HealthMonitor(spec.health)
        self.spec = spec
        self._primary = spec.primary_metric or detect_primary_metric(m for _, _, m in self._latest)
        self._ctx = replace(self._ctx, selector=spec.selector)
        self._allowed.clear()
        names = {s.name for s in spec.sources}
        for gone in set(self.health) - names:
            del self.health[gone]
        for key in [k for k in self._latest if k[0] not in names]:
            del self._latest[key]
        await self.start()

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    # ---- one source -----------------------------------------------------------------------------------

    async def _run_source(self, src: SourceSpec, health: SourceHealth) -> None:
        """Poll, admit and write, in order. While a source has more to give (`batch.more`, a catch-up), its next
        poll starts before the current batch is written, so reading and the database's commit overlap; the cursor
        is still committed in the same transaction as its points, and at most one batch waits in memory."""
        backoff = Backoff(*self._backoff)
        source: Source | None = None
        ahead: _Ahead | None = None
        try:
            cursor = await self._store_call(health, backoff, lambda: self.store.load_cursor(self.uid, src.name))
            while not self._stopping.is_set():
                # this poll starts after the job ended: it is the last one
                final = ahead.final if ahead is not None else self._job_ended.is_set()
                try:
                    if source is None:
                        source = self._registry[src.kind](src.config, self._ctx)
                    batch = await self._poll(source, cursor, health, backoff, ahead)
                    ahead = None
                    if batch is None:
                        if final:
                            return
                        continue
                    admitted = admit(_storable(self._select(batch.points)), self._clock())
                    points = admitted.points
                    if batch.more:
                        # What is written is fixed before the next poll runs beside the write: a source may reuse
                        # and change in place what its batch's cursor or run facts refer to.
                        batch = replace(batch, cursor=copy.deepcopy(batch.cursor), runs=copy.deepcopy(batch.runs))
                        ahead = self._poll_ahead(source, copy.deepcopy(batch.cursor))
                    outcome = await self._store_call(
                        health, backoff,
                        lambda b=batch, a=admitted, c=cursor: write_isolating(
                            self.store, self.uid, src.name, src.kind, a.points, c, b.cursor, b.runs, a.rejected))
                except Exception as exc:  # a bad config, a write the database rejects, or a bug: back off
                    reason = exc.reason if isinstance(exc, SourceError) else f"Internal{type(exc).__name__}"
                    log.exception("source %s/%s: unexpected failure", self.name, src.name)
                    self._fail(health, exc, reason)
                    ahead = await self._drop(ahead)  # it read past a batch that was not stored
                    await self._sleep(backoff.next())
                    continue
                if outcome is None:  # stopped while the store was away; nothing committed, nothing lost
                    return
                cursor = batch.cursor
                if outcome.rejected:  # the database refused these alone: they are not part of what was seen
                    refused = {id(p) for p, _ in outcome.rejected}
                    points = [p for p in points if id(p) not in refused]
                self._absorb(src.name, health, batch, points, outcome.result.inserted)
                _note_rejections(health, admitted.notes, outcome)
                backoff.reset()
                if final and not batch.more:
                    health.state = SourceState.FINISHED
                    return
                if not batch.more:
                    await self._sleep(src.poll_interval or self.spec.poll_interval)
                else:
                    await asyncio.sleep(0)
        finally:
            if ahead is not None:  # stopping: a poll in a worker thread gets a moment to end before aclose
                await asyncio.wait({ahead.task}, timeout=2.0)
                await self._drop(ahead, wait=False)
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()

    def _poll_ahead(self, source: Source, cursor: Any) -> _Ahead:
        ended: list[float] = []
        task = asyncio.ensure_future(source.poll(cursor))
        task.add_done_callback(lambda _: ended.append(time.monotonic()))
        return _Ahead(task, time.monotonic(), self._job_ended.is_set(), ended)

    async def _drop(self, ahead: _Ahead | None, *, wait: bool = True) -> None:
        """Abandon a poll started ahead. It is let finish first (unless the collector stops), so the source never
        runs two polls at once (a poll may be running in a worker thread, which cancelling would not stop)."""
        if ahead is None:
            return
        if wait and not ahead.task.done():
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({ahead.task, stop}, timeout=self._poll_timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
        ahead.task.cancel()
        await asyncio.gather(ahead.task, return_exceptions=True)

    async def _poll(self, source: Source, cursor: Any, health: SourceHealth, backoff: Backoff,
                    ahead: _Ahead | None = None) -> Batch | None:
        """Poll once (or take the poll started ahead), abandoning it if the collector stops (nothing is committed
        during a poll)."""
        if ahead is None:
            started = time.monotonic()
            poll = asyncio.ensure_future(source.poll(cursor))
        else:
            poll, started = ahead.task, ahead.started
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({poll, stop}, timeout=max(0.0, self._poll_timeout - (time.monotonic() - started)),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not poll.done():
            poll.cancel()
            await asyncio.gather(poll, return_exceptions=True)
            if self._stopping.is_set():
                return None
            self._fail(health, SourceError(f"poll did not finish within {self._poll_timeout:g}s", reason="PollTimeout"),
                       "PollTimeout")
            await self._sleep(backoff.next())
            return None
        elapsed = (ahead.ended[0] if ahead is not None and ahead.ended else time.monotonic()) - started
        health.polls += 1
        health.poll_seconds += elapsed
        health.last_poll_seconds = elapsed
        if poll.cancelled():  # a poll ahead cancelled from outside: read again
            return None
        exc = poll.exception()
        if exc is None:
            return poll.result()
        reason = exc.reason if isinstance(exc, SourceError) else type(exc).__name__
        self._fail(health, exc, reason)
        retry_after = exc.retry_after if isinstance(exc, SourceError) else None
        await self._sleep(backoff.next(retry_after))
        return None

    async def _store_call(self, health: SourceHealth, backoff: Backoff, call: Callable[[], Any]) -> Any:
        """Run a store call until it succeeds; while the database is away the source waits and loses nothing."""
        while True:  # tried at least once, so a graceful stop still commits the batch in hand
            try:
                return await call()
            except StoreUnavailable as exc:
                health.state = SourceState.WAITING
                health.last_error = scrub(f"database unavailable ({exc.reason}): {exc}")
                health.last_error_reason = "StoreUnavailable"
                health.errors["StoreUnavailable"] = health.errors.get("StoreUnavailable", 0) + 1
                if self._stopping.is_set():
                    return None
                # Refused credentials or a missing GRANT wait for a person: retried, but not every few seconds.
                cap = STORE_RETRY_MAX if exc.reason in ("Unreachable", "Timeout") else STORE_RETRY_REFUSED
                await self._sleep(min(backoff.next(), cap))

    def _fail(self, health: SourceHealth, exc: BaseException, reason: str) -> None:
        health.state = SourceState.FAILING
        health.consecutive_failures += 1
        health.last_error = scrub(str(exc) or type(exc).__name__)
        health.last_error_reason = reason
        health.errors[reason] = health.errors.get(reason, 0) + 1
        log.warning("source %s/%s failed (%s): %s", self.name, health.name, reason, health.last_error)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until the collector stops or the job ends (a source then takes its final poll at once)."""
        if self._job_ended.is_set():
            seconds = min(seconds, 0.5)  # a failing final poll is retried soon, not after a long backoff
        waits = [asyncio.ensure_future(self._stopping.wait()), asyncio.ensure_future(self._job_ended.wait())]
        try:
            await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    # ---- what was seen ----------------------------------------------------------------------------------

    def _select(self, points: list[RawPoint]) -> list[RawPoint]:
        """Apply spec.metrics include/exclude before storing (judged once per name, then one pass keeps the rest)."""
        allowed = self._allowed
        flt: MetricFilter = self.spec.metrics
        if not flt.include and not flt.exclude:
            return points
        names = set(map(_METRIC, points))
        for metric in names - allowed.keys():
            allowed[metric] = flt.allows(metric)
        kept = {m for m in names if allowed[m]}
        if len(kept) == len(names):
            return points
        return [p for p in points if p[0] in kept]

    def _absorb(self, source: str, health: SourceHealth, batch: Batch, points: list[RawPoint],
                inserted: int) -> None:
        if points:
            self._absorb_points(source, health, points)
        self._health.observe(source, points, self._primary)
        health.points += inserted
        health.state = SourceState.HEALTHY
        health.consecutive_failures = 0
        health.last_success = self._clock()
        if batch.problem is not None:  # polled fine, but its input gives no data: its own state and reason
            health.state, health.last_error_reason, health.last_error = batch.problem[0], *batch.problem
        if batch.state is not None:
            health.run_state = batch.state
        if batch.progress is not None:
            health.progress = batch.progress
        if batch.total_steps is not None and counts_training_steps(self._registry.get(health.kind)):
            health.total_steps = batch.total_steps
        health.eta_seconds = batch.eta_seconds
        health.notes = tuple(batch.notes)
        for reason, n in batch.skipped.items():
            health.skipped[reason] = health.skipped.get(reason, 0) + n
        health.info.update(batch.info)

    def _absorb_points(self, source: str, health: SourceHealth, points: list[RawPoint]) -> None:
        """Latest values, the Workload's step and pace, the source's newest time. Column-wise when the batch's
        steps never decrease from the Workload's step on (a catch-up, a live run): no point can then start a
        resumed branch, so the newest point per series is its last one and each new step's first point feeds
        the pace. Otherwise point by point."""
        steps = list(map(_STEP, points))
        times = list(map(_TS, points))
        counts = counts_training_steps(self._registry.get(health.kind))
        max_step = self._max_step
        if not _nondecreasing(steps) or (counts and max_step is not None and steps[0] < max_step):
            self._absorb_each(source, health, points, counts)
            return
        latest = self._latest
        last = dict(zip(zip(map(_RUN, points), map(_METRIC, points), strict=True), points, strict=True))
        new_names = False
        for (run, metric), p in last.items():
            key = (source, run, metric)
            if not new_names and key not in latest:
                new_names = True
            latest[key] = p  # the later observation in the source's own order is the newest (docs/store.md)
        if counts and (max_step is None or steps[-1] > max_step):
            first = dict(zip(reversed(steps), reversed(times), strict=True))  # step -> time of its 1st point
            ascending = list(reversed(first))  # inserted in descending order
            if max_step is not None:
                ascending = ascending[bisect.bisect_right(ascending, max_step):]
            self._rate.observe_many(zip(map(first.__getitem__, ascending), ascending, strict=True))
            max_step = ascending[-1]
            self._max_step, self._max_step_ts = max_step, first[max_step]
        newest = max(times)
        if health.newest_ts is None or newest > health.newest_ts:
            health.newest_ts = newest
        if new_names and not self.spec.primary_metric:
            self._primary = detect_primary_metric(m for _, _, m in latest)

    def _absorb_each(self, source: str, health: SourceHealth, points: list[RawPoint], steps: bool) -> None:
        latest = self._latest
        max_step = self._max_step
        newest_ts = health.newest_ts
        new_names = False
        for p in points:
            metric, step, ts, _, run = p
            key = (source, run, metric)
            cur = latest.get(key)
            if cur is None:
                new_names = True
            latest[key] = p  # the later observation in the source's own order is the newest (docs/store.md)
            if steps:
                if max_step is None or step > max_step:
                    max_step = step
                    self._max_step_ts = ts
                    self._rate.observe(ts, step)
                elif step < max_step and self._resumed(key, cur, step, ts):
                    max_step = step  # the run went back to a checkpoint: follow the resumed branch
                    self._max_step_ts = ts
                    self._rate.rewind(ts, step)
            if newest_ts is None or ts > newest_ts:
                newest_ts = ts
        self._max_step = max_step
        if new_names and not self.spec.primary_metric:
            self._primary = detect_primary_metric(m for _, _, m in latest)
        health.newest_ts = newest_ts

    def _resumed(self, key: tuple[str, str, str], cur: RawPoint | None, step: int, ts: float) -> bool:
        """Whether a point below the Workload's step starts a resumed branch: its series logged a higher step
        before (re-logged after a restart from a checkpoint), or it is the first point of a run whose metric
        another run of the same source logged, newer than the step it is below (the job's pod was replaced)."""
        if cur is not None:
            return step < cur[1]
        if self._max_step_ts is None or ts <= self._max_step_ts:
            return False
        source, run, metric = key
        return any(k[0] == source and k[2] == metric and k[1] != run for k in self._latest)

    async def _seed_from_store(self) -> None:
        """Latest values and counts from the store, so a restarted operator reports the run as it was."""
        try:
            latest = await self.store.latest(self.uid)
            counts = await self.store.counts(self.uid)
        except StoreUnavailable as exc:
            log.warning("could not seed %s from the store (%s); starting empty", self.name, exc)
            return
        names = {s.name: s.kind for s in self.spec.sources}
        for lv in latest:
            if lv.source not in names:
                continue
            self._latest[(lv.source, lv.run, lv.metric)] = Point(lv.metric, lv.step, lv.ts, lv.value, lv.run)
            h = self.health.setdefault(lv.source, SourceHealth(lv.source, names[lv.source]))
            if h.newest_ts is None or lv.ts > h.newest_ts:
                h.newest_ts = lv.ts
            if counts_training_steps(self._registry.get(names[lv.source])) and (
                    self._max_step is None or lv.step > self._max_step):
                self._max_step, self._max_step_ts = lv.step, lv.ts
        totals: dict[str, int] = {}
        for (source, _metric), n in counts.items():
            totals[source] = totals.get(source, 0) + n
        for source, kind in names.items():  # assigned, not added: a reconfigure seeds again
            self.health.setdefault(source, SourceHealth(source, kind)).points = totals.get(source, 0)
        if not self.spec.primary_metric:
            self._primary = detect_primary_metric(m for _, _, m in self._latest)

    def snapshot(self) -> Snapshot:
        """A consistent picture for status and gauges (cheap: no I/O)."""
        now = self._clock()
        latest: dict[str, Latest] = {}
        for (source, run, metric), (_, step, ts, value, _) in self._latest.items():
            cur = latest.get(metric)
            if cur is None or step > cur.step or (step == cur.step and ts > cur.ts):
                latest[metric] = Latest(value, step, ts, source, run)
        healths = tuple(replace(h, skipped=dict(h.skipped), errors=dict(h.errors), info=dict(h.info))
                        for h in self.health.values())
        total = self.spec.total_steps or max((h.total_steps for h in healths if h.total_steps), default=None)
        step = self._max_step
        progress: float | None = None
        if total and step is not None:
            progress = min(1.0, max(0.0, step / total))
        else:
            reported = [h.progress for h in healths if h.progress is not None]
            progress = max(reported) if reported else None
        run_state = combine_with_job(combine_run_states(h.run_state for h in healths), self.job)
        if run_state == RunState.FINISHED:
            progress = 1.0  # the run ended normally: all of it is done, whatever its last step's convention
        ended = self.job is not None and self.job.ended
        rate = None if ended or run_state in (RunState.FINISHED, RunState.FAILED) else self._rate.rate()
        primary = self._primary or detect_primary_metric(latest)
        last_ts = max((h.newest_ts for h in healths if h.newest_ts is not None), default=None)
        done = ended or run_state == RunState.FINISHED
        eta = 0.0 if done else eta_seconds(step, total, rate, self._rate.pause_overhead())
        if eta is None and not done:  # no step-based estimate: a source's own, if any
            eta = max((h.eta_seconds for h in healths if h.eta_seconds is not None), default=None)
        return Snapshot(step=step, total_steps=total, progress=progress, throughput=rate, eta_seconds=eta,
                        primary_metric=primary, latest=latest, run_state=run_state, sources=healths,
                        last_point_ts=last_ts, taken_at=now, health=tuple(self._conditions.values()),
                        step_ts=self._max_step_ts, store=getattr(getattr(self.store, "state", None), "health", None),
                        job=self.job)

    # ---- health ---------------------------------------------------------------------------------------------

    def evaluate_health(self) -> list[HealthEvent]:
        """Judge every health condition now; returns (and queues for the store) the transitions."""
        now = self._clock()
        run_state = combine_with_job(combine_run_states(h.run_state for h in self.health.values()), self.job)
        if self.job is not None and self.job.ended and run_state not in (RunState.FINISHED, RunState.FAILED):
            run_state = RunState.FINISHED  # a deleted job: no more steps will come, so never Stalled
        sources_ok = any(h.state == SourceState.HEALTHY for h in self.health.values())
        current = self._health.evaluate(now, run_state=run_state, step=self._max_step, step_ts=self._max_step_ts,
                                        step_interval=self._rate.step_interval(), sources_ok=sources_ok)
        if self.job is not None and self.job.phase == JobPhase.SUSPENDED:  # held by a queue: no steps expected
            current[STALLED] = Condition(STALLED, "False", "JobSuspended", "the job is suspended")
        events = transitions(self._conditions, current, now)
        self._conditions = current
        if events:
            self._unsaved_events = (self._unsaved_events + events)[-1000:]  # bounded while the store is away
        return events

    async def _save_events(self) -> None:
        if not self._unsaved_events:
            return
        pending = self._unsaved_events
        try:
            await self.store.add_health_events(self.uid, pending)
        except StoreUnavailable:
            return
        self._unsaved_events = self._unsaved_events[len(pending):]

    async def _watch_health(self) -> None:
        while not self._stopping.is_set():
            try:
                self.evaluate_health()
                await self._save_events()
            except Exception:  # a bug here must not stop collection; it shows in the log
                log.exception("health evaluation of %s failed", self.name)
            await self._sleep(self._health_interval)
