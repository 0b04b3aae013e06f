"""`GET /api/v1/overview`: what the dashboard's fleet view needs for every Workload in one read — the primary
metric's sparkline, the recent pace (steps/s) and each source's newest point — at a cost per series that does not
grow with its length (index probes only), so a fleet of 1,000 Workloads is one cheap request."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from trainscope.api import queries
from trainscope.api.datasources import data_source_of
from trainscope.api.models import Overview
from trainscope.collector.progress import detect_primary_metric

if TYPE_CHECKING:
    from trainscope.api.app import Database

TAIL = 20  # newest points of the primary series that give the recent pace


def steps_per_second(tail: Sequence[tuple[int, int]]) -> float | None:
    """Steps per second from (step, ts ms) samples: the median seconds per step between consecutive samples, so an
    evaluation pause or a restart gap among them does not set the pace. None when it cannot be told."""
    ordered = sorted(tail)
    paces = [(t1 - t0) / 1000 / (s1 - s0) for (s0, t0), (s1, t1) in pairwise(ordered) if s1 > s0 and t1 > t0]
    if not paces:
        return None
    pace = statistics.median(paces)
    return 1 / pace if pace > 0 else None


def _primary(spec: Any, series: list[Any]) -> Any | None:
    """The series the list's primary metric comes from: spec.primaryMetric or the detected loss, newest point."""
    name = spec.get("primaryMetric") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        name = detect_primary_metric({s["metric"] for s in series})
    candidates = [s for s in series if s["metric"] == name]
    return max(candidates, key=lambda s: (s["step"], s["ts"], -s["id"])) if candidates else None


def install(api: APIRouter, db: Database) -> None:
    """Register GET /overview on the API router."""

    @api.get("/overview", response_model=Overview, tags=["workloads"])
    async def overview(
        points: Annotated[int, Query(ge=2, le=200, description="sparkline points per workload")] = 32,
        namespace: Annotated[str | None, Query(max_length=253, description="only this namespace")] = None,
        include_deleted: Annotated[bool, Query(description="also workloads whose object is gone")] = True,
    ) -> Any:
        """Per workload: its primary metric's sparkline (the first point at or after each of `points` evenly
        spaced steps, the newest point included, values to 6 significant digits), the recent steps/s and each source's
        newest point."""
        items = await overview_items(db, points, namespace or None, include_deleted)
        # already the documented shape: encoded directly (validating 1,000 sparklines through the model costs more
        # than the queries)
        return JSONResponse({"points": points, "workloads": items, "total_count": len(items)})


async def overview_items(db: Database, points: int, namespace: str | None, include_deleted: bool) -> list[dict]:
    """The overview's items (GET /overview and the fleet stream): one per workload, in the list's order."""
    async with db.acquire() as conn:
        rows = await queries.workloads(conn, namespace=namespace, include_deleted=include_deleted)
        uids = [r["uid"] for r in rows]
        ends = await queries.series_ends(conn, uids) if uids else []
        by_uid: dict[str, list[Any]] = {}
        for e in ends:
            by_uid.setdefault(e["workload_uid"], []).append(e)
        chosen = {r["uid"]: _primary(r["spec"], by_uid.get(r["uid"], [])) for r in rows}
        picked = [s for s in chosen.values() if s is not None]
        spark = await queries.sparklines(conn, [(s["id"], s["first_step"], s["step"]) for s in picked], points)
        tail = await queries.tails(conn, [s["id"] for s in picked], TAIL)
    lines: dict[int, list[list[Any]]] = {}
    isfinite = math.isfinite
    for sid, step, v in spark:  # positional: 32,000 rows for 1,000 workloads
        line = lines.get(sid)
        if line is None:
            line = lines[sid] = []
        if not line or line[-1][0] != step:
            # 6 significant digits: a sparkline is a few dozen pixels tall, and the answer is 3x smaller
            line.append([step, float(f"{v:.6g}") if isfinite(v) else None])
    paces: dict[int, list[tuple[int, int]]] = {}
    for sid, step, ts in tail:
        paces.setdefault(sid, []).append((step, ts))
    items = []
    for r in rows:
        s = chosen[r["uid"]]
        newest: dict[tuple[str, str], int] = {}
        for e in by_uid.get(r["uid"], []):
            key = (data_source_of(e["kind"]), e["source"])
            newest[key] = max(newest.get(key, e["ts"]), e["ts"])
        items.append({
            "uid": r["uid"],
            "metric": None if s is None else s["metric"],
            "data_source": None if s is None else data_source_of(s["kind"]),
            "source": None if s is None else s["source"],
            "run": None if s is None else s["run"],
            "points": [] if s is None else lines.get(s["id"], []),
            "steps_per_second": None if s is None else steps_per_second(paces.get(s["id"], [])),
            "sources": [{"data_source": ds, "source": src, "newest_timestamp": ts}
                        for (ds, src), ts in sorted(newest.items())],
        })
    return items
