"""The Collectors of one process, keyed by Workload UID, plus the shared store; used by kopf and local mode.

Kept free of kopf so that the lifecycle (apply a spec, restart on change, stop, forget) is tested directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainscope.collector.batches import DEFAULT_BATCH_BYTES
from trainscope.collector.collector import Collector, Snapshot
from trainscope.collector.progress import JobState
from trainscope.collector.scrub import install_log_scrubber
from trainscope.collector.spec import SpecError, WorkloadSpec, parse_spec
from trainscope.collector.store import Store, StoreState, StoreUnavailable
from trainscope.collector.store.errors import CONFIG_REASONS
from trainscope.operator.follow import JobFollower
from trainscope.operator.gauges import Exported
from trainscope.operator.jobs import adapter_for
from trainscope.operator.kube import KubeClient, secret_resolver
from trainscope.operator.status import build_status

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RuntimeConfig:
    """Settings of one operator or local process."""

    database_url: str
    metrics_port: int | None = 9090  # None: no Prometheus endpoint
    metrics_host: str = "0.0.0.0"
    base_dir: Path | None = None  # where relative paths in specs start (local mode: the YAML's folder)
    max_batch_bytes: int = DEFAULT_BATCH_BYTES  # a catch-up batch's memory (collector/batches.py batch_points)
    max_batch_points: int | None = None  # a cap on top of the bytes (tests, benches)
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    poll_timeout: float = 300.0  # a poll running longer is abandoned and counted as a failure (PollTimeout)
    store_retry: float = 2.0  # seconds between attempts to reach the database at start (doubling up to 30 s when
    #                          it refuses us: wrong credentials, no database, no privilege)
    store_probe: float = 5.0  # seconds between checks that the database still answers (StoreReady, store_up)
    store_connect_timeout: float = 10.0  # a connection attempt; a hung server fails it instead of hanging
    store_command_timeout: float = 60.0  # one statement
    kube_connection: Any = None  # kubeauth.Credentials or a kopf.ConnectionInfo for Secrets and pod logs; None: none
    secrets_dir: Path | None = None  # local mode: Secrets as files <dir>/<name>/<key>
    job_interval: float = 10.0  # seconds between two listings of the followed job kinds
    discover_jobs: bool = False  # create Workloads for jobs annotated trainscope.io/collect: "true"
    namespaces: tuple[str, ...] = ()  # the operator's namespaces; empty: cluster-wide


@dataclass(slots=True)
class Entry:
    uid: str
    namespace: str
    name: str
    raw_spec: dict[str, Any]
    spec: WorkloadSpec | None = None
    error: str | None = None
    error_field: str | None = None
    generation: int | None = None
    base_dir: Path | None = None
    collector: Collector | None = None
    starting: asyncio.Task[None] | None = field(default=None, repr=False)
    job: JobState | None = None  # the jobRef's state as last listed
    ended_at: float | None = None  # when the job was first seen ended (gauges are kept retainGaugesFor after)


class Runtime:
    """Owns the store pool and one Collector per valid Workload."""

    def __init__(self, config: RuntimeConfig):
        install_log_scrubber()  # no log line of this process carries a secret, whoever writes it
        self.config = config
        self.store: Store | None = None
        self.store_error: str | None = None
        self.store_state = StoreState()
        self._probe_task: asyncio.Task[None] | None = None
        self._store_ready = asyncio.Event()
        self._connect_task: asyncio.Task[None] | None = None
        self.entries: dict[str, Entry] = {}
        self._lock = asyncio.Lock()
        self.kube: KubeClient | None = KubeClient(config.kube_connection) if config.kube_connection else None
        self.jobs: JobFollower | None = None
        if self.kube is not None:
            self.jobs = JobFollower(self.kube, namespaces=config.namespaces, discover=config.discover_jobs)
        self._follow_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect to the database (and migrate) in the background, so a database that is down at start
        delays collection instead of failing the process."""
        self._connect_task = asyncio.create_task(self._connect(), name="store-connect")
        if self.jobs is not None:
            self._follow_task = asyncio.create_task(self._follow(), name="follow-jobs")

    async def _connect(self) -> None:
        cfg = self.config
        attempt = 0
        while self.store is None:
            try:
                self.store = await Store.open(cfg.database_url, migrate=True, state=self.store_state,
                                              connect_timeout=cfg.store_connect_timeout,
                                              command_timeout=cfg.store_command_timeout)
            except StoreUnavailable as exc:  # logged once per change by store_state
                self.store_error = f"database unavailable: {exc}"
                attempt += 1
                delay = cfg.store_retry
                if exc.reason in CONFIG_REASONS:  # a person has to act: do not hammer the server meanwhile
                    delay = min(30.0, cfg.store_retry * 2 ** min(attempt - 1, 8))
                log.debug("%s; retrying in %.0fs", self.store_error, delay)
                await asyncio.sleep(delay)
        self.store_error = None
        self._store_ready.set()
        self._probe_task = asyncio.create_task(self._probe(self.store), name="store-probe")

    async def _probe(self, store: Store) -> None:
        """Keep `store_state` current while no collector happens to call the store (idle or long poll intervals)."""
        while True:
            await asyncio.sleep(self.config.store_probe)
            await store.ping(min(self.config.store_probe, self.config.store_command_timeout))
            h = store.state.health
            self.store_error = None if h.up else f"database unavailable: {h.message}"

    def store_up(self) -> bool | None:
        """True/False once the database was tried (the trainscope_store_up gauge); None before."""
        return self.store_state.up

    async def wait_store(self) -> Store:
        """The store, once the database has been reached and migrated."""
        await self._store_ready.wait()
        assert self.store is not None
        return self.store

    async def close(self) -> None:
        """Stop every collector (each commits what it has), then close the pool."""
        if self._follow_task is not None:
            self._follow_task.cancel()
            await asyncio.gather(self._follow_task, return_exceptions=True)
        for uid in list(self.entries):
            await self.stop(uid)
        for task in (self._connect_task, self._probe_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.store is not None:
            await self.store.close()
        if self.kube is not None:
            await self.kube.aclose()

    # ---- lifecycle of one Workload ------------------------------------------------------------------------

    async def apply(self, uid: str, namespace: str, name: str, raw_spec: dict[str, Any],
                    generation: int | None = None, base_dir: Path | None = None) -> SpecError | None:
        """Start or restart the Workload's collector for this spec; an invalid spec stops it and is returned."""
        async with self._lock:
            entry = self.entries.get(uid)
            if entry is None:
                entry = self.entries[uid] = Entry(uid, namespace, name, raw_spec)
            entry.raw_spec, entry.generation = raw_spec, generation
            entry.base_dir = base_dir or self.config.base_dir
            try:
                spec = with_job_pods(parse_spec(raw_spec))
            except SpecError as err:
                entry.spec, entry.error, entry.error_field = None, str(err), err.field
                await self._stop_collector(entry)
                return err
            entry.spec, entry.error, entry.error_field = spec, None, None
            if entry.collector is not None:
                await entry.collector.reconfigure(spec)
            elif entry.starting is None or entry.starting.done():
                entry.starting = asyncio.create_task(self._start_collector(entry), name=f"start/{name}")
            return None

    async def _start_collector(self, entry: Entry) -> None:
        store = await self.wait_store()
        while True:
            try:
                await store.register_workload(entry.uid, entry.namespace, entry.name, entry.raw_spec)
                break
            except StoreUnavailable as exc:
                self.store_error = f"database unavailable: {exc}"
                await asyncio.sleep(self.config.store_retry)
        if entry.spec is None:  # became invalid while we waited
            return
        cfg = self.config
        collector = Collector(entry.uid, entry.spec, store, namespace=entry.namespace, name=entry.name,
                              base_dir=entry.base_dir, max_batch_points=cfg.max_batch_points,
                              max_batch_bytes=cfg.max_batch_bytes, pods=self.kube,
                              resolve_secret=secret_resolver(entry.namespace, self.kube, cfg.secrets_dir),
                              backoff_base=cfg.backoff_base, backoff_cap=cfg.backoff_cap,
                              poll_timeout=cfg.poll_timeout)
        collector.set_job(entry.job)
        await collector.start()
        entry.collector = collector

    async def _stop_collector(self, entry: Entry) -> None:
        if entry.starting is not None and not entry.starting.done():
            entry.starting.cancel()
            await asyncio.gather(entry.starting, return_exceptions=True)
        if entry.collector is not None:
            await entry.collector.stop()
            entry.collector = None

    async def stop(self, uid: str) -> None:
        """Stop collecting for a Workload (operator exit or deletion); it disappears from gauges.

        Shielded: kopf cancels a daemon whose stop takes a few loop cycles, and a half-stopped collector would
        keep writing after `forget()` deleted the data. The stop always runs to its end; callers wait for it.
        """
        await asyncio.shield(self._stop(uid))

    async def _stop(self, uid: str) -> None:
        async with self._lock:
            entry = self.entries.get(uid)
            if entry is not None:
                await self._stop_collector(entry)
                self.entries.pop(uid, None)

    async def forget(self, uid: str, *, delete_data: bool) -> None:
        """The Workload was deleted: stop, and keep or delete its stored data."""
        await self.stop(uid)
        store = await self.wait_store()
        with contextlib.suppress(StoreUnavailable):
            await store.forget_workload(uid, delete_data=delete_data)

    # ---- the jobs Workloads follow -------------------------------------------------------------------------

    async def _follow(self) -> None:
        """List the followed job kinds every job_interval, pass each jobRef's state on, reconcile annotated jobs."""
        assert self.jobs is not None
        while True:
            try:
                await self.follow_once()
            except Exception:  # a bug or an API hiccup must not end following; it shows in the log
                log.exception("following jobs failed")
            await asyncio.sleep(self.config.job_interval)

    async def follow_once(self) -> None:
        assert self.jobs is not None
        entries = [e for e in list(self.entries.values()) if e.spec is not None and e.spec.job_ref is not None]
        await self.jobs.refresh((e.namespace, e.spec.job_ref) for e in entries if e.spec and e.spec.job_ref)
        now = time.time()
        for entry in entries:
            if entry.spec is None or entry.spec.job_ref is None:
                continue
            state = self.jobs.state(entry.namespace, entry.spec.job_ref)
            if state is None:
                continue
            entry.job = state
            entry.ended_at = (entry.ended_at or now) if state.ended else None
            if entry.collector is not None:
                entry.collector.set_job(state)
        await self.jobs.reconcile()

    # ---- what is reported ---------------------------------------------------------------------------------

    def snapshot(self, uid: str) -> Snapshot | None:
        entry = self.entries.get(uid)
        return entry.collector.snapshot() if entry and entry.collector else None

    def status(self, uid: str, previous: dict[str, Any] | None = None,
               now: float | None = None) -> dict[str, Any] | None:
        """The Workload's status as it should be now, or None if this process does not run it."""
        entry = self.entries.get(uid)
        if entry is None:
            return None
        return build_status(self.snapshot(uid), now=now or time.time(), generation=entry.generation,
                            previous=previous, spec_error=entry.error, waiting=self.store_error,
                            store=self.store_state.health,
                            exported=list(entry.spec.prometheus_metrics) if entry.spec else [])

    def exported(self) -> Iterator[Exported]:
        now = time.time()
        for entry in list(self.entries.values()):
            if entry.ended_at is not None and entry.spec is not None and now > entry.ended_at + \
                    entry.spec.retain_gauges_for:
                continue  # the job ended longer ago than spec.retainGaugesFor: its series disappear
            if entry.collector is not None and entry.spec is not None:
                yield Exported(entry.namespace, entry.name, entry.spec.prometheus_metrics,
                               entry.collector.snapshot())


def with_job_pods(spec: WorkloadSpec) -> WorkloadSpec:
    """Check spec.jobRef's kind, and make the job's pods the default pods of the logs sources (spec.selector)."""
    if spec.job_ref is None:
        return spec
    kind = adapter_for(spec.job_ref)  # SpecError naming the field for an unsupported kind
    if spec.selector:
        return spec
    selector = kind.pods(spec.job_ref.name)
    if selector is None:
        if any(s.kind == "logs" and "pods" in s.config and not (s.config["pods"] or {}).get("selector")
               for s in spec.sources):
            raise SpecError("spec.selector", f"required for a logs source of a {spec.job_ref.kind}: its pods carry "
                            "no label this operator knows")
        return spec
    return replace(spec, selector=selector)
