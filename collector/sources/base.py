"""The contract every source kind fulfils; sources know nothing of the database, Kubernetes or the web."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import httpx

from trainscope.collector.points import Batch, Cursor
from trainscope.collector.schema import DURATION_PATTERN, exactly_one_of, parse_duration

# Resolves a secret reference ({"name", "key"} in the Workload's namespace, or an env var) to its value.
SecretResolver = Callable[[dict[str, str]], Awaitable[str]]


class SourceError(Exception):
    """A source failed in a way worth reporting; `reason` is a short CamelCase word for health and metrics.

    `retry_after` lets a source ask for a slower backoff (auth errors, rate limits).
    """

    def __init__(self, message: str, *, reason: str = "SourceError", retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ContainerState:
    """One container's status as the kubelet reports it (pod.status.containerStatuses[i]); what tells a source
    that the training process ended, and how."""

    restarts: int = 0
    waiting: str | None = None  # state.waiting.reason, e.g. "CrashLoopBackOff", "ContainerCreating"
    exit_code: int | None = None  # state.terminated.exitCode: set while the current instance has ended
    reason: str | None = None  # state.terminated.reason: "Completed", "Error", "OOMKilled"
    message: str | None = None  # state.terminated.message (terminationMessagePath), if any
    last_exit_code: int | None = None  # lastState.terminated.exitCode: how the previous instance ended


@dataclass(frozen=True, slots=True)
class PodRef:
    """A pod as a log-reading source sees it: identity, labels and its containers' restart counts and states."""

    name: str
    uid: str
    labels: dict[str, str]
    phase: str
    containers: dict[str, int]  # container name -> restartCount
    deleted: bool = False
    states: dict[str, ContainerState] = field(default_factory=dict)  # container name -> its status


class PodLogReader(Protocol):
    """Reads pods and their logs in the Workload's namespace. The operator implements it over the Kubernetes API;
    sources only see this protocol, so they stay free of Kubernetes code."""

    async def list_pods(self, namespace: str, selector: dict[str, Any]) -> list[PodRef]: ...

    def stream_log(self, namespace: str, pod: str, container: str | None, *, since_time: str | None = None,
                   follow: bool = True, previous: bool = False) -> AsyncIterator[bytes]:
        """Raw log bytes with the kubelet's RFC 3339 timestamp at the start of each line (timestamps=true);
        `previous` reads the container's previous instance (after a restart)."""
        ...


@dataclass(slots=True)
class SourceContext:
    """What a source may know of its surroundings: where relative paths start, how to read secrets, limits."""

    namespace: str = "default"
    workload: str = ""
    selector: dict[str, Any] = field(default_factory=dict)
    base_dir: Path = field(default_factory=Path.cwd)
    max_batch_points: int = 50_000
    resolve_secret: SecretResolver | None = None
    pods: PodLogReader | None = None  # None outside a cluster (local mode without a kubeconfig)


@runtime_checkable
class Source(Protocol):
    """A source kind: built from its validated spec, polled with the last committed cursor.

    `poll` returns at most `ctx.max_batch_points` points and sets `Batch.more` when it stopped early, so a run
    with millions of points is caught up in bounded memory. It raises `SourceError` (or any exception) on failure;
    the collector backs off and reports it. `cursor` is None on the first poll.

    A poll never changes the cursor it is given, nor a cursor or `runs` it returned earlier: it builds new ones.
    During a catch-up the collector writes a batch (its cursor and runs, serialised while the database commits)
    while the next poll, given that same cursor object, already runs beside the write (in a worker thread for the
    file sources); a change in place would commit a cursor that does not match the points stored with it.
    tests/cursorcontract.py checks this around every poll of the test suite.
    """

    kind: ClassVar[str]
    schema: ClassVar[dict[str, Any]]  # openAPIV3 schema of this kind's block in the Workload spec

    async def poll(self, cursor: Cursor | None) -> Batch: ...

    async def aclose(self) -> None: ...


def counts_training_steps(factory: Any) -> bool:
    """Whether a kind's point steps are training steps. A kind whose steps are something else (Qianfan's run-time
    seconds) sets `training_steps = False`: its points are stored but do not move the Workload's step, steps/s or
    totalSteps, so it can sit next to a step-based source."""
    return getattr(factory, "training_steps", True)


class SourceFactory(Protocol):
    """A source class: `kind`, `schema`, and a constructor from the kind's spec block."""

    kind: ClassVar[str]
    schema: ClassVar[dict[str, Any]]

    def __call__(self, config: dict[str, Any], ctx: SourceContext) -> Source: ...


def log_dir_or_url_schema(description: str, log_dir: str, url: str, properties: dict[str, Any]) -> dict[str, Any]:
    """The config schema of a kind that reads a log directory or a server showing one: exactly one of logDir or
    url (described for the kind), then the kind's own `properties`; one definition of what a path and a URL may be."""
    return {
        "type": "object",
        "description": description,
        "additionalProperties": False,
        "properties": {
            "logDir": {"type": "string", "minLength": 1, "maxLength": 4096, "description": log_dir},
            "url": {"type": "string", "pattern": r"^https?://[^\s/]+(/\S*)?$", "maxLength": 2048,
                    "description": url},
            **properties,
        },
        **exactly_one_of("logDir", "url"),
    }


def url_timeout_property() -> dict[str, Any]:
    """The `timeout` field of such a kind: how long url mode waits for each request (LogDirOrUrlSource reads it)."""
    return {"type": "string", "pattern": DURATION_PATTERN, "default": "10s",
            "description": "Per-request timeout in url mode, e.g. 10s."}


class LogDirOrUrlSource:
    """Base of the kinds that read either a log directory (logDir) or a server showing one (url): one copy of the
    exactly-one check, the path resolution, poll's dispatch to the mode and the url mode's HTTP client."""

    kind: ClassVar[str]
    program: ClassVar[str]  # what serves url mode, as messages name it, e.g. "TensorBoard"

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        if ("logDir" in config) == ("url" in config):
            raise SourceError(f"{self.kind}: set exactly one of logDir or url", reason="BadConfig")
        self.ctx = ctx
        self.timeout = parse_duration(config.get("timeout", "10s"))
        self.log_dir: Path | None = None
        self.url: str | None = None
        if "logDir" in config:
            path = Path(config["logDir"]).expanduser()
            self.log_dir = path if path.is_absolute() else Path(ctx.base_dir) / path
        else:
            self.url = config["url"].rstrip("/")
        self._client: httpx.AsyncClient | None = None

    async def poll(self, cursor: Cursor | None) -> Batch:
        """Return the points after `cursor`, at most ctx.max_batch_points of them."""
        if self.log_dir is not None:
            return await asyncio.to_thread(self._poll_logdir, cursor)
        return await self._poll_url(cursor)

    def _poll_logdir(self, cursor: Cursor | None) -> Batch:
        raise NotImplementedError

    async def _poll_url(self, cursor: Cursor | None) -> Batch:
        raise NotImplementedError

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        """The url mode's HTTP client, made on first use (a logDir source never needs one)."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=True)
        return self._client

    def _no_answer(self, path: str, e: httpx.HTTPError) -> SourceError:
        """The SourceError for a GET of `path` that got no HTTP answer, worded alike for every kind."""
        url = f"{self.url}{path}"
        if isinstance(e, httpx.TimeoutException):
            return SourceError(f"{self.program} at {self.url} did not answer {path} within {self.timeout:g}s",
                               reason="Timeout")
        if isinstance(e, httpx.ConnectError):
            return SourceError(f"cannot connect to {self.program} at {self.url}: {e}", reason="Unreachable")
        if isinstance(e, httpx.RemoteProtocolError):
            return SourceError(f"{url} did not answer in HTTP: {e}", reason="BadResponse")
        return SourceError(f"request to {url} failed: {e}", reason="Unreachable")
