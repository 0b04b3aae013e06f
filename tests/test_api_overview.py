"""`GET /api/v1/overview` (the fleet view's one read): each Workload's primary-metric sparkline is exactly the
stored points at the evenly spaced steps it promises, its pace matches the points' own timing, and every source's
newest point is reported. Real PostgreSQL, the store's write path, the API over httpx's ASGI transport."""

from __future__ import annotations

import math

import httpx

from trainscope.api.app import ApiSettings, create_app
from trainscope.api.overview import steps_per_second
from trainscope.collector.points import Point
from trainscope.collector.store import Store


async def _get(url: str, path: str, **params: object) -> httpx.Response:
    app = create_app(ApiSettings(database_url=url))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get(path, params=params)


def _expected_line(steps: list[int], values: dict[int, float], ts: dict[int, int], n: int) -> list[list]:
    """What the route promises: per i < n, the first stored step >= lo + floor((hi - lo) * i / (n - 1))."""
    lo, hi = steps[0], steps[-1]
    out: list[list] = []
    for i in range(n):
        target = lo + math.floor((hi - lo) * i / (n - 1))
        step = next(s for s in steps if s >= target)
        if not out or out[-1][0] != step:
            v = values[step]
            out.append([step, float(f"{v:.6g}") if math.isfinite(v) else None])
    return out


async def test_overview_sparklines_pace_and_sources_match_the_store(store: Store, database_url: str) -> None:
    t0 = 1_700_000_000
    # a: 5,000 steps every 2 s on wandb (primary by spec), plus a TensorBoard series of another metric, older
    await store.register_workload("a", "ml", "a", {"primaryMetric": "train/loss", "totalSteps": 10_000})
    steps_a = list(range(1, 5001))
    vals_a = {s: 3.0 / math.sqrt(s) for s in steps_a}
    vals_a[4000] = math.nan  # a non-finite value is null in the sparkline
    await store.write("a", "wb", "wandb", [Point("train/loss", s, t0 + 2 * s, vals_a[s]) for s in steps_a], None)
    await store.write("a", "tb", "tensorboard", [Point("train/acc", s, t0 + 2 * s, 0.5) for s in range(1, 101)],
                      None)
    # b: no spec metric; the loss is detected; sparse steps (every 7th), an evaluation pause among the newest 20
    await store.register_workload("b", "research", "b", {})
    steps_b = list(range(7, 7 * 60 + 1, 7))
    ts_b = {s: t0 + s for s in steps_b}
    for s in steps_b[-5:]:
        ts_b[s] += 600  # a 10-minute pause before the last five
    await store.write("b", "logs", "logs", [Point("loss", s, ts_b[s], 1.0 / s) for s in steps_b]
                      + [Point("lr", s, ts_b[s], 1e-4) for s in steps_b], None)
    # c: registered, nothing stored yet
    await store.register_workload("c", "ml", "c", {})

    r = await _get(database_url, "/api/v1/overview", points=16)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["points"] == 16 and body["total_count"] == 3
    by = {w["uid"]: w for w in body["workloads"]}

    a = by["a"]
    assert (a["metric"], a["data_source"], a["source"], a["run"]) == ("train/loss", "wandb", "wb", "")
    ts_a = {s: (t0 + 2 * s) * 1000 for s in steps_a}
    assert a["points"] == _expected_line(steps_a, vals_a, ts_a, 16)
    assert a["points"][-1][0] == 5000 and a["points"][0][0] == 1
    assert a["steps_per_second"] == 0.5
    assert a["sources"] == [{"data_source": "tensorflow", "source": "tb", "newest_timestamp": (t0 + 200) * 1000},
                            {"data_source": "wandb", "source": "wb", "newest_timestamp": (t0 + 10_000) * 1000}]

    b = by["b"]
    assert (b["metric"], b["data_source"]) == ("loss", "log")
    assert b["points"] == _expected_line(steps_b, {s: 1.0 / s for s in steps_b},
                                         {s: ts_b[s] * 1000 for s in steps_b}, 16)
    assert b["steps_per_second"] == 1.0  # the pause is one interval of 19: the median pace is the run's own

    assert by["c"]["metric"] is None and by["c"]["points"] == [] and by["c"]["sources"] == []

    r = await _get(database_url, "/api/v1/overview", namespace="research")
    assert [w["uid"] for w in r.json()["workloads"]] == ["b"]
    r = await _get(database_url, "/api/v1/overview", points=1)
    assert r.status_code == 400 and "points" in r.json()["message"]


def test_steps_per_second_is_the_median_pace() -> None:
    assert steps_per_second([]) is None
    assert steps_per_second([(1, 0)]) is None
    assert steps_per_second([(1, 0), (2, 500), (3, 1000), (4, 60_000)]) == 2.0
    assert steps_per_second([(3, 1000), (1, 0), (2, 500)]) == 2.0  # any order
