"""kopf glue: a daemon per Workload owns its Collector, a timer writes status, delete keeps or drops data.

All logic lives in runtime.py and status.py; these handlers only translate kopf's calls. The process's
settings arrive in `memo.config` (a RuntimeConfig) from `trainscope operator` or a test.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf

from trainscope.collector.scrub import scrub
from trainscope.operator.gauges import MetricsEndpoint
from trainscope.operator.kubeauth import load_credentials
from trainscope.operator.runtime import Runtime, RuntimeConfig
from trainscope.operator.status import health_transitions, job_transitions, status_patch

GROUP, VERSION, PLURAL = "trainscope.io", "v1alpha1", "workloads"
# kopf fixes a timer's interval when the handler is declared, so it is read from the environment at import.
STATUS_INTERVAL = float(os.environ.get("TRAINSCOPE_STATUS_INTERVAL", "5"))

log = logging.getLogger(__name__)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "trainscope.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="trainscope.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="trainscope.io")
    # Events only from explicit kopf.warn/info calls (invalid specs, health transitions), never from log lines.
    settings.posting.loggers = False
    settings.posting.level = logging.INFO
    config: RuntimeConfig = memo.config
    if config.kube_connection is None:  # in-cluster or kubeconfig, as kopf's own login finds them
        try:
            config.kube_connection = await load_credentials()
        except Exception as exc:  # the operator still serves sources that need no cluster access
            log.warning("no Kubernetes client for Secrets and pod logs: %s", exc)
    runtime = memo.runtime = Runtime(config)
    await runtime.start()
    memo.metrics = MetricsEndpoint(runtime.exported, config.metrics_port, config.metrics_host,
                                   store_up=runtime.store_up)


@kopf.on.probe(id="store")
def store_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """The database as the operator last found it (checked every few seconds), in the liveness endpoint's JSON.

    Reported, never raised: the endpoint serves liveness and readiness, and an operator restarted or taken out of
    its metrics Service during an outage would hide trainscope_store_up == 0 and gain nothing.
    """
    runtime: Runtime | None = memo.get("runtime")
    if runtime is None:
        return {"up": None, "reason": "Starting"}
    h = runtime.store_state.health
    return {"up": h.up, "reason": h.reason, "message": scrub(h.message), "since": h.since}


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    runtime: Runtime | None = memo.get("runtime")
    if runtime is not None:
        await runtime.close()
    if memo.get("metrics") is not None:
        memo.metrics.close()


async def _apply(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger) -> None:
    meta = body["metadata"]
    error = await memo.runtime.apply(meta["uid"], meta["namespace"], meta["name"], dict(body.get("spec") or {}),
                                     meta.get("generation"))
    if error is not None:
        logger.error("invalid spec: %s", error)
        kopf.warn(body, reason="InvalidSpec", message=scrub(str(error)))


@kopf.daemon(GROUP, VERSION, PLURAL, cancellation_timeout=60.0)
async def collect(stopped: kopf.DaemonStopped, body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger,
                  **_: Any) -> None:
    """Runs for as long as the Workload exists in this operator: starts its Collector, stops it at the end."""
    await _apply(body, memo, logger)
    await stopped.wait()
    await memo.runtime.stop(body["metadata"]["uid"])


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def respec(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A spec change restarts the collector with the new spec; cursors live in the store, so none are lost."""
    await _apply(body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    """Stop collecting; keep the stored points unless spec.retainData is false."""
    await memo.runtime.forget(body["metadata"]["uid"], delete_data=spec.get("retainData", True) is False)


@kopf.timer(GROUP, VERSION, PLURAL, interval=STATUS_INTERVAL, initial_delay=min(1.0, STATUS_INTERVAL))
async def write_status(body: kopf.Body, status: kopf.Status, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger,
                       **_: Any) -> None:
    """Write status from the collector's snapshot, only when it changed (at most once per interval)."""
    entry = memo.runtime.entries.get(body["metadata"]["uid"])
    if entry is not None and dict(body.get("spec") or {}) != entry.raw_spec:
        # An edit that lands before kopf has stored the spec it handled at creation never reaches `respec` (kopf
        # records the edited spec as already handled), so the daemon's first spec would stay in force for good.
        await _apply(body, memo, logger)
    now = time.time()
    current = dict(status)
    wanted = memo.runtime.status(body["metadata"]["uid"], previous=current, now=now)
    if wanted is None:
        return
    changes = status_patch(wanted, current, now)
    if changes:
        for key, value in changes.items():
            patch.status[key] = value
        job = job_transitions(current.get("conditions"), wanted.get("conditions", []))
        if job is not None:  # JobRunning, JobSucceeded, JobFailed, JobNotFound, JobDeleted...
            post = kopf.warn if job["reason"] in ("JobFailed", "JobNotFound", "JobDeleted", "JobKindNotServed") \
                else kopf.info
            post(body, reason=job["reason"], message=job["message"])
        for cond in health_transitions(current.get("conditions"), wanted.get("conditions", [])):
            if cond["status"] == "True":
                kopf.warn(body, reason=cond["type"], message=scrub(cond["message"]))
            else:
                kopf.info(body, reason=f"{cond['type']}Cleared", message=scrub(cond["message"]))
