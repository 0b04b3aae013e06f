"""A Workload edited, deleted and recreated under the same name while its collector is mid-poll (one source hangs
on a server that never answers, the other reads a run that keeps growing): no task of the old collector survives,
nothing is written for the old UID after its deletion, and the gauges show the new Workload only, consistent with
its stored points.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from faults import FlakyServer, LiveWriter, ServedRun, TensorBoardFiles
from kube import (
    Cluster,
    Operator,
    compare_points,
    db_points,
    db_scalar,
    eventually,
    series,
    show,
)

WAIT = 20.0


def _tasks_of(loop: asyncio.AbstractEventLoop, name: str) -> list[str]:
    """Names of the live tasks of the Workload's collector(s) on the operator's loop (read from another thread)."""
    for _ in range(10):
        try:
            return sorted(t.get_name() for t in asyncio.all_tasks(loop)
                          if t.get_name().startswith(f"{name}/") and not t.done())
        except RuntimeError:  # the set changed while we read it
            continue
    raise AssertionError("could not list the operator's tasks")


async def test_edit_delete_recreate_mid_poll(cluster: Cluster, operator: Operator, database_url: str,
                                            tmp_path: Path) -> None:
    tb = TensorBoardFiles(tmp_path, "files")
    tb.grow_to(50)
    slow = await FlakyServer(ServedRun.make(10)).__aenter__()
    await slow.set_mode("hang")  # every poll of the url source stays in flight until the collector stops
    writer = LiveWriter(tb.grow_to, lambda: tb.last_step, rate=40).start()
    try:
        spec = {"sources": [tb.spec_item(), {"name": "slow", "tensorboard": {"url": slow.url, "timeout": "60s"}}],
                "pollInterval": "200ms", "prometheus": {"metrics": ["train/*"]}}
        old_uid = (await cluster.create("wl", spec))["metadata"]["uid"]

        async def mid_poll(uid: str, at_least: int) -> None:
            assert slow.requests.get("hang", 0) >= at_least, f"{slow.requests}"
            assert len(await db_points(database_url, uid)) > 0, "nothing stored yet"
        await eventually(lambda: mid_poll(old_uid, 1), within=WAIT, what="the first poll to hang")
        first = operator.runtime.entries[old_uid].collector
        assert first is not None and first._health_task is not None
        loop = first._health_task.get_loop()
        assert _tasks_of(loop, "wl") == ["wl/files", "wl/health", "wl/slow"]

        # 1. edited mid-poll: the collector restarts with the new spec, the hanging poll is abandoned
        hung = slow.requests["hang"]
        await cluster.patch_spec("wl", {"pollInterval": "300ms"})

        async def respecced() -> None:
            obj = await cluster.workload("wl")
            assert obj.get("status", {}).get("observedGeneration") == 2, show(obj)
        await eventually(respecced, within=WAIT, what="the edit to be applied")
        await eventually(lambda: mid_poll(old_uid, hung + 1), within=WAIT, what="a new poll to hang after the edit")
        assert _tasks_of(loop, "wl") == ["wl/files", "wl/health", "wl/slow"]

        # 2. deleted mid-poll
        await cluster.delete("wl")

        async def gone() -> None:
            assert await cluster.get("wl") is None, "still there"
        await eventually(gone, within=WAIT, what="the Workload to be deleted")
        old_points = len(await db_points(database_url, old_uid))
        assert _tasks_of(loop, "wl") == [], "a task of the deleted Workload's collector is still running"
        assert not first.running

        # 3. recreated at once under the same name, while training goes on
        hung = slow.requests["hang"]
        new_uid = (await cluster.create("wl", spec))["metadata"]["uid"]
        assert new_uid != old_uid
        await eventually(lambda: mid_poll(new_uid, hung + 1), within=WAIT, what="the new Workload's poll to hang")
        last = writer.stop()
        await eventually(lambda: _equal(database_url, new_uid, tb), within=WAIT,
                         what="the new Workload to store the whole run")
        await asyncio.sleep(1.0)  # a few more poll intervals, in which a leaked old collector would write

        # nothing written for the old UID after its deletion: same points, cursors not touched since deleted_at
        assert len(await db_points(database_url, old_uid)) == old_points
        late = await db_scalar(database_url, "SELECT count(*) FROM cursors c JOIN workloads w ON w.uid = "
                               "c.workload_uid WHERE w.uid = $1 AND c.updated_at > w.deleted_at", old_uid)
        assert late == 0
        assert await db_scalar(database_url, "SELECT deleted_at IS NOT NULL FROM workloads WHERE uid = $1", old_uid)
        assert _tasks_of(loop, "wl") == ["wl/files", "wl/health", "wl/slow"]  # the new collector's, once
        assert list(operator.runtime.entries) == [new_uid]

        # gauges: one Workload "wl", the new one, its counters equal to what the new UID stored
        stored = await db_points(database_url, new_uid)

        async def gauges() -> None:
            scraped = await operator.scrape()
            assert series(scraped, "trainscope_source_points_ingested_total", workload="wl", source="files") == \
                [float(len(stored))], scraped.get("trainscope_source_points_ingested_total")
            assert series(scraped, "trainscope_workload_step", workload="wl") == [float(last)]
            values = [lbl for lbl, _ in scraped["trainscope_metric_value"] if lbl["workload"] == "wl"]
            assert sorted(v["metric"] for v in values) == ["train/loss", "train/lr"], values
            want = tb.truth()
            assert series(scraped, "trainscope_metric_value", workload="wl", metric="train/lr") == \
                [want[("run-1", "train/lr", last)].value]
        await eventually(gauges, within=WAIT, what="the gauges to show the new Workload")
    finally:
        writer.stop()
        await slow.__aexit__(None, None, None)
        tb.close()


async def _equal(database_url: str, uid: str, tb: TensorBoardFiles) -> Any:
    compare_points(await db_points(database_url, uid), tb.truth(), tb.name)
