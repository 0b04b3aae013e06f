"""Garbage-collector thresholds for the collecting processes (`trainscope operator`, `trainscope local`).

Collection allocates millions of short-lived, acyclic tuples (points) per second of catch-up. With CPython's default
thresholds (700, 10, 10) the cyclic collector runs every 700 of them, traverses batches that are about to be freed
anyway and promotes them into older generations whose collections then walk them again: in bench/bench_logs.py
that was 40-50% of a parser's time. A first threshold above the largest batch (SourceContext.max_batch_points,
50,000) lets most points die by reference counting before any collection sees them. Cyclic garbage (tracebacks,
closed sockets) is still collected, just every 100,000 container allocations instead of 700.

`TRAINSCOPE_GC_THRESHOLDS="a,b,c"` overrides the values; "default" keeps Python's own.
"""

from __future__ import annotations

import gc
import os

INGEST_THRESHOLDS = (100_000, 50, 100)
ENV = "TRAINSCOPE_GC_THRESHOLDS"


class GcSettingError(ValueError):
    """TRAINSCOPE_GC_THRESHOLDS holds something else than 'default' or 1-3 positive integers."""


def thresholds_from(value: str | None) -> tuple[int, ...] | None:
    """The thresholds a `TRAINSCOPE_GC_THRESHOLDS` value asks for; None: leave Python's. GcSettingError names the
    variable when the value is not 1-3 positive integers."""
    if value is None or not value.strip():
        return INGEST_THRESHOLDS
    if value.strip() == "default":
        return None
    try:
        parts = tuple(int(p) for p in value.split(","))
    except ValueError:
        parts = ()
    if not 1 <= len(parts) <= 3 or any(p <= 0 for p in parts):
        raise GcSettingError(f"{ENV}={value!r}: expected 'default' or 1 to 3 positive integers, e.g. '100000,50,100'")
    return parts


def tune_for_ingest() -> tuple[int, ...]:
    """Apply the ingest thresholds (or the env override) to this process; return the thresholds in force."""
    wanted = thresholds_from(os.environ.get(ENV))
    if wanted is not None:
        gc.set_threshold(*wanted)
    return gc.get_threshold()
