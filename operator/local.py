"""`trainscope local`: the same Collectors, driven from Workload YAML files, with no cluster, and a live table."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from trainscope.collector.collector import Snapshot
from trainscope.collector.progress import format_duration
from trainscope.collector.spec import SpecError, parse_spec
from trainscope.operator.gauges import MetricsEndpoint
from trainscope.operator.runtime import Runtime, RuntimeConfig
from trainscope.operator.status import phase_of

API_VERSION = "trainscope.io/v1alpha1"


class ManifestError(ValueError):
    """A Workload file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class LocalWorkload:
    uid: str
    namespace: str
    name: str
    spec: dict[str, Any]
    base_dir: Path


def local_uid(namespace: str, name: str) -> str:
    """Stable across runs, so `trainscope local` resumes from its stored cursors."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"trainscope-local/{namespace}/{name}"))


def load_workloads(paths: list[Path]) -> list[LocalWorkload]:
    """Read Workload manifests (several documents per file allowed) and validate their specs."""
    out: list[LocalWorkload] = []
    seen: set[tuple[str, str]] = set()
    for path in paths:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        except (OSError, yaml.YAMLError) as exc:
            raise ManifestError(f"{path}: {exc}") from exc
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Workload" or doc.get("apiVersion") != API_VERSION:
                raise ManifestError(f"{path}: expected kind Workload, apiVersion {API_VERSION}")
            meta = doc.get("metadata") or {}
            name, namespace = meta.get("name"), meta.get("namespace", "default")
            if not name:
                raise ManifestError(f"{path}: metadata.name: required field is missing")
            try:
                parse_spec(doc.get("spec"))
            except SpecError as err:
                raise ManifestError(f"{path}: Workload {namespace}/{name}: {err}") from err
            if (namespace, name) in seen:
                raise ManifestError(f"{path}: Workload {namespace}/{name} is defined twice")
            seen.add((namespace, name))
            out.append(LocalWorkload(local_uid(namespace, name), namespace, name, doc["spec"],
                                     path.resolve().parent))
    return out


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def render(rows: list[tuple[LocalWorkload, Snapshot | None]], waiting: str | None) -> Table:
    """The live table: one line per Workload, sources' health at the end."""
    table = Table(title="trainscope local" + (f"  [yellow]{waiting}[/]" if waiting else ""), expand=True)
    for col in ("Workload", "Phase", "Step", "Progress", "Loss", "Steps/s", "ETA", "Sources"):
        table.add_column(col, no_wrap=col != "Sources")
    for wl, snap in rows:
        if snap is None:
            table.add_row(f"{wl.namespace}/{wl.name}", "Pending", "-", "-", "-", "-", "-", "starting")
            continue
        primary = snap.primary
        loss = "-" if primary is None else f"{primary.value:.4g}"
        if snap.primary_metric and primary is not None:
            loss = f"{loss} ({snap.primary_metric})"
        step = "-" if snap.step is None else (f"{snap.step}/{snap.total_steps}" if snap.total_steps else str(snap.step))
        sources = ", ".join(
            f"{h.name}: {h.state}" + (f" ({h.last_error[:60]})" if h.last_error and not h.healthy else "")
            + (f" lag {format_duration(h.lag(snap.taken_at))}" if h.newest_ts else "")
            for h in snap.sources)
        table.add_row(f"{wl.namespace}/{wl.name}", phase_of(snap), step,
                      "-" if snap.progress is None else f"{snap.progress:.1%}", loss, _fmt(snap.throughput),
                      format_duration(snap.eta_seconds) or "-", sources)
    return table


@dataclass(frozen=True, slots=True)
class LocalApi:
    """Where local mode serves the REST API (trainscope.api); the token stays out of repr."""

    port: int = 8080  # 0: a free port
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()


def live_facts(snap: Snapshot | None) -> dict[str, Any] | None:
    """What the API adds to a workload from the running collector: phase and progress."""
    if snap is None:
        return None
    return {"phase": phase_of(snap), "progress": snap.progress}


async def _start_api(api: LocalApi, config: RuntimeConfig, runtime: Runtime, console: Console) -> Any:
    from trainscope.api.app import ApiSettings
    from trainscope.api.server import ApiServer

    settings = ApiSettings(database_url=config.database_url, token=api.token, cors_origins=api.cors_origins,
                           live=lambda uid: live_facts(runtime.snapshot(uid)))
    server = ApiServer(settings, api.host, api.port)
    try:
        await server.start()
    except OSError as exc:  # e.g. the port is taken: collecting goes on without the API
        console.print(f"[yellow]trainscope local: the API could not listen on {api.host}:{api.port} ({exc}); "
                      "collecting without it[/]")
        await server.stop()
        return None
    return server


async def run_local(workloads: list[LocalWorkload], config: RuntimeConfig, *, console: Console | None = None,
                    refresh: float = 1.0, stop: asyncio.Event | None = None,
                    api: LocalApi | None = None) -> dict[str, Snapshot | None]:
    """Collect until `stop` is set or SIGINT/SIGTERM arrives; returns the last snapshots (for tests and --once).

    With `api`, the REST API is served from the same process (on the same database) while collecting.
    """
    console = console or Console()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(config)
    await runtime.start()
    metrics = MetricsEndpoint(runtime.exported, config.metrics_port, config.metrics_host)
    api_server = await _start_api(api, config, runtime, console) if api is not None else None
    caption = f"API: http://{api.host}:{api_server.port}/api/v1/workloads" if api and api_server else None
    try:
        for wl in workloads:
            await runtime.apply(wl.uid, wl.namespace, wl.name, wl.spec, base_dir=wl.base_dir)
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                rows = [(wl, runtime.snapshot(wl.uid)) for wl in workloads]
                table = render(rows, runtime.store_error)
                table.caption = caption
                live.update(table)
                if stop.is_set():  # the last frame shows the state at the stop, not one refresh before
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh)
        return {wl.uid: snap for wl, snap in rows}
    finally:
        if api_server is not None:
            await api_server.stop()
        metrics.close()
        await runtime.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
