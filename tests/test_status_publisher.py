"""The status publisher (operator/publisher.py) against the KMock emulator: one task patches every Workload's
`/status` with only the fields that changed, with a bounded number of patches in flight, and the emulator's
`/status` subresource changes the status alone, as the API server does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest

from kube import Cluster, Emulator, Operator, TBRun, eventually, operator_config, show, source_status

WAIT = 30.0

# Keys of status that change only with new data: a Workload whose run stopped growing must not be sent them again.
DATA_KEYS = {"step", "progress", "latest", "primaryMetric", "lossText", "lastPointTime", "throughput", "totalSteps"}


class RecordingEmulator(Emulator):
    """Records each /status patch body, and how many were in flight at once (each held `delay` seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_bodies: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0
        self.in_flight = 0
        self.most_in_flight = 0

    async def _handle(self, request: kmock.Request) -> Any:
        if request.subresource == "status" and request.action == kmock.action.UPDATE:
            self.status_bodies.append((str(request.name), dict(request.data)))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                await asyncio.sleep(self.delay)
                return await super()._handle(request)
            finally:
                self.in_flight -= 1
        return await super()._handle(request)


class RecordingCluster(Cluster):
    def __init__(self) -> None:
        self.emu = RecordingEmulator()
        self._server = kmock.Server(self.emu)


@pytest.fixture
async def rec_cluster() -> AsyncIterator[RecordingCluster]:
    async with RecordingCluster() as c:
        yield c


def tb_spec(logdir: Path) -> dict[str, Any]:
    return {"sources": [{"name": "tb", "tensorboard": {"logDir": str(logdir)}}], "pollInterval": "200ms",
            "totalSteps": 1000, "primaryMetric": "train/loss"}


async def test_a_status_patch_changes_the_status_alone(cluster: Cluster) -> None:
    """PATCH .../status with spec, labels and status: only status changes, generation stays, resourceVersion moves."""
    created = await cluster.create("wl", {"sources": [{"tensorboard": {"logDir": "/nowhere"}}]})
    rsp = await cluster.emu.patch(cluster.path("wl") + "/status",
                                  json={"spec": {"pollInterval": "1h"}, "metadata": {"labels": {"a": "b"}},
                                        "status": {"phase": "Collecting", "step": 3}},
                                  headers={"Content-Type": "application/merge-patch+json"})
    assert rsp.status == 200, await rsp.text()
    obj = await cluster.workload("wl")
    assert obj["spec"] == created["spec"]
    assert "labels" not in obj["metadata"]
    assert obj["status"] == {"phase": "Collecting", "step": 3}
    assert obj["metadata"]["generation"] == created["metadata"]["generation"] == 1
    assert obj["metadata"]["resourceVersion"] != created["metadata"]["resourceVersion"]


async def test_patches_carry_only_what_changed(rec_cluster: RecordingCluster, database_url: str,
                                               tmp_path: Path) -> None:
    """Once a run stops growing, its Workload's status patches no longer carry the step, latest values or
    progress (they did not change), and the status the API server holds is still the whole status."""
    run = TBRun(tmp_path / "run")
    op = await Operator(operator_config(database_url)).start()
    try:
        run.write(range(1, 101))
        await rec_cluster.create("wl", tb_spec(run.logdir))

        async def settled() -> dict[str, Any]:
            obj = await rec_cluster.workload("wl")
            st = obj.get("status", {})
            assert st.get("step") == 100 and st.get("progress") == 10.0, show(obj)
            assert source_status(obj, "tb").get("points") == 200, show(obj)
            return obj
        await eventually(settled, within=WAIT, what="wl to show step 100")
        seen = len(rec_cluster.emu.status_bodies)
        await eventually(lambda: _more_patches(rec_cluster.emu, seen, 3), within=WAIT,
                         what="three more status patches (the lag in status.sources moves every second)")
        later = [body["status"] for name, body in rec_cluster.emu.status_bodies[seen:]]
        assert all(not (DATA_KEYS & set(st)) for st in later), later
        assert all(set(body) == {"status"} for _, body in rec_cluster.emu.status_bodies), "only status is sent"
        obj = await rec_cluster.workload("wl")
        st = obj["status"]
        assert st["step"] == 100 and st["phase"] == "Collecting" and st["primaryMetric"]["step"] == 100
        assert op.memo.publisher.patches == len(rec_cluster.emu.status_bodies)
        assert op.memo.publisher.errors == 0
    finally:
        await op.stop()
        run.close()


async def _more_patches(emu: RecordingEmulator, seen: int, more: int) -> None:
    assert len(emu.status_bodies) >= seen + more, f"{len(emu.status_bodies) - seen} patches since"


async def test_patches_in_flight_are_bounded_and_every_workload_gets_its_status(
        rec_cluster: RecordingCluster, database_url: str, tmp_path: Path) -> None:
    """With a slow API server (each status patch held 0.3 s) and 12 Workloads, never more than 4 status patches
    are in flight at once, and every Workload still reaches its status."""
    rec_cluster.emu.delay = 0.3
    runs = [TBRun(tmp_path / f"run{i}") for i in range(12)]
    op = await Operator(operator_config(database_url)).start()
    try:
        for i, run in enumerate(runs):
            run.write(range(1, 11 + i))
            await rec_cluster.create(f"wl{i}", tb_spec(run.logdir))

        async def all_stepped() -> None:
            for i in range(12):
                obj = await rec_cluster.workload(f"wl{i}")
                assert obj.get("status", {}).get("step") == 10 + i, show(obj)
        await eventually(all_stepped, within=WAIT * 2, what="every Workload to show its last step")
        assert 1 <= rec_cluster.emu.most_in_flight <= 4, rec_cluster.emu.most_in_flight
    finally:
        await op.stop()
        for run in runs:
            run.close()


def test_a_round_stretches_past_the_interval_only_beyond_the_rate_limit() -> None:
    """interval 5 s, at most 100 Workloads a second: 500 Workloads are each looked at every 5 s, 1,000 every
    10 s; without a limit always every 5 s."""
    from trainscope.operator.publisher import StatusPublisher

    limited = StatusPublisher(None, None, 5.0, max_rate=100.0)  # type: ignore[arg-type]
    assert [limited.round_seconds(n) for n in (0, 10, 500, 1000, 5000)] == [5.0, 5.0, 5.0, 10.0, 50.0]
    unlimited = StatusPublisher(None, None, 5.0)  # type: ignore[arg-type]
    assert unlimited.round_seconds(5000) == 5.0
