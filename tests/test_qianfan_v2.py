"""Qianfan V2 (DescribeFineTuningTask): the qianfan SDK's own request builder (FineTune.V2.task_detail, signed by
the SDK) and our source send the same request to the fake, both accepted by Baidu's signer; the SDK reads the fake's
answer; runStatus/runProgress map to state, progress and points; ids and versions are checked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import jsonschema
import pytest

from trainscope.collector.points import RunState
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.qianfan import METRIC_PROGRESS, QianfanSource

from fakes.qianfan_server import AK, SK, V2_TASK, FakeQianfan, Secrets, serve, task


@pytest.fixture
def fake() -> Iterator[FakeQianfan]:
    server = FakeQianfan(keys={AK: SK})
    with serve(server):
        yield server


def source(fake: FakeQianfan, **config: object) -> QianfanSource:
    spec = {"taskId": V2_TASK, "endpoint": fake.url, "credentialsSecretRef": {"name": "qianfan"}, **config}
    spec = {k: v for k, v in spec.items() if v is not None}
    jsonschema.validate(spec, QianfanSource.schema)
    return QianfanSource(spec, SourceContext(resolve_secret=Secrets()))


async def test_the_sdk_v2_request_builder_sends_what_we_send(fake: FakeQianfan,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    fake.set_task(V2_TASK, [task("Running", "45%")])
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", fake.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", AK)  # as keyword arguments the SDK would also put them in the body
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SK)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)  # the SDK reads its settings once
    resp = FineTune.V2.task_detail(task_id=V2_TASK, retry_count=1)
    assert resp["result"]["runStatus"] == "Running" and resp["result"]["runProgress"] == "45%"
    src = source(fake)
    batch = await src.poll(None)
    await src.aclose()
    sdk, ours = fake.seen[0], fake.seen[1]
    assert sdk.verdict == ours.verdict == "ok"
    for seen in (sdk, ours):
        split = urlsplit(seen.path)
        assert (seen.method, split.path, dict(parse_qsl(split.query))) == \
            ("POST", "/v2/finetuning", {"Action": "DescribeFineTuningTask"})
        assert json.loads(seen.body) == {"taskId": V2_TASK}
        assert seen.headers["content-type"] == "application/json"

    def signed(seen: object) -> set[str]:
        return set(seen.headers["authorization"].split("/")[4].split(";"))  # type: ignore[attr-defined]
    assert signed(ours) <= signed(sdk) and {"host", "x-bce-date"} <= signed(ours)
    assert batch.state is RunState.RUNNING and batch.progress == 0.45


async def test_status_and_progress_over_a_task_life(fake: FakeQianfan) -> None:
    fake.set_task(V2_TASK, [task("Waiting", None), task("Running", "45%"), task("Running", "45%"),
                            task("Running", "80%"), task("Done")])
    src = source(fake)
    cursor = None
    seen = []
    for _ in range(5):
        batch = await src.poll(cursor)
        cursor = json.loads(json.dumps(batch.cursor))
        seen.append((batch.state, batch.progress, [(p[0], p[3]) for p in batch.points]))
    await src.aclose()
    assert seen == [
        (RunState.RUNNING, None, []),
        (RunState.RUNNING, 0.45, [(METRIC_PROGRESS, 45.0)]),
        (RunState.RUNNING, 0.45, []),  # unchanged answer: nothing written
        (RunState.RUNNING, 0.8, [(METRIC_PROGRESS, 80.0)]),
        (RunState.FINISHED, 1.0, [(METRIC_PROGRESS, 100.0)]),
    ]
    assert batch.runs[V2_TASK]["state"] == "finished" and batch.runs[V2_TASK]["jobName"] == "sft_llama"


@pytest.mark.parametrize(("status", "state", "note"), [("Stopped", RunState.FAILED, "stopped"),
                                                        ("Failed", RunState.FAILED, None),
                                                        ("Paused", RunState.UNKNOWN, "unknown runStatus")])
async def test_ended_and_unknown_statuses(fake: FakeQianfan, status: str, state: RunState, note: str | None) -> None:
    fake.set_task(V2_TASK, [task(status)])
    src = source(fake)
    batch = await src.poll(None)
    await src.aclose()
    assert batch.state is state
    assert (note is None and not batch.notes) or any(note in n for n in batch.notes if note)


async def test_unknown_task_and_wrong_ids(fake: FakeQianfan) -> None:
    src = source(fake, taskId="task-nope")
    with pytest.raises(SourceError) as e:
        await src.poll(None)
    await src.aclose()
    assert e.value.reason == "NotFound" and "task-nope" in str(e.value)
    ctx = SourceContext()
    with pytest.raises(SourceError, match="apiVersion: v1"):
        QianfanSource({"taskId": 7263}, ctx)  # an integer id without jobId is no V2 id
    with pytest.raises(SourceError, match="not both"):
        QianfanSource({"taskId": V2_TASK, "jobId": 3}, ctx)
    with pytest.raises(SourceError, match="must be integers"):
        QianfanSource({"taskId": V2_TASK, "apiVersion": "v1"}, ctx)
    assert QianfanSource({"taskId": 7263, "jobId": 4612}, ctx).version == "v1"  # V1 ids keep working
    assert QianfanSource({"taskId": V2_TASK}, ctx).version == "v2"


JOB_V2 = "job-hy5wdm6b9ewq"


async def test_the_sdk_v2_task_list_builder_sends_what_we_send(fake: FakeQianfan,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import qianfan.config
    from qianfan.resources.console.finetune import FineTune

    fake.add_job_task(JOB_V2, V2_TASK, "2024-01-30T09:41:54Z", [task("Running", "45%")])
    monkeypatch.setenv("QIANFAN_CONSOLE_API_BASE_URL", fake.url)
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", AK)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SK)
    monkeypatch.setattr(qianfan.config, "_GLOBAL_CONFIG", None)
    resp = FineTune.V2.task_list(job_id=JOB_V2, max_keys=100, retry_count=1)
    assert [t["taskId"] for t in resp["result"]["taskList"]] == [V2_TASK]
    assert resp["result"]["pageInfo"]["isTruncated"] is False
    src = source(fake, taskId=None, jobId=JOB_V2)
    batch = await src.poll(None)
    await src.aclose()
    sdk, ours, detail = fake.seen[0], fake.seen[1], fake.seen[2]
    assert sdk.verdict == ours.verdict == detail.verdict == "ok"
    for seen in (sdk, ours):
        split = urlsplit(seen.path)
        assert (seen.method, split.path, dict(parse_qsl(split.query))) == \
            ("POST", "/v2/finetuning", {"Action": "DescribeFineTuningTasks"})
        assert json.loads(seen.body) == {"jobId": JOB_V2, "maxKeys": 100}
    assert dict(parse_qsl(urlsplit(detail.path).query)) == {"Action": "DescribeFineTuningTask"}
    assert json.loads(detail.body) == {"taskId": V2_TASK}
    assert batch.state is RunState.RUNNING and batch.progress == 0.45 and list(batch.runs) == [V2_TASK]


async def test_a_job_is_followed_to_its_newest_task_across_pages(fake: FakeQianfan) -> None:
    # 150 finished tasks (two list pages of 100), then a new run of the job starts
    for i in range(150):
        fake.add_job_task(JOB_V2, f"task-old{i:03d}", f"2024-01-{1 + i // 10:02d}T{i % 10:02d}:00:00Z",
                          [task("Done", taskId=f"task-old{i:03d}")])
    src = source(fake, taskId=None, jobId=JOB_V2)
    batch = await src.poll(None)
    cursor = json.loads(json.dumps(batch.cursor))
    assert (batch.state, batch.progress, list(batch.runs)) == (RunState.FINISHED, 1.0, ["task-old149"])
    assert [json.loads(s.body).get("marker") for s in fake.seen] == [None, "task-old100", None]  # 2 pages + detail
    assert batch.info["followedJobId"] == JOB_V2 and cursor["task"] == "task-old149"
    again = await src.poll(cursor)
    assert not again.points and not again.runs  # unchanged: nothing written

    fake.add_job_task(JOB_V2, "task-new", "2024-02-01T08:00:00Z",
                      [task("Waiting", None, taskId="task-new"), task("Running", "30%", taskId="task-new")])
    first = await src.poll(json.loads(json.dumps(again.cursor)))
    second = await src.poll(json.loads(json.dumps(first.cursor)))
    await src.aclose()
    assert (first.state, first.progress, list(first.runs), first.points) == (RunState.RUNNING, None, ["task-new"], [])
    assert (second.progress, [(p.metric, p.value, p.run) for p in second.points]) == \
        (0.3, [(METRIC_PROGRESS, 30.0, "task-new")])
    assert second.cursor["task"] == "task-new" and second.runs["task-new"]["state"] == "running"


async def test_a_job_without_tasks_and_an_unknown_job(fake: FakeQianfan) -> None:
    fake.job_tasks["job-empty"] = []
    src = source(fake, taskId=None, jobId="job-empty")
    batch = await src.poll(None)
    assert batch.state is None and batch.notes == ["job job-empty has no task yet"] and not batch.points
    src = source(fake, taskId=None, jobId="job-nope")
    with pytest.raises(SourceError) as e:
        await src.poll(None)
    await src.aclose()
    assert e.value.reason == "NotFound" and "jobId=job-nope" in str(e.value) and "no such job" in str(e.value)
    with pytest.raises(SourceError, match="not both"):
        QianfanSource({"taskId": V2_TASK, "jobId": JOB_V2}, SourceContext())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"jobId": "job-x", "taskId": "nope"}, QianfanSource.schema)
