"""The API beyond the seed, in process (httpx over ASGI) on a real PostgreSQL: keyset pagination, last/step/run
filters, downsampling against a Python oracle, CSV/NDJSON round trips, namespace/name addressing, auth, CORS,
health, read-only sessions, and a database that is down."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from trainscope.api.app import ApiSettings, create_app
from trainscope.api.downsample import minmax_reference
from trainscope.collector.points import Point
from trainscope.collector.store import Store

from apifixtures import create_database, drop_database

UID = "wl-uid-1"
T0 = 1_704_067_200.0  # the seed's 2024-01-01T00:00:00Z


def client_for(settings: ApiSettings) -> httpx.AsyncClient:
    app = create_app(settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.fixture
async def api(store: Store, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    await fill(store)
    async with client_for(ApiSettings(database_url)) as c:
        yield c
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]


async def fill(store: Store) -> dict[tuple[str, str, str, str], list[tuple[int, int, float]]]:
    """Three metrics from TensorBoard (two runs) and W&B, uneven steps; returns series -> rows (step, ms, value)."""
    await store.register_workload(UID, "ml", "gpt", {"totalSteps": 1000})
    rnd = random.Random(7)
    out: dict[tuple[str, str, str, str], list[tuple[int, int, float]]] = {}
    for source, kind, runs in (("tb", "tensorboard", ("train", "eval")), ("wb", "wandb", ("",))):
        points = []
        for run in runs:
            for metric in ("loss", "lr", "acc"):
                steps = sorted(rnd.sample(range(0, 1000), 150 if run != "eval" else 20))
                for step in steps:
                    ts = T0 + step * 1.5 + 0.0004
                    value = rnd.gauss(1.0, 0.3)
                    points.append(Point(metric, step, ts, value, run))
                    ds = "tensorflow" if kind == "tensorboard" else "wandb"
                    out.setdefault((metric, ds, source, run), []).append((step, math.floor(ts * 1000), value))
        await store.write(UID, source, kind, points, None)
    return dict(sorted(out.items()))


async def get(c: httpx.AsyncClient, path: str, **params: Any) -> dict[str, Any]:
    r = await c.get(f"/api/v1/workloads/{UID}/metrics/{path}", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def walk(c: httpx.AsyncClient, limit: int, **params: Any) -> tuple[list[dict], int]:
    items, pages, cursor = [], 0, None
    while True:
        page = await get(c, "data", limit=limit, **params, **({"cursor": cursor} if cursor else {}))
        assert len(page["data"]) <= limit and page["total_count"] == len(page["data"])
        items += page["data"]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            return items, pages


@pytest.mark.parametrize("limit", [1, 7, 150, 5000])
async def test_pagination_walks_each_point_exactly_once(api: httpx.AsyncClient, limit: int) -> None:
    everything = (await get(api, "data"))["data"]
    items, pages = await walk(api, limit)
    assert items == everything  # same points, same order, none twice, none missing
    assert pages == max(1, math.ceil(len(everything) / limit))  # no empty trailing page
    keys = [(i["metric_name"], i["data_source"], i["iteration"]) for i in everything]
    assert len(everything) == 150 * 3 + 20 * 3 + 150 * 3
    assert [k[:2] for k in keys] == sorted(k[:2] for k in keys)  # stable order: by series, then iteration


async def test_pagination_during_writes_never_repeats_or_skips_old_points(api: httpx.AsyncClient,
                                                                          store: Store) -> None:
    def key(i: dict) -> tuple:
        return (i["metric_name"], i["data_source"], i["source"], i["run"], i["iteration"])

    before = {key(i) for i in (await get(api, "data", include="run,source"))["data"]}
    seen: list[tuple] = []
    cursor, n = None, 0
    while True:
        page = await get(api, "data", limit=40, include="run,source", **({"cursor": cursor} if cursor else {}))
        seen += [key(i) for i in page["data"]]
        n += 1
        if n in (2, 9):  # new steps land both behind and ahead of the walk
            await store.write(UID, "tb", "tensorboard", [Point("acc", 2000 + n, T0 + 9000, 0.5, "train"),
                                                         Point("loss", 2000 + n, T0 + 9000, 0.5, "train")], None)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert before <= set(seen)


async def test_cursor_is_bound_to_its_query(api: httpx.AsyncClient) -> None:
    page = await get(api, "data", limit=5, metrics="loss")
    r = await api.get(f"/api/v1/workloads/{UID}/metrics/data", params={"limit": 5, "cursor": page["next_cursor"]})
    assert r.status_code == 400 and r.json()["message"].startswith("cursor: ")
    r = await api.get(f"/api/v1/workloads/{UID}/metrics/data", params={"cursor": page["next_cursor"]})
    assert r.status_code == 400 and r.json()["message"].startswith("cursor: ")
    forged = page["next_cursor"][:-4] + "AAAA"
    r = await api.get(f"/api/v1/workloads/{UID}/metrics/data", params={"limit": 5, "metrics": "loss",
                                                                          "cursor": forged})
    assert r.status_code == 400


async def test_last_steps_runs_and_extra_fields(api: httpx.AsyncClient) -> None:
    data = (await get(api, "data", last=3, include="run,source"))["data"]
    by_series: dict[tuple, list[int]] = {}
    for i in data:
        assert list(i) == ["metric_name", "value", "timestamp", "iteration", "data_source", "run", "source"]
        by_series.setdefault((i["metric_name"], i["data_source"], i["source"], i["run"]), []).append(i["iteration"])
    full = (await get(api, "data", include="run,source"))["data"]
    for key, steps in by_series.items():
        all_steps = [i["iteration"] for i in full if (i["metric_name"], i["data_source"], i["source"], i["run"]) == key]
        assert steps == all_steps[-3:]
    assert len(by_series) == 9
    ranged = (await get(api, "data", from_step=100, to_step=200, run="eval,", data_source="tensorboard"))["data"]
    assert ranged and all(100 <= i["iteration"] <= 200 and i["data_source"] == "tensorflow" for i in ranged)
    eval_only = (await get(api, "data", run="eval", include="run"))["data"]
    assert {i["run"] for i in eval_only} == {"eval"} and len(eval_only) == 60
    available = await get(api, "available", run="eval")
    assert [(m["name"], m["count"]) for m in available["metrics"]] == [("acc", 20), ("loss", 20), ("lr", 20)]


async def test_time_filters_are_inclusive_on_the_millisecond_shown(api: httpx.AsyncClient) -> None:
    full = (await get(api, "data", metrics="loss", data_source="wandb"))["data"]
    mid = full[len(full) // 2]["timestamp"]
    picked = (await get(api, "data", metrics="loss", data_source="wandb", start=mid, end=mid))["data"]
    assert [i["timestamp"] for i in picked] == [mid]  # ts has sub-ms digits: shown and filtered floored
    after = (await get(api, "data", metrics="loss", data_source="wandb", start=mid))["data"]
    assert after == full[len(full) // 2:]


async def test_namespace_and_name_address_the_same_workload(api: httpx.AsyncClient) -> None:
    for path in ("metrics/available", "metrics/sources", "metrics/data?metrics=lr&limit=10", "runs"):
        a = await api.get(f"/api/v1/workloads/{UID}/{path}")
        b = await api.get(f"/api/v1/namespaces/ml/workloads/gpt/{path}")
        assert a.status_code == b.status_code == 200 and a.json() == b.json()
    one = (await api.get("/api/v1/namespaces/ml/workloads/gpt")).json()
    assert one["uid"] == UID and one["step"] is not None
    assert (await api.get("/api/v1/namespaces/ml/workloads")).json()["total_count"] == 1
    assert (await api.get("/api/v1/namespaces/ml/workloads/nope/metrics/data")).status_code == 404


# ---- downsampling -------------------------------------------------------------------------------------------------

async def test_downsample_keeps_first_last_and_extremes(store: Store, database_url: str) -> None:
    rnd = random.Random(3)
    values = [math.sin(i / 300) + rnd.gauss(0, 0.05) for i in range(10_000)]
    values[1234], values[5678], values[9000] = 25.0, -30.0, math.nan  # spikes must survive
    values[4000], values[4001] = math.inf, -math.inf
    pts = [Point("loss", 3 * i, T0 + i, v) for i, v in enumerate(values)]
    pts += [Point("lr", i, T0 + i, 1e-3) for i in range(50)]  # fewer than N: returned whole
    await store.write("ds", "tb", "tensorboard", pts, None)
    async with client_for(ApiSettings(database_url)) as c:
        r = await c.get("/api/v1/workloads/ds/metrics/data", params={"downsample": 100})
        out = r.json()
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    assert out["downsampled"] is True
    assert out["downsample"] == {"method": "minmax", "buckets": "even", "max_points_per_series": 100,
                                 "source_points": 10_050}
    loss = [i for i in out["data"] if i["metric_name"] == "loss"]
    lr = [i for i in out["data"] if i["metric_name"] == "lr"]
    assert len(lr) == 50 and len(loss) <= 100
    rows = [(p.step, math.floor(p.ts * 1000), p.value) for p in pts if p.metric == "loss"]
    want = minmax_reference(rows, 100)
    assert [(i["iteration"], i["timestamp"]) for i in loss] == [(s, t) for s, t, _ in want]
    assert [i["value"] for i in loss] == [v if math.isfinite(v) else None for _, _, v in want]
    steps = {i["iteration"] for i in loss}
    assert {0, 3 * 9999, 3 * 1234, 3 * 5678, 3 * 9000, 3 * 4000, 3 * 4001} <= steps  # ends, spikes, NaN, +-inf
    finite = [v for v in values if math.isfinite(v)]
    assert max(finite) in [i["value"] for i in loss] and min(finite) in [i["value"] for i in loss]


@pytest.mark.parametrize("buckets", ["even", "aligned"])
@pytest.mark.parametrize(("seed", "n", "max_points"), [(1, 5000, 4), (2, 999, 57), (3, 20_000, 1000)])
async def test_downsample_equals_the_python_oracle_with_filters(store: Store, database_url: str, seed: int, n: int,
                                                                max_points: int, buckets: str) -> None:
    rnd = random.Random(seed)
    steps = sorted(rnd.sample(range(-50, 4 * n), n))
    pts = [Point("m", s, T0 + s * 0.25, rnd.choice([rnd.random(), rnd.random(), 0.5])) for s in steps]
    await store.write("o", "w", "wandb", pts, None)
    start_ms, to_step = math.floor((T0 + steps[n // 5] * 0.25) * 1000), steps[-n // 5]
    rows = [(p.step, math.floor(p.ts * 1000), p.value) for p in pts
            if math.floor(p.ts * 1000) >= start_ms and p.step <= to_step]
    async with client_for(ApiSettings(database_url)) as c:
        r = await c.get("/api/v1/workloads/o/metrics/data",
                        params={"downsample": max_points, "start": start_ms, "to_step": to_step,
                                "buckets": buckets})
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    got = [(i["iteration"], i["timestamp"], i["value"]) for i in r.json()["data"]]
    assert got == minmax_reference(rows, max_points, buckets)
    assert r.json()["downsample"]["buckets"] == buckets
    assert len(got) <= max_points and got[0] == rows[0] and got[-1] == rows[-1]


@pytest.mark.parametrize("split", [False, True], ids=["one-query", "page-ranges"])
async def test_downsample_ties_plateaus_and_different_ranges(store: Store, database_url: str,
                                                             monkeypatch: pytest.MonkeyPatch, split: bool) -> None:
    """Constant and stepped series (every row ties), repeated extremes, NaN/inf, series on different step ranges
    (the join form), `last` (each series from its own step), the page-range split: each equals the oracle."""
    from trainscope.api import downsample as ds

    if split:  # the test table is small: let the split happen anyway, so its UNION ALL runs on PostgreSQL
        monkeypatch.setattr(ds, "SPLIT_MIN_PAGES", 0)
        monkeypatch.setattr(ds, "SPLIT_MIN_SHARE", 0.0)
    rnd = random.Random(11)
    series: dict[str, list[tuple[int, float]]] = {
        "const": [(s, 1e-3) for s in range(3000)],
        "stepped": [(s, 0.1 if s < 1234 else 0.01 if s < 2500 else 0.001) for s in range(0, 6000, 2)],
        "coarse": [(s, float(rnd.randint(0, 3))) for s in range(100, 2600)],
        "spiky": [(s, rnd.choice([rnd.gauss(0, 1), math.nan, math.inf, -math.inf, 0.0, -0.0]))
                  for s in range(-700, 1800)],
    }
    pts = [Point(m, s, T0 + s + 0.25, v) for m, rows in series.items() for s, v in rows]
    await store.write("ties", "tb", "tensorboard", pts, None)
    async with client_for(ApiSettings(database_url)) as c:
        answers = [(await c.get("/api/v1/workloads/ties/metrics/data", params=p)).json()
                   for p in ({"downsample": 50}, {"downsample": 21, "last": 2000}, {"downsample": 7, "from_step": 5})]
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    for out, keep in zip(answers, (lambda r: r, lambda r: r[-2000:], lambda r: [x for x in r if x[0] >= 5]),
                         strict=True):
        n = out["downsample"]["max_points_per_series"]
        assert out["downsampled"] is True
        assert out["downsample"]["source_points"] == sum(len(keep(rows)) for rows in series.values())
        for metric, rows in series.items():
            want = minmax_reference([(s, math.floor((T0 + s + 0.25) * 1000), v) for s, v in keep(rows)], n)
            got = [(i["iteration"], i["timestamp"], i["value"]) for i in out["data"] if i["metric_name"] == metric]
            assert got == [(s, t, v if math.isfinite(v) else None) for s, t, v in want], metric
            assert len(got) <= n


async def test_downsample_steps_at_the_int64_bounds(store: Store, database_url: str) -> None:
    """A step range too wide for int8 bucket arithmetic takes the numeric form: same buckets as the oracle."""
    rnd = random.Random(5)
    steps = sorted({-(2**63), 2**63 - 1, *(rnd.randint(-(2**62), 2**62) for _ in range(300))})
    pts = [Point("wide", s, T0 + i, math.sin(i / 9)) for i, s in enumerate(steps)]
    await store.write("wide", "tb", "tensorboard", pts, None)
    async with client_for(ApiSettings(database_url)) as c:
        out = (await c.get("/api/v1/workloads/wide/metrics/data", params={"downsample": 40})).json()
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    want = minmax_reference([(p.step, math.floor(p.ts * 1000), p.value) for p in pts], 40)
    assert [(i["iteration"], i["timestamp"], i["value"]) for i in out["data"]] == want


async def test_downsample_splits_the_table_only_for_a_dominant_workload(store: Store, database_url: str,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Page ranges (a whole-table scan in parallel) for a workload holding most rows; one plain query otherwise."""
    from trainscope.api import downsample as ds

    monkeypatch.setattr(ds, "SPLIT_MIN_PAGES", 0)
    await store.write("big", "tb", "tensorboard", [Point(f"m{i}", s, T0 + s, 1.0) for i in range(4)
                                                    for s in range(5000)], None)
    await store.write("small", "tb", "tensorboard", [Point("m", s, T0 + s, 1.0) for s in range(100)], None)
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("ANALYZE points")
        big = [r["id"] for r in await conn.fetch("SELECT id FROM series WHERE workload_uid = 'big'")]
        small = [r["id"] for r in await conn.fetch("SELECT id FROM series WHERE workload_uid = 'small'")]
        ranges = await ds.page_ranges(conn, big)
        assert await ds.page_ranges(conn, small) == [""]
    finally:
        await conn.close()
    assert len(ranges) >= 2 and "<" in ranges[0] and ranges[-1].count("ctid") == 1  # the last one is open-ended


# ---- formats ----------------------------------------------------------------------------------------------------

async def test_csv_and_ndjson_round_trip(store: Store, database_url: str) -> None:
    pts = [Point('we,ird "name"', i, T0 + i / 7, v) for i, v in enumerate([0.1, -2.5e-300, 1e300, math.nan,
                                                                              math.inf, -math.inf, 3.0])]
    pts += [Point("loss", i, T0 + i, 1 / (i + 1), "run/x") for i in range(12_000)]  # several chunks when streamed
    await store.write("fmt", "tb", "tensorboard", pts, None)
    async with client_for(ApiSettings(database_url)) as c:
        base = "/api/v1/workloads/fmt/metrics/data"
        j = (await c.get(base, params={"include": "run"})).json()
        text = (await c.get(base, params={"include": "run", "format": "csv"}))
        nd = (await c.get(base, params={"include": "run", "format": "ndjson"}))
        page = await c.get(base, params={"format": "csv", "limit": 3})
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    assert text.headers["content-type"].startswith("text/csv")
    assert nd.headers["content-type"].startswith("application/x-ndjson")
    assert j["total_count"] == len(j["data"]) == len(pts)
    from_nd = [json.loads(line) for line in nd.text.splitlines()]
    assert from_nd == j["data"]
    rows = list(csv.DictReader(io.StringIO(text.text)))
    assert list(rows[0]) == ["metric_name", "value", "timestamp", "iteration", "data_source", "run"]
    by_key = {(p.metric, p.step): p.value for p in pts}
    for row, item in zip(rows, j["data"], strict=True):
        value = float(row["value"])
        original = by_key[(row["metric_name"], int(row["iteration"]))]
        assert value == original or (math.isnan(value) and math.isnan(original))  # CSV keeps NaN and +-inf
        assert item["value"] == (original if math.isfinite(original) else None)  # JSON: null
        assert (row["metric_name"], int(row["timestamp"]), int(row["iteration"]), row["data_source"], row["run"]) \
            == (item["metric_name"], item["timestamp"], item["iteration"], item["data_source"], item["run"])
    assert page.headers["x-next-cursor"] and len(page.text.splitlines()) == 4


# ---- auth, CORS, health, read-only, outages ----------------------------------------------------------------------

async def test_bearer_token_and_cors(api: httpx.AsyncClient, database_url: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "s3cr3t-t0ken-value"
    settings = ApiSettings(database_url, token=secret, cors_origins=("https://grafana.example",))
    assert secret not in repr(settings)
    async with client_for(settings) as c:
        path = f"/api/v1/workloads/{UID}/metrics/available"
        missing = await c.get(path)
        wrong = await c.get(path, headers={"Authorization": "Bearer nope"})
        right = await c.get(path, headers={"Authorization": f"Bearer {secret}"})
        health = await c.get("/healthz")
        pre = await c.options(path, headers={"Origin": "https://grafana.example", "Access-Control-Request-Method":
                                             "GET", "Access-Control-Request-Headers": "authorization"})
        other = await c.get("/healthz", headers={"Origin": "https://evil.example"})
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["code"] == "Unauthorized" and missing.headers["www-authenticate"].startswith("Bearer")
    assert right.status_code == 200 and health.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://grafana.example"
    assert "access-control-allow-origin" not in other.headers
    for r in (missing, wrong, right):
        assert secret not in r.text and secret not in str(r.headers)
    assert secret not in caplog.text


async def test_health_readiness_and_read_only_sessions(api: httpx.AsyncClient, pg_url: str) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    db = api._transport.app.state.db  # type: ignore[attr-defined]
    async with db.acquire() as conn:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("DELETE FROM points")
    # A database nobody migrated: alive, not ready, and the metrics answer instead of failing.
    url = await create_database(pg_url)
    try:
        async with client_for(ApiSettings(url)) as c:
            ready = await c.get("/readyz")
            await c._transport.app.state.db.close()  # type: ignore[attr-defined]
        assert ready.status_code == 503 and ready.json()["code"] == "NotReady"
    finally:
        await drop_database(pg_url, url)


async def test_database_down_is_503_not_500() -> None:
    async with client_for(ApiSettings("postgresql://nobody:pw@127.0.0.1:9/none")) as c:
        for path in ("/api/v1/workloads", f"/api/v1/workloads/{UID}/metrics/data", "/readyz"):
            r = await c.get(path)
            assert r.status_code == 503, (path, r.text)
            assert list(r.json()) == ["code", "message"] and "pw" not in r.text


async def test_health_events_are_served_as_stored(api: httpx.AsyncClient, store: Store) -> None:
    from trainscope.collector.health import Condition, HealthEvent

    events = [HealthEvent(T0 + 10.0005, Condition("Stalled", "True", "NoNewStep", "no new step since step 5",
                                                  None, 5, None)),
              HealthEvent(T0 + 20, Condition("NonFiniteMetric", "True", "NonFiniteValue", "loss is nan at step 7",
                                             "loss", 7, math.nan)),
              HealthEvent(T0 + 30, Condition("Stalled", "False", "Progressing", "step 9 0s ago", None, 9, None))]
    await store.add_health_events(UID, events)
    for path in (f"/api/v1/workloads/{UID}/health/events", "/api/v1/namespaces/ml/workloads/gpt/health/events"):
        r = await api.get(path)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["workload_uid"] == UID and body["total_count"] == 3
        assert [(e["type"], e["status"], e["reason"], e["metric"], e["iteration"], e["timestamp"])
                for e in body["events"]] == [
            ("Stalled", "True", "NoNewStep", None, 5, int((T0 + 10) * 1000)),
            ("NonFiniteMetric", "True", "NonFiniteValue", "loss", 7, int((T0 + 20) * 1000)),
            ("Stalled", "False", "Progressing", None, 9, int((T0 + 30) * 1000))]
        assert body["events"][1]["value"] is None  # NaN has no JSON form; the message says it
    assert [e["status"] for e in (await api.get(f"/api/v1/workloads/{UID}/health/events",
                                                params={"limit": 1})).json()["events"]] == ["False"]
    missing = await api.get("/api/v1/workloads/nope/health/events")
    assert missing.status_code == 404 and missing.json()["code"] == "WorkloadNotFound"


async def test_the_workload_list_carries_each_health_conditions_newest_status(api: httpx.AsyncClient,
                                                                             store: Store) -> None:
    from trainscope.collector.health import Condition, HealthEvent

    await store.add_health_events(UID, [
        HealthEvent(T0 + 1, Condition("Stalled", "True", "NoNewStep", "no new step since step 5", None, 5, None)),
        HealthEvent(T0 + 2, Condition("MetricSpike", "True", "SpikeAboveBand", "loss jumped", "loss", 6, 9.0)),
        HealthEvent(T0 + 3, Condition("Stalled", "False", "Progressing", "step 9 0s ago", None, 9, None))])
    [item] = (await api.get("/api/v1/workloads")).json()["workloads"]
    assert item["conditions"] == [
        {"type": "MetricSpike", "status": "True", "reason": "SpikeAboveBand", "message": "loss jumped"},
        {"type": "Stalled", "status": "False", "reason": "Progressing", "message": "step 9 0s ago"}]


@pytest.mark.parametrize("max_points", [1000, 64, 9])
async def test_downsample_from_the_rollup_after_replacements(store: Store, database_url: str,
                                                            monkeypatch: pytest.MonkeyPatch, max_points: int) -> None:
    """Series whose extremes were re-logged with larger and with smaller values, answered from the rollup: equal to
    the oracle over the stored points, and to the full scan. Asked right after the replacing write (the watermark
    lowered, the points above it read as they are) and again once the store has rolled them up."""
    from trainscope.api import downsample as ds
    from trainscope.api import rollup

    rnd = random.Random(max_points)
    truth: dict[str, dict[int, tuple[float, float]]] = {}
    for metric, steps in (("dense", range(0, 150_000)), ("sparse", range(-3_000, 600_000, 7)),
                          ("flat", range(5, 100_005))):
        rows = {s: (T0 + s, 0.25 if metric == "flat" else rnd.gauss(0, 1)) for s in steps}
        truth[metric] = rows
        await store.write("rr", "tb", "tensorboard", [Point(metric, s, t, v) for s, (t, v) in rows.items()], None)
    await store.rollup.settle()
    used: list[bool] = []
    extremes = rollup.extremes

    async def spy(conn: asyncpg.Connection, plans: Any, helpers: Any = ()) -> None:
        used.append(len(helpers) > 0)
        await extremes(conn, plans, helpers)

    monkeypatch.setattr(rollup, "extremes", spy)
    monkeypatch.setattr(rollup, "TAIL_MAX", 2**62)  # right after the replacements too, not the scan
    kinds = ("even", "aligned") if max_points == 1000 else ("even",)  # aligned once: the suite's time
    asked = 3 * len(kinds)

    async def ask(c: httpx.AsyncClient) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        out = []
        for buckets in kinds:
            for params in ({"downsample": max_points}, {"downsample": max_points, "from_step": 1001,
                                                        "to_step": 99_999},
                           {"downsample": max_points, "last": 60_000}):
                params = {**params, "buckets": buckets}
                out.append((params, (await c.get("/api/v1/workloads/rr/metrics/data", params=params)).json()))
        return out

    async def check(answers: list[tuple[dict[str, Any], dict[str, Any]]], c: httpx.AsyncClient) -> None:
        with monkeypatch.context() as m:
            m.setattr(rollup, "plan", lambda *a: None)  # the scan, for the same questions
            scans = [(await c.get("/api/v1/workloads/rr/metrics/data", params=p)).json() for p, _ in answers]
        for (params, out), scan in zip(answers, scans, strict=True):
            assert out == scan
            for metric, rows in truth.items():
                keep = [(s, math.floor(rows[s][0] * 1000), rows[s][1]) for s in sorted(rows)
                        if params.get("from_step", -(2**63)) <= s <= params.get("to_step", 2**63)]
                keep = keep[-params["last"]:] if "last" in params else keep
                want = ds.minmax_reference(keep, max_points, params["buckets"])
                got = [(i["iteration"], i["timestamp"], i["value"]) for i in out["data"] if i["metric_name"] == metric]
                assert got == [(s, t, v if math.isfinite(v) else None) for s, t, v in want], (metric, params)

    # no shared answers: every question is computed again, from the rollup (counted) or the scan
    async with client_for(ApiSettings(database_url, answer_cache_mb=0)) as c:
        await check(await ask(c), c)
        assert len(used) == asked and any(used)  # a second connection read half of the series, in the same snapshot
        # replace many points, extremes among them, by higher and lower values: first in the upper part of each
        # series (the rollup answers below the lowered watermark, the points above it), then anywhere (the scan)
        for upper in (True, False):
            for metric, rows in truth.items():
                steps = sorted(rows)
                pool = steps[len(steps) * 2 // 5:] if upper else steps
                order = sorted(pool, key=lambda s: rows[s][1])
                hit = sorted({*order[:300], *order[-300:], *rnd.sample(pool, 500)})
                new = [Point(metric, s, rows[s][0] + 1, rnd.choice([-50.0, 50.0, 0.0, math.nan, math.inf,
                                                                    rows[s][1]])) for s in hit]
                for p in new:
                    rows[p.step] = (p.ts, p.value)
                await store.write("rr", "tb", "tensorboard", new[::-1], None)
            before = len(used)
            await check(await ask(c), c)
            assert len(used) - before == asked or not upper
        before = len(used)
        await store.rollup.settle()
        await check(await ask(c), c)
        assert len(used) - before == asked
        await c._transport.app.state.db.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(("lo", "hi", "nb"), [(0, 9_999_999, 499), (-3_000, 599_999, 31), (5, 5, 4), (-7, -1, 1),
                                              (2**40 + 3, 2**41, 1000), (17, 1016, 1000), (0, 1023, 512)])
def test_aligned_buckets_are_power_of_two_wide_at_multiples_and_at_most_nb(lo: int, hi: int, nb: int) -> None:
    from trainscope.api.buckets import grid

    g = grid(lo, hi, nb, "aligned")
    w = g.den
    assert g.num == 1 and w & (w - 1) == 0 and g.org % w == 0 and g.org <= lo < g.org + w
    used = g.of(hi) - g.of(lo) + 1
    assert used <= nb and (w == 1 or hi // (w // 2) - lo // (w // 2) + 1 > nb)  # the narrowest width that fits
    assert all(g.of(g.start(b)) == b and g.start(b) % w == 0 for b in range(used))
    even = grid(lo, hi, nb)
    assert even.of(lo) == 0 and even.of(hi) == min(nb, hi - lo + 1) - 1
