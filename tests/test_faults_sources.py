"""Sources misbehaving over real HTTP (refused connections, resets, hangs, endless trickles, bodies cut short,
truncated JSON, 5xx storms, HTML error pages, JSON of the wrong shape), one tiny server per covered source kind on
127.0.0.1: only those sources degrade, in status, while the other source of the same Workload, another Workload and
another HTTP source keep storing new points (checked as "arrived within the poll interval plus slack", a deadline
for waiting, not a timed assertion). In the end the flaky TensorBoard server behaves again and its source's stored
points equal what it served, exactly once.

The `logs` kind reads pod logs through the Kubernetes API, so its misbehaving server is the emulated API server
itself: one pod's `pods/{name}/log` fails in each of CountingEmulator's LOG_MODES while everything else it serves
(the pods list, kopf's Workloads, the other pods' logs) keeps working; after each mode the source must hold exactly
what the pod printed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from faults import (
    ADAPTERS,
    LOG_MODES,
    MODES,
    CountingCluster,
    FlakyServer,
    PodLogsRun,
    ServedRun,
    SourceAdapter,
    TensorBoardFiles,
    covered_kinds,
)
from kube import Operator, compare_points, db_points, eventually, operator_config, show, source_status

POLL = 0.2  # seconds: pollInterval of every Workload here
SLACK = 15.0  # deadline slack on 2 loaded cores; the points usually arrive within one poll


@pytest.fixture
async def cluster() -> AsyncIterator[CountingCluster]:
    """The emulated API server, able to make a pod's log misbehave (and where the logs adapter puts its pods)."""
    async with CountingCluster() as c:
        yield c


@pytest.fixture
async def operator(cluster: CountingCluster, database_url: str) -> AsyncIterator[Operator]:
    config = operator_config(database_url)
    config.poll_timeout = 4.0  # the whole-poll deadline (default 300 s) that ends an endless trickle
    op = await Operator(config).start()
    try:
        yield op
    finally:
        await op.stop()


async def test_each_misbehaving_source_degrades_alone(cluster: CountingCluster, operator: Operator, database_url: str,
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
            server = await FlakyServer(ServedRun.make(200)).__aenter__()
            item = adapters[kind].http_item(f"flaky-{kind}", server.url, "1s")
            if item is None:  # a kind without an HTTP server of its own (logs: see the pod-log test below)
                await server.__aexit__(None, None, None)
                continue
            servers[kind] = server
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
            return source_errors(scraped, "mixed", flaky)

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


def source_errors(scraped: Any, workload: str, sources: list[str]) -> dict[str, dict[str, float]]:
    """trainscope_source_errors_total of the Workload's sources: source -> reason -> count."""
    out: dict[str, dict[str, float]] = {name: {} for name in sources}
    for labels, value in scraped.get("trainscope_source_errors_total", []):
        if labels.get("workload") == workload and labels.get("source") in out:
            out[labels["source"]][labels["reason"]] = value
    return out


async def test_a_misbehaving_pod_log_degrades_only_its_source(cluster: CountingCluster, operator: Operator,
                                                              database_url: str, tmp_path: Path) -> None:
    """One pod's log endpoint fails in every way (LOG_MODES) while its container keeps printing, and crashes once
    in the middle: its logs source fails, the TensorBoard source of the same Workload and the logs source of another
    Workload keep storing their new points on time; each time the endpoint behaves again, the flaky source holds
    exactly what the pod printed (the crashed instance's tail read with previous=true), nothing lost or twice."""
    flaky = PodLogsRun(tmp_path, "flaky", cluster, pods=1, restarts=(30, 95))
    steady = PodLogsRun(tmp_path, "steady", cluster, pods=1, restarts=())
    good = TensorBoardFiles(tmp_path, "good")
    for run in (flaky, steady, good):
        run.grow_to(50)
    mixed = (await cluster.create("logs-mixed", {"sources": [good.spec_item(), flaky.spec_item()],
                                                 "pollInterval": "200ms"}))["metadata"]["uid"]
    other = (await cluster.create("logs-steady", {"sources": [steady.spec_item()], "pollInterval": "200ms"})
             )["metadata"]["uid"]

    async def flaky_complete() -> None:
        obj = await cluster.workload("logs-mixed")
        assert source_status(obj, flaky.name)["state"] == "Healthy", show(obj)
        compare_points(await db_points(database_url, mixed), flaky.truth(), flaky.name)

    async def healthy_arrived() -> None:
        compare_points(await db_points(database_url, mixed), good.truth(), good.name)
        compare_points(await db_points(database_url, other), steady.truth(), steady.name)

    await eventually(flaky_complete, within=SLACK, what="the flaky pod's log at first")
    seen: dict[str, list[str]] = {}
    try:
        for mode in LOG_MODES[1:]:
            cluster.emu.set_log_fault(flaky.pods, mode)
            before = source_errors(await operator.scrape(), "logs-mixed", [flaky.name])[flaky.name]
            for _ in range(2):  # training goes on in every pod and run
                for run in (flaky, steady, good):
                    run.grow_to(run.last_step + 10)
                await eventually(healthy_arrived, within=POLL + SLACK, what=f"the healthy sources' points ({mode})")

            async def degraded(mode: str = mode, before: dict[str, float] = before) -> None:
                assert cluster.emu.log_requests.get(mode, 0) >= 1, f"no log request answered in mode {mode} yet"
                obj = await cluster.workload("logs-mixed")
                assert source_status(obj, good.name)["state"] == "Healthy", show(obj)
                src = source_status(obj, flaky.name)
                assert src["state"] == "Failing" and src.get("lastError"), f"{mode}:\n{show(obj)}"
                now = source_errors(await operator.scrape(), "logs-mixed", [flaky.name])[flaky.name]
                new = sorted(r for r, n in now.items() if n > before.get(r, 0))
                assert new, f"no failure counted in mode {mode}; errors {now}"
                steady_obj = await cluster.workload("logs-steady")
                assert source_status(steady_obj, steady.name)["state"] == "Healthy", show(steady_obj)
                seen[mode] = [*new, src["lastError"][:90]]
            await eventually(degraded, within=SLACK, what=f"the flaky logs source to show mode {mode}")

            cluster.emu.set_log_fault(flaky.pods, "ok")
            await eventually(flaky_complete, within=SLACK, what=f"the flaky pod's log read exactly after mode {mode}")
    finally:
        cluster.emu.set_log_fault(flaky.pods, "ok")
        good.close()
    print("\nwhat the flaky logs source said per mode:")
    for mode, said in seen.items():
        print(f"  {mode:8} {said}")
    assert flaky.crashes == 2
    await eventually(healthy_arrived, within=SLACK, what="the healthy sources, at the end")
