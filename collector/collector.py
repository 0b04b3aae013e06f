"""One Collector per Workload: a task per source that polls, filters, stores and tracks health.

It knows nothing of where the spec came from (a Kubernetes object or a YAML file) and nothing of Prometheus:
the operator reads `snapshot()` and turns it into status and gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import operator
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

from trainscope.collector.health import Condition, HealthEvent, HealthMonitor, transitions
from trainscope.collector.points import Batch, Point, RawPoint, RunState
from trainscope.collector.progress import StepRate, combine_run_states, detect_primary_metric, eta_seconds
from trainscope.collector.sources import REGISTRY, Source, SourceContext, SourceError, SourceFactory
from trainscope.collector.sources.base import PodLogReader, SecretResolver, counts_training_steps
from trainscope.collector.spec import MetricFilter, SourceSpec, WorkloadSpec
from trainscope.collector.store import Store, StoreUnavailable

log = logging.getLogger(__name__)

# While the database is away, retry at least this often: the source's backoff (up to backoff_cap, 300 s by default)
# is meant for rate-limited APIs; behind a 60 s database outage it left collection idle for minutes afterwards.
STORE_RETRY_MAX = 5.0

_METRIC, _STEP, _TS, _RUN = (operator.itemgetter(i) for i in (0, 1, 2, 4))
_STOPPED = object()  # what a source's writer returns when the collector stops


def _storable(points: list[RawPoint]) -> list[RawPoint]:
    """Names with a NUL character (legal in a TensorBoard tag) as U+FFFD: PostgreSQL text cannot hold NUL, and one
    such name made every write of its batch fail, so the source retried the same batch forever."""
    names = set(map(_METRIC, points))
    names.update(map(_RUN, points))
    if not any("\x00" in n for n in names):  # per distinct name, not per point
        return points
    return [(m.replace("\x00", "\ufffd"), step, ts, value, run.replace("\x00", "\ufffd"))
            for m, step, ts, value, run in points]


@dataclass(frozen=True, slots=True)
class _Summary:
    """What a batch changes in the collector's picture, computed once per batch off the writer's path."""

    newest: dict[tuple[str, str], RawPoint]  # (run, metric) -> its newest point in the batch (step, then ts)
    peaks: list[tuple[float, int]]  # (ts, step) of each step higher than all before it in the batch, in order
    newest_ts: float | None


class _Ready(NamedTuple):
    batch: Batch
    points: list[RawPoint]
    summary: _Summary


def _summarize(points: list[RawPoint]) -> _Summary:
    newest: dict[tuple[str, str], RawPoint] = {}
    get = newest.get
    for p in points:
        key = (p[4], p[0])
        cur = get(key)
        if cur is None or p[1] > cur[1] or (p[1] == cur[1] and p[2] >= cur[2]):
            newest[key] = p
    if not points:
        return _Summary(newest, [], None)
    steps, tss = list(map(_STEP, points)), list(map(_TS, points))
    peaks: list[tuple[float, int]] = []
    top = None
    for step, ts in zip(steps, tss, strict=True):
        if top is None or step > top:
            top = step
            peaks.append((ts, step))
    return _Summary(newest, peaks, max(tss))


class SourceState:
    """Health states of one source, as shown in status."""

    STARTING = "Starting"
    HEALTHY = "Healthy"
    FAILING = "Failing"
    WAITING = "WaitingForStore"  # the source is fine; the database is not
    STOPPED = "Stopped"


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
        return self.state in (SourceState.HEALTHY, SourceState.STARTING)


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
                                  resolve_secret=resolve_secret, pods=pods)
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
        """Read and write in overlap: a poll task keeps at most one filtered batch ready while this task commits
        the previous one, so neither waits for the other during a catch-up. The cursor is still committed in the
        same transaction as its points; after a failed write the reader restarts from the committed cursor."""
        backoff = Backoff(*self._backoff)
        holder: list[Source | None] = [None]
        polling = [False]  # the reader is inside a poll (a worker thread may be running it: not cancelled then)
        try:
            cursor = await self._store_call(health, backoff, lambda: self.store.load_cursor(self.uid, src.name))
            while not self._stopping.is_set():
                ready: asyncio.Queue[_Ready] = asyncio.Queue(maxsize=1)
                abort = asyncio.Event()
                reader = asyncio.create_task(self._read(src, health, backoff, holder, polling, cursor, ready, abort),
                                             name=f"{self.name}/{src.name}/read")
                try:
                    cursor = await self._write_from(src, health, backoff, ready, reader, cursor)
                    if cursor is not _STOPPED:  # let a poll under way end (no second poll of the same source)
                        abort.set()
                        while not ready.empty():
                            ready.get_nowait()
                        if not polling[0]:
                            reader.cancel()
                        await asyncio.wait({reader})
                finally:
                    reader.cancel()
                    await asyncio.gather(reader, return_exceptions=True)
                if cursor is _STOPPED:
                    return
        finally:
            if holder[0] is not None:
                with contextlib.suppress(Exception):
                    await holder[0].aclose()

    async def _read(self, src: SourceSpec, health: SourceHealth, backoff: Backoff, holder: list[Source | None],
                    polling: list[bool], cursor: Any, ready: asyncio.Queue[_Ready],
                    abort: asyncio.Event) -> None:
        """Poll from `cursor` on, handing each filtered batch to the writer (waits while one is still queued);
        ends at the next batch once `abort` is set."""
        while not self._stopping.is_set() and not abort.is_set():
            try:
                if holder[0] is None:
                    holder[0] = self._registry[src.kind](src.config, self._ctx)
                polling[0] = True
                try:
                    batch = await self._poll(holder[0], cursor, health, backoff)
                finally:
                    polling[0] = False
                if batch is None:
                    continue
                points = _storable(self._select(batch.points))
            except Exception as exc:  # a bad config or a bug: back off
                reason = exc.reason if isinstance(exc, SourceError) else f"Internal{type(exc).__name__}"
                log.exception("source %s/%s: unexpected failure", self.name, src.name)
                self._fail(health, exc, reason)
                await self._sleep(backoff.next())
                continue
            put = asyncio.ensure_future(ready.put(_Ready(batch, points, _summarize(points))))
            aborted = asyncio.ensure_future(abort.wait())
            try:
                await asyncio.wait({put, aborted}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                aborted.cancel()
                if not put.done():
                    put.cancel()
            if abort.is_set():
                return
            cursor = batch.cursor
            if not batch.more:
                await self._sleep(src.poll_interval or self.spec.poll_interval)
            else:
                await asyncio.sleep(0)

    async def _write_from(self, src: SourceSpec, health: SourceHealth, backoff: Backoff,
                          ready: asyncio.Queue[_Ready], reader: asyncio.Task[None],
                          cursor: Any) -> Any:
        """Commit the reader's batches in order; returns the committed cursor after a failed write (the reader
        must start again from it), or _STOPPED."""
        while True:
            got = asyncio.ensure_future(ready.get())
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({got, stop, reader}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if not got.done():
                got.cancel()
                await asyncio.gather(got, return_exceptions=True)
                if reader.done() and not self._stopping.is_set():  # a bug in the reader: start it again
                    log.error("source %s/%s: reader ended: %r", self.name, src.name, reader.exception())
                    await self._sleep(backoff.next())
                    return cursor
                return _STOPPED
            batch, points, summary = got.result()
            try:
                result = await self._store_call(
                    health, backoff,
                    lambda b=batch, p=points: self.store.write(self.uid, src.name, src.kind, p, b.cursor, b.runs))
            except Exception as exc:  # a write the database rejects, or a bug: back off, read again
                log.exception("source %s/%s: unexpected failure", self.name, src.name)
                self._fail(health, exc, f"Internal{type(exc).__name__}")
                await self._sleep(backoff.next())
                return cursor
            if result is None:  # stopped while the store was away; nothing committed, nothing lost
                return _STOPPED
            cursor = batch.cursor
            self._absorb(src.name, health, batch, points, summary, result.inserted)
            backoff.reset()

    async def _poll(self, source: Source, cursor: Any, health: SourceHealth, backoff: Backoff) -> Batch | None:
        """Poll once, abandoning the poll if the collector stops (nothing is committed during a poll)."""
        started = time.monotonic()
        poll = asyncio.ensure_future(source.poll(cursor))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({poll, stop}, timeout=self._poll_timeout, return_when=asyncio.FIRST_COMPLETED)
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
        elapsed = time.monotonic() - started
        health.polls += 1
        health.poll_seconds += elapsed
        health.last_poll_seconds = elapsed
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
                health.last_error = f"database unavailable: {exc}"
                health.last_error_reason = "StoreUnavailable"
                health.errors["StoreUnavailable"] = health.errors.get("StoreUnavailable", 0) + 1
                if self._stopping.is_set():
                    return None
                await self._sleep(min(backoff.next(), STORE_RETRY_MAX))

    def _fail(self, health: SourceHealth, exc: BaseException, reason: str) -> None:
        health.state = SourceState.FAILING
        health.consecutive_failures += 1
        health.last_error = str(exc) or type(exc).__name__
        health.last_error_reason = reason
        health.errors[reason] = health.errors.get(reason, 0) + 1
        log.warning("source %s/%s failed (%s): %s", self.name, health.name, reason, health.last_error)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    # ---- what was seen ----------------------------------------------------------------------------------

    def _select(self, points: list[RawPoint]) -> list[RawPoint]:
        """Apply spec.metrics include/exclude before storing (the verdict per name is cached)."""
        allowed = self._allowed
        flt: MetricFilter = self.spec.metrics
        if not flt.include and not flt.exclude:
            return points
        names = set(map(_METRIC, points))  # judged per name, then one pass keeps the allowed ones
        for metric in names - allowed.keys():
            allowed[metric] = flt.allows(metric)
        kept = {m for m in names if allowed[m]}
        if len(kept) == len(names):
            return points
        return [p for p in points if p[0] in kept]

    def _absorb(self, source: str, health: SourceHealth, batch: Batch, points: list[RawPoint], summary: _Summary,
                inserted: int) -> None:
        """What a committed batch changes: latest values, the highest step and its pace, the source's newest time.
        Applies the batch's summary (made by the reader while the previous batch was being written)."""
        latest = self._latest
        new_names = False
        for (run, metric), p in summary.newest.items():
            key = (source, run, metric)
            cur = latest.get(key)
            if cur is None:
                new_names = True
                latest[key] = p
            elif p[1] > cur[1] or (p[1] == cur[1] and p[2] >= cur[2]):
                latest[key] = p
        if summary.peaks and counts_training_steps(self._registry.get(health.kind)):
            top = self._max_step
            for ts, step in summary.peaks:  # only new highest steps feed the pace, in order
                if top is None or step > top:
                    top = step
                    self._max_step_ts = ts
                    self._rate.observe(ts, step)
            self._max_step = top
        if summary.newest_ts is not None and (health.newest_ts is None or summary.newest_ts > health.newest_ts):
            health.newest_ts = summary.newest_ts
        steps = counts_training_steps(self._registry.get(health.kind))
        if new_names and not self.spec.primary_metric:
            self._primary = detect_primary_metric(m for _, _, m in latest)
        self._health.observe(source, points, self._primary)
        health.points += inserted
        health.state = SourceState.HEALTHY
        health.consecutive_failures = 0
        health.last_success = self._clock()
        if batch.state is not None:
            health.run_state = batch.state
        if batch.progress is not None:
            health.progress = batch.progress
        if batch.total_steps is not None and steps:
            health.total_steps = batch.total_steps
        health.eta_seconds = batch.eta_seconds
        health.notes = tuple(batch.notes)
        for reason, n in batch.skipped.items():
            health.skipped[reason] = health.skipped.get(reason, 0) + n
        health.info.update(batch.info)

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
        run_state = combine_run_states(h.run_state for h in healths)
        if run_state == RunState.FINISHED and progress is not None:
            progress = 1.0 if not total else progress
        rate = self._rate.rate()
        primary = self._primary or detect_primary_metric(latest)
        last_ts = max((h.newest_ts for h in healths if h.newest_ts is not None), default=None)
        eta = 0.0 if run_state == RunState.FINISHED else eta_seconds(step, total, rate, self._rate.pause_overhead())
        if eta is None and run_state != RunState.FINISHED:  # no step-based estimate: a source's own, if any
            eta = max((h.eta_seconds for h in healths if h.eta_seconds is not None), default=None)
        return Snapshot(step=step, total_steps=total, progress=progress, throughput=rate, eta_seconds=eta,
                        primary_metric=primary, latest=latest, run_state=run_state, sources=healths,
                        last_point_ts=last_ts, taken_at=now, health=tuple(self._conditions.values()),
                        step_ts=self._max_step_ts)

    # ---- health ---------------------------------------------------------------------------------------------

    def evaluate_health(self) -> list[HealthEvent]:
        """Judge every health condition now; returns (and queues for the store) the transitions."""
        now = self._clock()
        run_state = combine_run_states(h.run_state for h in self.health.values())
        sources_ok = any(h.state == SourceState.HEALTHY for h in self.health.values())
        current = self._health.evaluate(now, run_state=run_state, step=self._max_step, step_ts=self._max_step_ts,
                                        step_interval=self._rate.step_interval(), sources_ok=sources_ok)
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
