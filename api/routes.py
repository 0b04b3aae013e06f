"""The metrics endpoints, registered twice: under `/workloads/{uid}` and `/namespaces/{namespace}/workloads/{name}`."""

import asyncio
import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import Response, StreamingResponse

from trainscope.api import params, queries, render, stream
from trainscope.api.answers import Answers
from trainscope.api.datasources import ACCEPTED, data_source_of
from trainscope.api.downsample import MIN_POINTS, downsample_in
from trainscope.api.errors import ApiError, invalid, not_found
from trainscope.api.models import SSE_EVENT_SCHEMA, AvailableMetrics, DataSources, HealthEvents, MetricsData, Runs
from trainscope.api.params import INT64_MAX, INT64_MIN, MAX_MS, Filters

if TYPE_CHECKING:
    import asyncpg

    from trainscope.api.app import ApiSettings, Database

# ---- parameters, declared once so both address forms document them the same way -------------------------------

Metrics = Annotated[str | None, Query(max_length=10_000, description="comma-separated metric names, e.g. "
                                      "train/loss,train/accuracy")]
DataSource = Annotated[str | None, Query(max_length=64, description=f"one of {', '.join(ACCEPTED)} "
                                         "(tensorboard = tensorflow)", examples=["tensorflow"])]
Start = Annotated[int | None, Query(ge=0, le=MAX_MS, description="from this time, ms since the epoch (inclusive)")]
End = Annotated[int | None, Query(ge=0, le=MAX_MS, description="up to this time, ms since the epoch (inclusive)")]
Run = Annotated[str | None, Query(max_length=10_000, description="comma-separated run labels")]
FromStep = Annotated[int | None, Query(ge=INT64_MIN, le=INT64_MAX, description="lowest iteration (inclusive)")]
ToStep = Annotated[int | None, Query(ge=INT64_MIN, le=INT64_MAX, description="highest iteration (inclusive)")]
Include = Annotated[str | None, Query(max_length=100, description="extra fields per point: run, source")]
Format = Annotated[Literal["json", "csv", "ndjson"], Query(description="json (the seed's shape), csv or ndjson; "
                                                           "streamed unless limit or downsample bound the answer")]

CONTENT = {"text/csv": {"schema": {"type": "string"}}, "application/x-ndjson": {"schema": {"type": "string"}}}


def install(api: APIRouter, db: "Database", settings: "ApiSettings", stopping: asyncio.Event,
            answers: Answers) -> None:
    """Add every metrics endpoint under both address forms; `answers` keeps downsampled answers (api/answers.py)."""

    async def by_uid(uid: Annotated[str, Path(max_length=253, description="the Workload's Kubernetes UID")]) -> str:
        async with db.acquire() as conn:
            if not await queries.workload_exists(conn, uid):
                raise not_found(repr(uid))
        return uid

    async def by_name(namespace: Annotated[str, Path(max_length=253)],
                      name: Annotated[str, Path(max_length=253)]) -> str:
        async with db.acquire() as conn:
            uid = await queries.uid_by_name(conn, namespace, name)
        if uid is None:
            raise not_found(f"{namespace}/{name}")
        return uid

    for prefix, resolve, suffix in (("/workloads/{uid}", by_uid, ""),
                                    ("/namespaces/{namespace}/workloads/{name}", by_name, "_by_name")):
        _install(api, db, settings, stopping, answers, prefix, resolve, suffix)


def _install(api: APIRouter, db: "Database", settings: "ApiSettings", stopping: asyncio.Event, answers: Answers,
             prefix: str, resolve: Callable[..., Awaitable[str]], suffix: str) -> None:
    Uid = Annotated[str, Depends(resolve)]

    @api.get(f"{prefix}/metrics/available", response_model=AvailableMetrics, tags=["metrics"],
             operation_id=f"available_metrics{suffix}")
    async def available(uid: Uid, data_source: DataSource = None, run: Run = None) -> dict:
        """Every metric of the workload: its data sources and number of stored points."""
        f = params.filters(data_source_=data_source, run=run)
        async with db.acquire() as conn:
            series = await queries.series(conn, uid, f)
            counts = await queries.counts(conn, [s.id for s in series])
        metrics: dict[str, tuple[set[str], int]] = {}
        for s in series:
            sources, n = metrics.get(s.metric, (set(), 0))
            sources.add(s.data_source)
            metrics[s.metric] = (sources, n + counts.get(s.id, 0))
        items = [{"name": m, "data_source": sorted(src), "count": n} for m, (src, n) in sorted(metrics.items())]
        return {"workload_uid": uid, "metrics": items, "total_count": len(items)}

    @api.get(f"{prefix}/metrics/sources", response_model=DataSources, tags=["metrics"],
             operation_id=f"data_sources{suffix}")
    async def sources(uid: Uid) -> dict:
        """The workload's data sources and their number of stored points."""
        async with db.acquire() as conn:
            series = await queries.series(conn, uid)
            counts = await queries.counts(conn, [s.id for s in series])
        totals: dict[str, int] = {}
        for s in series:
            totals[s.data_source] = totals.get(s.data_source, 0) + counts.get(s.id, 0)
        items = [{"name": k, "count": v} for k, v in sorted(totals.items())]
        return {"workload_uid": uid, "data_sources": items, "total_count": len(items)}

    @api.get(f"{prefix}/metrics/data", response_model=MetricsData, tags=["metrics"],
             operation_id=f"metrics_data{suffix}", responses={200: {"content": CONTENT}})
    async def data(uid: Uid, metrics: Metrics = None, data_source: DataSource = None, start: Start = None,
                   end: End = None, run: Run = None, from_step: FromStep = None, to_step: ToStep = None,
                   last: Annotated[int | None, Query(ge=1, le=10_000_000,
                                                     description="only the last N points of each series")] = None,
                   limit: Annotated[int | None, Query(ge=1, le=settings.max_limit,
                                                      description="page size; the answer has next_cursor")] = None,
                   cursor: Annotated[str | None, Query(max_length=4096,
                                                       description="next_cursor of the previous page")] = None,
                   downsample_: Annotated[int | None, Query(alias="downsample", ge=MIN_POINTS,
                                                            le=params.MAX_DOWNSAMPLE,
                                                            description="at most N points per series "
                                                            "(min/max per step bucket, first and last kept); "
                                                            "lowered so the answer holds at most "
                                                            f"{params.MAX_ANSWER_POINTS} points")] = None,
                   buckets: Annotated[Literal["even", "aligned"], Query(
                       description="downsample's step buckets: `even` (N/2 equal buckets over each series' range) "
                       "or `aligned` (power-of-two widths at multiples of the width: edges that stay put as a run "
                       "grows, read from whole rollup blocks)")] = "even",
                   format: Format = "json", include: Include = None) -> Any:
        """Points of the workload, ordered by (metric, data source, source, run) then iteration.

        Without limit/downsample the whole answer is streamed (as the seed's server answers, in bounded memory).
        """
        f = params.filters(metrics=metrics, data_source_=data_source, run=run, start=start, end=end,
                           from_step=from_step, to_step=to_step)
        extra = params.include(include)
        if cursor is not None and limit is None:
            raise invalid("cursor", "needs limit (the page size)")
        if downsample_ is not None and limit is not None:
            raise invalid("downsample", "cannot be combined with limit/cursor: the answer is bounded already")
        if last is not None and limit is not None:
            raise invalid("last", "cannot be combined with limit/cursor; page with from_step instead")
        fingerprint = f.fingerprint(uid)
        after = params.decode_cursor(cursor, fingerprint) if cursor is not None else None
        async with db.acquire() as conn:
            series = await queries.series(conn, uid, f)
            if downsample_ is not None:
                per_series = params.downsample_points(downsample_, len(series))

                async def compute(conn: "asyncpg.Connection") -> Response:
                    # `last`'s bounds in the answer's own snapshot, and only when the answer is computed
                    lower = await queries.last_n_bounds_in(conn, series, f, last) if last is not None else {}
                    ds = await downsample_in(conn, series, f, lower, per_series, db.spare, buckets)
                    info = {"method": "minmax", "buckets": buckets, "max_points_per_series": per_series,
                            "source_points": ds.source_points}
                    return render.whole(format, uid, f.data_source, ds.series, extra,
                                        {"downsampled": ds.reduced, "downsample": info},
                                        {"X-Downsampled": str(ds.reduced).lower()})

                key = ("downsample", uid, f, last, per_series, buckets, format, tuple(extra),
                       tuple(s.id for s in series))
                return await answers.answer(conn, key, [s.id for s in series], compute)
            lower = await queries.last_n_bounds(conn, series, f, last) if last is not None else {}
            if limit is not None:
                page, more = await queries.read_page(conn, series, f, lower, after, limit)
        if limit is not None:
            next_cursor = None
            if more:
                s, row = page[-1]
                next_cursor = params.encode_cursor(fingerprint, params.Position(s.key, row[0]))
            groups = _group(page)
            headers = {"X-Next-Cursor": next_cursor} if next_cursor else {}
            return render.whole(format, uid, f.data_source, groups, extra, {"next_cursor": next_cursor}, headers)
        headers = {}
        if format == "csv":
            headers["Content-Disposition"] = f'attachment; filename="{_safe(uid)}-metrics.csv"'
        return render.streamed(format, uid, f.data_source, _chunks(db, series, f, lower), extra, headers)

    @api.get(f"{prefix}/metrics/iteration-times", response_model=MetricsData, tags=["metrics"],
             operation_id=f"iteration_times{suffix}")
    async def iteration_times(uid: Uid, data_source: DataSource = None, start: Start = None, end: End = None,
                              from_step: FromStep = None, to_step: ToStep = None) -> Any:
        """When each iteration was first seen (the reference server's shape): per step a point `iteration`
        (value = the step, timestamp = its earliest timestamp) and, when spec.totalSteps is set, `target_iteration`."""
        f = params.filters(data_source_=data_source, start=start, end=end, from_step=from_step, to_step=to_step)
        async with db.acquire() as conn:
            series = await queries.series(conn, uid, f)
            rows = await queries.workloads(conn, uid=uid)
        spec = rows[0]["spec"] if rows and isinstance(rows[0]["spec"], dict) else {}
        target = spec.get("totalSteps") if isinstance(spec.get("totalSteps"), int) else None
        body = _iteration_body(db, uid, f, [s.id for s in series], target)
        return StreamingResponse(body, media_type="application/json")

    @api.get(f"{prefix}/runs", response_model=Runs, tags=["metrics"], operation_id=f"runs{suffix}")
    async def runs(uid: Uid) -> dict:
        """What the sources said about each run (display name, state, config...), as stored."""
        async with db.acquire() as conn:
            rows = await queries.runs(conn, uid)
        items = [{"source": r["source"], "run": r["run"], "info": r["info"] if isinstance(r["info"], dict) else {},
                  "updated_at": r["updated_at"]} for r in rows]
        return {"workload_uid": uid, "runs": items, "total_count": len(items)}

    @api.get(f"{prefix}/health/events", response_model=HealthEvents, tags=["health"],
             operation_id=f"health_events{suffix}")
    async def health_events(uid: Uid, limit: Annotated[int, Query(ge=1, le=10_000, description="newest N")] = 500
                            ) -> dict:
        """Transitions of the training-health conditions (Stalled, NonFiniteMetric, ...), oldest first."""
        async with db.acquire() as conn:
            rows = await queries.health_events(conn, uid, limit)
        items = [{"type": r["type"], "status": r["status"], "reason": r["reason"], "message": r["message"],
                  "metric": r["metric"], "iteration": r["step"],
                  "value": r["value"] if r["value"] is None or math.isfinite(r["value"]) else None,
                  "timestamp": r["at"]} for r in rows]
        return {"workload_uid": uid, "events": items, "total_count": len(items)}

    @api.get(f"{prefix}/metrics/stream", tags=["metrics"], operation_id=f"metrics_stream{suffix}",
             response_class=StreamingResponse,
             responses={200: {"content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
                              "description": "Server-Sent Events: `subscribed`, then `points` (the data shape)"}})
    async def metrics_stream(uid: Uid, metrics: Metrics = None, data_source: DataSource = None, run: Run = None,
                             include: Include = None,
                             last_event_id: Annotated[str | None, Query(max_length=512, description="resume "
                                                      "after this event id (browsers send Last-Event-ID)")] = None,
                             last_event_header: Annotated[str | None, Header(alias="Last-Event-ID",
                                                                             max_length=512)] = None) -> Any:
        """Points as they are stored, from now (or from Last-Event-ID: a reconnect misses nothing)."""
        f = params.filters(metrics=metrics, data_source_=data_source, run=run)
        extra = params.include(include)
        given = last_event_header or last_event_id
        name = "Last-Event-ID" if last_event_header else "last_event_id"
        start = stream.parse_event_id(given, name) if given else None
        if not await db.check_schema():
            raise ApiError(503, "StoreUnavailable", "the database schema predates the stream (migration 0003): "
                           "run trainscope db upgrade")
        if start is None:
            start = stream.Position(await stream.current_snapshot(db.acquire))
        body = stream.events(db.acquire, uid, f, extra, start, interval=settings.stream_interval,
                             batch=settings.stream_batch, heartbeat=settings.heartbeat, stopping=stopping.is_set)
        return StreamingResponse(body, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _group(page: list[tuple[queries.Series, queries.Row]]) -> list[tuple[queries.Series, list[queries.Row]]]:
    groups: list[tuple[queries.Series, list[queries.Row]]] = []
    for s, row in page:
        if not groups or groups[-1][0].id != s.id:
            groups.append((s, []))
        groups[-1][1].append(row)
    return groups


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:100]


def _chunks(db: "Database", series: list[queries.Series], f: Filters,
            lower: dict[int, int]) -> AsyncIterator[tuple[queries.Series, list[queries.Row]]]:
    return queries.iter_points(db.acquire, series, f, lower)


async def _iteration_body(db: "Database", uid: str, f: Filters, ids: list[int],
                          target: int | None) -> AsyncIterator[str]:
    yield render.envelope_head(uid, f.data_source)
    total = 0
    if ids:
        async for rows in queries.iteration_times(db.acquire, ids, f):
            items = []
            for step, ts, kind in rows:
                ds = json.dumps(data_source_of(kind))
                items.append(f'{{"metric_name":"iteration","value":{step},"timestamp":{ts},'
                             f'"iteration":{step},"data_source":{ds}}}')
                if target is not None:
                    items.append(f'{{"metric_name":"target_iteration","value":{target},"timestamp":{ts},'
                                 f'"iteration":{step},"data_source":{ds}}}')
            yield ("," if total else "") + ",".join(items)
            total += len(items)
    yield render.envelope_tail(total, {})
