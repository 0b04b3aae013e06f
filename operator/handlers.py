"""kopf glue: a daemon per Workload owns its Collector and registers it with the status publisher; delete keeps
or drops data.

All logic lives in runtime.py, publisher.py and status.py; these handlers only translate kopf's calls. The process's
settings arrive in `memo.config` (a RuntimeConfig) from `trainscope operator` or a test.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from typing import Any

import kopf

from trainscope.collector.scrub import scrub
from trainscope.operator.gauges import MetricsEndpoint
from trainscope.operator.kubeauth import load_credentials
from trainscope.operator.publisher import StatusPublisher, Watched
from trainscope.operator.runtime import Runtime, RuntimeConfig

GROUP, VERSION, PLURAL = "trainscope.io", "v1alpha1", "workloads"
# Seconds between two status writes of a Workload (read at import, as tests and benches set it before).
STATUS_INTERVAL = float(os.environ.get("TRAINSCOPE_STATUS_INTERVAL", "5"))
# At most this many status writes a second in all (0: no limit): with more Workloads than interval * rate, each is
# written less often than every interval, so the status path's CPU stops growing with N.
STATUS_MAX_RATE = float(os.environ.get("TRAINSCOPE_STATUS_MAX_RATE", "100"))

log = logging.getLogger(__name__)


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff base in an annotation, built from the body without its status.

    kopf deep-copies the whole body for every watch event and then drops the status (kopf/_cogs/configs/
    diffbase.py, DiffBaseStorage.build); our own status patches come back as watch events, so at 1,000 Workloads
    that copy of a status kopf never looks at was a third of kopf's event processing. The essence is the same.
    """

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if extra_fields or "status" not in body:  # a handler on status fields needs them: kopf's own way
            return super().build(body=body, extra_fields=extra_fields)
        return super().build(body=kopf.Body({k: v for k, v in body.items() if k != "status"}))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.finalizer = "trainscope.io/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="trainscope.io")
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix="trainscope.io")
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
    if runtime.kube is not None:
        memo.publisher = StatusPublisher(runtime, runtime.kube, STATUS_INTERVAL, max_rate=STATUS_MAX_RATE or None)
        memo.publishing = asyncio.create_task(memo.publisher.run(), name="status-publisher")
    else:
        log.error("no Kubernetes client: Workload status will not be written")
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
    if memo.get("publishing") is not None:
        memo.publishing.cancel()
        await asyncio.gather(memo.publishing, return_exceptions=True)
        await memo.publisher.close()
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
    """Runs for as long as the Workload exists in this operator: starts its Collector, has its status published
    (from `body`, kopf's live view of the object), stops it at the end."""
    await _apply(body, memo, logger)
    meta = body["metadata"]
    publisher: StatusPublisher | None = memo.get("publisher")
    if publisher is not None:
        # kopf posts events from handlers: the publisher's events and re-applies run in this daemon's context
        ctx = contextvars.copy_context()

        def post(warning: bool, reason: str, message: str) -> None:
            ctx.copy().run(kopf.warn if warning else kopf.info, body, reason=reason, message=message)

        publisher.add(Watched(meta["uid"], meta["namespace"], meta["name"], body, post=post,
                              reapply=lambda: asyncio.create_task(_apply(body, memo, logger), context=ctx.copy())))
    try:
        await stopped.wait()
    finally:
        if publisher is not None:
            publisher.remove(meta["uid"])
    await memo.runtime.stop(meta["uid"])


@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
async def respec(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A spec change restarts the collector with the new spec; cursors live in the store, so none are lost."""
    await _apply(body, memo, logger)


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def delete(body: kopf.Body, spec: kopf.Spec, memo: kopf.Memo, **_: Any) -> None:
    """Stop collecting; keep the stored points unless spec.retainData is false."""
    await memo.runtime.forget(body["metadata"]["uid"], delete_data=spec.get("retainData", True) is False)
