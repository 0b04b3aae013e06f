"""`trainscope local`: the same Collectors, driven from Workload YAML files, with no cluster, and a live table."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from trainscope.collector.collector import Snapshot
from trainscope.collector.health import STALLED
from trainscope.collector.points import RunState
from trainscope.collector.progress import format_duration
from trainscope.collector.spec import SpecError, parse_spec
from trainscope.operator.gauges import MetricsEndpoint
from trainscope.operator.runtime import Runtime, RuntimeConfig
from trainscope.operator.status import Phase, phase_of

API_VERSION = "trainscope.io/v1alpha1"

# Signals that end collection cleanly (SIGHUP: the terminal closed, e.g. its tmux session was killed).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ManifestError(ValueError):
    """A Workload file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class LocalWorkload:
    uid: str
    namespace: str
    name: str
    spec: dict[str, Any]
    base_dir: Path
    poll_interval: float = 30.0  # seconds: the slowest of its sources' polls, for telling a quiet step from a stale one


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
                parsed = parse_spec(doc.get("spec"))
            except SpecError as err:
                raise ManifestError(f"{path}: Workload {namespace}/{name}: {err}") from err
            if (namespace, name) in seen:
                raise ManifestError(f"{path}: Workload {namespace}/{name} is defined twice")
            seen.add((namespace, name))
            poll = max((src.poll_interval or parsed.poll_interval for src in parsed.sources),
                       default=parsed.poll_interval)
            out.append(LocalWorkload(local_uid(namespace, name), namespace, name, doc["spec"],
                                     path.resolve().parent, poll))
    return out


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = ("Workload", "Phase", "Step", "Last step", "Progress", "Loss", "Steps/s", "ETA", "Sources")
STALE_FLOOR = 30.0  # seconds without a new step before the table says so, whatever the pace
ENDED = (Phase.SUCCEEDED, Phase.FAILED)


def step_age(snap: Snapshot) -> float | None:
    """Seconds since the source wrote the highest step (its own timestamp), at the snapshot's time."""
    return None if snap.step_ts is None else max(0.0, snap.taken_at - snap.step_ts)


def stale_after(snap: Snapshot, poll_interval: float) -> float:
    """How long a running Workload may go without a new step before the table calls it stale: three polls (a step
    is seen one poll late at worst), ten of the run's own steps, and never under STALE_FLOOR."""
    pace = 10.0 / snap.throughput if snap.throughput else 0.0
    return max(STALE_FLOOR, 3.0 * poll_interval, pace)


def freshness(wl: LocalWorkload, snap: Snapshot) -> str:
    """`fresh`, `stale` (no new step for longer than stale_after), `stalled` (the Stalled health condition is True)
    or `ended` (the run finished or failed); `none` before the first step."""
    age = step_age(snap)
    if age is None:
        return "none"
    if phase_of(snap) in ENDED:
        return "ended"
    if any(c.type == STALLED and c.status == "True" for c in snap.health):
        return "stalled"
    return "stale" if age > stale_after(snap, wl.poll_interval) else "fresh"


RUN_END_CHARS = 200  # a failed run's last error line (the exception), kept whole in the wrapping Sources cell


def cells(wl: LocalWorkload, snap: Snapshot | None, error_width: int | None = 60) -> tuple[str, ...]:
    """One Workload's line, as plain text (names, paths and errors are data, never markup); a source's error cut at
    `error_width` characters (None: whole). A step that has not moved for a while says so in Last step, and its
    pace and ETA stop claiming a run in progress."""
    if snap is None:
        return (f"{wl.namespace}/{wl.name}", "Pending", "-", "-", "-", "-", "-", "-", "starting")
    primary = snap.primary
    loss = "-" if primary is None else f"{primary.value:.4g}"
    if snap.primary_metric and primary is not None:
        loss = f"{loss} ({snap.primary_metric})"
    step = "-" if snap.step is None else (f"{snap.step}/{snap.total_steps}" if snap.total_steps else str(snap.step))
    sources = ", ".join(
        f"{h.name}: {h.state}" + (f" ({h.last_error[:error_width]})" if h.last_error and not h.healthy else "")
        + (f" lag {format_duration(h.lag(snap.taken_at))}" if h.newest_ts else "")
        + (f"; run failed: {h.info['runEnd'][:RUN_END_CHARS]}" if h.run_state == RunState.FAILED
           and isinstance(h.info.get("runEnd"), str) else "")  # why, as the RunEnded condition says in a cluster
        for h in snap.sources)
    phase = phase_of(snap)
    rate, eta = _fmt(snap.throughput), format_duration(snap.eta_seconds) or "-"
    age = format_duration(step_age(snap))
    state = freshness(wl, snap)
    if state == "none":
        last = "-"
    elif state == "fresh":
        last = f"{age} ago"
    elif state == "ended":
        last = f"{age} ago, run ended"
    else:
        last = f"no new step for {age}"
        phase = f"{phase}, stalled" if state == "stalled" else f"{phase}, no new step"
        rate = "0" if snap.throughput is None else f"0 (was {rate})"
        eta = "-"
    return (f"{wl.namespace}/{wl.name}", phase, step, last, "-" if snap.progress is None else f"{snap.progress:.1%}",
            loss, rate, eta, sources)


STYLES = {"stale": "yellow", "stalled": "bold red"}


def render(rows: list[tuple[LocalWorkload, Snapshot | None]], waiting: str | None) -> Table:
    """The live table: one line per Workload, sources' health at the end. Every cell is a Text: a `[bold]` in a
    name or an error message prints as it is."""
    title = Text("trainscope local")
    if waiting:
        title.append(f"  {waiting}", style="yellow")
    table = Table(title=title, expand=True)
    for col in COLUMNS:
        table.add_column(col, no_wrap=col != "Sources")
    for wl, snap in rows:
        style = STYLES.get(freshness(wl, snap), "") if snap is not None else ""
        table.add_row(*(Text(c, style=style if col in ("Phase", "Last step") else "")
                        for col, c in zip(COLUMNS, cells(wl, snap), strict=True)))
    return table


def status_lines(rows: list[tuple[LocalWorkload, Snapshot | None]], waiting: str | None) -> list[str]:
    """Without a terminal: one plain `key=value` line per Workload (and one for a store problem), for logs."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out = [f"{stamp} trainscope local: {waiting}"] if waiting else []
    for wl, snap in rows:
        c = dict(zip(COLUMNS, cells(wl, snap, error_width=None), strict=True))
        out.append(f"{stamp} {c['Workload']} phase={c['Phase']} step={c['Step']} last_step={c['Last step']} "
                   f"progress={c['Progress']} "
                   f"loss={c['Loss']} steps/s={c['Steps/s']} eta={c['ETA']} sources=[{c['Sources']}]")
    return out


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
        console.print(Text(f"trainscope local: the API could not listen on {api.host}:{api.port} "
                           f"({exc.strerror or exc}); collecting without it", style="yellow"), soft_wrap=True)
        await server.stop()
        return None
    return server


def _start_metrics(runtime: Runtime, config: RuntimeConfig, console: Console) -> MetricsEndpoint:
    """The Prometheus endpoint; a taken port is said plainly and collecting goes on without it."""
    try:
        return MetricsEndpoint(runtime.exported, config.metrics_port, config.metrics_host, store_up=runtime.store_up)
    except OSError as exc:
        console.print(Text(f"trainscope local: /metrics could not listen on {config.metrics_host}:"
                           f"{config.metrics_port} ({exc.strerror or exc}); collecting without it", style="yellow"),
                      soft_wrap=True)
        return MetricsEndpoint(runtime.exported, None, store_up=runtime.store_up)


async def run_local(workloads: list[LocalWorkload], config: RuntimeConfig, *, console: Console | None = None,
                    refresh: float = 1.0, stop: asyncio.Event | None = None,
                    api: LocalApi | None = None) -> dict[str, Snapshot | None]:
    """Collect until `stop` is set or SIGINT/SIGTERM/SIGHUP arrives; returns the last snapshots (for tests and --once).

    With `api`, the REST API is served from the same process (on the same database) while collecting.
    """
    console = console or Console()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    runtime = Runtime(config)
    await runtime.start()
    metrics = _start_metrics(runtime, config, console)
    api_server = await _start_api(api, config, runtime, console) if api is not None else None
    caption = f"API: http://{api.host}:{api_server.port}/api/v1/workloads" if api and api_server else None
    try:
        for wl in workloads:
            await runtime.apply(wl.uid, wl.namespace, wl.name, wl.spec, base_dir=wl.base_dir)
        if not console.is_terminal:  # redirected: plain lines each interval, nothing to redraw
            if caption:
                console.print(caption, markup=False, highlight=False, soft_wrap=True)
            while True:
                rows = [(wl, runtime.snapshot(wl.uid)) for wl in workloads]
                for line in status_lines(rows, runtime.store_error):
                    console.print(line, markup=False, highlight=False, soft_wrap=True, emoji=False)
                console.file.flush()
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh)
            return {wl.uid: snap for wl, snap in rows}
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                rows = [(wl, runtime.snapshot(wl.uid)) for wl in workloads]
                table = render(rows, runtime.store_error)
                table.caption = Text(caption) if caption else None
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
        for sig in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)
