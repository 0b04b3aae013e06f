"""Prometheus exposition of every live Collector, computed at scrape time from its snapshot.

Reading snapshots at scrape time (a custom collector, not long-lived Gauge objects) means the series of a
deleted Workload disappear with its Collector: there is nothing to remove and nothing to leak.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector as PromCollector

from trainscope.collector.collector import Snapshot, SourceState
from trainscope.operator.status import Phase, phase_of

PHASES = (Phase.PENDING, Phase.COLLECTING, Phase.SUCCEEDED, Phase.FAILED, Phase.DEGRADED, Phase.SUSPENDED)
WL = ["namespace", "workload"]
SRC = [*WL, "source", "kind"]

# name -> help; the reference in docs/status-and-metrics.md lists the same names (a test checks both).
METRICS = {
    "trainscope_metric_value": "Latest value of an exported training metric (spec.prometheus.metrics).",
    "trainscope_metric_step": "Step of the latest value of an exported training metric.",
    "trainscope_workload_step": "Highest training step seen for the Workload.",
    "trainscope_workload_total_steps": "Total steps of the run (spec or source).",
    "trainscope_workload_progress_ratio": "Progress of the run, 0 to 1.",
    "trainscope_workload_eta_seconds": "Estimated seconds until the run reaches its total steps.",
    "trainscope_workload_throughput_steps_per_second": "Recent training speed in steps per second.",
    "trainscope_workload_phase": "1 for the Workload's current phase, 0 for the others.",
    "trainscope_workload_last_point_timestamp_seconds": "Source time of the newest point (Unix seconds).",
    "trainscope_workload_condition": "1 while a condition is True (Ready, Stalled, NonFiniteMetric, MetricSpike, "
                                     "MetricDiverging, SourcesDisagree), else 0.",
    "trainscope_workload_seconds_since_step": "Now minus the source time of the highest step.",
    "trainscope_store_up": "1 while the database answers, 0 while it cannot be used (unreachable, hung, refusing "
                           "the credentials or a privilege).",
    "trainscope_source_up": "1 when the source's last poll succeeded and its write succeeded or waits for the "
                            "database (a database outage shows in trainscope_store_up, not here).",
    "trainscope_source_lag_seconds": "Now minus the source time of the source's newest point.",
    "trainscope_source_points_ingested_total": "Points stored from the source (new rows).",
    "trainscope_source_errors_total": "Failed polls or writes of the source, by reason.",
    "trainscope_source_skipped_total": "Input the source could not use (bad records, non-numeric values), by reason.",
    "trainscope_source_poll_duration_seconds": "Time spent in polls of the source.",
}


@dataclass(frozen=True, slots=True)
class Exported:
    """One Workload as the exporter sees it: identity, which metrics to export, and its snapshot."""

    namespace: str
    name: str
    metrics: tuple[str, ...]  # globs from spec.prometheus.metrics; empty = the primary metric
    snapshot: Snapshot


class WorkloadExporter(PromCollector):
    """A prometheus_client collector over whatever `workloads()` returns at scrape time."""

    def __init__(self, workloads: Callable[[], Iterable[Exported]],
                 store_up: Callable[[], bool | None] | None = None):
        self._workloads = workloads
        self._store_up = store_up

    def describe(self) -> list[Metric]:
        return []  # dynamic: do not let the registry call collect() at registration

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, labels: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, METRICS[name], labels=labels)

        value = gauge("trainscope_metric_value", [*WL, "source", "metric"])
        vstep = gauge("trainscope_metric_step", [*WL, "source", "metric"])
        step = gauge("trainscope_workload_step", WL)
        total = gauge("trainscope_workload_total_steps", WL)
        progress = gauge("trainscope_workload_progress_ratio", WL)
        eta = gauge("trainscope_workload_eta_seconds", WL)
        speed = gauge("trainscope_workload_throughput_steps_per_second", WL)
        phase = gauge("trainscope_workload_phase", [*WL, "phase"])
        last = gauge("trainscope_workload_last_point_timestamp_seconds", WL)
        cond = gauge("trainscope_workload_condition", [*WL, "condition"])
        since = gauge("trainscope_workload_seconds_since_step", WL)
        up = gauge("trainscope_source_up", SRC)
        lag = gauge("trainscope_source_lag_seconds", SRC)
        points = CounterMetricFamily("trainscope_source_points_ingested", METRICS[
            "trainscope_source_points_ingested_total"], labels=SRC)
        errors = CounterMetricFamily("trainscope_source_errors", METRICS["trainscope_source_errors_total"],
                                     labels=[*SRC, "reason"])
        skipped = CounterMetricFamily("trainscope_source_skipped", METRICS["trainscope_source_skipped_total"],
                                      labels=[*SRC, "reason"])
        polls = SummaryMetricFamily("trainscope_source_poll_duration_seconds",
                                    METRICS["trainscope_source_poll_duration_seconds"], labels=SRC)
        for wl in self._workloads():
            snap, ids = wl.snapshot, [wl.namespace, wl.name]
            globs = wl.metrics or ((snap.primary_metric,) if snap.primary_metric else ())
            for metric, latest in snap.latest.items():
                if any(fnmatch.fnmatchcase(metric, g) for g in globs):
                    value.add_metric([*ids, latest.source, metric], latest.value)
                    vstep.add_metric([*ids, latest.source, metric], latest.step)
            _maybe(step, ids, snap.step)
            _maybe(total, ids, snap.total_steps)
            _maybe(progress, ids, snap.progress)
            _maybe(eta, ids, snap.eta_seconds)
            _maybe(speed, ids, snap.throughput)
            _maybe(last, ids, snap.last_point_ts)
            _maybe(since, ids, None if snap.step_ts is None else max(0.0, snap.taken_at - snap.step_ts))
            cond.add_metric([*ids, "Ready"], 1.0 if any(h.healthy and h.last_success for h in snap.sources) else 0.0)
            for c in snap.health:
                cond.add_metric([*ids, c.type], 1.0 if c.status == "True" else 0.0)
            current = phase_of(snap)
            for p in PHASES:
                phase.add_metric([*ids, p], 1.0 if p == current else 0.0)
            for h in snap.sources:
                sl = [*ids, h.name, h.kind]
                # Waiting for the database is not the source's failure: one store alert, not one per source.
                ok = h.healthy or h.state == SourceState.WAITING
                up.add_metric(sl, 1.0 if h.last_success is not None and ok else 0.0)
                _maybe(lag, sl, h.lag(snap.taken_at))
                points.add_metric(sl, h.points)
                for reason, n in sorted(h.errors.items()):
                    errors.add_metric([*sl, reason], n)
                for reason, n in sorted(h.skipped.items()):
                    skipped.add_metric([*sl, reason], n)
                polls.add_metric(sl, count_value=h.polls, sum_value=h.poll_seconds)
        store = self._store_up() if self._store_up is not None else None
        if store is not None:
            family = gauge("trainscope_store_up", [])
            family.add_metric([], 1.0 if store else 0.0)
            yield family
        yield from (value, vstep, step, total, progress, eta, speed, phase, last, cond, since, up, lag, points,
                    errors, skipped, polls)


def _maybe(family: GaugeMetricFamily, labels: list[str], v: float | None) -> None:
    if v is not None:
        family.add_metric(labels, float(v))


class MetricsEndpoint:
    """Registers a WorkloadExporter in the default registry and serves /metrics; `close()` undoes both."""

    def __init__(self, workloads: Callable[[], Iterable[Exported]], port: int | None, host: str = "0.0.0.0",
                 store_up: Callable[[], bool | None] | None = None):
        self.exporter = WorkloadExporter(workloads, store_up)
        REGISTRY.register(self.exporter)
        self._server = None
        self.port: int | None = None
        if port is not None:
            try:
                self._server, _thread = start_http_server(port, addr=host)
            except OSError:  # the port is taken: leave the registry as it was, the caller says so
                REGISTRY.unregister(self.exporter)
                raise
            self.port = self._server.server_port

    def close(self) -> None:
        REGISTRY.unregister(self.exporter)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
