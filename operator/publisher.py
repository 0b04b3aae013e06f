"""One task writes every Workload's status: built from its collector's snapshot, patched only when it changed.

A kopf timer per Workload cost the operator ~40% of its CPU at 1,000 Workloads (kopf's handler machinery, its
patch and its log line per run). Here one loop walks the Workloads once per interval, spread evenly over it (no
burst of N patches at once), builds each status, and sends a merge patch to the `/status` subresource holding only
the fields that changed, with at most `concurrency` patches in flight. Kept free of kopf: the handlers register
each Workload with the live view of its object and the callbacks that need kopf (events, re-applying a spec).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainscope.collector.scrub import scrub
from trainscope.operator.kube import KubeClient, KubeError
from trainscope.operator.runtime import Runtime
from trainscope.operator.status import health_transitions, job_transitions, status_patch

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL = "trainscope.io", "v1alpha1", "workloads"
SLICE = 0.05  # seconds: the round is cut into slices this long at most, each handling its share of the Workloads
# A job condition reason that is bad news: posted as a Warning event, the others as Normal.
BAD_JOB_REASONS = ("JobFailed", "JobNotFound", "JobDeleted", "JobKindNotServed")

Post = Callable[[bool, str, str], None]  # (warning, reason, message): a Kubernetes event about the Workload


@dataclass(slots=True)
class Watched:
    """One Workload the publisher writes status for."""

    uid: str
    namespace: str
    name: str
    body: Mapping[str, Any]  # kopf's live view of the object: updated with every watch event
    post: Post
    reapply: Callable[[], Awaitable[None]]  # apply the spec the object holds now (see `_check_spec`)
    status: dict[str, Any] | None = None  # the status the API server answered our last patch with
    rv_before: str | None = None  # the object's resourceVersion when that patch was built
    rv_after: str | None = None  # and the one the patch produced
    sending: bool = False
    reapplying: asyncio.Future[None] | None = field(default=None, repr=False)


class StatusPublisher:
    """Patches `.status` of the registered Workloads every `interval` seconds when it changed."""

    def __init__(self, runtime: Runtime, kube: KubeClient, interval: float, *, concurrency: int = 4,
                 max_rate: float | None = None):
        self.runtime = runtime
        self.kube = kube
        self.interval = interval
        # At most this many Workloads a second are looked at (None: no limit): beyond interval * max_rate Workloads
        # a round takes longer than the interval, so the status path's CPU (patches, and the watch events they
        # come back as) stops growing with N and collection keeps the CPU it needs.
        self.max_rate = max_rate
        self.watched: dict[str, Watched] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._sends: set[asyncio.Task[None]] = set()
        self.patches = 0  # patches sent (for tests and benches)
        self.errors = 0

    def add(self, w: Watched) -> None:
        self.watched[w.uid] = w

    def remove(self, uid: str) -> None:
        self.watched.pop(uid, None)

    def round_seconds(self, n: int) -> float:
        """How long one round over n Workloads takes: the interval, or longer when max_rate limits it."""
        return max(self.interval, n / self.max_rate) if self.max_rate else self.interval

    async def run(self) -> None:
        """Forever: one round after the other (a round that overruns starts the next at once)."""
        while True:
            start = time.monotonic()
            length = self.round_seconds(len(self.watched))
            try:
                await self.publish_round(start, length)
            except Exception:  # a bug must not end status writing for every Workload; it shows in the log
                log.exception("publishing status failed")
            await asyncio.sleep(max(0.0, start + length - time.monotonic()))

    async def publish_round(self, start: float | None = None, length: float | None = None) -> None:
        """Every registered Workload once, evenly spread over the round's `length` (default: the interval)."""
        start = time.monotonic() if start is None else start
        length = self.interval if length is None else length
        items = list(self.watched.values())
        n = len(items)
        slices = max(1, min(n, int(length / SLICE)))
        for i in range(slices):
            for w in items[i * n // slices:(i + 1) * n // slices]:
                if self.watched.get(w.uid) is w and not w.sending:
                    self._publish(w)
            if i + 1 < slices:
                await asyncio.sleep(max(0.0, start + (i + 1) * length / slices - time.monotonic()))

    async def flush(self) -> None:
        """Wait for the patches in flight (tests; shutdown)."""
        while self._sends:
            await asyncio.gather(*list(self._sends), return_exceptions=True)

    async def close(self) -> None:
        await self.flush()

    # ---- one Workload --------------------------------------------------------------------------------------

    def _publish(self, w: Watched) -> None:
        self._check_spec(w)
        meta = w.body.get("metadata") or {}
        rv = meta.get("resourceVersion")
        # Until the watch brings our last patch back, the live view is older than what the server holds.
        known = w.status is not None and rv in (w.rv_before, w.rv_after)
        current = dict(w.status if known and w.status is not None else w.body.get("status") or {})
        now = time.time()
        wanted = self.runtime.status(w.uid, previous=current, now=now)
        if wanted is None:
            return
        changes = status_patch(wanted, current, now)
        if not changes:
            return
        w.sending = True
        task = asyncio.create_task(self._send(w, changes, current, wanted, rv), name=f"status/{w.name}")
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    def _check_spec(self, w: Watched) -> None:
        """An edit that lands before kopf has stored the spec it handled at creation never reaches the update
        handler (kopf records the edited spec as already handled): the object's spec is compared here too."""
        entry = self.runtime.entries.get(w.uid)
        if entry is None or (w.reapplying is not None and not w.reapplying.done()):
            return
        if dict(w.body.get("spec") or {}) != entry.raw_spec:
            w.reapplying = asyncio.ensure_future(w.reapply())

    async def _send(self, w: Watched, changes: dict[str, Any], current: dict[str, Any], wanted: dict[str, Any],
                    rv: str | None) -> None:
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{w.namespace}/{PLURAL}/{w.name}/status"
        try:
            async with self._slots:
                obj = await self.kube.patch_merge(path, {"status": changes})
        except KubeError as exc:
            w.status = None  # start again from what the watch shows
            if exc.status != 404:  # 404: deleted meanwhile; its daemon ends and unregisters it
                self.errors += 1
                log.warning("status of %s/%s not written: %s", w.namespace, w.name, scrub(str(exc)))
            return
        except Exception as exc:  # the API unreachable: the next round tries again
            w.status = None
            self.errors += 1
            log.warning("status of %s/%s not written: %s", w.namespace, w.name, scrub(repr(exc)))
            return
        finally:
            w.sending = False
        self.patches += 1
        w.status = dict(obj.get("status") or {})
        w.rv_before, w.rv_after = rv, (obj.get("metadata") or {}).get("resourceVersion")
        self._post_transitions(w, current, wanted)

    def _post_transitions(self, w: Watched, current: dict[str, Any], wanted: dict[str, Any]) -> None:
        """Kubernetes events for the job's transitions and the health conditions that changed."""
        before, after = current.get("conditions"), wanted.get("conditions", [])
        job = job_transitions(before, after)
        if job is not None:  # JobRunning, JobSucceeded, JobFailed, JobNotFound, JobDeleted...
            w.post(job["reason"] in BAD_JOB_REASONS, job["reason"], job["message"])
        for cond in health_transitions(before, after):
            if cond["status"] == "True":
                w.post(True, cond["type"], scrub(cond["message"]))
            else:
                w.post(False, f"{cond['type']}Cleared", scrub(cond["message"]))
