"""What the store hands back, and the one error callers are expected to retry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class StoreUnavailable(Exception):
    """The database cannot be reached (connection refused/lost, server shutting down).

    Retry later; nothing was written.
    """


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
