"""Workloads follow their training jobs: each supported kind through Running -> Succeeded and Running -> Failed
while its pod prints real training-log text, against the KMock emulator, the real operator and a real PostgreSQL.
Annotated jobs get Workloads (created, updated, deleted with the job); absent kinds are skipped; restarts change
nothing. Waits are deadline-based; nothing is asserted on timing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jobkinds as jk
import pytest

from trainscope.collector.sources.base import SourceContext
from trainscope.collector.sources.logs import LogsSource

from kube import Cluster, Operator, condition, db_points, eventually, operator_config, series, show, source_status

WAIT = 20.0
LOGTEXTS = Path(__file__).parent / "logtexts"
# Real output where it was recorded (tests/data/logruns: HF Trainer 5.x and 4.x runs on CPU, as printed to a pipe);
# hand-written texts for the frameworks that need GPUs (Megatron) or print nothing per step by default.
HF5 = Path(__file__).parent / "data" / "logruns" / "hf5_pipe" / "console.log"
HF4 = Path(__file__).parent / "data" / "logruns" / "hf4_pipe" / "console.log"
TEXTS = {"Job": HF5, "PyTorchJob": LOGTEXTS / "megatron_gpt.log", "MPIJob": LOGTEXTS / "deepspeed.log",
         "TrainJob": HF4, "JobSet": LOGTEXTS / "megatron_gpt.log", "RayJob": LOGTEXTS / "keyvalue.log"}


def job_operator(database_url: str, **kw: Any) -> Operator:
    config = operator_config(database_url)
    config.job_interval = 0.2
    for key, value in kw.items():
        setattr(config, key, value)
    return Operator(config)


@pytest.fixture
async def follower(cluster: Cluster, database_url: str) -> AsyncIterator[Operator]:
    op = await job_operator(database_url).start()
    try:
        yield op
    finally:
        await op.stop()


async def expected_keys(text: str, tmp_path: Path) -> set[tuple[str, int]]:
    """(metric, step) of everything the text holds, read from a file by the logs source (path mode): the pods
    must yield the same, the tail printed just before the job ended included."""
    file = tmp_path / "expected.log"
    file.write_text(text)
    source = LogsSource({"path": str(file), "format": "auto"}, SourceContext(base_dir=tmp_path))
    keys: set[tuple[str, int]] = set()
    cursor = None
    while True:
        batch = await source.poll(cursor)
        keys |= {(p[0], p[1]) for p in batch.points}
        cursor = batch.cursor
        if not batch.more:
            break
    await source.aclose()
    assert keys, "the log text yields no points"
    return keys


def spec_for(k: jk.Kind, name: str, **extra: Any) -> dict[str, Any]:
    return {"jobRef": {"apiVersion": k.api_version, "kind": k.kind, "name": name}, "pollInterval": "200ms",
            "sources": [{"name": "log", "logs": {"pods": {}, "format": "auto"}}], **extra}


async def wait_event(cluster: Cluster, name: str, reason: str) -> None:
    """Until the Workload has an event of this reason (kopf posts events from a queue, after the status patch)."""
    async def posted() -> None:
        assert cluster.events(name, reason), [e.get("reason") for e in cluster.events(name)]
    await eventually(posted, within=WAIT, what=f"a {reason} event on {name}")


async def wait_for(cluster: Cluster, name: str, check: Any, what: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        obj = await cluster.workload(name)
        assert check(obj), f"{what}:\n{show(obj)}"
        return obj
    return await eventually(probe, within=WAIT, what=f"{name}: {what}")


@pytest.mark.parametrize("end", ["succeeded", "failed"])
@pytest.mark.parametrize("k", jk.ALL, ids=lambda k: k.kind)
async def test_each_kind_running_to_its_end(cluster: Cluster, follower: Operator, database_url: str,
                                            tmp_path: Path, k: jk.Kind, end: str) -> None:
    jk.install_crds(cluster, k)
    text = TEXTS[k.kind].read_bytes().decode()
    lines = text.splitlines(keepends=True)
    head, tail = "".join(lines[: len(lines) // 2]), "".join(lines[len(lines) // 2:])
    await jk.create_job(cluster, k, "train")
    await jk.add_job_pod(cluster, k, "train", "train-0")
    await cluster.add_pod("other-0", {k.pod_labels: "another-job"})  # another job's pod: never read
    cluster.write_log("other-0", "{'loss': 9.0, 'epoch': 0.1}\n", at=time.time() - 50)
    cluster.write_log("train-0", head, at=time.time() - 100)
    uid = (await cluster.create("wl", spec_for(k, "train")))["metadata"]["uid"]

    obj = await wait_for(cluster, "wl", lambda o: o.get("status", {}).get("phase") == "Collecting"
                         and condition(o, "Job")["reason"] == "JobRunning", "Collecting while the job runs")
    assert "train" in condition(obj, "Job")["message"]

    # The last lines are printed just before the job ends: the final poll after the end must read them.
    cluster.write_log("train-0", tail, at=time.time() - 10)
    await jk.set_status(cluster, k, "train", jk.succeeded(k) if end == "succeeded" else jk.failed(k))
    want_phase = "Succeeded" if end == "succeeded" else "Failed"
    obj = await wait_for(cluster, "wl", lambda o: o.get("status", {}).get("phase") == want_phase
                         and source_status(o, "log").get("state") == "Finished", f"phase {want_phase}")
    st = obj["status"]
    job = condition(obj, "Job")
    assert job["status"] == "True" and job["reason"] == f"Job{want_phase}", show(obj)
    if end == "failed":
        assert jk.FAILURE in job["message"], show(obj)  # the job's own message, for the user
    assert condition(obj, "Stalled")["status"] == "False", show(obj)
    assert condition(obj, "Ready")["reason"] == "JobEnded", show(obj)
    assert "throughput" not in st and st.get("etaSeconds", 0) == 0, show(obj)
    assert st["runState"] == ("finished" if end == "succeeded" else "failed")

    # Everything the pod printed is stored, the tail included; nothing of the other job's pod.
    want = await expected_keys(text, tmp_path)
    stored = await db_points(database_url, uid)
    assert {(m, s) for (_src, run, m, s) in stored} == want and {run for (_s, run, _m, _st) in stored} == {"train-0"}

    # Events on the Workload for the job's transitions; gauges show the final phase.
    await wait_event(cluster, "wl", f"Job{want_phase}")
    await wait_event(cluster, "wl", "JobRunning")
    scraped = await follower.scrape()
    assert series(scraped, "trainscope_workload_phase", workload="wl", phase=want_phase) == [1.0]
    assert series(scraped, "trainscope_workload_condition", workload="wl", condition="Stalled") == [0.0]


async def test_missing_job_then_created_then_deleted(cluster: Cluster, follower: Operator) -> None:
    await cluster.create("wl", spec_for(jk.JOB, "later"))
    obj = await wait_for(cluster, "wl", lambda o: condition(o, "Job")["reason"] == "JobNotFound", "JobNotFound")
    assert obj["status"]["phase"] == "Pending" and condition(obj, "Job")["status"] == "False"
    await wait_event(cluster, "wl", "JobNotFound")
    await jk.create_job(cluster, jk.JOB, "later")
    await jk.add_job_pod(cluster, jk.JOB, "later", "later-0")
    lines = HF5.read_bytes().decode().splitlines(keepends=True)  # the run's first half: deleted mid-run, not finished
    cluster.write_log("later-0", "".join(lines[: len(lines) // 2]), at=time.time() - 60)
    await wait_for(cluster, "wl", lambda o: condition(o, "Job")["reason"] == "JobRunning"
                   and o.get("status", {}).get("step"), "the job found and its pod read")
    await jk.delete_job(cluster, jk.JOB, "later")  # the user's own Workload (no owner reference) is kept
    obj = await wait_for(cluster, "wl", lambda o: condition(o, "Job")["reason"] == "JobDeleted", "JobDeleted")
    assert obj["status"]["phase"] == "Failed" and condition(obj, "Stalled")["status"] == "False", show(obj)
    await wait_event(cluster, "wl", "JobDeleted")


async def test_unsupported_kind_and_generic_without_selector_are_refused(cluster: Cluster,
                                                                         follower: Operator) -> None:
    await cluster.create("deploy", {**spec_for(jk.JOB, "x"), "jobRef": {"apiVersion": "apps/v1",
                                                                         "kind": "Deployment", "name": "x"}})
    await cluster.create("badver", {**spec_for(jk.JOB, "x"), "jobRef": {"apiVersion": "kubeflow.org/v2",
                                                                         "kind": "PyTorchJob", "name": "x"}})
    await cluster.create("generic", {**spec_for(jk.JOB, "x"), "jobRef": {"apiVersion": "example.com/v1",
                                                                          "kind": "FineTune", "name": "x"}})
    for name, field in (("deploy", "spec.jobRef.kind"), ("badver", "spec.jobRef.apiVersion"),
                        ("generic", "spec.selector")):
        obj = await wait_for(cluster, name, lambda o: condition(o, "Ready")["reason"] == "InvalidSpec", "InvalidSpec")
        assert field in condition(obj, "Ready")["message"], show(obj)
        await wait_event(cluster, name, "InvalidSpec")
        assert any(field in e["message"] for e in cluster.events(name, "InvalidSpec"))


async def test_generic_kind_by_conditions_and_absent_crd(cluster: Cluster, follower: Operator,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="trainscope.operator.follow")
    generic = jk.Kind("example.com/v1", "FineTune", "finetunes", "example.com/finetune")
    jk.install_crds(cluster, generic)
    await jk.create_job(cluster, generic, "ft", status={"conditions": [{"type": "Running", "status": "True"}]})
    await jk.add_job_pod(cluster, generic, "ft", "ft-0")
    cluster.write_log("ft-0", (LOGTEXTS / "keyvalue.log").read_text(), at=time.time() - 60)
    spec = spec_for(generic, "ft", selector={"matchLabels": {"example.com/finetune": "ft"}})
    await cluster.create("ft", spec)
    await cluster.create("absent", spec_for(jk.PYTORCHJOB, "nowhere"))  # no PyTorchJob CRD in this cluster
    await wait_for(cluster, "ft", lambda o: o.get("status", {}).get("phase") == "Collecting", "Collecting")
    await jk.set_status(cluster, generic, "ft", {"conditions": [{"type": "Succeeded", "status": "True",
                                                                 "reason": "Done", "message": "finished"}]})
    await wait_for(cluster, "ft", lambda o: o.get("status", {}).get("phase") == "Succeeded", "Succeeded")
    obj = await wait_for(cluster, "absent", lambda o: condition(o, "Job")["reason"] == "JobKindNotServed",
                         "JobKindNotServed")
    assert obj["status"]["phase"] == "Pending"
    lines = [r for r in caplog.records if "PyTorchJob skipped" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]


async def test_two_workloads_on_one_job_and_gauge_retention(cluster: Cluster, follower: Operator) -> None:
    await jk.create_job(cluster, jk.JOB, "shared")
    await jk.add_job_pod(cluster, jk.JOB, "shared", "shared-0")
    cluster.write_log("shared-0", (LOGTEXTS / "megatron_gpt.log").read_text(), at=time.time() - 60)
    await cluster.create("a", spec_for(jk.JOB, "shared"))
    await cluster.create("b", spec_for(jk.JOB, "shared", retainGaugesFor="1s"))
    for name in ("a", "b"):
        await wait_for(cluster, name, lambda o: o.get("status", {}).get("phase") == "Collecting", "Collecting")
    await jk.set_status(cluster, jk.JOB, "shared", jk.succeeded(jk.JOB))
    steps = set()
    for name in ("a", "b"):
        obj = await wait_for(cluster, name, lambda o: o.get("status", {}).get("phase") == "Succeeded", "Succeeded")
        steps.add(obj["status"]["step"])
    assert len(steps) == 1

    async def b_gone() -> None:  # b's gauges go after 1s; a keeps its final values (10m by default)
        scraped = await follower.scrape()
        assert series(scraped, "trainscope_workload_phase", workload="b") == [], "b still exported"
        assert series(scraped, "trainscope_workload_phase", workload="a", phase="Succeeded") == [1.0]
    await eventually(b_gone, within=WAIT, what="b's gauges to disappear")
    assert (await cluster.workload("b"))["status"]["phase"] == "Succeeded"  # the object keeps its final status


async def test_restart_mid_run_changes_nothing(cluster: Cluster, database_url: str, tmp_path: Path) -> None:
    jk.install_crds(cluster, jk.PYTORCHJOB)
    text = (LOGTEXTS / "megatron_gpt.log").read_text()
    lines = text.splitlines(keepends=True)
    await jk.create_job(cluster, jk.PYTORCHJOB, "gpt", annotations={"trainscope.io/collect": "true"})
    await jk.add_job_pod(cluster, jk.PYTORCHJOB, "gpt", "gpt-master-0")
    cluster.write_log("gpt-master-0", "".join(lines[:20]), at=time.time() - 100)
    op = await job_operator(database_url, discover_jobs=True).start()
    try:
        obj = await wait_for(cluster, "gpt-pytorchjob", lambda o: o.get("status", {}).get("phase") == "Collecting",
                             "Collecting")
        uid = obj["metadata"]["uid"]
    finally:
        await op.stop()
    cluster.write_log("gpt-master-0", "".join(lines[20:]), at=time.time() - 50)
    op = await job_operator(database_url, discover_jobs=True).start()
    try:
        before = obj["status"]["step"]
        await wait_for(cluster, "gpt-pytorchjob", lambda o: o.get("status", {}).get("step", 0) > before,
                       "progress after the restart")
        await jk.set_status(cluster, jk.PYTORCHJOB, "gpt", jk.succeeded(jk.PYTORCHJOB))
        await wait_for(cluster, "gpt-pytorchjob", lambda o: o.get("status", {}).get("phase") == "Succeeded",
                       "Succeeded")
        listing = await (await cluster.emu.get(cluster.path())).json()
        assert [w["metadata"]["name"] for w in listing["items"]] == ["gpt-pytorchjob"]  # never a duplicate
        stored = await db_points(database_url, uid)
        assert {(m, s) for (_src, _run, m, s) in stored} == await expected_keys(text, tmp_path)
    finally:
        await op.stop()


async def test_annotated_jobs_get_workloads(cluster: Cluster, database_url: str) -> None:
    jk.install_crds(cluster, jk.JOBSET)  # the other CRDs are absent: skipped, the operator runs on
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "llm", "namespace": "default"},
          "data": {"spec.yaml": "pollInterval: 200ms\ntotalSteps: 1000\n"
                                "sources:\n- name: log\n  logs: {pods: {}, format: megatron}\n"}}
    assert (await cluster.emu.post("/api/v1/namespaces/default/configmaps", json=cm)).status in (200, 201)
    await jk.create_job(cluster, jk.JOB, "plain", annotations={"trainscope.io/collect": "true"})
    await jk.create_job(cluster, jk.JOBSET, "tmpl", annotations={"trainscope.io/collect": "true",
                                                                "trainscope.io/template": "llm"})
    await jk.create_job(cluster, jk.JOB, "bad", annotations={"trainscope.io/collect": "true",
                                                            "trainscope.io/logs-format": "fancy"})
    await jk.create_job(cluster, jk.JOB, "off")  # no annotation: nothing
    op = await job_operator(database_url, discover_jobs=True).start()
    try:
        plain = await wait_for(cluster, "plain-job", lambda o: "status" in o, "a status")
        assert plain["spec"]["sources"] == [{"logs": {"pods": {}, "format": "auto"}}]
        assert plain["spec"]["jobRef"] == {"apiVersion": "batch/v1", "kind": "Job", "name": "plain"}
        assert [(r["kind"], r["name"]) for r in plain["metadata"]["ownerReferences"]] == [("Job", "plain")]
        tmpl = await wait_for(cluster, "tmpl-jobset", lambda o: "status" in o, "a status")
        assert tmpl["spec"]["totalSteps"] == 1000 and tmpl["spec"]["sources"][0]["logs"]["format"] == "megatron"

        async def refused() -> None:
            events = cluster.events("bad", "InvalidAnnotation")
            assert events and "trainscope.io/logs-format" in events[0]["message"], events
            assert events[0]["involvedObject"]["kind"] == "Job"
        await eventually(refused, within=WAIT, what="an event on the job 'bad'")
        assert await cluster.get("bad-job") is None and await cluster.get("off-job") is None

        # Editing the annotations updates the Workload; fixing the bad one creates it; removing collect deletes.
        await jk.patch_job(cluster, jk.JOB, "plain", {"metadata": {"annotations": {
            "trainscope.io/logs-format": "hf"}}})
        await wait_for(cluster, "plain-job", lambda o: o["spec"]["sources"][-1]["logs"]["format"] == "hf",
                       "the edited format")
        await jk.patch_job(cluster, jk.JOB, "bad", {"metadata": {"annotations": {"trainscope.io/logs-format": "hf"}}})
        await wait_for(cluster, "bad-job", lambda o: "status" in o, "the fixed job's Workload")
        await jk.patch_job(cluster, jk.JOB, "bad", {"metadata": {"annotations": {"trainscope.io/collect": "false"}}})

        async def gone(name: str) -> None:
            assert await cluster.get(name) is None, f"{name} still exists"
        await eventually(lambda: gone("bad-job"), within=WAIT, what="bad-job deleted")
        # Deleting the job deletes its Workload (owner reference + the garbage collector).
        await jk.delete_job(cluster, jk.JOBSET, "tmpl")
        await eventually(lambda: gone("tmpl-jobset"), within=WAIT, what="tmpl-jobset deleted with its JobSet")
        await jk.delete_job(cluster, jk.JOB, "plain")
        await eventually(lambda: gone("plain-job"), within=WAIT, what="plain-job deleted with its Job")
    finally:
        await op.stop()


async def test_namespace_opt_in(cluster: Cluster, database_url: str) -> None:
    cluster.emu["get /api/v1/namespaces/team"] << {"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "team", "annotations": {"trainscope.io/collect": "true"}}}
    await jk.create_job(cluster, jk.JOB, "in", namespace="team")
    await jk.create_job(cluster, jk.JOB, "out", namespace="team", annotations={"trainscope.io/collect": "false"})
    await jk.create_job(cluster, jk.JOB, "elsewhere")  # namespace default: not annotated
    op = await job_operator(database_url, discover_jobs=True).start()
    try:
        async def made() -> None:
            obj = await cluster.get("in-job", "team")
            assert obj is not None and "status" in obj, "no Workload for team/in yet"
        await eventually(made, within=WAIT, what="the Workload of team/in")
        jobs = op.runtime.jobs
        assert jobs is not None
        passes = jobs.passes

        async def two_more_passes() -> None:
            assert jobs.passes >= passes + 2, jobs.passes
        await eventually(two_more_passes, within=WAIT, what="two more listings")
        assert await cluster.get("out-job", "team") is None and await cluster.get("elsewhere-job") is None
    finally:
        await op.stop()


async def test_suspended_job(cluster: Cluster, follower: Operator) -> None:
    jk.install_crds(cluster, jk.PYTORCHJOB)
    await jk.create_job(cluster, jk.PYTORCHJOB, "queued", status={"conditions": [
        {"type": "Created", "status": "True"},
        {"type": "Suspended", "status": "True", "reason": "JobSuspended",
         "message": "PyTorchJob queued is suspended."}]})
    await jk.add_job_pod(cluster, jk.PYTORCHJOB, "queued", "queued-master-0")
    await cluster.create("wl", spec_for(jk.PYTORCHJOB, "queued"))
    obj = await wait_for(cluster, "wl", lambda o: o.get("status", {}).get("phase") == "Suspended", "Suspended")
    assert condition(obj, "Job")["reason"] == "JobSuspended"
    await wait_for(cluster, "wl", lambda o: condition(o, "Stalled")["reason"] == "JobSuspended", "no Stalled")
    cluster.write_log("queued-master-0", (LOGTEXTS / "megatron_gpt.log").read_text(), at=time.time() - 60)
    await jk.set_status(cluster, jk.PYTORCHJOB, "queued", jk.running(jk.PYTORCHJOB))  # admitted by the queue
    await wait_for(cluster, "wl", lambda o: o.get("status", {}).get("phase") == "Collecting", "Collecting")
