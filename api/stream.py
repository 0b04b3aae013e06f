"""`GET .../metrics/stream`: Server-Sent Events of points as they are stored, resumable with Last-Event-ID.

Every point carries the id of the transaction that last wrote it (`points.ingest_xid`, migration 0003). A poll
takes a snapshot S2 and sends the points written by transactions not visible in the previous snapshot S1 but
visible in S2: exactly the new or replaced points, whatever order concurrent writers commit in. Event ids are
snapshots, so a reconnect with Last-Event-ID resumes from the last event the client saw:

- `S` — everything visible in snapshot S was delivered (the `subscribed` event and the last event of a poll);
- `S1/S2/series/step` — a poll was cut into several events: the points new in S2 up to (series id, step) were
  delivered too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import asyncpg

from trainscope.api import queries
from trainscope.api.encode import ItemWriter
from trainscope.api.errors import invalid
from trainscope.api.params import Filters
from trainscope.api.queries import Series

_SNAPSHOT = r"\d{1,20}:\d{1,20}:(?:\d{1,20}(?:,\d{1,20})*)?"
_ID = re.compile(rf"({_SNAPSHOT})(?:/({_SNAPSHOT})/(\d{{1,20}})/(-?\d{{1,20}}))?")

_DELTA = """
WITH d AS MATERIALIZED (
    SELECT series_id, step, ts, value, ingest_xid FROM points
    WHERE series_id = ANY($1::bigint[]) AND ingest_xid >= txid_snapshot_xmin($2::text::txid_snapshot)
)
SELECT series_id, step, ts, value FROM d
WHERE NOT txid_visible_in_snapshot(ingest_xid, $2::text::txid_snapshot) {resume}
ORDER BY series_id, step
"""
_RESUME = "AND NOT (txid_visible_in_snapshot(ingest_xid, $3::text::txid_snapshot) AND (series_id, step) <= ($4, $5))"


@dataclass(frozen=True, slots=True)
class Position:
    """What a client has: everything visible in `base`, plus what is new in `target` up to `upto`."""

    base: str
    target: str | None = None
    upto: tuple[int, int] | None = None

    @property
    def event_id(self) -> str:
        if self.target is None or self.upto is None:
            return self.base
        return f"{self.base}/{self.target}/{self.upto[0]}/{self.upto[1]}"


def parse_event_id(value: str, param: str = "Last-Event-ID") -> Position:
    """A Position from an id this stream sent; 400 naming the parameter otherwise."""
    m = _ID.fullmatch(value.strip())
    if m is None:
        raise invalid(param, "not an event id sent by this stream")
    base, target, sid, step = m.groups()
    if not _valid_snapshot(base) or (target is not None and not _valid_snapshot(target)):
        raise invalid(param, "not an event id sent by this stream")
    if target is None:
        return Position(base)
    if not -(2**63) <= int(step) < 2**63 or int(sid) >= 2**63:
        raise invalid(param, "not an event id sent by this stream")
    return Position(base, target, (int(sid), int(step)))


def _valid_snapshot(text: str) -> bool:
    """What PostgreSQL's txid_snapshot input accepts: 0 < xmin <= xmax, in-progress ids ascending in between."""
    xmin_s, xmax_s, xip_s = text.split(":")
    xmin, xmax = int(xmin_s), int(xmax_s)
    xip = [int(x) for x in xip_s.split(",")] if xip_s else []
    return (0 < xmin <= xmax < 2**63 and all(xmin <= x < xmax for x in xip)
            and all(a < b for a, b in itertools.pairwise(xip)))


def _event(kind: str, data: str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


async def current_snapshot(acquire: Acquire) -> str:
    async with acquire() as conn:
        return await conn.fetchval("SELECT txid_current_snapshot()::text")


async def events(acquire: Acquire, uid: str, f: Filters, include: Sequence[str], start: Position, *,
                 interval: float = 1.0, batch: int = 1000, heartbeat: float = 15.0,
                 stopping: Callable[[], bool] = lambda: False) -> AsyncIterator[str]:
    """The SSE body: `subscribed`, then `points` events (the seed's data shape) as points are stored."""
    writer = ItemWriter(include)
    uid_json = json.dumps(uid)
    yield "retry: 2000\n\n"
    yield _event("subscribed", json.dumps({"workload_uid": uid, "last_event_id": start.event_id}), start.event_id)
    pos = start
    quiet = 0.0
    while not stopping():
        sent = False
        while True:  # one poll, a page at a time: no connection or transaction is held while an event is written
            page, pos, more = await _page(acquire, uid, f, pos, batch)
            if page:
                series, rows = page
                items = _items(writer, series, rows)
                data = f'{{"workload_uid":{uid_json},"data":[{",".join(items)}],"total_count":{len(items)}}}'
                yield _event("points", data, pos.event_id)
                sent = True
            if not more or stopping():
                break
        quiet = 0.0 if sent else quiet + interval
        if quiet >= heartbeat:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(interval)


async def _page(acquire: Acquire, uid: str, f: Filters, pos: Position, batch: int
                ) -> tuple[tuple[dict[int, Series], list[asyncpg.Record]] | None, Position, bool]:
    """Up to `batch` points new since `pos`, in one short transaction: (series, rows) or None, the position after
    them, and whether more are waiting. A page cut short ends at `base/target/series/step`, whose resume condition
    the next page's fresh snapshot continues from (points committed in between come with it)."""
    async with acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        # The first statement fixes the transaction's snapshot: the delta below sees exactly `target`.
        target = await conn.fetchval("SELECT txid_current_snapshot()::text")
        series = {s.id: s for s in await queries.series(conn, uid, f)}
        if not series:
            return None, Position(target), False
        args: list[object] = [list(series), pos.base]
        resume = ""
        if pos.target is not None and pos.upto is not None:
            resume = _RESUME
            args += [pos.target, *pos.upto]
        args.append(batch + 1)
        rows = await conn.fetch(_DELTA.format(resume=resume) + f" LIMIT ${len(args)}", *args)
    if len(rows) > batch:
        rows = rows[:batch]
        last = rows[-1]
        return (series, rows), Position(pos.base, target, (last[0], last[1])), True
    return ((series, rows) if rows else None), Position(target), False


def _items(writer: ItemWriter, series: dict[int, Series], rows: Sequence[asyncpg.Record]) -> list[str]:
    out: list[str] = []
    run: list[tuple[int, int, float]] = []
    current: int | None = None
    for sid, step, ts, value in rows:
        if sid != current and run:
            out.extend(writer.json_items(series[current], run))  # type: ignore[index]
            run = []
        current = sid
        run.append((step, ts, value))
    if run and current is not None:
        out.extend(writer.json_items(series[current], run))
    return out
