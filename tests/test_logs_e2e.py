"""The logs source end to end: kopf operator + KMock serving a training pod's Megatron log + real PostgreSQL.

The `logs` kind is registered for these tests only (the registry is a plain dict that parse_spec and the
Collector read at call time); once it is in collector/sources/__init__.py the fixture changes nothing.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from kube import Cluster, Operator, condition, db_points, eventually, show, six_digits, source_status

WAIT = 20.0
T0 = 1_714_564_800.0


def lm_loss(it: int) -> float:
    return float(f"{8.0 / math.sqrt(it):.6E}")


def megatron(first: int, last: int) -> str:
    return "".join(f" [2024-05-01 12:00:00] iteration {it:8d}/{1000:8d} | consumed samples: {it * 512:12d} | "
                   f"elapsed time per iteration (ms): 812.4 | learning rate: {2e-4:.6E} | global batch size:   512 |"
                   f" lm loss: {lm_loss(it):.6E} | loss scale: 1.0 | grad norm: 0.912 | number of skipped "
                   f"iterations:   0 | number of nan iterations:   0 |\n" for it in range(first, last + 1))


async def test_status_shows_step_loss_progress_and_total_steps_from_a_megatron_log(
        cluster: Cluster, operator: Operator, database_url: str) -> None:
    await cluster.add_pod("gpt-master-0", {"job": "gpt", "training.kubeflow.org/replica-index": "0"})
    cluster.write_log("gpt-master-0", "using world size: 64, data-parallel size: 8\ntraining ...\n", at=T0)
    cluster.write_log("gpt-master-0", megatron(1, 50), at=T0 + 1, spacing=0.8)
    spec = {"selector": {"matchLabels": {"job": "gpt"}}, "pollInterval": "200ms",
            "sources": [{"name": "log", "logs": {"pods": {"ranks": [0]}}}]}
    uid = (await cluster.create("gpt", spec))["metadata"]["uid"]

    async def at(step: int) -> dict[str, Any]:
        obj = await cluster.workload("gpt")
        st = obj.get("status", {})
        assert st.get("step") == step, f"want step {step}:\n{show(obj)}"
        assert st.get("totalSteps") == 1000 and st.get("progress") == round(step / 10, 1), show(obj)
        assert st.get("primaryMetric") == {"name": "lm loss", "value": six_digits(lm_loss(step)), "step": step}, \
            show(obj)
        return obj

    obj = await eventually(lambda: at(50), within=WAIT, what="step 50 from the log")
    assert condition(obj, "SourcesHealthy")["status"] == "True"
    src = source_status(obj, "log")
    assert src["kind"] == "logs" and src["state"] == "Healthy" and src["points"] == 50 * 9

    # the job keeps printing; the throughput comes from the kubelet's timestamps (0.8 s per iteration)
    cluster.write_log("gpt-master-0", megatron(51, 120), at=T0 + 1 + 50 * 0.8, spacing=0.8)
    obj = await eventually(lambda: at(120), within=WAIT, what="step 120 from the log")
    assert obj["status"]["throughput"] == pytest.approx(1.25, rel=0.01)
    stored = await db_points(database_url, uid)
    loss = {step: p.value for (source, run, metric, step), p in stored.items() if metric == "lm loss"}
    assert loss == {it: lm_loss(it) for it in range(1, 121)}
    assert {run for (_, run, _, _) in stored} == {"gpt-master-0"} and len(stored) == 120 * 9
