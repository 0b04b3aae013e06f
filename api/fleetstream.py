"""`GET /api/v1/overview/stream`: the fleet view live, as Server-Sent Events.

The first event (`fleet`) carries what GET /workloads and GET /overview answer; then, each time the store has
changed, one `changes` event with only the workloads whose list item or overview item differ from what this stream
last sent, and the uids that left. Every poll is two short reads (no connection held in between), and a poll finds
nothing to read when no writing transaction started or ended since the last one (the transaction snapshot is the
same), so an idle fleet costs one tiny query per interval per client. A reconnect starts again with a full `fleet`
event.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from trainscope.api.models import SSE_EVENT_SCHEMA, Workload
from trainscope.api.overview import overview_items

if TYPE_CHECKING:
    from trainscope.api.app import ApiSettings, Database

ListWorkloads = Callable[[str | None, str | None, str | None, bool], Awaitable[list[dict]]]
_JSON = {"separators": (",", ":"), "allow_nan": False}


def _event(kind: str, body: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps(body, **_JSON)}\n\n"


async def fleet_events(db: Database, list_workloads: ListWorkloads, points: int, namespace: str | None,
                       include_deleted: bool, *, interval: float = 2.0, heartbeat: float = 15.0,
                       recheck: float = 10.0, stopping: Callable[[], bool] = lambda: False) -> AsyncIterator[str]:
    """The SSE body: `fleet` (everything), then `changes` (changed items, removed uids) as the store changes.

    `recheck`: seconds after which the fleet is read again even when nothing was written (in `trainscope local`
    the phase comes from the running collectors, not from the store)."""
    yield "retry: 2000\n\n"
    sent_w: dict[str, str] = {}
    sent_o: dict[str, str] = {}
    seen: str | None = None
    since_read = quiet = 0.0
    first = True
    while not stopping():
        # xmax and the writers in progress: it changes when a writing transaction starts or ends (a writer still in
        # progress at one poll changes it again when it commits, so its points are read then)
        async with db.acquire() as conn:
            snapshot = await conn.fetchval("SELECT txid_current_snapshot()::text")
        if first or snapshot != seen or since_read >= recheck:
            # through the list's model, as GET /workloads encodes them: the same fields in the same order, so a
            # client can tell a changed item from an unchanged one by its text
            items = [Workload.model_validate(i).model_dump(mode="json", by_alias=True)
                     for i in await list_workloads(namespace, None, None, include_deleted)]
            over = await overview_items(db, points, namespace, include_deleted)
            seen, since_read = snapshot, 0.0
            now_w = {i["uid"]: json.dumps(i, **_JSON) for i in items}
            now_o = {o["uid"]: json.dumps(o, **_JSON) for o in over}
            if first:
                yield _event("fleet", {"points": points, "workloads": items, "overview": over,
                                       "total_count": len(items)})
                first, quiet = False, 0.0
            else:
                changed = [i for i in items if sent_w.get(i["uid"]) != now_w[i["uid"]]]
                changed_o = [o for o in over if sent_o.get(o["uid"]) != now_o[o["uid"]]]
                removed = sorted(set(sent_w) - set(now_w))
                if changed or changed_o or removed:
                    yield _event("changes", {"workloads": changed, "overview": changed_o, "removed": removed,
                                             "total_count": len(items)})
                    quiet = 0.0
            sent_w, sent_o = now_w, now_o
        if quiet >= heartbeat:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(interval)
        quiet += interval
        since_read += interval


def install(api: APIRouter, db: Database, settings: ApiSettings, stopping: asyncio.Event,
            list_workloads: ListWorkloads) -> None:
    """Register GET /overview/stream on the API router."""

    @api.get("/overview/stream", tags=["workloads"], response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                              "description": "Server-Sent Events: `fleet` (every workload and its overview), then "
                                             "`changes` (changed workloads and overview items, removed uids)"}})
    async def overview_stream(
        points: Annotated[int, Query(ge=2, le=200, description="sparkline points per workload")] = 32,
        namespace: Annotated[str | None, Query(max_length=253, description="only this namespace")] = None,
        include_deleted: Annotated[bool, Query(description="also workloads whose object is gone")] = True,
    ) -> Any:
        """The fleet live: GET /workloads and GET /overview in one event, then only what changed."""
        body = fleet_events(db, list_workloads, points, namespace or None, include_deleted,
                            interval=settings.fleet_interval, heartbeat=settings.heartbeat,
                            stopping=stopping.is_set)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
