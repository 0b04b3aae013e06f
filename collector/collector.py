"""One Collector per Workload: a task per source that polls, filters, stores and tracks health.

It knows nothing of where the spec came from (a Kubernetes object or a YAML file) and nothing of Prometheus:
the operator reads `snapshot()` and turns it into status and gauges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainscope.collector.admit import Admitted, admit
from trainscope.collector.batches import (
    DEFAULT_BATCH_BYTES,
    Ahead,
    SourceHealth,
    SourceState,
    batch_points,
    drop_ahead,
    note_rejections,
    poll_ahead,
    select,
    storable,
    unrefused,
)
from trainscope.collector.health import STALLED, Condition, HealthEvent, HealthMonitor, transitions
from trainscope.collector.points import COLUMNS_FROM, Batch, Columns, Point, RawPoint, RunState
from trainscope.collector.progress import (
    JobPhase,
    JobState,
    combine_run_states,
    combine_with_job,
    detect_primary_metric,
    eta_seconds,
)
from trainscope.collector.scrub import remember_secret, scrub
from trainscope.collector.seen import Seen
from trainscope.collector.sources import REGISTRY, Source, SourceContext, SourceError, SourceFactory
from trainscope.collector.sources.base import PodLogReader, SecretResolver, counts_training_steps
from trainscope.collector.spec import SourceSpec, WorkloadSpec
from trainscope.collector.store import Store, StoreHealth, StoreUnavailable
from trainscope.collector.store.quarantine import Outcome, write_isolating

__all__ = ["Collector", "Latest", "Snapshot", "SourceHealth", "SourceState"]

log = logging.getLogger(__name__)

# While the database is away, retry at least this often: the source's backoff (up to backoff_cap, 300 s by default)
# is meant for rate-limited APIs; behind a 60 s database outage it left collection idle for minutes afterwards.
STORE_RETRY_MAX = 5.0
STORE_RETRY_REFUSED = 30.0  # the database refused us (credentials, missing database, privilege)

def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _remembering(resolve: SecretResolver | None) -> SecretResolver | None:
    """The resolver, teaching the scrubber each value it hands out (so no error text can carry it)."""
    if resolve is None:
        return None

    async def resolved(ref: dict[str, str]) -> str:
        value = await resolve(ref)
        remember_secret(value)
        return value

    return resolved


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
        max_batch_points: int | None = None,
        max_batch_bytes: int = DEFAULT_BATCH_BYTES,
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
                                  base_dir=base_dir or Path.cwd(),
                                  max_batch_points=batch_points(max_batch_bytes, max_batch_points),
                                  resolve_secret=_remembering(resolve_secret), pods=pods)
        self._registry = REGISTRY if registry is None else registry
        self._backoff = (backoff_base, backoff_cap)
        self._clock = clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._health_task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self.health: dict[str, SourceHealth] = {}
        self.seen = Seen(spec.primary_metric)  # latest values, the Workload's step and pace
        self._allowed: dict[str, bool] = {}
        self._health = HealthMonitor(spec.health)
        self._health_interval = health_interval
        # A whole poll's deadline: HTTP clients time out per read, so a server trickling an endless answer one byte
        # at a time would otherwise hold the source forever, still shown as healthy.
        self._poll_timeout = poll_timeout
        self._conditions: dict[str, Condition] = {}
        self._unsaved_events: list[HealthEvent] = []
        self.job: JobState | None = None
        self._job_ended = asyncio.Event()  # wakes sleeping sources for their final poll
        self._sleepers: set[asyncio.Future[None]] = set()  # what _wake_sleepers ends: stop() and the job's end

    def set_job(self, job: JobState | None) -> None:
        """The training job's state (from the operator). Once it has ended, each source polls once more and stops."""
        self.job = job
        if job is not None and job.ended:
            self._job_ended.set()
            self._wake_sleepers()

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
        self._wake_sleepers()
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
        self.seen.set_primary(spec.primary_metric)
        self._ctx = replace(self._ctx, selector=spec.selector)
        self._allowed.clear()
        names = {s.name for s in spec.sources}
        for gone in set(self.health) - names:
            del self.health[gone]
        self.seen.forget_sources(names)
        await self.start()

    @property
    def running(self) -> bool:
        return any(not t.done() for t in self._tasks.values())

    # ---- one source -----------------------------------------------------------------------------------

    async def _run_source(self, src: SourceSpec, health: SourceHealth) -> None:
        """Poll, admit and write, in order. While a source has more to give (`batch.more`, a catch-up), its next
        poll starts before the current batch is written, so reading and the database's commit overlap; the cursor
        is still committed in the same transaction as its points, and at most one batch waits in memory. During
        a catch-up a stored batch's bookkeeping (latest values, step, pace, health) is taken while the next batch
        is written, so the database never waits for it."""
        backoff = Backoff(*self._backoff)
        source: Source | None = None
        ahead: Ahead | None = None
        done: tuple[Batch, list[RawPoint] | Columns, Outcome, list[str]] | None = None  # stored, not taken in

        def settle() -> None:
            nonlocal done
            if done is not None:
                stored, points, outcome, notes = done
                done = None
                self._absorb(src.name, health, stored, points, outcome.result.inserted)
                note_rejections(health, notes, outcome)

        try:
            cursor = await self._store_call(health, backoff, lambda: self.store.load_cursor(self.uid, src.name))
            while not self._stopping.is_set():
                # this poll starts after the job ended: it is the last one
                final = ahead.final if ahead is not None else self._job_ended.is_set()
                try:
                    if source is None:
                        source = self._registry[src.kind](src.config, self._ctx)
                    taken = ahead
                    batch = await self._poll(source, cursor, health, backoff, ahead)
                    ahead = None
                    if batch is None:
                        settle()
                        if final:
                            return
                        continue
                    admitted = taken.prepared[0] if taken is not None and taken.prepared else self._prepare(batch)
                    if isinstance(admitted.points, Columns):
                        batch.points = []  # the columns hold them now: the tuples go (two batches are in flight)
                    if batch.more:  # the write and the next poll share the cursor: sources never change one
                        ahead = poll_ahead(source, batch.cursor, self._job_ended.is_set(), self._prepare)
                    write = asyncio.ensure_future(self._store_call(
                        health, backoff,
                        lambda b=batch, a=admitted, c=cursor: write_isolating(
                            self.store, self.uid, src.name, src.kind, a.points, c, b.cursor, b.runs, a.rejected)))
                    if done is not None:
                        try:
                            await asyncio.sleep(0)  # the write runs to its first wait on the database...
                        except BaseException:
                            write.cancel()
                            raise
                        settle()  # ...while the last batch's bookkeeping is taken
                    outcome = await write
                except Exception as exc:  # a bad config, a write the database rejects, or a bug: back off
                    settle()
                    reason = exc.reason if isinstance(exc, SourceError) else f"Internal{type(exc).__name__}"
                    log.exception("source %s/%s: unexpected failure", self.name, src.name)
                    self._fail(health, exc, reason)
                    await self._drop(ahead)  # it read past a batch that was not stored
                    ahead = None
                    await self._sleep(backoff.next())
                    continue
                if outcome is None:  # stopped while the store was away; nothing committed, nothing lost
                    return
                cursor = batch.cursor
                points = admitted.points
                if outcome.rejected:  # the database refused these alone: they are not part of what was seen
                    points = unrefused(points, outcome)
                done = (batch, points, outcome, admitted.notes)
                backoff.reset()
                if not batch.more:  # a live run's batch (or a catch-up's last): taken in at once
                    settle()
                if final and not batch.more:
                    health.state = SourceState.FINISHED
                    return
                if not batch.more:
                    await self._sleep(src.poll_interval or self.spec.poll_interval)
                else:
                    await asyncio.sleep(0)
        finally:
            settle()
            if ahead is not None:  # stopping: a poll in a worker thread gets a moment to end before aclose
                await asyncio.wait({ahead.task}, timeout=2.0)
                await self._drop(ahead, wait=False)
            if source is not None:
                with contextlib.suppress(Exception):
                    await source.aclose()

    def _prepare(self, batch: Batch) -> Admitted:
        """What is stored of a batch: the spec's metric filter, names PostgreSQL can hold, admission. A batch of
        many points goes on as columns (one numpy array per field) to the COPY; a few points stay tuples."""
        points = batch.points
        if not isinstance(points, Columns) and len(points) >= COLUMNS_FROM:
            points = Columns.from_points(points) or points
        return admit(storable(select(points, self.spec.metrics, self._allowed)), self._clock())

    async def _drop(self, ahead: Ahead | None, *, wait: bool = True) -> None:
        await drop_ahead(ahead, self._stopping, self._poll_timeout, wait=wait)

    async def _poll(self, source: Source, cursor: Any, health: SourceHealth, backoff: Backoff,
                    ahead: Ahead | None = None) -> Batch | None:
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
        if self._stopping.is_set():
            return
        # One future and one timer handle: asyncio.wait over the two events' waiters cost three tasks per sleep,
        # a fifth of an operator's CPU at 1,000 Workloads (bench_scale --profile).
        wake = asyncio.get_running_loop().create_future()
        self._sleepers.add(wake)
        timer = wake.get_loop().call_later(seconds, _wake, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._sleepers.discard(wake)

    def _wake_sleepers(self) -> None:
        for wake in self._sleepers:
            _wake(wake)

    # ---- what was seen ----------------------------------------------------------------------------------

    def _absorb(self, source: str, health: SourceHealth, batch: Batch, points: list[RawPoint] | Columns,
                inserted: int) -> None:
        health.newest_ts = self.seen.absorb(source, points, counts_training_steps(self._registry.get(health.kind)),
                                            health.newest_ts)
        self._health.observe(source, points, self.seen.primary)
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
            self.seen.seed(lv.source, Point(lv.metric, lv.step, lv.ts, lv.value, lv.run),
                           counts_training_steps(self._registry.get(names[lv.source])))
            h = self.health.setdefault(lv.source, SourceHealth(lv.source, names[lv.source]))
            if h.newest_ts is None or lv.ts > h.newest_ts:
                h.newest_ts = lv.ts
        totals: dict[str, int] = {}
        for (source, _metric), n in counts.items():
            totals[source] = totals.get(source, 0) + n
        for source, kind in names.items():  # assigned, not added: a reconfigure seeds again
            self.health.setdefault(source, SourceHealth(source, kind)).points = totals.get(source, 0)
        self.seen.seeded()

    def snapshot(self) -> Snapshot:
        """A consistent picture for status and gauges (cheap: no I/O)."""
        now = self._clock()
        latest: dict[str, Latest] = {}
        seen = self.seen
        for (source, run, metric), (_, step, ts, value, _) in seen.latest.items():
            cur = latest.get(metric)
            if cur is None or step > cur.step or (step == cur.step and ts > cur.ts):
                latest[metric] = Latest(value, step, ts, source, run)
        healths = tuple(replace(h, skipped=dict(h.skipped), errors=dict(h.errors), info=dict(h.info))
                        for h in self.health.values())
        total = self.spec.total_steps or max((h.total_steps for h in healths if h.total_steps), default=None)
        step = seen.max_step
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
        rate = None if ended or run_state in (RunState.FINISHED, RunState.FAILED) else seen.rate.rate()
        primary = seen.primary or detect_primary_metric(latest)
        last_ts = max((h.newest_ts for h in healths if h.newest_ts is not None), default=None)
        done = ended or run_state == RunState.FINISHED
        eta = 0.0 if done else eta_seconds(step, total, rate, seen.rate.pause_overhead())
        if eta is None and not done:  # no step-based estimate: a source's own, if any
            eta = max((h.eta_seconds for h in healths if h.eta_seconds is not None), default=None)
        return Snapshot(step=step, total_steps=total, progress=progress, throughput=rate, eta_seconds=eta,
                        primary_metric=primary, latest=latest, run_state=run_state, sources=healths,
                        last_point_ts=last_ts, taken_at=now, health=tuple(self._conditions.values()),
                        step_ts=seen.max_step_ts, store=getattr(getattr(self.store, "state", None), "health", None),
                        job=self.job)

    # ---- health ---------------------------------------------------------------------------------------------

    def evaluate_health(self) -> list[HealthEvent]:
        """Judge every health condition now; returns (and queues for the store) the transitions."""
        now = self._clock()
        run_state = combine_with_job(combine_run_states(h.run_state for h in self.health.values()), self.job)
        if self.job is not None and self.job.ended and run_state not in (RunState.FINISHED, RunState.FAILED):
            run_state = RunState.FINISHED  # a deleted job: no more steps will come, so never Stalled
        sources_ok = any(h.state == SourceState.HEALTHY for h in self.health.values())
        seen = self.seen
        current = self._health.evaluate(now, run_state=run_state, step=seen.max_step, step_ts=seen.max_step_ts,
                                        step_interval=seen.rate.step_interval(), sources_ok=sources_ok)
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
