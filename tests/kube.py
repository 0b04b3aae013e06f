"""End-to-end harness: a Kubernetes API emulated by KMock, the real operator in its own thread, TensorBoard runs.

- `Emulator`: kmock's KubernetesEmulator plus what kopf needs and kmock 0.8 lacks (resourceVersion, uid,
  creationTimestamp, generateName, 422 on a failed JSON-patch test) and a `metadata.generation` bump when the
  spec changes, so observedGeneration can be checked. It also serves `pods/{name}/log` as the kubelet does
  (`PodLogs`): timestamps, second-granular sinceTime, follow, previous, in chunks with delays. Each request
  costs the same however many came before (kmock's own dispatch grows with its request log; see
  `Emulator.__iter__`), so one emulator can serve an operator with 1,000 Workloads.
- `Cluster`: the emulator served over HTTP, with Workload/Event/Pod/log helpers for tests.
- `Operator`: `kopf.operator()` with the project's handlers on its own thread and event loop (never on
  pytest-asyncio's loop, which serves the emulator), stoppable and restartable.
- `TBRun` / `read_scalars`: a tensorboardX writer and an independent reader of its event files (the oracle).
- `db_points`: what the database holds for a Workload, by plain SQL.

Import this module before anything imports `trainscope.operator.handlers`: the status timer's interval is
read from TRAINSCOPE_STATUS_INTERVAL when the handlers are imported (the status publisher's interval).
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import itertools
import json
import math
import os
import pprint
import struct
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

STATUS_INTERVAL = 0.3
os.environ.setdefault("TRAINSCOPE_STATUS_INTERVAL", str(STATUS_INTERVAL))

import aiohttp.web  # noqa: E402
import asyncpg  # noqa: E402
import httpx  # noqa: E402
import jsonpatch  # noqa: E402
import kmock  # noqa: E402
import kopf  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from tensorboardX import SummaryWriter  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

import trainscope.operator.handlers as handlers  # noqa: E402  (registers the operator's handlers)
from trainscope.operator.runtime import Runtime, RuntimeConfig  # noqa: E402

assert handlers.STATUS_INTERVAL == float(os.environ["TRAINSCOPE_STATUS_INTERVAL"]) <= 1.0, (
    "trainscope.operator.handlers was imported before tests/kube.py with a slow status interval "
    f"({handlers.STATUS_INTERVAL}s): import tests.kube first or set TRAINSCOPE_STATUS_INTERVAL=0.3")

T = TypeVar("T")

GROUP, VERSION, PLURAL = handlers.GROUP, handlers.VERSION, handlers.PLURAL
API_VERSION = f"{GROUP}/{VERSION}"
WORKLOADS = f"{GROUP}/{VERSION}/{PLURAL}"
NAMESPACE = "default"

# kopf's handler registry is process-global: the login handler is registered once (here, at import) and
# reads the URL of the emulator of the current test from this holder.
_CURRENT: dict[str, str] = {}


@kopf.on.login(id="kmock-login")
def _login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials; with a token file set (`Cluster.require_token`), its current content, read again each
    time kopf logs in anew after a 401, as kopf's piggybacking login re-reads a service account's token."""
    token = Path(_CURRENT["token_file"]).read_text().strip() if "token_file" in _CURRENT else None
    return kopf.ConnectionInfo(server=_CURRENT["url"], insecure=True, default_namespace=NAMESPACE, token=token)


@kopf.on.startup(id="e2e-tuning")
def _tune(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Fast reconnects and short timeouts: the emulator is local and ignores ?timeoutSeconds."""
    settings.watching.server_timeout = 10
    settings.watching.client_timeout = 15
    settings.watching.reconnect_backoff = 0.1
    settings.networking.request_timeout = 5
    settings.networking.error_backoffs = [0.1, 0.2, 0.5]
    settings.queueing.idle_timeout = 0.5
    settings.queueing.exit_timeout = 2.0


# ---- the emulated API server ---------------------------------------------------------------------------------


# The request the current task is dispatching, if any (see Emulator.__iter__).
_DISPATCHING: contextvars.ContextVar[kmock.Request | None] = contextvars.ContextVar("kmock_dispatching",
                                                                                    default=None)


class Emulator(kmock.KubernetesEmulator):
    """KMock's emulator with the object metadata kopf relies on, at a cost per request that does not grow.

    kmock 0.8 sets no resourceVersion/uid/creationTimestamp (kopf's finalizer JSON patches `test` the
    resourceVersion and would retry forever), ignores generateName (kopf's events use it), answers a failed
    JSON-patch `test` with 500 where Kubernetes answers 422 (kopf retries on 422), and never bumps
    `generation`. This subclass fills all of these in, in place on the request body, so the stored object and
    the watch events carry them.

    kmock also records every request it serves and every version of every object, for assertions no test here
    makes. Unless `keep_history` is set, a served request is forgotten and an object keeps only its current
    version, so memory stays flat while an operator patches status for hours.
    """

    keep_history = False  # True: kmock's request log and object histories, as kmock keeps them
    _rv = itertools.count(1)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.pod_logs = PodLogs(self)

    def __iter__(self) -> Iterator[kmock.Request]:
        """The requests kmock's views see: while a request is dispatched, that request alone.

        kmock picks the reaction for a request with `request in view`, and a view answers that by filtering
        every request the emulator ever served: each request cost more than the last (creating 400 Workloads
        with an operator running took minutes, ~99% of it in kmock's filter checks). The reactions here (the
        emulator's fallbacks) filter each request on its own, never by its position among others (no slices),
        so the answer is the same when the current request is the only one to look at.
        """
        current = _DISPATCHING.get()
        if current is not None:
            yield current
        else:
            yield from super().__iter__()

    def _KubernetesEmulator__get_objs(self, request: kmock.Request, strict: bool) -> list[kmock.Object]:
        """The stored objects a request addresses (kmock's private `__get_objs`), by key when it names one.

        kmock scans every stored object for every get, create, patch and delete; with 1,000 Workloads that scan
        was the largest cost left. A request that names its object (and namespace, or is strict about it, as
        get/patch/delete are) matches exactly the object under that key; lists and watches still scan.
        """
        if request.resource is not None and request.name is not None and (strict or request.namespace is not None):
            key = (request.resource, request.namespace, request.name)
            return [self.objects[key]] if key in self.objects else []
        return super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]

    # Bearer tokens the API server accepts now (None: no authentication). Like a bound service-account token
    # (https://kubernetes.io/docs/reference/access-authn-authz/service-accounts-admin/#bound-service-account-token-volume),
    # a token that is no longer accepted gets 401 Unauthorized with a Status body, and clients must read the
    # rotated token file again (client-go's cached file token source re-reads it; see kubeauth.py).
    tokens: set[str] | None = None
    unauthorized = 0  # requests answered 401
    ADMIN = "test-admin"  # the test's own helpers (Cluster.create, add_pod...) always get in with this one

    def _authorized(self, request: kmock.Request) -> bool:
        if self.tokens is None:
            return True
        header = request.headers.get("Authorization") or request.headers.get("authorization") or ""
        return header.startswith("Bearer ") and header[7:].strip() in (*self.tokens, self.ADMIN)

    async def _handle(self, request: kmock.Request) -> Any:
        token = _DISPATCHING.set(request)
        try:
            if not self._authorized(request):
                self.unauthorized += 1
                return aiohttp.web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": "Unauthorized", "reason": "Unauthorized", "code": 401}, status=401)
            return await self._serve(request)
        finally:
            _DISPATCHING.reset(token)
            if not self.keep_history:
                self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from kmock's logs, and the versions before the current of what it touched."""
        for log in (self._requests, *(payload._requests for payload in self._payloads)):
            for i in range(len(log) - 1, -1, -1):
                if log[i] is request:
                    del log[i]
                    break
        if request.resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE,
                                                               kmock.action.DELETE):
            return
        meta = request.data.get("metadata", {}) if isinstance(request.data, dict) else {}
        key = (request.resource, request.namespace or meta.get("namespace"), request.name or meta.get("name"))
        if key in self.objects:
            history = self.objects[key].history
            # keep from the last real version on: a soft-deleted object still answers `.last`
            last = max((i for i, version in enumerate(history) if version is not None), default=0)
            if last > 0:
                del history[:last]

    async def _serve(self, request: kmock.Request) -> Any:
        if request.resource is not None and request.resource.plural == "pods" and request.subresource == "log":
            return await self.pod_logs.serve(request)
        if request.resource is not None and request.data is not None:
            rv = str(next(self._rv))
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                meta = request.data.setdefault("metadata", {})
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:8]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", _k8s_now())
                meta.setdefault("generation", 1)
                meta["resourceVersion"] = rv
            elif request.action == kmock.action.UPDATE:
                if request.subresource == "status":
                    self._status_only(request)
                bump = self._next_generation(request)
                if isinstance(request.data, list):  # application/json-patch+json
                    request.data.append({"op": "add", "path": "/metadata/resourceVersion", "value": rv})
                    if bump is not None:
                        request.data.append({"op": "add", "path": "/metadata/generation", "value": bump})
                elif isinstance(request.data, dict):  # application/merge-patch+json
                    meta = request.data.setdefault("metadata", {})
                    meta["resourceVersion"] = rv
                    if bump is not None:
                        meta["generation"] = bump
        try:
            return await super()._handle(request)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc)) from exc

    @staticmethod
    def _status_only(request: kmock.Request) -> None:
        """A patch of the /status subresource changes the status stanza and nothing else.

        "PUT requests to the /status subresource take a custom resource object and ignore changes to anything
        except the status stanza" (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/
        custom-resource-definitions/#status-subresource); the apiserver's status strategies copy spec from the
        stored object and reset its metadata (apimachinery's metav1.ResetObjectMetaForStatus), so neither spec
        nor labels, annotations or finalizers change, and generation is not bumped. (The reverse rule, a patch of
        the main resource leaving status alone, is not applied: tests set pods' and jobs' status that way.)
        """
        data = request.data
        if isinstance(data, dict):
            for key in [k for k in data if k != "status"]:
                del data[key]
        elif isinstance(data, list):  # application/json-patch+json
            data[:] = [op for op in data if isinstance(op, dict) and str(op.get("path", "")).startswith("/status")]

    def _next_generation(self, request: kmock.Request) -> int | None:
        """metadata.generation + 1 when a patch of the main resource (not /status) touches the spec."""
        if request.subresource is not None or request.name is None:
            return None
        data = request.data
        touches_spec = ("spec" in data) if isinstance(data, dict) else any(
            str(op.get("path", "")).startswith("/spec") for op in data if isinstance(op, dict))
        if not touches_spec:
            return None
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return int(self.objects[key].get("metadata", {}).get("generation") or 1) + 1


def _k8s_now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339nano(ns: int, offset_minutes: int = 0) -> str:
    """A kubelet log timestamp: Go's RFC3339NanoFixed ("2006-01-02T15:04:05.000000000Z07:00", nine fraction digits
    kept) in the zone the runtime wrote it in, which is the node's local time (containerd stamps CRI records with
    time.Now() of the node; kubelet's logs.go parses them and formats them back with their offset)."""
    sec, frac = divmod(ns, 10**9)
    zone = datetime.timezone(datetime.timedelta(minutes=offset_minutes))
    head = datetime.datetime.fromtimestamp(sec, zone).strftime("%Y-%m-%dT%H:%M:%S")
    sign, minutes = ("+" if offset_minutes >= 0 else "-"), abs(offset_minutes)
    return f"{head}.{frac:09d}" + ("Z" if offset_minutes == 0 else f"{sign}{minutes // 60:02d}:{minutes % 60:02d}")


def since_ns(params: Mapping[str, str]) -> int:
    """A pods/log request's sinceTime as the kubelet applies it: whole seconds, in ns (0: from the start)."""
    if not params.get("sinceTime"):
        return 0
    when = datetime.datetime.fromisoformat(params["sinceTime"].replace("Z", "+00:00"))
    return int(when.timestamp()) * 10**9


def render_log(entries: Iterable[LogEntry], since: int, stamps: bool, new_line: bool = True,
               offset_minutes: int = 0) -> tuple[bytes, bool]:
    """The log text of `entries` written at or after `since`, as kubelet's ReadLogs renders CRI records
    (pkg/kubelet/kuberuntime/logs/logs.go): a record before `since` is skipped; a record gets the timestamp prefix
    only when the record before it, written or skipped, ended a line, so the partial (P) records of one long line
    carry one timestamp, and an answer may start with the rest of a line whose first record was before `since`.
    Returns the text and whether it ends at a line start (for rendering what is written next)."""
    out = bytearray()
    for entry in entries:
        if entry.ns >= since:
            if stamps and new_line:
                out += rfc3339nano(entry.ns, offset_minutes).encode() + b" "
            out += entry.data
        new_line = entry.data.endswith(b"\n")
    return bytes(out), new_line


# containerd's CRI logger reads a container's output through a buffer of this size and writes a line longer than
# that as partial (P) records of this size, each stamped when written (internal/cri/io/logger.go, the
# max_container_log_line_size setting, 16 KiB by default); a line without its newline yet stays in the buffer.
CRI_MAX_LINE = 16 * 1024


@dataclass
class LogEntry:
    """One CRI record of a container's log: the runtime's timestamp (ns) and the bytes written. A record without a
    trailing newline is partial (tag P): the next record continues its line."""

    ns: int
    data: bytes


@dataclass
class Instance:
    """One run of a container: its log (the current file), what rotation moved away, and whether it has ended."""

    entries: list[LogEntry]
    terminated: bool = False
    pending: bytes = b""  # printed without a newline yet: in the runtime's buffer, not in the log
    rotated: list[LogEntry] = field(default_factory=list)  # in rotated files the API never serves


class PodLogs:
    """Container logs served at /api/v1/namespaces/{ns}/pods/{name}/log as the API server and kubelet do.

    Honoured: `container` (required when the pod has several), `timestamps` (in the node's zone: `offsets`),
    `sinceTime` (truncated to whole seconds, as metav1.Time is on its way to the kubelet), `follow` (the stream ends
    when the instance terminates or the pod is deleted), `previous` (the instance before the latest one; while a
    container waits in CrashLoopBackOff the latest one is the dead instance, served as the current log, as
    kubelet's GetContainerLogs resolves the most recent container). Partial CRI records and rotation: see
    `render_log`, `Cluster.write_log` and `Cluster.rotate_log`. Errors are the API's: 404 for a missing pod, 400 for
    a container that is not running yet or has no previous instance. Responses are written in `chunk`-byte pieces
    with `delay` seconds between them, so clients see lines split anywhere.
    """

    def __init__(self, emu: Emulator):
        self.emu = emu
        self.logs: dict[tuple[str, str, str], list[Instance]] = {}
        self.offsets: dict[tuple[str, str], int] = {}  # (namespace, pod) -> its node's UTC offset in minutes
        self.chunk = 4096
        self.delay = 0.0
        self.served = 0  # log requests answered
        self.bytes_served = 0  # log bytes written
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def instances(self, namespace: str, pod: str, container: str) -> list[Instance]:
        return self.logs.setdefault((namespace, pod, container), [])

    def _pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        for (resource, ns, nm), obj in list(self.emu.objects.items()):
            if resource.plural == "pods" and ns == namespace and nm == name and not obj.deleted:
                return obj.raw
        return None

    @staticmethod
    def _error(status: int, message: str) -> aiohttp.web.Response:
        reason = {400: "BadRequest", 404: "NotFound"}[status]
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                          "message": message, "reason": reason, "code": status}, status=status)

    async def serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        self.served += 1
        namespace, name, params = request.namespace or NAMESPACE, request.name or "", request.params
        pod = self._pod(namespace, name)
        if pod is None:
            return self._error(404, f'pods "{name}" not found')
        names = [c["name"] for c in pod.get("spec", {}).get("containers", [])]
        container = params.get("container") or (names[0] if len(names) == 1 else None)
        if container is None:
            return self._error(400, f"a container name must be specified for pod {name}, choose one of: {names}")
        if container not in names:
            return self._error(400, f"container {container} is not valid for pod {name}")
        runs = self.instances(namespace, name, container)
        previous = params.get("previous") == "true"
        if previous and len(runs) < 2:
            return self._error(400, f'previous terminated container "{container}" in pod "{name}" not found')
        if not runs:
            return self._error(400, f'container "{container}" in pod "{name}" is waiting to start: '
                                    "ContainerCreating")
        instance = runs[-2] if previous else runs[-1]
        since = since_ns(params)
        stamps = params.get("timestamps") == "true"
        follow = params.get("follow") == "true" and not previous
        raw = request._raw_request
        assert raw is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        sent = 0
        new_line = True
        offset = self.offsets.get((namespace, name), 0)
        try:
            while True:
                out, new_line = render_log(instance.entries[sent:], since, stamps, new_line, offset)
                sent = len(instance.entries)
                self.bytes_served += len(out)
                for i in range(0, len(out), self.chunk):
                    await response.write(bytes(out[i:i + self.chunk]))
                    if self.delay:
                        await asyncio.sleep(self.delay)
                if not follow or instance.terminated or self._pod(namespace, name) is None:
                    break
                if sent == len(instance.entries):
                    changed = self._changed
                    await changed.wait()
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away (it had what it wanted)
        return response


class Cluster:
    """One emulated API server for one test, with helpers for Workloads and Events."""

    def __init__(self) -> None:
        self.emu = Emulator()
        self._server = kmock.Server(self.emu)

    async def __aenter__(self) -> Cluster:
        await self.emu.__aenter__()
        await self._server.__aenter__()
        # kopf waits until v1/namespaces and the CRD resource are discoverable, even cluster-wide.
        self.emu.resources.load_bundled()
        self.emu.resources[WORKLOADS] = kmock.ResourceInfo(
            kind="Workload", singular="workload", namespaced=True,
            verbs={"list", "watch", "get", "create", "patch", "update", "delete"},
            subresources={"status"})  # => kopf patches status through .../<name>/status
        _CURRENT["url"] = self.url
        return self

    async def __aexit__(self, *exc: object) -> None:
        _CURRENT.pop("url", None)
        _CURRENT.pop("token_file", None)
        await self._server.__aexit__(*exc)
        await self.emu.__aexit__(*exc)

    @property
    def url(self) -> str:
        return str(self.emu.url).rstrip("/")

    @staticmethod
    def path(name: str | None = None, namespace: str = NAMESPACE) -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return base if name is None else f"{base}/{name}"

    async def create(self, name: str, spec: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
        body = {"apiVersion": API_VERSION, "kind": "Workload",
                "metadata": {"name": name, "namespace": namespace}, "spec": spec}
        rsp = await self.emu.post(self.path(namespace=namespace), json=body)
        assert rsp.status in (200, 201), await rsp.text()
        return await rsp.json()

    async def get(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
        rsp = await self.emu.get(self.path(name, namespace))
        if rsp.status == 404:
            return None
        assert rsp.status == 200, await rsp.text()
        return await rsp.json()

    async def patch_spec(self, name: str, spec: dict[str, Any], namespace: str = NAMESPACE) -> dict[str, Any]:
        """A merge patch of the spec (lists are replaced as a whole), like `kubectl patch --type=merge`."""
        rsp = await self.emu.patch(self.path(name, namespace), json={"spec": spec},
                                   headers={"Content-Type": "application/merge-patch+json"})
        assert rsp.status == 200, await rsp.text()
        return await rsp.json()

    async def delete(self, name: str, namespace: str = NAMESPACE) -> None:
        rsp = await self.emu.delete(self.path(name, namespace))
        assert rsp.status == 200, await rsp.text()

    # ---- authentication

    def require_token(self, token_file: Path, token: str) -> None:
        """From now on the API server accepts only `token` (written to `token_file`, which kopf's test login and
        a kubeconfig's tokenFile read); see Emulator.tokens."""
        token_file.write_text(token + "\n")
        _CURRENT["token_file"] = str(token_file)
        for client in self.emu.clients:
            client.headers["Authorization"] = f"Bearer {Emulator.ADMIN}"
        self.emu.tokens = {token}

    def rotate_token(self, token_file: Path, token: str) -> None:
        """The kubelet writes a new token into the projected file and the old one stops being accepted at once
        (the harshest case: a real bound token stays valid until its expiry)."""
        token_file.write_text(token + "\n")
        self.emu.tokens = {token}

    # ---- pods and their logs

    async def add_pod(self, name: str, labels: dict[str, str] | None = None, containers: Iterable[str] = ("trainer",),
                      namespace: str = NAMESPACE, phase: str = "Running", utc_offset: str = "Z") -> dict[str, Any]:
        """A pod whose containers are running (phase Running) or not started yet (Pending), on a node whose local
        time is `utc_offset` ("Z", "+08:00", "-05:00"): its log lines are stamped in that zone."""
        names = list(containers)
        if utc_offset != "Z":
            sign = -1 if utc_offset[0] == "-" else 1
            self.emu.pod_logs.offsets[(namespace, name)] = sign * (int(utc_offset[1:3]) * 60 + int(utc_offset[4:6]))
        body = {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
                "spec": {"containers": [{"name": c} for c in names]},
                "status": {"phase": phase, "containerStatuses": [{"name": c, "restartCount": 0} for c in names]}}
        rsp = await self.emu.post(f"/api/v1/namespaces/{namespace}/pods", json=body)
        assert rsp.status in (200, 201), await rsp.text()
        if phase != "Pending":
            for c in names:
                self.emu.pod_logs.instances(namespace, name, c).append(Instance([]))
        return await rsp.json()

    def write_log(self, pod: str, text: str | bytes, *, at: float, spacing: float = 0.001,
                  container: str = "trainer", namespace: str = NAMESPACE) -> list[tuple[float, bytes]]:
        """The container prints `text`: each line is stamped `at` + i * spacing seconds (spacing 0: all share
        one timestamp), as containerd's CRI logger writes it: a line longer than CRI_MAX_LINE becomes partial (P)
        records of that size, 1 µs apart; an unfinished last line waits in the runtime's buffer (not in the log)
        until its newline comes, it fills the buffer (then a P record), or the container ends. Returns the
        (timestamp, line) of each line completed, for the test's oracle: a line's time is its first record's."""
        data = text.encode() if isinstance(text, str) else text
        instance = self.emu.pod_logs.instances(namespace, pod, container)[-1]
        assert not instance.terminated
        data, instance.pending = instance.pending + data, b""
        lines = [line + b"\n" for line in data.split(b"\n")]  # \n ends a line for the runtime; \r does not
        lines[-1] = lines[-1][:-1]
        if not lines[-1]:
            lines.pop()
        base = round(at * 1e6) * 1000  # microseconds given, nanoseconds stamped (as the kubelet does)
        written = []
        for i, line in enumerate(lines):
            ns = base + round(i * spacing * 1e6) * 1000
            if not line.endswith(b"\n"):  # unfinished: full buffers go out as P records, the rest waits
                while len(line) >= CRI_MAX_LINE:
                    self._record(instance, ns, line[:CRI_MAX_LINE])
                    line, ns = line[CRI_MAX_LINE:], ns + 1000
                instance.pending = line
                break
            first = self._record(instance, ns, line)
            written.append((first / 1e9, line))
        self.emu.pod_logs.changed()
        return written

    @staticmethod
    def _record(instance: Instance, ns: int, line: bytes) -> int:
        """Append a line (or the start of one) as CRI records; the time of the line's first record, which is the
        time the kubelet shows for the whole line (a line continued from earlier P records keeps theirs)."""
        first = ns
        if instance.entries and not instance.entries[-1].data.endswith(b"\n"):
            i = len(instance.entries) - 1
            while i > 0 and not instance.entries[i - 1].data.endswith(b"\n"):
                i -= 1
            first = instance.entries[i].ns
        for j in range(0, len(line), CRI_MAX_LINE):
            instance.entries.append(LogEntry(ns + j // CRI_MAX_LINE * 1000, line[j:j + CRI_MAX_LINE]))
        return first

    async def restart_container(self, pod: str, container: str = "trainer", namespace: str = NAMESPACE) -> None:
        """The container exits and the kubelet starts it again: a new, empty log; restartCount + 1."""
        await self.crash_container(pod, container, namespace, backoff=False)
        await self.start_container(pod, container, namespace)

    async def crash_container(self, pod: str, container: str = "trainer", namespace: str = NAMESPACE, *,
                              exit_code: int = 1, at: float | None = None, backoff: bool = True) -> None:
        """The container's process exits: what it had in the runtime's buffer is written as a last record, and
        with `backoff` the kubelet waits before starting it again (state.waiting CrashLoopBackOff, lastState
        terminated, restartCount unchanged: it counts the instances started after the first, per the
        ContainerStatus API reference). Its log stays the current log until the next instance starts."""
        runs = self.emu.pod_logs.instances(namespace, pod, container)
        instance = runs[-1]
        if instance.pending:  # containerd writes a line cut off by the exit as it is, ended (logger.go at EOF)
            ns = round((at if at is not None else time.time()) * 1e6) * 1000
            self._record(instance, ns, instance.pending + b"\n")
            instance.pending = b""
        instance.terminated = True
        if backoff:
            await self._container_status(pod, container, namespace, {
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting failed container"}},
                "lastState": {"terminated": {"exitCode": exit_code, "reason": "Error"}}})
        self.emu.pod_logs.changed()

    async def start_container(self, pod: str, container: str = "trainer", namespace: str = NAMESPACE) -> None:
        """The kubelet starts the container (again): a new, empty log; restartCount + 1 after the first."""
        runs = self.emu.pod_logs.instances(namespace, pod, container)
        assert not runs or runs[-1].terminated, "the container is still running"
        runs.append(Instance([]))
        await self._container_status(pod, container, namespace, {
            "restartCount": len(runs) - 1, "state": {"running": {"startedAt": _k8s_now()}}})
        self.emu.pod_logs.changed()

    async def finish_container(self, pod: str, container: str = "trainer", namespace: str = NAMESPACE, *,
                               exit_code: int = 0) -> None:
        """The container's process exits for good (restartPolicy Never/OnFailure met): state.terminated with its
        exit code, and the pod's phase Succeeded (0) or Failed."""
        await self.crash_container(pod, container, namespace, backoff=False)
        await self._container_status(pod, container, namespace, {"state": {"terminated": {
            "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}}})
        rsp = await self.emu.patch(f"/api/v1/namespaces/{namespace}/pods/{pod}",
                                   json={"status": {"phase": "Succeeded" if exit_code == 0 else "Failed"}},
                                   headers={"Content-Type": "application/merge-patch+json"})
        assert rsp.status == 200, await rsp.text()

    def rotate_log(self, pod: str, container: str = "trainer", namespace: str = NAMESPACE) -> None:
        """The kubelet's container log manager rotates the log (pkg/kubelet/logs/container_log_manager.go: the file
        grew past containerLogMaxSize; it is renamed and the runtime reopens a new one). `kubectl logs` and the
        API read only the current file, so everything written so far is no longer served."""
        instance = self.emu.pod_logs.instances(namespace, pod, container)[-1]
        instance.rotated += instance.entries
        instance.entries = []
        self.emu.pod_logs.changed()

    async def _container_status(self, pod: str, container: str, namespace: str, fields: dict[str, Any]) -> None:
        obj = await self._pod_object(pod, namespace)
        statuses = obj["status"]["containerStatuses"]
        for st in statuses:
            if st["name"] == container:
                for key in ("state", "lastState"):
                    if key in fields:
                        st.pop(key, None)
                st.update(fields)
        rsp = await self.emu.patch(f"/api/v1/namespaces/{namespace}/pods/{pod}",
                                   json={"status": {"containerStatuses": statuses}},
                                   headers={"Content-Type": "application/merge-patch+json"})
        assert rsp.status == 200, await rsp.text()

    async def delete_pod(self, pod: str, namespace: str = NAMESPACE) -> None:
        rsp = await self.emu.delete(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        assert rsp.status == 200, await rsp.text()
        self.emu.pod_logs.changed()

    async def _pod_object(self, pod: str, namespace: str) -> dict[str, Any]:
        rsp = await self.emu.get(f"/api/v1/namespaces/{namespace}/pods/{pod}")
        assert rsp.status == 200, await rsp.text()
        return await rsp.json()

    def events(self, involved: str | None = None, reason: str | None = None) -> list[dict[str, Any]]:
        """Kubernetes Events posted so far (kopf.warn, logged errors), optionally by object name and reason."""
        out = []
        for (resource, _ns, _name), obj in list(self.emu.objects.items()):
            if resource.plural != "events" or obj.deleted:
                continue
            ev = obj.raw
            if involved is not None and ev.get("involvedObject", {}).get("name") != involved:
                continue
            if reason is not None and ev.get("reason") != reason:
                continue
            out.append(ev)
        return out

    async def workload(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        obj = await self.get(name, namespace)
        assert obj is not None, f"Workload {namespace}/{name} does not exist"
        return obj


def show(obj: dict[str, Any] | None) -> str:
    """The parts of a Workload worth printing when a wait times out."""
    if obj is None:
        return "<no object>"
    meta = obj.get("metadata", {})
    brief = {"generation": meta.get("generation"), "finalizers": meta.get("finalizers"),
             "deletionTimestamp": meta.get("deletionTimestamp"), "status": obj.get("status")}
    return pprint.pformat(brief, width=120, sort_dicts=False)


def condition(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond.get("type") == ctype:
            return cond
    raise AssertionError(f"no {ctype} condition yet:\n{show(obj)}")


def source_status(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for src in obj.get("status", {}).get("sources", []):
        if src.get("name") == name:
            return src
    raise AssertionError(f"no status.sources entry {name!r} yet:\n{show(obj)}")


def six_digits(value: float) -> float | str:
    """A metric value as status shows it (6 significant digits; NaN as a string)."""
    if math.isnan(value):
        return "NaN"
    return float(f"{value:.6g}")


async def eventually(check: Callable[[], Awaitable[T]], *, within: float, what: str,
                     interval: float = 0.1) -> T:
    """Run `check` until it stops raising AssertionError; after `within` s, fail with its last message."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await check()
        except AssertionError as exc:
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {within:.0f}s waiting for {what}:\n{exc}") from None
        await asyncio.sleep(interval)


# ---- the operator --------------------------------------------------------------------------------------------


def operator_config(database_url: str) -> RuntimeConfig:
    """Fast backoffs and an ephemeral /metrics port on localhost."""
    return RuntimeConfig(database_url=database_url, metrics_port=0, metrics_host="127.0.0.1",
                         backoff_base=0.05, backoff_cap=0.5, store_retry=0.2,
                         kube_connection=kopf.ConnectionInfo(server=_CURRENT["url"]) if "url" in _CURRENT else None)


class Operator:
    """The project's kopf operator running in its own thread and event loop, against the current Cluster."""

    def __init__(self, config: RuntimeConfig):
        self.memo = kopf.Memo(config=config)
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="kopf-operator", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(kopf.operator(clusterwide=True, standalone=True, stop_flag=self._stop,
                                      ready_flag=self._ready, memo=self.memo))
        except BaseException as exc:  # reported by start()/stop()
            self._error = exc

    async def start(self, within: float = 15.0) -> Operator:
        self._thread.start()
        try:
            ready = await asyncio.to_thread(self._ready.wait, within)
            assert self._error is None, f"operator failed at start: {self._error!r}"
            assert ready, "operator not ready in time"
            # MetricsEndpoint is created by the startup handler, which may finish a moment after ready_flag.
            await eventually(self._has_metrics, within=within, what="the operator's /metrics endpoint")
        except BaseException:
            self._stop.set()
            await asyncio.to_thread(self._thread.join, within)
            raise
        return self

    async def _has_metrics(self) -> None:
        assert self._error is None, f"operator crashed: {self._error!r}"
        assert self.memo.get("metrics") is not None and self.memo.metrics.port, "no metrics endpoint yet"

    async def stop(self, within: float = 30.0) -> None:
        """Graceful stop (daemons exit, collectors commit, pool closed); the emulator's loop keeps serving."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        await asyncio.to_thread(self._thread.join, within)
        assert not self._thread.is_alive(), "operator did not stop in time"
        assert self._error is None, f"operator exited with {self._error!r}"

    @property
    def runtime(self) -> Runtime:
        return self.memo.runtime

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.memo.metrics.port}/metrics"

    async def scrape(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """/metrics over HTTP: sample name -> [(labels, value)]."""
        async with httpx.AsyncClient(timeout=5) as client:
            rsp = await client.get(self.metrics_url)
        rsp.raise_for_status()
        out: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(rsp.text):
            for sample in family.samples:
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return out


def series(scraped: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> list[float]:
    """Values of the samples `name` whose labels include `labels`."""
    return [v for lbl, v in scraped.get(name, []) if all(lbl.get(k) == w for k, w in labels.items())]


def workload_labels(scraped: dict[str, list[tuple[dict[str, str], float]]]) -> set[str]:
    """Every value of the `workload` label in a scrape."""
    return {lbl["workload"] for samples in scraped.values() for lbl, _ in samples if "workload" in lbl}


# ---- TensorBoard runs and their oracle -----------------------------------------------------------------------


def loss_at(step: int) -> float:
    """A decreasing loss with a NaN every 97th step (never on a multiple of 10, where tests end)."""
    return math.nan if step % 97 == 0 else 2.0 / math.sqrt(step + 1) + 0.001 * (step % 7)


def lr_at(step: int) -> float:
    return 1e-3 * (0.999**step)


class TBRun:
    """A training run writing scalars with tensorboardX's SummaryWriter, as a training script would.

    SummaryWriter queues events to a worker thread and `flush()` does not drain that queue, so `write` then
    waits until the last step is in the file (read back from disk): a test knows exactly what it wrote.
    With `pace` (steps per second) each step's wall_time is set to start + step / pace, so throughput and ETA
    have exact expected values; otherwise tensorboardX stamps the current time.
    """

    def __init__(self, logdir: Path, tags: Iterable[str] = ("train/loss", "train/lr"), pace: float | None = None):
        self.logdir = logdir
        self.tags = tuple(tags)
        self.pace = pace
        self.start = time.time() - 3600.0
        self.writer = SummaryWriter(logdir=str(logdir), flush_secs=0.02)
        self.last_step = 0
        self._offset = 0
        self._on_disk = 0  # highest step seen in the file

    def value(self, tag: str, step: int) -> float:
        if tag.endswith("loss"):
            return loss_at(step)
        if tag.endswith("lr"):
            return lr_at(step)
        return (step % 101) / 100.0

    def write(self, steps: Iterable[int], tags: Iterable[str] | None = None, *, sync: bool = True) -> None:
        """Write the steps and (unless sync=False) wait until they are on disk."""
        for step in steps:
            walltime = None if self.pace is None else self.start + step / self.pace
            for tag in tags or self.tags:
                self.writer.add_scalar(tag, self.value(tag, step), global_step=step, walltime=walltime)
            self.last_step = max(self.last_step, step)
        self.writer.flush()
        if sync:
            self.sync()

    def write_to(self, last: int, *, sync: bool = True) -> None:
        self.write(range(self.last_step + 1, last + 1), sync=sync)

    def sync(self, within: float = 10.0) -> None:
        """Block until the file holds the last written step (read incrementally from disk)."""
        deadline = time.monotonic() + within
        while self._on_disk < self.last_step:
            assert time.monotonic() < deadline, f"{self.logdir}: step {self.last_step} not on disk"
            self.writer.flush()
            files = list(self.logdir.glob("*tfevents*"))
            if len(files) == 1:
                data = files[0].read_bytes()
                for end, record in _records(data, self._offset):
                    event = event_pb2.Event.FromString(record)
                    if event.HasField("summary"):
                        self._on_disk = max(self._on_disk, int(event.step))
                    self._offset = end
            if self._on_disk < self.last_step:
                time.sleep(0.01)

    def close(self) -> None:
        self.writer.close()


class BackgroundWriter:
    """Keeps appending steps to a TBRun from a thread until stopped (training that goes on meanwhile)."""

    def __init__(self, run: TBRun, steps_per_flush: int = 5, pause: float = 0.01):
        self.run = run
        self._steps, self._pause = steps_per_flush, pause
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tb-writer", daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            while not self._halt.is_set():
                self.run.write_to(self.run.last_step + self._steps, sync=False)
                self._halt.wait(self._pause)
        except BaseException as exc:
            self.error = exc

    def start(self) -> BackgroundWriter:
        self._thread.start()
        return self

    async def wait_written(self, step: int, within: float = 20.0) -> None:
        async def written() -> None:
            assert self.error is None, f"writer failed: {self.error!r}"
            assert self.run.last_step >= step, f"writer at step {self.run.last_step}, want {step}"
        await eventually(written, within=within, what=f"the writer to reach step {step}")

    async def stop(self) -> int:
        """Stop writing; returns the last step, once it is on disk."""
        self._halt.set()
        await asyncio.to_thread(self._thread.join, 10)
        assert not self._thread.is_alive() and self.error is None, f"writer failed: {self.error!r}"
        await asyncio.to_thread(self.run.sync)
        return self.run.last_step


@dataclass(frozen=True, slots=True)
class Scalar:
    ts: float
    value: float


def _records(data: bytes, pos: int = 0) -> Iterable[tuple[int, bytes]]:
    """TFRecord framing: uint64 length, uint32 crc, data, uint32 crc; yields (end offset, data) of each
    complete record from `pos` (a torn record at the tail is left out)."""
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from("<Q", data, pos)
        end = pos + 12 + length + 4
        if end > len(data):
            return
        yield end, data[pos + 12: pos + 12 + length]
        pos = end


def read_scalars(logdir: Path) -> dict[tuple[str, str, int], Scalar]:
    """(run, tag, step) -> (wall_time, value) of every scalar in the event files under `logdir`.

    run is the event file's folder relative to logdir ("." for logdir itself); if a step is written twice, the
    later record in write order wins (the store's rule: the source's own order, not wall time). Values are float32
    simple_value as written, NaN included.
    """
    out: dict[tuple[str, str, int], Scalar] = {}
    for path in sorted(logdir.rglob("*tfevents*")):
        run = str(path.parent.relative_to(logdir))
        for _end, record in _records(path.read_bytes()):
            event = event_pb2.Event.FromString(record)
            if not event.HasField("summary"):
                continue
            for v in event.summary.value:
                if v.WhichOneof("value") != "simple_value":
                    continue
                out[(run, v.tag, int(event.step))] = Scalar(event.wall_time, v.simple_value)
    return out


# ---- the database --------------------------------------------------------------------------------------------

_POINTS_SQL = """
SELECT s.source, s.run, s.metric, p.step, extract(epoch FROM p.ts)::float8 AS ts, p.value
FROM series s JOIN points p ON p.series_id = s.id
WHERE s.workload_uid = $1
"""


async def db_points(database_url: str, uid: str) -> dict[tuple[str, str, str, int], Scalar]:
    """(source, run, metric, step) -> (ts, value) of every stored point of the Workload."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_POINTS_SQL, uid)
    except asyncpg.UndefinedTableError:  # the operator has not migrated this fresh database yet: nothing stored
        rows = []
    finally:
        await conn.close()
    out = {(r["source"], r["run"], r["metric"], r["step"]): Scalar(r["ts"], r["value"]) for r in rows}
    assert len(out) == len(rows), "duplicate (source, run, metric, step) rows"
    return out


async def db_scalar(database_url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def compare_points(stored: dict[tuple[str, str, str, int], Scalar], expected: dict[tuple[str, str, int], Scalar],
                   source: str, *, metrics: Callable[[str], bool] = lambda _: True) -> None:
    """The source's stored points equal the file's, point for point (ts to the database's microsecond);
    `metrics` limits the comparison to some metric names on both sides."""
    mine = {(run, metric, step): s for (src, run, metric, step), s in stored.items()
            if src == source and metrics(metric)}
    want = {k: s for k, s in expected.items() if metrics(k[1])}
    missing = sorted(want.keys() - mine.keys())
    extra = sorted(mine.keys() - want.keys())
    assert not missing and not extra, (
        f"source {source}: {len(mine)} stored vs {len(want)} in the files; missing {len(missing)} "
        f"(first {missing[:5]}), unexpected {len(extra)} (first {extra[:5]})")
    wrong = [(k, mine[k], want[k]) for k in sorted(want)
             if not same_value(mine[k].value, want[k].value) or abs(mine[k].ts - want[k].ts) > 2e-6]
    assert not wrong, f"source {source}: {len(wrong)} points differ, first: {wrong[:5]}"


def same_value(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def distinct_tag_steps(expected: dict[tuple[str, str, int], Scalar]) -> int:
    return len({(tag, step) for (_run, tag, step) in expected})


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
