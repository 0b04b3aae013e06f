"""SwanLab source, url mode, against tiny local servers that misbehave in the ways a real dashboard (or not) can.

The good answers are shaped like swanlab 0.10.3's (envelope, /project, /status charts, /tag list); the bad ones are
what the real server sends in those cases (HTTP 500 with code 3555 and its message) or plain garbage.
"""

from __future__ import annotations

from typing import Any

import pytest

from trainscope.collector.sources import SourceContext, SourceError
from trainscope.collector.sources.swanlab import SwanLabSource

from rawhttp import free_port, http_response, raw_http_server, silent_server_error

T = "2026-01-02T03:04:05.000001+00:00"
PROJECT = {"code": 0, "message": "success", "data": {"id": 1, "name": "p", "experiments": [
    {"id": 1, "run_id": "run-1", "name": "sft", "status": 0, "create_time": T, "finish_time": None,
     "config": {"lr": {"desc": "", "sort": 0, "value": 0.1}}}]}}
STATUS = {"code": 0, "message": "success", "data": {"status": 0, "finish_time": None, "charts": {"charts": [
    {"name": "loss", "type": "line", "source": ["loss"]}, {"name": "img", "type": "image", "source": ["img"]}],
    "namespaces": []}}}
EXPERIMENT = {"code": 0, "message": "success", "data": {"id": 1, "system": {"runtime": {"os": "Linux"}}}}
TAG = {"code": 0, "message": "success", "data": {"sum": 2, "max": 1.0, "min": 0.5, "experiment_id": 1, "list": [
    {"index": 0, "data": 1.0, "create_time": T}, {"index": 1, "data": 0.5, "create_time": T, "_last": True}]}}


def error_500(message: str, code: int = 3555) -> bytes:
    return http_response({"code": code, "message": message}, status="500 Internal Server Error")


def dashboard(**overrides: Any):
    """A handler answering like a real dashboard except for the routes overridden (by last path word)."""
    calls: dict[str, int] = {}

    async def handler(path: str) -> bytes | None:
        route = "tag" if "/tag/" in path else path.rstrip("/").rsplit("/", 1)[-1]
        calls[route] = calls.get(route, 0) + 1
        answer = overrides.get(route)
        if callable(answer):
            answer = answer(calls[route])
        if answer is not None or route in overrides:
            return answer
        good = {"project": PROJECT, "status": STATUS, "1": EXPERIMENT, "tag": TAG}
        return http_response(good[route]) if route in good else http_response('{"detail":"Not Found"}',
                                                                                status="404 Not Found")

    return handler, calls


async def poll(handler: Any, **config: Any) -> Any:
    async with raw_http_server(handler) as url:
        src = SwanLabSource({"url": url, **config}, SourceContext())
        try:
            return await src.poll(None)
        finally:
            await src.aclose()


async def test_a_good_answer_is_read():
    handler, calls = dashboard()
    batch = await poll(handler)
    assert [(p.metric, p.step, p.value, p.run) for p in batch.points] == [("loss", 0, 1.0, "run-1"),
                                                                          ("loss", 1, 0.5, "run-1")]
    assert batch.runs["run-1"]["config"] == {"lr": 0.1}
    assert batch.runs["run-1"]["system"] == {"runtime": {"os": "Linux"}}
    assert calls == {"project": 1, "status": 1, "1": 1, "tag": 1}  # the image chart is not fetched


@pytest.mark.parametrize(("overrides", "reason", "words"), [
    ({"project": http_response("<html>hi</html>", content_type="text/html")}, "BadResponse", "not JSON"),
    ({"project": http_response({"code": 3555, "message": "x"})}, "BadResponse", '"code": 0'),
    ({"project": http_response({"code": 0, "data": {"experiments": [{"id": "x"}]}})}, "BadResponse",
     "experiments list"),
    ({"project": http_response('{"detail":"Not Found"}', status="404 Not Found")}, "HttpError", "swanlab watch"),
    ({"project": b"SSH-2.0-OpenSSH_9.6\r\n"}, "Unreachable", "without an HTTP answer"),
    ({"status": http_response({"code": 0, "data": {"status": 0}})}, "BadResponse", "charts list"),
    ({"tag": http_response({"code": 0, "data": {"sum": 1, "list": [{"index": 0, "data": 1.0}]}})}, "BadResponse",
     "{index, data, create_time}"),
    ({"tag": http_response({"code": 0, "data": {"sum": 1, "list": 5}})}, "BadResponse", "{index, data, create_time}"),
    ({"tag": error_500("Experiment does not exist: {}")}, "ExperimentNotFound", "no such experiment"),
    ({"tag": error_500("'NoneType' object has no attribute 'folder'")}, "MetricNotFound", "no metric 'loss'"),
    ({"tag": http_response("busy", status="503 Service Unavailable")}, "HttpError", "503"),
])
async def test_misbehaving_server(overrides: dict[str, Any], reason: str, words: str):
    handler, _ = dashboard(**overrides)
    with pytest.raises(SourceError) as err:
        await poll(handler)
    assert err.value.reason == reason and words in str(err.value), str(err.value)


async def test_transient_500s_are_retried():
    handler, calls = dashboard(tag=lambda n: error_500("Expected object or value") if n <= 2 else http_response(TAG))
    batch = await poll(handler)
    assert len(batch.points) == 2 and calls["tag"] == 3


async def test_a_persistent_500_fails_after_bounded_retries():
    handler, calls = dashboard(tag=error_500("Expected object or value"))
    with pytest.raises(SourceError) as err:
        await poll(handler)
    assert err.value.reason == "ServerError" and "5 times" in str(err.value) and "Expected object" in str(err.value)
    assert calls["tag"] == 5


async def test_a_metric_holding_nan_is_skipped_not_fatal():
    handler, calls = dashboard(tag=error_500("Out of range float values are not JSON compliant"))
    batch = await poll(handler)
    assert batch.points == [] and batch.skipped == {"non_finite_metric": 1} and calls["tag"] == 1
    assert "NaN or infinity" in batch.notes[0] and "run-1/loss" in batch.notes[0]


async def test_a_server_that_hangs_up_mid_poll():
    handler, calls = dashboard(tag=None)  # answers /project and /status, then closes the connection on /tag
    with pytest.raises(SourceError) as err:
        await poll(handler)
    assert err.value.reason == "Unreachable" and "closed the connection without an HTTP answer" in str(err.value)
    assert calls["tag"] == 5


async def test_server_down_is_unreachable():
    port = free_port()  # bound then released: nothing listens there
    with pytest.raises(SourceError) as err:
        await SwanLabSource({"url": f"http://127.0.0.1:{port}"}, SourceContext()).poll(None)
    assert err.value.reason == "Unreachable" and f"127.0.0.1:{port}" in str(err.value)


async def test_slow_server_times_out():
    err = await silent_server_error(lambda url: SwanLabSource({"url": url, "timeout": "200ms"}, SourceContext()))
    assert err.reason == "Timeout" and "0.2s" in str(err)
