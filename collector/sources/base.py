"""The contract every source kind fulfils; sources know nothing of the database, Kubernetes or the web."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from trainscope.collector.points import Batch, Cursor

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
class PodRef:
    """A pod as a log-reading source sees it: identity, labels and its containers' restart counts."""

    name: str
    uid: str
    labels: dict[str, str]
    phase: str
    containers: dict[str, int]  # container name -> restartCount
    deleted: bool = False


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
