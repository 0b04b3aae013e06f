"""Hostile metric names end to end (event file -> store -> status -> /metrics): quotes, backslashes, newlines,
unicode, a 10 KB name (over the 1024-byte limit: quarantined with a note, never blocking the others); and a
Workload with 10,000 distinct metric names, whose cost must stay bounded where it lands in Kubernetes and Prometheus
(gauges only for exported metrics, status `latest` capped, status size bounded).
"""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import httpx

from trainscope.operator.status import MAX_LATEST

from faults import EventFile
from kube import Cluster, Operator, Scalar, compare_points, db_points, eventually, read_scalars, show

WAIT = 60.0
HOSTILE = [
    'say "hi"', "it's", "back\\slash", "new\nline", "tab\tand\rcr", "ünïcødé/損失", "emoji 🚀 loss", "{{.Values}}",
    "a,b=c}", "", " ", "train/" + "x" * 10240, "\u202eRTL", "nul\x00byte",
]
TOO_LONG = "train/" + "x" * 10240


async def _metrics_text(operator: Operator) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        rsp = await client.get(operator.metrics_url)
    rsp.raise_for_status()
    return rsp.text


async def _stored_exactly(database_url: str, uid: str, truth: dict[tuple[str, str, int], Scalar], what: str) -> None:
    """Wait until the store holds exactly `truth` for the Workload `uid` (source "tb"), failing with `what`."""

    async def stored() -> None:
        try:
            points = await db_points(database_url, uid)
        except asyncpg.PostgresError as exc:  # the operator has not migrated the database yet
            raise AssertionError(str(exc)) from None
        compare_points(points, truth, "tb")
    await eventually(stored, within=WAIT, what=what)


async def test_hostile_metric_names_survive_store_status_and_metrics(cluster: Cluster, operator: Operator,
                                                                     database_url: str, tmp_path: Path) -> None:
    run = EventFile(tmp_path / "names", tags=HOSTILE)
    run.write(range(1, 6), wall=lambda s: 1_700_000_000.0 + s)
    written = read_scalars(tmp_path / "names")
    assert {tag for _, tag, _ in written} == set(HOSTILE)  # the protobuf oracle reads every name back as written
    # PostgreSQL text cannot hold NUL: the collector stores it as U+FFFD (everything else exactly as written)
    truth = {(run, tag.replace("\x00", "\ufffd"), step): v for (run, tag, step), v in written.items()
             if tag != TOO_LONG}
    stored_names = [tag.replace("\x00", "\ufffd") for tag in HOSTILE if tag != TOO_LONG]
    spec = {"sources": [{"name": "tb", "tensorboard": {"logDir": str(tmp_path / "names")}}], "pollInterval": "200ms",
            "prometheus": {"metrics": ["*"]}}
    uid = (await cluster.create("names", spec))["metadata"]["uid"]
    await _stored_exactly(database_url, uid, truth, "every hostile name stored exactly")

    async def shown() -> dict:
        obj = await cluster.workload("names")
        latest = obj.get("status", {}).get("latest", {})
        assert len(latest) == min(len(stored_names), MAX_LATEST), show(obj)
        assert set(latest) <= set(stored_names), show(obj)
        source = obj["status"]["sources"][0]
        assert source["skipped"] == {"NameTooLong": 5} and source["state"] == "Healthy", show(obj)
        return obj
    obj = await eventually(shown, within=WAIT, what="status to show the names")
    # The 10 KB name is kept, whole, with its points and the reason, where a user can find it.
    conn = await asyncpg.connect(database_url)
    try:
        kept = await conn.fetch("SELECT metric, step, reason FROM rejected_points WHERE workload_uid = $1", uid)
    finally:
        await conn.close()
    assert sorted((r["metric"], int(r["step"])) for r in kept) == [(TOO_LONG, s) for s in range(1, 6)]
    assert all(r["reason"].startswith("NameTooLong") for r in kept)
    size = len(json.dumps(obj["status"]))
    assert size < 256 * 1024, size  # well inside a Kubernetes object's 1.5 MiB

    # /metrics: the exposition escapes every name, and prometheus_client's own parser reads each back exactly
    async def exported() -> None:
        scraped = await operator.scrape()
        names = {lbl["metric"]: v for lbl, v in scraped.get("trainscope_metric_value", [])
                 if lbl["workload"] == "names"}
        assert set(names) == set(stored_names), sorted(set(stored_names) ^ set(names))
        for name, value in names.items():
            want = truth[(".", name, 5)].value
            assert value == want or (value != value and want != want), (name, value, want)
    await eventually(exported, within=WAIT, what="every name in /metrics")
    text = await _metrics_text(operator)
    assert "\n\n" not in text.strip()  # no raw newline broke a sample line
    run.close()


async def test_ten_thousand_metric_names_stay_bounded(cluster: Cluster, operator: Operator, database_url: str,
                                                      tmp_path: Path) -> None:
    names = [f"layer{i // 100:03d}/grad_norm_{i % 100:02d}" for i in range(9_997)] + \
        ["train/loss", "train/lr", "train/tokens"]
    run = EventFile(tmp_path / "wide", tags=names)
    run.write(range(1, 3), wall=lambda s: 1_700_000_000.0 + s)
    spec = {"sources": [{"name": "tb", "tensorboard": {"logDir": str(tmp_path / "wide")}}], "pollInterval": "200ms",
            "primaryMetric": "train/loss", "prometheus": {"metrics": ["train/*"]}}
    uid = (await cluster.create("wide", spec))["metadata"]["uid"]
    truth = read_scalars(tmp_path / "wide")
    assert len(truth) == 20_000
    await _stored_exactly(database_url, uid, truth, "20,000 points of 10,000 names stored")

    async def shown() -> dict:
        obj = await cluster.workload("wide")
        st = obj.get("status", {})
        assert st.get("step") == 2 and len(st.get("latest", {})) == MAX_LATEST, show(obj)
        assert {"train/loss", "train/lr", "train/tokens"} <= set(st["latest"]), st["latest"]  # primary, exported
        return obj
    obj = await eventually(shown, within=WAIT, what="status of the wide Workload")
    status_bytes = len(json.dumps(obj["status"]))

    async def exported() -> None:
        scraped = await operator.scrape()
        got = sorted(lbl["metric"] for lbl, _ in scraped.get("trainscope_metric_value", [])
                     if lbl["workload"] == "wide")
        assert got == ["train/loss", "train/lr", "train/tokens"], got[:10]
    await eventually(exported, within=WAIT, what="gauges for the exported metrics only")
    text = await _metrics_text(operator)
    samples = sum(1 for line in text.splitlines() if 'workload="wide"' in line)
    print(f"\n10,000 names: status {status_bytes} bytes, /metrics {len(text)} bytes, {samples} samples for it")
    assert status_bytes < 16 * 1024, status_bytes
    assert samples < 100, samples
    run.close()
