"""What the store hands back, and the one error callers are expected to retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StoreUnavailable(Exception):
    """The database cannot be used right now; nothing was written, retry later.

    `reason` says why: Unreachable (refused, lost, shutting down), Timeout (no answer: a hung or overloaded
    server), AuthenticationFailed (wrong user or password, no pg_hba entry), DatabaseMissing, PermissionDenied
    (the role lacks a privilege). The last three need a person (a fixed Secret, a GRANT); the server may be fixed
    while we run, so they are retried too, more slowly.
    """

    def __init__(self, message: str, reason: str = "Unreachable"):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What the process last learned of its database: `up` None until the first attempt; `since` is when `up`
    last changed (epoch seconds)."""

    up: bool | None
    reason: str  # Connected, Connecting, or a StoreUnavailable reason
    message: str
    since: float


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Points newly stored and points that replaced an older observation of the same step."""

    inserted: int
    updated: int


@dataclass(frozen=True, slots=True)
class LatestValue:
    """The point with the highest step of one series."""

    source: str
    kind: str
    run: str
    metric: str
    step: int
    ts: float
    value: float


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a source said about one run (display name, state, config...), merged over time."""

    source: str
    run: str
    info: dict[str, Any]
    updated: float
