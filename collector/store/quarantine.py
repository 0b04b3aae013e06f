"""Poison-record isolation: a batch the database refuses is split until the refused points stand alone; those go to
`rejected_points` with the database's reason, the rest and the cursor are stored, and the source moves on.

Exactly once still holds: the parts are separate transactions, but each point's write is an idempotent upsert and
the new cursor is saved only after every part (the parts carry the cursor committed before the batch, which
changes nothing). A crash half-way re-reads the batch from the old cursor and rewrites the same rows as no-ops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from trainscope.collector.points import RawPoint
from trainscope.collector.store.errors import first_line
from trainscope.collector.store.model import StoreUnavailable, WriteResult
from trainscope.collector.store.store import Store

log = logging.getLogger(__name__)

# SQLSTATE classes that blame the data of the request, not the server or the code: 22 data exception (a value out
# of range, an invalid timestamp, bad UTF-8), 23 integrity (not null...; unique violations never get here, the
# writer merges them), 54 program limit exceeded (an index row too large, too many columns).
_DATA_CLASSES = ("22", "23", "54")


def is_poison(exc: BaseException) -> bool:
    """True when the database (or asyncpg encoding a value for it) refused the data itself."""
    if isinstance(exc, StoreUnavailable):
        return False
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _DATA_CLASSES
    # asyncpg's client-side encoders: DataError (an InterfaceError and ValueError), OverflowError for a number out
    # of its type's range.
    return isinstance(exc, asyncpg.DataError | ValueError | OverflowError)


@dataclass(slots=True)
class Outcome:
    """What was stored and what was quarantined (each point with the database's reason)."""

    result: WriteResult
    rejected: list[tuple[RawPoint, str]] = field(default_factory=list)
    runs_dropped: str | None = None  # the reason, when the run metadata itself was refused


async def write_isolating(store: Store, uid: str, source: str, kind: str, points: Sequence[RawPoint],
                          old_cursor: Any, new_cursor: Any, runs: Mapping[str, Mapping[str, Any]] | None,
                          rejected: Sequence[tuple[RawPoint, str]] = ()) -> Outcome:
    """`store.write` of the batch; if the database refuses its data, store what it accepts and quarantine the rest.

    `rejected` are points already set aside before the write (collector/admit.py); they are quarantined with the
    others. StoreUnavailable and errors that do not blame the data propagate, with nothing of the batch stored
    under the new cursor.
    """
    quarantined = list(rejected)
    try:
        result = await store.write(uid, source, kind, points, new_cursor, runs)
    except Exception as exc:
        if not is_poison(exc):
            raise
        log.warning("%s/%s: the database refused a batch of %d point(s) (%s); isolating the bad ones", uid, source,
                    len(points), _reason(exc))
        inserted, updated, bad = await _bisect(store, uid, source, kind, list(points), old_cursor, exc)
        quarantined += bad
        outcome = Outcome(WriteResult(inserted, updated))
        try:
            await store.write(uid, source, kind, [], new_cursor, runs)
        except Exception as exc2:
            if not (runs and is_poison(exc2)):
                raise
            outcome.runs_dropped = _reason(exc2)
            await store.write(uid, source, kind, [], new_cursor, None)
    else:
        outcome = Outcome(result)
    if quarantined:
        await store.reject(uid, source, kind, quarantined)
        outcome.rejected = quarantined
    return outcome


async def _bisect(store: Store, uid: str, source: str, kind: str, points: list[RawPoint], old_cursor: Any,
                  failure: BaseException) -> tuple[int, int, list[tuple[RawPoint, str]]]:
    """Store the halves of a refused batch, splitting refused halves again: (inserted, updated, refused points).
    A batch with k bad points costs about 2k·log2(n) writes."""
    if len(points) == 1:
        return 0, 0, [(points[0], _reason(failure))]
    inserted = updated = 0
    bad: list[tuple[RawPoint, str]] = []
    mid = len(points) // 2
    for part in (points[:mid], points[mid:]):
        try:
            r = await store.write(uid, source, kind, part, old_cursor)
        except Exception as exc:
            if not is_poison(exc):
                raise
            i, u, b = await _bisect(store, uid, source, kind, part, old_cursor, exc)
            inserted, updated = inserted + i, updated + u
            bad += b
        else:
            inserted, updated = inserted + r.inserted, updated + r.updated
    return inserted, updated, bad


def _reason(exc: BaseException) -> str:
    code = getattr(exc, "sqlstate", None)
    return f"{type(exc).__name__}{f' ({code})' if code else ''}: {first_line(exc)}"[:500]
