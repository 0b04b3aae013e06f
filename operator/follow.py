"""Following training jobs: one list per job kind (and namespace) per interval serves every Workload's jobRef,
and, when discovery is on, Workloads are created for the jobs annotated `trainscope.io/collect: "true"`.

Reads are plain bounded lists (no watch, no per-job GET), so their number depends on the kinds and namespaces,
never on the number of jobs (docs/following-jobs.md has the arithmetic).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import yaml

from trainscope.collector.progress import JobPhase, JobState
from trainscope.collector.schema import SpecError
from trainscope.collector.sources.logparsers import FORMATS
from trainscope.collector.spec import JobRef, parse_spec
from trainscope.operator.jobs import KINDS, adapter_for
from trainscope.operator.jobs.base import JobKind
from trainscope.operator.kube import KubeClient, KubeError

log = logging.getLogger(__name__)

WORKLOADS = "/apis/trainscope.io/v1alpha1"
JOB_UID_LABEL = "trainscope.io/job-uid"  # on Workloads created from a job's annotations
COLLECT = "trainscope.io/collect"
TEMPLATE = "trainscope.io/template"
TB_LOGDIR = "trainscope.io/tensorboard-logdir"
WANDB_RUN = "trainscope.io/wandb-run"
LOGS_FORMAT = "trainscope.io/logs-format"
TEMPLATE_KEY = "spec.yaml"  # the key of a template ConfigMap holding a Workload spec
NOT_SERVED_RETRY = (30.0, 600.0)  # first and longest wait before asking again for a kind the cluster lacks



class AnnotationError(Exception):
    def __init__(self, annotation: str, message: str):
        super().__init__(f"annotation {annotation}: {message}")
        self.annotation = annotation


@dataclass(slots=True)
class KindCache:
    """The jobs of one kind as last listed, and whether the cluster serves the kind at all."""

    kind: JobKind
    served: bool | None = None  # None: not asked yet
    retry_at: float = 0.0
    delay: float = NOT_SERVED_RETRY[0]
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    listed: set[str | None] = field(default_factory=set)  # namespaces listed (None: all)


class JobFollower:
    """Lists the job kinds in use, answers a jobRef's state, and (with `discover`) reconciles annotated jobs."""

    def __init__(self, kube: KubeClient, *, namespaces: Iterable[str] = (), discover: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.namespaces = tuple(namespaces)  # empty: cluster-wide
        self.discover = discover
        self.clock = clock
        self.kinds: dict[tuple[str, str], KindCache] = {}
        self.seen: set[tuple[str, str, str, str]] = set()  # (apiVersion, kind, namespace, name) seen once
        self.reads = 0  # list requests made (for docs/bench figures)
        self.passes = 0  # reconcile passes finished
        self._reported: dict[str, str] = {}  # job uid -> the invalid-annotation message last posted
        self._templates: dict[tuple[str, str], dict[str, Any] | AnnotationError] = {}  # read once per pass

    # ---- listing -------------------------------------------------------------------------------------------

    async def refresh(self, refs: Iterable[tuple[str, JobRef]]) -> None:
        """List every kind that a jobRef names (and, with discovery, every supported kind)."""
        wanted: dict[tuple[str, str], set[str]] = {}
        if self.discover:
            for key in KINDS:
                wanted.setdefault(key, set())
        for namespace, ref in refs:
            wanted.setdefault((ref.api_version, ref.kind), set()).add(namespace)
        for key, namespaces in wanted.items():
            cache = self.kinds.get(key)
            if cache is None:
                cache = self.kinds[key] = KindCache(adapter_for(JobRef(key[0], key[1], "")))
            if cache.served is False and self.clock() < cache.retry_at:
                continue
            scopes: list[str | None]
            if self.namespaces:
                scopes = list(self.namespaces)
            elif self.discover:
                scopes = [None]
            else:
                scopes = sorted(namespaces)
            await self._list(cache, scopes)

    async def _list(self, cache: KindCache, scopes: list[str | None]) -> None:
        kind = cache.kind
        try:
            plural = kind.plural or await self._plural(kind)
            objects: dict[tuple[str, str], dict[str, Any]] = {}
            for ns in scopes:
                path = (f"/apis/{kind.api_version}/namespaces/{ns}/{plural}" if ns
                        else f"/apis/{kind.api_version}/{plural}")
                self.reads += 1
                listing = await self.kube.request_json("GET", path)
                for item in listing.get("items") or []:
                    meta = item.get("metadata") or {}
                    item.setdefault("apiVersion", kind.api_version)
                    item.setdefault("kind", kind.kind)
                    objects[(meta.get("namespace") or ns or "", meta.get("name", ""))] = item
        except httpx.HTTPError as exc:  # the API server is unreachable: keep the last listing
            log.warning("listing %s %s failed: %s", kind.api_version, kind.kind, exc)
            return
        except KubeError as exc:
            if exc.status not in (403, 404):
                log.warning("listing %s %s failed: %s", kind.api_version, kind.kind, exc)
                return  # keep the last listing; asked again next interval
            if cache.served is not False:  # one line per kind, not one per interval
                why = "no permission to list it" if exc.status == 403 else "its CRD is not installed"
                log.warning("job kind %s %s skipped: %s; asking again from time to time", kind.api_version,
                            kind.kind, why)
            cache.served, cache.objects, cache.listed = False, {}, set()
            cache.retry_at = self.clock() + cache.delay
            cache.delay = min(cache.delay * 2, NOT_SERVED_RETRY[1])
            return
        if cache.served is False:
            log.info("job kind %s %s is served now", kind.api_version, kind.kind)
        cache.served, cache.delay, cache.objects, cache.listed = True, NOT_SERVED_RETRY[0], objects, set(scopes)

    async def _plural(self, kind: JobKind) -> str:
        """A kind known only by name (the generic adapter): its plural from the API group's resource list."""
        self.reads += 1
        found = await self.kube.request_json("GET", f"/apis/{kind.api_version}")
        for res in found.get("resources") or []:
            if res.get("kind") == kind.kind and "/" not in str(res.get("name", "")):
                return str(res["name"])
        raise KubeError(404, f"{kind.api_version} serves no kind {kind.kind}")

    def state(self, namespace: str, ref: JobRef) -> JobState | None:
        """The job's state as last listed; None until its kind and namespace have been listed once."""
        cache = self.kinds.get((ref.api_version, ref.kind))
        if cache is None or cache.served is None:
            return None
        what = f"{ref.kind} {namespace}/{ref.name}"
        if not cache.served:
            return JobState(JobPhase.KIND_NOT_SERVED, "JobKindNotServed",
                            f"{ref.api_version} {ref.kind} is not served by this cluster (is its CRD installed?)")
        if None not in cache.listed and namespace not in cache.listed:
            return None
        obj = cache.objects.get((namespace, ref.name))
        key = (ref.api_version, ref.kind, namespace, ref.name)
        if obj is None:
            if key in self.seen:
                return JobState(JobPhase.DELETED, "JobDeleted", f"{what} was deleted")
            return JobState(JobPhase.NOT_FOUND, "JobNotFound", f"{what} does not exist (yet); looking again "
                            "at every listing")
        self.seen.add(key)
        st = cache.kind.state(obj)
        detail = ": ".join(x for x in (st.reason, st.message) if x)
        return JobState(st.phase, st.reason, f"{what} is {st.phase}" + (f" ({detail})" if detail else ""))

    # ---- discovery -----------------------------------------------------------------------------------------

    async def reconcile(self) -> None:
        """Create, update or delete the Workloads of annotated jobs so that each collected job has exactly one."""
        if not self.discover:
            return
        try:
            managed = await self._managed()
            self._templates = {}
        except (KubeError, httpx.HTTPError) as exc:  # without the current Workloads nothing can be reconciled
            log.warning("listing the Workloads made for jobs failed: %s", exc)
            return
        namespace_annotations: dict[str, dict[str, str]] = {}
        wanted: set[tuple[str, str]] = set()
        alive: set[str] = set()
        for cache in list(self.kinds.values()):
            if not cache.served or (cache.kind.api_version, cache.kind.kind) not in KINDS:
                continue
            for (ns, _name), job in list(cache.objects.items()):
                meta = job.get("metadata") or {}
                uid = str(meta.get("uid", ""))
                alive.add(uid)
                annotations = meta.get("annotations") or {}
                flag = annotations.get(COLLECT)
                if flag is None:
                    if ns not in namespace_annotations:
                        namespace_annotations[ns] = await self._namespace_annotations(ns)
                    flag = namespace_annotations[ns].get(COLLECT)
                try:
                    if flag not in (None, "true", "false"):
                        raise AnnotationError(COLLECT, f'must be "true" or "false" (got {flag!r})')
                    if flag != "true":
                        continue
                    manifest = await self._manifest(cache.kind, job)
                except AnnotationError as exc:
                    await self._report(job, uid, str(exc))
                    continue
                self._reported.pop(uid, None)
                wanted.add((ns, uid))
                await self._apply(manifest, managed.get((ns, uid)), job)
        for (ns, uid), wl in managed.items():
            if (ns, uid) not in wanted and uid in alive:  # the job stays, its collect annotation went
                await self._call("DELETE", f"{WORKLOADS}/namespaces/{ns}/workloads/{wl['metadata']['name']}")
        self.passes += 1

    async def _report(self, job: dict[str, Any], uid: str, message: str) -> None:
        """A Warning event on the job (once per distinct message), so its owner sees why nothing is collected."""
        if self._reported.get(uid) == message:
            return
        self._reported[uid] = message
        meta = job["metadata"]
        log.warning("%s %s/%s: %s; no Workload created", job.get("kind"), meta.get("namespace"), meta.get("name"),
                    message)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace")},
                 "involvedObject": {"apiVersion": job.get("apiVersion"), "kind": job.get("kind"),
                                    "name": meta["name"], "namespace": meta.get("namespace"), "uid": uid},
                 "reason": "InvalidAnnotation", "message": f"{message}; no Workload created", "type": "Warning",
                 "source": {"component": "trainscope"}, "reportingComponent": "trainscope",
                 "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1}
        await self._call("POST", f"/api/v1/namespaces/{meta.get('namespace')}/events", event)

    async def _managed(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Workloads created from job annotations, by (namespace, job uid)."""
        out = {}
        for ns in self.namespaces or (None,):
            self.reads += 1
            if ns is None:
                listing = await self.kube.request_json("GET", f"{WORKLOADS}/workloads?labelSelector={JOB_UID_LABEL}")
            else:
                listing = await self.kube.request_json(
                    "GET", f"{WORKLOADS}/namespaces/{ns}/workloads?labelSelector={JOB_UID_LABEL}")
            for wl in listing.get("items") or []:
                meta = wl.get("metadata") or {}
                uid = (meta.get("labels") or {}).get(JOB_UID_LABEL)
                if uid and not meta.get("deletionTimestamp"):  # labels applied again: emulators ignore selectors
                    out[(meta.get("namespace", ""), uid)] = wl
        return out

    async def _namespace_annotations(self, namespace: str) -> dict[str, str]:
        """The Namespace's annotations (a team's opt-in); {} when unreadable (namespaced mode has no permission)."""
        try:
            ns = await self.kube.request_json("GET", f"/api/v1/namespaces/{namespace}")
        except KubeError:
            return {}
        return dict((ns.get("metadata") or {}).get("annotations") or {})

    async def _manifest(self, kind: JobKind, job: dict[str, Any]) -> dict[str, Any]:
        meta = job["metadata"]
        ns, name, annotations = meta.get("namespace", ""), meta["name"], meta.get("annotations") or {}
        spec: dict[str, Any] = {"sources": []}
        if TEMPLATE in annotations:
            spec = await self._template(ns, annotations[TEMPLATE])
        added = sources_from_annotations(annotations)
        spec["sources"] = list(spec.get("sources") or []) + added
        if not spec["sources"]:
            spec["sources"] = [{"logs": {"pods": {}, "format": "auto"}}]
        spec["jobRef"] = {"apiVersion": kind.api_version, "kind": kind.kind, "name": name}
        try:
            parse_spec(spec)
        except SpecError as err:
            which = TEMPLATE if TEMPLATE in annotations else (LOGS_FORMAT if LOGS_FORMAT in annotations else COLLECT)
            raise AnnotationError(which, f"the Workload it makes is invalid: {err}") from None
        return {"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                "metadata": {"name": workload_name(name, kind), "namespace": ns, "labels": {JOB_UID_LABEL: meta["uid"]},
                             "ownerReferences": [{"apiVersion": kind.api_version, "kind": kind.kind, "name": name,
                                                  "uid": meta["uid"]}]},
                "spec": spec}

    async def _template(self, namespace: str, name: str) -> dict[str, Any]:
        """The template's spec; each ConfigMap is read once per pass however many jobs name it."""
        found = self._templates.get((namespace, name))
        if found is None:
            try:
                found = await self._read_template(namespace, name)
            except AnnotationError as exc:
                found = exc
            self._templates[(namespace, name)] = found
        if isinstance(found, AnnotationError):
            raise found
        return copy.deepcopy(found)

    async def _read_template(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            cm = await self.kube.request_json("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        except KubeError as exc:
            raise AnnotationError(TEMPLATE, f"ConfigMap {namespace}/{name}: HTTP {exc.status}") from None
        text = (cm.get("data") or {}).get(TEMPLATE_KEY)
        if text is None:
            raise AnnotationError(TEMPLATE, f"ConfigMap {namespace}/{name} has no key {TEMPLATE_KEY}")
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AnnotationError(TEMPLATE, f"ConfigMap {namespace}/{name} {TEMPLATE_KEY}: not YAML: {exc}") from None
        if not isinstance(spec, dict):
            raise AnnotationError(TEMPLATE, f"ConfigMap {namespace}/{name} {TEMPLATE_KEY}: not a Workload spec")
        spec.pop("jobRef", None)
        return copy.deepcopy(spec)

    async def _apply(self, manifest: dict[str, Any], current: dict[str, Any] | None, job: dict[str, Any]) -> None:
        ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
        if current is None:
            try:
                await self.kube.request_json("POST", f"{WORKLOADS}/namespaces/{ns}/workloads", manifest)
                log.info("created Workload %s/%s for %s %s", ns, name, job.get("kind"), job["metadata"]["name"])
            except KubeError as exc:
                if exc.status == 409:
                    await self._report(job, manifest["metadata"]["labels"][JOB_UID_LABEL],
                                 f"a Workload named {name} exists and was not made for this job")
                else:
                    log.warning("creating Workload %s/%s failed: %s", ns, name, exc)
            return
        have = current.get("spec") or {}
        if have != manifest["spec"]:
            patch = {"spec": {**{k: None for k in have if k not in manifest["spec"]}, **manifest["spec"]}}
            await self._call("PATCH", f"{WORKLOADS}/namespaces/{ns}/workloads/{current['metadata']['name']}", patch,
                             content_type="application/merge-patch+json")

    async def _call(self, method: str, path: str, body: Any = None, **kw: Any) -> None:
        try:
            await self.kube.request_json(method, path, body, **kw)
        except (KubeError, httpx.HTTPError) as exc:
            log.warning("%s", exc)


def workload_name(job: str, kind: JobKind) -> str:
    """The Workload made for a job: its name and kind, so jobs of two kinds with one name do not collide."""
    return f"{job}-{kind.kind.lower()}"[:253]


def sources_from_annotations(annotations: dict[str, str]) -> list[dict[str, Any]]:
    """The sources the per-source annotations name; each value checked on its own so errors name it."""
    out: list[dict[str, Any]] = []
    if TB_LOGDIR in annotations:
        out.append({"name": "tensorboard", "tensorboard": {"logDir": annotations[TB_LOGDIR]}})
    if WANDB_RUN in annotations:
        parts = annotations[WANDB_RUN].split("/")
        if len(parts) != 3 or not all(parts):
            raise AnnotationError(WANDB_RUN, f"must be <entity>/<project>/<run id> (got {annotations[WANDB_RUN]!r})")
        out.append({"name": "wandb", "wandb": {"entity": parts[0], "project": parts[1], "runId": parts[2]}})
    if LOGS_FORMAT in annotations:
        if annotations[LOGS_FORMAT] not in FORMATS:
            raise AnnotationError(LOGS_FORMAT, f"must be one of {', '.join(FORMATS)} "
                                  f"(got {annotations[LOGS_FORMAT]!r})")
        out.append({"name": "logs", "logs": {"pods": {}, "format": annotations[LOGS_FORMAT]}})
    for source in out:
        try:
            parse_spec({"sources": [source]})
        except SpecError as err:
            annotation = {"tensorboard": TB_LOGDIR, "wandb": WANDB_RUN, "logs": LOGS_FORMAT}[str(source["name"])]
            raise AnnotationError(annotation, str(err)) from None
    return out
