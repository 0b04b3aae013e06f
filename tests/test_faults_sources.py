"""Sources misbehaving over real HTTP (refused connections, resets, hangs, endless trickles, bodies cut short,
truncated JSON, 5xx storms, HTML error pages, JSON of the wrong shape), one tiny server per covered source kind on
127.0.0.1: only those sources degrade, in status, while the other source of the same Workload, another Workload and
another HTTP source keep storing new points (checked as "arrived within the poll interval plus slack", a deadline
for waiting, not a timed assertion). In the end the flaky TensorBoard server behaves again and its source's stored
points equal what it served, exactly once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faults import (
    ADAPTERS,
    MODES,
    FlakyServer,
    ServedRun,
    SourceAdapter,
    TensorBoardFiles,
    covered_kinds,
)
from kube import Cluster, Operator, compare_points, db_points, eventually, operator_config, show, source_status

POLL = 0.2  # seconds: pollInterval of every Workload here
SLACK = 15.0  # deadline slack on 2 loaded cores; the points usually arrive within one poll


@pytest.fixture
async def operator(cluster: Cluster, database_url: str) -> AsyncIterator[Operator]:
    config = operator_config(database_url)
    config.poll_timeout = 4.0  # the whole-poll deadline (default 300 s) that ends an endless trickle
    op = await Operator(config).start()
    try:
        yield op
    finally:
        await op.stop()


async def test_each_misbehaving_source_degrades_alone(cluster: Cluster, operator: Operator, database_url: str,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = TensorBoardFiles(tmp_path, "good")
    other = TensorBoardFiles(tmp_path, "other")
    good.grow_to(20)
    other.grow_to(20)
    adapters: dict[str, SourceAdapter] = {}
    servers: dict[str, FlakyServer] = {}
    steady = FlakyServer(ServedRun.make(50))  # an HTTP source that keeps behaving, in another Workload
    await steady.__aenter__()
    try:
        items = [good.spec_item()]
        for kind in covered_kinds():
            adapters[kind] = ADAPTERS[kind](tmp_path / kind, kind)
            for key, value in adapters[kind].env().items():
                monkeypatch.setenv(key, value)
            servers[kind] = await FlakyServer(ServedRun.make(200)).__aenter__()
            item = adapters[kind].http_item(f"flaky-{kind}", servers[kind].url, "1s")
            if item is not None:
                items.append(item)
        flaky = [item["name"] for item in items[1:]]
        assert flaky, "no covered kind talks HTTP"
        mixed = (await cluster.create("mixed", {"sources": items, "pollInterval": "200ms"}))["metadata"]["uid"]
        other_uid = (await cluster.create("other", {"sources": [other.spec_item()], "pollInterval": "200ms"})
                     )["metadata"]["uid"]
        steady_uid = (await cluster.create("steady", {"sources": [{"name": "tb", "tensorboard": {
            "url": steady.url, "timeout": "1s"}}], "pollInterval": "200ms"}))["metadata"]["uid"]

        async def arrived() -> None:
            stored = await db_points(database_url, mixed)
            compare_points(stored, good.truth(), good.name)
            compare_points(await db_points(database_url, other_uid), other.truth(), other.name)
            compare_points(await db_points(database_url, steady_uid), steady.served.truth(), "tb")

        def errors(scraped: Any) -> dict[str, dict[str, float]]:
            out: dict[str, dict[str, float]] = {name: {} for name in flaky}
            for labels, value in scraped.get("trainscope_source_errors_total", []):
                if labels.get("workload") == "mixed" and labels.get("source") in out:
                    out[labels["source"]][labels["reason"]] = value
            return out

        seen: dict[str, dict[str, Any]] = {}
        for mode in [m for m in MODES if m != "ok"]:
            for server in [*servers.values()]:
                await server.set_mode(mode)
            before = errors(await operator.scrape())
            # training goes on: the healthy sources' new points arrive while the flaky ones misbehave
            for step in (good.last_step + 10, good.last_step + 20):
                good.grow_to(step)
                other.grow_to(step)
                steady.served.grow_to(step + 30)
                await eventually(arrived, within=POLL + SLACK, what=f"healthy sources' points (mode {mode})")

            async def degraded(mode: str = mode, before: dict[str, dict[str, float]] = before) -> None:
                obj = await cluster.workload("mixed")
                assert source_status(obj, "good")["state"] == "Healthy", show(obj)
                for kind, server in servers.items():  # (nothing listens in mode refuse)
                    assert mode == "refuse" or server.requests.get(mode, 0) >= 1, f"{kind}: no request in {mode} yet"
                now = errors(await operator.scrape())
                for name in flaky:  # a failure of this mode was counted, and status shows the source failing
                    new = {r: n - before[name].get(r, 0) for r, n in now[name].items() if n > before[name].get(r, 0)}
                    assert new, f"{name}: no failure counted since mode {mode} began; errors {now[name]}"
                    src = source_status(obj, name)
                    assert src["state"] == "Failing" and src.get("lastError"), f"{name} in mode {mode}:\n{show(obj)}"
                    seen.setdefault(mode, {})[name] = sorted(new)
                for name in ("other", "steady"):
                    o = await cluster.workload(name)
                    assert all(s["state"] == "Healthy" for s in o["status"]["sources"]), show(o)
            await eventually(degraded, within=SLACK, what=f"the flaky sources to show mode {mode}")

        print("\nwhat status said per mode:")
        for mode, per in seen.items():
            print(f"  {mode:15} {per}")

        # The TensorBoard server behaves again: its source recovers and holds exactly what was served, once.
        if "tensorboard" in servers:
            await servers["tensorboard"].set_mode("ok")

            async def recovered() -> None:
                obj = await cluster.workload("mixed")
                assert source_status(obj, "flaky-tensorboard")["state"] == "Healthy", show(obj)
                compare_points(await db_points(database_url, mixed), servers["tensorboard"].served.truth(),
                               "flaky-tensorboard")
            await eventually(recovered, within=SLACK, what="the flaky TensorBoard source to recover")
        await eventually(arrived, within=SLACK, what="the healthy sources, at the end")
    finally:
        for server in servers.values():
            await server.__aexit__(None, None, None)
        await steady.__aexit__(None, None, None)
        for a in [good, other, *adapters.values()]:
            a.close()
