"""The part of the Source protocol the collector's poll ahead relies on (collector/sources/base.py): a poll never
changes the cursor it is given, nor a cursor or run facts it returned before. The collector writes a batch's cursor
and runs while the next poll, given that same cursor, runs beside the write (in a worker thread for file sources),
so a change in place would store a cursor that does not match the points committed with it.

`install` wraps `poll` of every registered source class for one test (conftest.py does so for every test): the
cursor given and the previous batch's cursor and runs are copied before the poll and compared after it; a change is
recorded in `broken` and fails the test at teardown.
"""

from __future__ import annotations

import copy
import functools
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from trainscope.collector.points import Batch
from trainscope.collector.sources import REGISTRY


class Contract:
    """The checks of one test: what each source instance returned last, and every change found."""

    def __init__(self) -> None:
        self.broken: list[str] = []
        self.polls: dict[str, int] = {}  # kind -> polls checked
        self._last: weakref.WeakKeyDictionary[Any, tuple[Batch, Any, Any]] = weakref.WeakKeyDictionary()

    def wrap(self, kind: str, poll: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(poll)
        async def checked(source: Any, cursor: Any) -> Batch:
            given = copy.deepcopy(cursor)
            last = self._last.get(source)
            batch = await poll(source, cursor)
            self.polls[kind] = self.polls.get(kind, 0) + 1
            if cursor != given:
                self.broken.append(f"{kind}: poll changed the cursor it was given: {given!r} -> {cursor!r}"[:2000])
            if last is not None:
                old, old_cursor, old_runs = last
                if old.cursor != old_cursor:
                    self.broken.append(f"{kind}: a later poll changed a cursor it returned: {old_cursor!r} -> "
                                       f"{old.cursor!r}"[:2000])
                if old.runs != old_runs:
                    self.broken.append(f"{kind}: a later poll changed the run facts it returned: {old_runs!r} -> "
                                       f"{old.runs!r}"[:2000])
            self._last[source] = (batch, copy.deepcopy(batch.cursor), copy.deepcopy(batch.runs))
            return batch

        return checked


def install(monkeypatch: pytest.MonkeyPatch, classes: Iterable[tuple[str, Any]] | None = None) -> Contract:
    """Check every poll of the given (kind, class) pairs, by default every registered kind, until the test ends."""
    contract = Contract()
    for kind, cls in classes if classes is not None else REGISTRY.items():
        monkeypatch.setattr(cls, "poll", contract.wrap(kind, cls.poll))
    return contract
