"""Qianfan source against the fake Qianfan server (real HTTP, every request's signature verified by Baidu's signer):
state and progress mapping, exactly-once on repeated polls, errors, credentials, and no key ever shown."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from test_crd import EXAMPLES, cluster_check, structural_problems

from trainscope.collector.points import Batch, RunState
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.qianfan import (
    METRIC_PROGRESS,
    METRIC_RUN_TIME,
    METRIC_TRAIN_TIME,
    QianfanSource,
)
from trainscope.collector.spec import parse_spec
from trainscope.operator.crd import build_crd, registry_schemas

from fakes.qianfan_server import (
    AK,
    JOB,
    JOB_DETAIL,
    LABEL,
    SK,
    START_TS,
    TASK,
    Error,
    FakeQianfan,
    Secrets,
    job,
    qianfan_error,
    serve,
)
from rawhttp import free_port
from schemachecks import assert_spec_error


@pytest.fixture
def fake() -> Iterator[FakeQianfan]:
    f = FakeQianfan(keys={AK: SK})
    with serve(f):
        yield f


@pytest.fixture
def no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QIANFAN_ACCESS_KEY", raising=False)
    monkeypatch.delenv("QIANFAN_SECRET_KEY", raising=False)


def source(url: str, secrets: Any = "default", **config: Any) -> QianfanSource:
    block = {"taskId": TASK, "jobId": JOB, "endpoint": url, "credentialsSecretRef": {"name": "qianfan"}, **config}
    resolver = Secrets() if secrets == "default" else secrets
    return QianfanSource(block, SourceContext(namespace="ml", resolve_secret=resolver))


def no_keys_in(*things: Any) -> None:
    """Neither key appears in any of `things` (batches, errors, sources), however they are printed."""
    for thing in things:
        if isinstance(thing, Batch):
            text = json.dumps([thing.points, thing.cursor, thing.runs, thing.info, thing.notes, thing.skipped],
                              default=str) + repr(thing)
        else:
            text = f"{thing!s} {thing!r} {getattr(thing, '__dict__', '')}"
        assert AK not in text and SK not in text, text


async def poll(src: QianfanSource, cursor: Any = None) -> Batch:
    batch = await src.poll(cursor)
    no_keys_in(batch, src)
    json.dumps(batch.cursor)
    json.dumps(batch.runs)
    return batch


async def failure(src: QianfanSource, cursor: Any = None) -> SourceError:
    with pytest.raises(SourceError) as err:
        await src.poll(cursor)
    no_keys_in(err.value, src)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no chained httpx request with headers
    return err.value


def by_metric(batch: Batch) -> dict[str, tuple[int, float, float, str]]:
    return {p.metric: (p.step, p.ts, p.value, p.run) for p in batch.points}


# ---- a job over time ----------------------------------------------------------------------------------------------

async def test_running_with_rising_progress_then_finish(fake: FakeQianfan, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG)
    fake.set_job(TASK, JOB, [
        job("RUNNING", 10, 100, 80),
        job("RUNNING", 10, 100, 80),  # the same answer again
        job("RUNNING", 50, 500, 450),
        job("FINISH", 99, 1000, 900, finish="2023-10-20 18:35:49", finish_key="finishtime"),  # the seed's spelling
    ])
    src = source(fake.url)
    try:
        first = await poll(src)
        assert first.state == RunState.RUNNING and first.progress == pytest.approx(0.10)
        assert by_metric(first) == {METRIC_PROGRESS: (100, START_TS + 100, 10.0, LABEL),
                                    METRIC_RUN_TIME: (100, START_TS + 100, 100.0, LABEL),
                                    METRIC_TRAIN_TIME: (100, START_TS + 100, 80.0, LABEL)}
        assert first.total_steps is None  # run-time seconds are not training steps (training_steps = False)
        assert first.eta_seconds == pytest.approx(900)  # 10% after 100 s: 900 s to go at that pace
        run = first.runs[LABEL]
        assert run["state"] == "running" and run["trainStatus"] == "RUNNING" and run["finishTime"] is None
        assert run["startTime"] == "2023-10-20T10:19:09Z" and run["displayName"] == "sdk_test_7"
        assert (run["trainMode"], run["peftType"], run["jobId"], run["taskId"]) == ("SFT", "ALL", JOB, TASK)
        assert run["vdlLink"].startswith("https://console.bce.baidu.com/qianfan/visualdl/")
        assert first.info["trainStatus"] == "RUNNING" and first.info["logId"]

        again = await poll(src, first.cursor)  # nothing changed: nothing to store, state still reported
        assert again.points == [] and again.runs == {} and again.cursor == first.cursor
        assert again.state == RunState.RUNNING and again.progress == pytest.approx(0.10)

        third = await poll(src, again.cursor)
        assert {m: v[:3] for m, v in by_metric(third).items()} == {
            METRIC_PROGRESS: (500, START_TS + 500, 50.0), METRIC_RUN_TIME: (500, START_TS + 500, 500.0),
            METRIC_TRAIN_TIME: (500, START_TS + 500, 450.0)}
        assert third.eta_seconds == pytest.approx(500) and third.progress == pytest.approx(0.5)

        done = await poll(src, third.cursor)
        assert done.state == RunState.FINISHED
        assert done.progress == 1.0 and done.eta_seconds is None  # finished is 100% even when Qianfan says 99
        assert by_metric(done)[METRIC_PROGRESS] == (1000, START_TS + 1000, 99.0, LABEL)  # the raw value is kept
        assert done.runs[LABEL]["finishTime"] == "2023-10-20T10:35:49Z" and done.runs[LABEL]["state"] == "finished"

        stays = await poll(src, done.cursor)  # the fake keeps answering FINISH
        assert stays.points == [] and stays.state == RunState.FINISHED
    finally:
        await src.aclose()
    assert [s.verdict for s in fake.seen] == ["ok"] * 5
    for seen in fake.seen:
        assert seen.path == JOB_DETAIL and json.loads(seen.body) == {"taskId": TASK, "jobId": JOB}
        assert seen.headers["authorization"].split("/")[4] == "content-type;host;x-bce-date"
        assert seen.headers["x-bce-date"] == seen.headers["authorization"].split("/")[2]
    logged = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("baidubce"))  # fake's side
    assert AK not in logged and SK not in logged


async def test_a_restarted_collector_with_the_committed_cursor_stores_nothing_again(fake: FakeQianfan):
    fake.set_job(TASK, JOB, [job("RUNNING", 30, 300, 200)])
    src = source(fake.url)
    first = await poll(src)
    await src.aclose()
    resumed = source(fake.url)  # a new process, same cursor from the store
    try:
        again = await poll(resumed, json.loads(json.dumps(first.cursor)))
    finally:
        await resumed.aclose()
    assert first.points and again.points == []
    assert again.state == RunState.RUNNING and again.progress == pytest.approx(0.3)
    assert again.eta_seconds == pytest.approx(700)  # 30% after 300 s


@pytest.mark.parametrize(("status", "label", "note"), [("FAIL", "failed", None), ("STOP", "stopped", "stopped")])
async def test_fail_and_stop_end_the_run_as_failed(fake: FakeQianfan, status: str, label: str, note: str | None):
    fake.set_job(TASK, JOB, [job(status, 0, 267452, 0)])  # the seed's STOP example: placeholder finishTime
    src = source(fake.url)
    try:
        batch = await poll(src)
    finally:
        await src.aclose()
    assert batch.state == RunState.FAILED and batch.progress == 0.0 and batch.total_steps is None
    assert batch.runs[LABEL]["state"] == label and batch.runs[LABEL]["finishTime"] is None
    assert by_metric(batch)[METRIC_RUN_TIME][:2] == (267452, START_TS + 267452)
    assert (note is None and batch.notes == []) or any(note in n for n in batch.notes)


async def test_finish_time_in_either_spelling_and_the_placeholder(fake: FakeQianfan):
    both = job("FINISH", 100, 3600, 1800, finish="0000-00-00 00:00:00")
    both["finishtime"] = "2023-10-20 19:19:09"  # the placeholder in one spelling, the time in the other
    fake.set_job(TASK, JOB, [both, job("FINISH", 100, 3600, 1800, finish="2023-10-20 19:19:09")])
    src = source(fake.url)
    try:
        a = await poll(src)
        b = await poll(src, a.cursor)
    finally:
        await src.aclose()
    assert a.runs[LABEL]["finishTime"] == b.runs[LABEL]["finishTime"] == "2023-10-20T11:19:09Z"


async def test_a_revised_answer_at_the_same_run_time_replaces_the_stored_value(fake: FakeQianfan):
    fake.set_job(TASK, JOB, [job("FINISH", 99, 1000, 900), job("FINISH", 100, 1000, 900)])
    src = source(fake.url)
    try:
        before = time.time()
        first = await poll(src)
        second = await poll(src, first.cursor)
    finally:
        await src.aclose()
    old, new = by_metric(first)[METRIC_PROGRESS], by_metric(second)[METRIC_PROGRESS]
    assert old[:3] == (1000, START_TS + 1000, 99.0)
    assert new[0] == 1000 and new[2] == 100.0 and new[1] >= before > old[1]  # newer ts: the store takes it


async def test_time_zone_and_missing_times(fake: FakeQianfan):
    fake.set_job(TASK, JOB, [job("RUNNING", 5, 60, 30)])
    utc = source(fake.url, timeZone="+00:00")
    try:
        assert by_metric(await poll(utc))[METRIC_PROGRESS][1] == START_TS + 8 * 3600 + 60
    finally:
        await utc.aclose()
    fake.set_job(TASK, JOB, [job("RUNNING", 5, 60, 30, startTime="0000-00-00 00:00:00")])
    src = source(fake.url)
    try:
        before = time.time()
        batch = await poll(src)
        after = time.time()
    finally:
        await src.aclose()
    ts = {p.ts for p in batch.points}
    assert len(ts) == 1 and before <= ts.pop() <= after  # no start time: the poll's time
    assert "startTime" not in batch.runs[LABEL]


async def test_unknown_status_and_an_answer_without_numbers(fake: FakeQianfan):
    odd = job("QUEUED")
    del odd["runTime"], odd["progress"]
    fake.set_job(TASK, JOB, [odd])
    src = source(fake.url)
    try:
        batch = await poll(src)
    finally:
        await src.aclose()
    assert batch.state == RunState.UNKNOWN and batch.progress is None and batch.points == []
    assert batch.skipped == {"noRunTime": 1} and any("QUEUED" in n for n in batch.notes)
    assert batch.runs[LABEL]["state"] == "queued"


# ---- errors ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "reason", "slow", "words"), [
    (qianfan_error(500001, "param invalid"), "BadRequest", True, "check taskId and jobId"),
    (qianfan_error(18, "Open api qps request limit reached"), "RateLimited", False, "error_code 18"),
    (qianfan_error(17, "Open api daily request limit reached"), "RateLimited", False, "daily request limit"),
    (qianfan_error(6, "No permission to access data"), "PermissionDenied", True, "may not read this job"),
    (qianfan_error(336000, "Internal error"), "ApiError", False, "Internal error"),
    (Error(502, "<html><body>502 Bad Gateway</body></html>"), "HttpError", False, "HTTP 502"),
    (Error(200, {"log_id": "1"}), "BadResponse", False, "no result object"),
    (Error(200, {"log_id": "1", "result": [1, 2]}), "BadResponse", False, "no result object"),
    (Error(200, "not json"), "BadResponse", False, "not a JSON object"),
    (Error(429, {"requestId": "r", "code": "RequestLimitExceeded", "message": "slow down"}), "RateLimited", False,
     "RequestLimitExceeded"),
])
async def test_error_answers(fake: FakeQianfan, answer: Error, reason: str, slow: bool, words: str):
    fake.set_job(TASK, JOB, [answer])
    src = source(fake.url)
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert err.reason == reason and words in str(err), str(err)
    assert f"taskId={TASK} jobId={JOB}" in str(err) or reason in ("HttpError", "BadResponse")
    if slow:
        assert err.retry_after is not None and err.retry_after >= 300
    elif reason == "RateLimited":
        assert err.retry_after == 60


async def test_a_job_the_server_does_not_know(fake: FakeQianfan):
    src = source(fake.url)  # no script for this job: Qianfan says "param invalid"
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert err.reason == "BadRequest" and "500001" in str(err) and "param invalid" in str(err)


@pytest.mark.parametrize("style", ["bce", "qianfan"])
async def test_a_wrong_secret_key_backs_off_slowly_and_the_secret_is_read_again(style: str):
    f = FakeQianfan(keys={AK: SK}, auth_errors=style)
    f.set_job(TASK, JOB, [job("RUNNING", 1, 10, 5)])
    wrong = Secrets({("qianfan", "QIANFAN_ACCESS_KEY"): AK, ("qianfan", "QIANFAN_SECRET_KEY"): SK + "-old"})
    with serve(f):
        src = source(f.url, wrong)
        try:
            err = await failure(src)
            assert err.reason == "AuthFailed" and err.retry_after is not None and err.retry_after >= 300
            assert "access key / secret key" in str(err)
            assert ("SignatureDoesNotMatch" if style == "bce" else "error_code 14") in str(err)
            assert SK + "-old" not in str(err)
            wrong.data[("qianfan", "QIANFAN_SECRET_KEY")] = SK  # the Secret is fixed (rotated)
            batch = await poll(src)
        finally:
            await src.aclose()
    assert batch.state == RunState.RUNNING
    assert len(wrong.calls) == 4  # read once, dropped after the auth failure, read again
    assert [s.verdict for s in f.seen] == ["SignatureDoesNotMatch", "ok"]


async def test_an_unknown_access_key_echoed_by_the_server_is_redacted(fake: FakeQianfan):
    other = "AKnotknown0000000000000000000"
    src = source(fake.url, Secrets({("qianfan", "QIANFAN_ACCESS_KEY"): other, ("qianfan", "QIANFAN_SECRET_KEY"): SK}))
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert other in fake.seen[0].access_key and "InvalidAccessKeyId" in str(err)  # the fake did echo it
    assert other not in str(err) and "<redacted>" in str(err) and err.reason == "AuthFailed"


@pytest.mark.parametrize("style", ["bce", "qianfan"])
@pytest.mark.parametrize(("offset", "words"), [(3600, "behind"), (-3600, "ahead of")])
async def test_clock_skew_is_reported_as_such(style: str, offset: float, words: str):
    f = FakeQianfan(keys={AK: SK}, clock_offset=offset, auth_errors=style)
    f.set_job(TASK, JOB, [job()])
    with serve(f):
        src = source(f.url)
        try:
            err = await failure(src)
        finally:
            await src.aclose()
    # "bce": the gateway says RequestExpired; "qianfan": only error_code 14, and the Date header shows the skew
    assert err.reason == "ClockSkew" and err.retry_after is not None and err.retry_after >= 300
    m = re.search(r"clock is (\d+)s (behind|ahead of) the server", str(err))
    assert m and abs(int(m.group(1)) - 3600) <= 5 and m.group(2) == words, str(err)
    assert "NTP" in str(err)


async def test_unreachable_endpoint():
    port = free_port()
    src = source(f"http://127.0.0.1:{port}")
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert err.reason == "Unreachable" and f"127.0.0.1:{port}" in str(err)


async def test_endpoint_path_prefix_is_signed_and_encoded(fake: FakeQianfan):
    src = source(fake.url + "/gateway/千帆 v1/")
    try:
        err = await failure(src)  # the fake serves only the bare path: a 404 after the signature verified
    finally:
        await src.aclose()
    assert err.reason == "ApiError" and "NoSuchAPI" in str(err)
    (seen,) = fake.seen
    assert seen.verdict == "ok"
    assert seen.path == "/gateway/%E5%8D%83%E5%B8%86%20v1" + JOB_DETAIL


# ---- credentials ----------------------------------------------------------------------------------------------------

async def test_keys_from_the_environment_when_the_secret_gives_none(fake: FakeQianfan,
                                                                    monkeypatch: pytest.MonkeyPatch):
    fake.set_job(TASK, JOB, [job("RUNNING", 1, 10, 5)])
    monkeypatch.setenv("QIANFAN_ACCESS_KEY", AK)
    monkeypatch.setenv("QIANFAN_SECRET_KEY", SK)
    for src in (source(fake.url, Secrets({})),  # local mode: the resolver knows no Secrets
                source(fake.url, None),  # no resolver at all
                QianfanSource({"taskId": TASK, "jobId": JOB, "endpoint": fake.url}, SourceContext())):
        try:
            assert (await poll(src)).state == RunState.RUNNING
        finally:
            await src.aclose()
    assert [s.verdict for s in fake.seen] == ["ok"] * 3


async def test_custom_secret_keys_and_trailing_newlines(fake: FakeQianfan, no_env_keys: None):
    fake.set_job(TASK, JOB, [job("RUNNING", 1, 10, 5)])
    secrets = Secrets({("qf", "ak"): AK + "\n", ("qf", "sk"): f"  {SK}\n"})
    src = source(fake.url, secrets, credentialsSecretRef={"name": "qf", "accessKeyKey": "ak", "secretKeyKey": "sk"})
    try:
        await poll(src)
        await poll(src)
    finally:
        await src.aclose()
    assert secrets.calls == [{"name": "qf", "key": "ak"}, {"name": "qf", "key": "sk"}]  # read once, then kept


async def test_missing_credentials(fake: FakeQianfan, no_env_keys: None):
    src = source(fake.url, Secrets({}))
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert err.reason == "MissingCredentials" and err.retry_after is not None and err.retry_after >= 300
    assert "Secret ml/qianfan" in str(err) and "QIANFAN_ACCESS_KEY" in str(err)
    assert fake.seen == []  # nothing sent unsigned


async def test_a_secret_that_cannot_be_read(fake: FakeQianfan):
    async def broken(ref: dict[str, str]) -> str:
        raise PermissionError(f"secrets {ref['name']!r} is forbidden: cannot get resource in namespace ml")

    src = source(fake.url, broken)
    try:
        err = await failure(src)
    finally:
        await src.aclose()
    assert err.reason == "SecretUnavailable" and "forbidden" in str(err) and "ml/qianfan" in str(err)


# ---- schema ---------------------------------------------------------------------------------------------------------

SCHEMAS = {"qianfan": QianfanSource.schema}


def spec(block: dict[str, Any]) -> dict[str, Any]:
    return {"sources": [{"name": "job", "qianfan": block}]}


@pytest.mark.parametrize("block", [
    {"taskId": 7263, "jobId": 4612},
    {"taskId": 1, "jobId": 2, "endpoint": "https://qianfan.baidubce.com", "timeout": "30s", "timeZone": "-03:30",
     "credentialsSecretRef": {"name": "qianfan-keys", "accessKeyKey": "ak", "secretKeyKey": "sk.txt"}},
    {"taskId": 1, "jobId": 2, "credentialsSecretRef": {"name": "qianfan"}},
])
def test_valid_configs(block: dict[str, Any]):
    parsed = parse_spec(spec(block), SCHEMAS)
    assert parsed.sources[0].kind == "qianfan" and parsed.sources[0].config == block
    QianfanSource(block, SourceContext())


@pytest.mark.parametrize(("block", "field", "words"), [
    ({"taskId": 1, "apiVersion": "v3"}, "spec.sources[0].qianfan.apiVersion", "is not one of"),
    ({"taskId": "7263", "jobId": 1}, "spec.sources[0].qianfan.taskId", "is not valid under any of the given"),
    ({"taskId": 1.5, "jobId": 1}, "spec.sources[0].qianfan.taskId", "is not valid under any of the given"),
    ({"taskId": 1, "jobId": 1, "accessKey": "x"}, "spec.sources[0].qianfan.accessKey", "unknown field"),
    ({"taskId": 1, "jobId": 1, "endpoint": "qianfan.baidubce.com"}, "spec.sources[0].qianfan.endpoint",
     "does not match"),
    ({"taskId": 1, "jobId": 1, "credentialsSecretRef": {}}, "spec.sources[0].qianfan.credentialsSecretRef.name",
     "required"),
    ({"taskId": 1, "jobId": 1, "credentialsSecretRef": {"name": "Q_K"}},
     "spec.sources[0].qianfan.credentialsSecretRef.name", "does not match"),
    ({"taskId": 1, "jobId": 1, "credentialsSecretRef": {"name": "q", "value": "AK"}},
     "spec.sources[0].qianfan.credentialsSecretRef.value", "unknown field"),
    ({"taskId": 1, "jobId": 1, "timeZone": "CST"}, "spec.sources[0].qianfan.timeZone", "does not match"),
    ({"taskId": 1, "jobId": 1, "timeout": "10"}, "spec.sources[0].qianfan.timeout", "is not a duration"),
])
def test_invalid_configs_name_the_field(block: dict[str, Any], field: str, words: str):
    assert_spec_error(spec(block), SCHEMAS, field, words)


def test_schema_is_structural_in_the_crd():
    crd = build_crd({**registry_schemas(), **SCHEMAS})
    assert structural_problems(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) == []


def test_example_manifest_is_valid_in_a_cluster_and_locally():
    doc = yaml.safe_load((EXAMPLES / "qianfan.yaml").read_text(encoding="utf-8"))
    errors, dropped, _ = cluster_check(doc, build_crd({**registry_schemas(), **SCHEMAS}))
    assert errors == [] and dropped == []
    assert parse_spec(doc["spec"], SCHEMAS).sources[0].config["taskId"] == 10250
