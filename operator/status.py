"""Snapshot -> Workload `.status` (pure functions, tested without kopf or a cluster)."""

from __future__ import annotations

import fnmatch
import math
from datetime import UTC, datetime
from typing import Any

from trainscope.collector.collector import Snapshot, SourceHealth, SourceState
from trainscope.collector.health import CONDITION_TYPES
from trainscope.collector.points import RunState
from trainscope.collector.progress import JobPhase, JobState, format_duration
from trainscope.collector.scrub import scrub
from trainscope.collector.store import StoreHealth

MAX_LATEST = 20  # bounded: a Workload with 10,000 metric names must not blow up its object
MAX_ERROR_CHARS = 300


class Phase:
    PENDING = "Pending"
    COLLECTING = "Collecting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DEGRADED = "Degraded"
    SUSPENDED = "Suspended"  # the job is suspended (e.g. by Kueue)


JOB_CONDITION = "Job"  # True while spec.jobRef's job exists; its reason is the job's phase


def iso(ts: float | None) -> str | None:
    """RFC 3339 in UTC with seconds, as Kubernetes writes times."""
    if ts is None or not math.isfinite(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def metric_value(value: float) -> float | str:
    """JSON cannot carry NaN or infinities: those become the strings "NaN", "Infinity", "-Infinity"."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return float(f"{value:.6g}")


def metric_text(value: float) -> str:
    """A value for the Loss column: 6 significant digits, and NaN/+Inf/-Inf as the words a user must see."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.6g}"


def coarse_seconds(seconds: float | None) -> int | None:
    """Two significant figures, so a growing lag does not rewrite the status every few seconds."""
    if seconds is None or not math.isfinite(seconds):
        return None
    s = int(seconds)
    if s < 100:
        return s
    digits = len(str(s)) - 2
    return round(s, -digits)


def phase_of(snap: Snapshot) -> str:
    """Succeeded/Failed follow the job (when spec.jobRef names one) and the run; Suspended follows the job;
    Degraded when a source is unhealthy; Pending until data arrives or while the job is pending or missing."""
    job = snap.job
    has_data = snap.step is not None or bool(snap.latest)
    if job is not None and job.ended:
        if snap.run_state == RunState.FAILED or (job.phase == JobPhase.DELETED and snap.run_state != RunState.FINISHED):
            return Phase.FAILED
        return Phase.SUCCEEDED if has_data else Phase.DEGRADED  # ended well, but nothing was collected
    if job is not None and job.phase == JobPhase.SUSPENDED:
        return Phase.SUSPENDED
    if job is not None and job.phase in (JobPhase.NOT_FOUND, JobPhase.PENDING, JobPhase.KIND_NOT_SERVED) \
            and not has_data:
        return Phase.PENDING
    if snap.run_state == RunState.FAILED:
        return Phase.FAILED
    if snap.run_state == RunState.FINISHED:
        return Phase.SUCCEEDED
    if any(not h.healthy for h in snap.sources):
        return Phase.DEGRADED
    if snap.step is None and not any(h.last_success for h in snap.sources):
        return Phase.PENDING
    return Phase.COLLECTING


def source_status(h: SourceHealth, now: float) -> dict[str, Any]:
    out: dict[str, Any] = {"name": h.name, "kind": h.kind, "state": h.state, "points": h.points}
    if h.last_success is not None:
        out["lastSuccessTime"] = iso(h.last_success)
    if h.last_error and h.state != SourceState.HEALTHY:
        out["lastError"] = scrub(h.last_error)[:MAX_ERROR_CHARS]
        out["reason"] = h.last_error_reason
    lag = None if h.state == SourceState.FINISHED else coarse_seconds(h.lag(now))  # over: no lag to grow
    if lag is not None:
        out["lagSeconds"] = lag
    if h.run_state is not None:
        out["runState"] = str(h.run_state)
    if h.notes:
        out["notes"] = [scrub(n)[:MAX_ERROR_CHARS] for n in h.notes[:5]]
    if h.skipped:
        out["skipped"] = dict(sorted(h.skipped.items()))
    return out


def _condition(ctype: str, ok: bool | str, reason: str, message: str, previous: dict[str, dict[str, Any]],
               now: str) -> dict[str, Any]:
    status = ok if isinstance(ok, str) else ("True" if ok else "False")
    prev = previous.get(ctype)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status and prev.get(
        "lastTransitionTime") else now
    return {"type": ctype, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}


def _store_condition(store: StoreHealth, prev: dict[str, dict[str, Any]], stamp: str) -> dict[str, Any]:
    """StoreReady: True while the database answers; False with why (AuthenticationFailed, DatabaseMissing,
    PermissionDenied, Timeout, Unreachable); Unknown before the first attempt."""
    status = "Unknown" if store.up is None else store.up
    return _condition("StoreReady", status, store.reason, scrub(store.message)[:MAX_ERROR_CHARS], prev, stamp)


def conditions(snap: Snapshot | None, previous: list[dict[str, Any]] | None, now: float,
               spec_error: str | None = None, waiting: str | None = None,
               store: StoreHealth | None = None) -> list[dict[str, Any]]:
    """Ready and SourcesHealthy (and StoreReady when the database's state is known), keeping lastTransitionTime
    while a condition's status holds."""
    prev = {c.get("type"): c for c in previous or [] if isinstance(c, dict)}
    stamp = iso(now) or ""
    store = store or (snap.store if snap is not None else None)
    extra = [_store_condition(store, prev, stamp)] if store is not None else []
    if spec_error is not None or snap is None:
        if spec_error is not None:
            reason, message = "InvalidSpec", spec_error
        elif waiting:
            reason, message = "WaitingForStore", waiting
        else:
            reason, message = "Starting", "starting the collector"
        message = scrub(message)[:MAX_ERROR_CHARS]
        return [_condition("Ready", False, reason, message, prev, stamp),
                _condition("SourcesHealthy", False, reason, message, prev, stamp), *extra]
    bad = [h for h in snap.sources if not h.healthy]
    if bad:
        first = bad[0]
        msg = scrub("; ".join(f"{h.name}: {h.state}: {(h.last_error or '')[:120]}" for h in bad))
        healthy = _condition("SourcesHealthy", False, first.last_error_reason or "SourceFailing", msg, prev, stamp)
    else:
        healthy = _condition("SourcesHealthy", True, "AllSourcesHealthy", f"{len(snap.sources)} source(s) healthy",
                             prev, stamp)
    working = [h for h in snap.sources if h.healthy]
    if snap.job is not None and snap.job.ended:  # collection is over, by design: not a failure to be Ready
        ready = _condition("Ready", True, "JobEnded", "the job ended; the final values are kept", prev, stamp)
    else:
        ready = _condition("Ready", bool(working), "Collecting" if working else "NoHealthySource",
                           f"{len(working)}/{len(snap.sources)} source(s) collecting", prev, stamp)
    health = [_condition(c.type, c.status, c.reason, c.message[:MAX_ERROR_CHARS], prev, stamp) for c in snap.health]
    job = [job_condition(snap.job, prev, stamp)] if snap.job is not None else []
    return [ready, healthy, *extra, *job, *_run_ended(snap, prev, stamp), *health]


def _run_ended(snap: Snapshot, prev: dict[str, dict[str, Any]], stamp: str) -> list[dict[str, Any]]:
    """RunEnded, once the run has finished or failed: how the sources saw it end (a failed run's last error
    line, a container's exit code, the framework's normal end)."""
    if snap.run_state not in (RunState.FINISHED, RunState.FAILED):
        return []
    failed = snap.run_state == RunState.FAILED
    said = [f"{h.name}: {h.info['runEnd']}" for h in snap.sources if h.info.get("runEnd")
            and h.run_state == snap.run_state]
    message = "; ".join(said) or f"the run is {snap.run_state}"
    return [_condition("RunEnded", True, "Failed" if failed else "Succeeded", message[:MAX_ERROR_CHARS], prev,
                       stamp)]
def job_condition(job: JobState, prev: dict[str, dict[str, Any]], stamp: str) -> dict[str, Any]:
    """`Job`: True with the job's phase as reason while it exists; False with JobNotFound, JobDeleted or
    JobKindNotServed otherwise. The message carries the job's own reason and message (a failure's cause)."""
    exists = job.phase not in (JobPhase.NOT_FOUND, JobPhase.DELETED, JobPhase.KIND_NOT_SERVED)
    reason = f"Job{job.phase}" if exists else job.reason
    return _condition(JOB_CONDITION, exists, reason, job.message[:MAX_ERROR_CHARS], prev, stamp)


def job_transitions(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job condition when its reason changed (for one Kubernetes event per job transition), else None."""
    before = {c.get("type"): c.get("reason") for c in previous or [] if isinstance(c, dict)}
    for cond in current:
        if cond["type"] == JOB_CONDITION and before.get(JOB_CONDITION) != cond["reason"]:
            return cond
    return None


def health_transitions(previous: list[dict[str, Any]] | None, current: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Health conditions whose status differs from the object's (for Kubernetes events); Ready and
    SourcesHealthy are left to status alone."""
    before = {c.get("type"): c.get("status") for c in previous or [] if isinstance(c, dict)}
    changed = []
    for cond in current:
        if cond["type"] not in CONDITION_TYPES:
            continue
        was = before.get(cond["type"])
        if (was is None and cond["status"] == "True") or (was is not None and was != cond["status"]):
            changed.append(cond)
    return changed


def _latest(snap: Snapshot, exported: list[str]) -> dict[str, float | str]:
    """At most MAX_LATEST metrics: the primary, the exported ones, then the most recently updated.

    `exported` holds spec.prometheus.metrics, which are globs (as operator/gauges.py matches them)."""
    order = sorted(snap.latest, key=lambda m: (m != snap.primary_metric,
                                               not any(fnmatch.fnmatchcase(m, g) for g in exported),
                                               -snap.latest[m].ts, m))
    return {m: metric_value(snap.latest[m].value) for m in order[:MAX_LATEST]}


def build_status(snap: Snapshot | None, *, now: float, generation: int | None = None,
                 previous: dict[str, Any] | None = None, spec_error: str | None = None,
                 waiting: str | None = None, exported: list[str] | None = None,
                 store: StoreHealth | None = None) -> dict[str, Any]:
    """The whole `.status` for a Workload, without lastUpdateTime (added only when something changed)."""
    previous = previous or {}
    status: dict[str, Any] = {"observedGeneration": generation}
    status["conditions"] = conditions(snap, previous.get("conditions"), now, spec_error, waiting, store)
    if spec_error is not None or snap is None:
        status["phase"] = Phase.PENDING
        return {k: v for k, v in status.items() if v is not None}
    status["phase"] = phase_of(snap)
    status["runState"] = str(snap.run_state)
    status["step"] = snap.step
    status["totalSteps"] = snap.total_steps
    status["progress"] = None if snap.progress is None else round(snap.progress * 100, 1)
    status["throughput"] = None if snap.throughput is None else float(f"{snap.throughput:.4g}")
    status["eta"] = format_duration(snap.eta_seconds)
    status["etaSeconds"] = None if snap.eta_seconds is None else int(snap.eta_seconds)
    primary = snap.primary
    if snap.primary_metric:
        status["primaryMetric"] = {"name": snap.primary_metric}
        if primary is not None:
            status["primaryMetric"].update(value=metric_value(primary.value), step=primary.step)
            status["lossText"] = metric_text(primary.value)
    status["latest"] = _latest(snap, exported or [])
    status["lastPointTime"] = iso(snap.last_point_ts)
    status["sources"] = [source_status(h, now) for h in snap.sources]
    return {k: v for k, v in status.items() if v is not None}


def status_changed(new: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """True when the status differs from what the object holds, ignoring lastUpdateTime."""
    current = {k: v for k, v in (current or {}).items() if k != "lastUpdateTime"}
    return {k: v for k, v in new.items() if k != "lastUpdateTime"} != current


def status_patch(new: dict[str, Any], current: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """A merge patch that makes the object's status equal `new` (removed keys set to None), or None."""
    if not status_changed(new, current):
        return None
    patch = _merge_diff({k: v for k, v in (current or {}).items() if k != "lastUpdateTime"}, new)
    patch["lastUpdateTime"] = iso(now)
    return patch


def _merge_diff(current: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch from current to new: nested keys that disappeared are nulled, lists replaced."""
    patch: dict[str, Any] = {k: None for k in current if k not in new}
    for key, value in new.items():
        old = current.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = _merge_diff(old, value)
            if nested:  # an unchanged object is left out, not sent as {}
                patch[key] = nested
        elif old != value or key not in current:
            patch[key] = value
    return patch
