"""The MLflow source against a real `mlflow server` (PyPI, SQLite backend) with runs logged by the real MLflow
client: stored points equal `MlflowClient.get_metric_history` point for point (NaN and +-Inf included) through
restarts (a new source from the JSON cursor on every poll), runs that start matching the filter later are picked up,
a deleted run is reported, statuses map to run states, params/tags reach the run metadata, an idle poll costs one
request, and a server that answers 401/403/404/429/garbage gives a SourceError with its own reason."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jsonschema
import pytest

from trainscope.collector.points import Batch, RunState
from trainscope.collector.sources import REGISTRY
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.mlflow import MlflowSource

from mlflowfixtures import MlflowServer, log_points, same, truth

T0 = 1_700_000_000_000  # ms


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as s:
        yield s


def source(config: dict[str, Any], max_points: int = 50_000, **ctx: Any) -> MlflowSource:
    jsonschema.validate(config, MlflowSource.schema)
    return MlflowSource(config, SourceContext(max_batch_points=max_points, **ctx))


async def drain(config: dict[str, Any], cursor: Any, max_points: int = 50_000) -> tuple[dict, Any, list[Batch]]:
    """Poll until `more` is False, a NEW source from the JSON-round-tripped cursor each time (a restart per poll)."""
    got: dict[tuple[str, str, int], tuple[float, float]] = {}
    batches = []
    for _ in range(1000):
        src = source(config, max_points)
        try:
            batch = await src.poll(cursor)
        finally:
            await src.aclose()
        batches.append(batch)
        for metric, step, ts, value, run in batch.points:
            old = got.get((run, metric, step))
            if old is None or ts >= old[0]:
                got[(run, metric, step)] = (ts, value)
        cursor = json.loads(json.dumps(batch.cursor))
        if not batch.more:
            return got, cursor, batches
    raise AssertionError("the source never caught up")


def compare(got: dict, want: dict) -> None:
    assert got.keys() == want.keys(), (sorted(got.keys() - want.keys())[:5], sorted(want.keys() - got.keys())[:5])
    bad = [k for k in want if not (same(got[k][1], want[k][1]) and abs(got[k][0] - want[k][0]) < 1e-6)]
    assert not bad, [(k, got[k], want[k]) for k in bad[:5]]


def test_registered_with_a_schema_the_crd_can_carry() -> None:
    assert REGISTRY["mlflow"] is MlflowSource
    for bad in ({"trackingUri": "http://x"}, {"trackingUri": "http://x", "runId": "a", "experimentId": "1"},
                {"trackingUri": "http://x", "runId": "a", "filter": "tags.a = 'b'"}):
        with pytest.raises((jsonschema.ValidationError, SourceError)):
            source(bad)


async def test_catch_up_through_restarts_equals_get_metric_history(server: MlflowServer) -> None:
    c = server.client()
    exp = c.create_experiment("fidelity")
    rid = c.create_run(exp, run_name="llama-sft").info.run_id
    c.log_param(rid, "max_steps", "9000")
    c.set_tag(rid, "team", "nlp")
    log_points(c, rid, "train/loss", ((s, T0 + s * 10, 1.0 / (s + 1)) for s in range(0, 6000)))
    # sparse evaluation, a negative step, several points at one step, and the non-finite values
    log_points(c, rid, "eval/acc", ((s, T0 + s * 10, s / 9000) for s in range(-5, 6000, 1000)))
    log_points(c, rid, "eval/acc", [(3000, T0 + 99_999, 0.25)])
    odd = [math.nan, math.inf, -math.inf, 1.5, -0.0, 1e-300]
    log_points(c, rid, "odd", ((i, T0 + i, v) for i, v in enumerate(odd)))
    config = {"trackingUri": server.url, "experimentName": "fidelity", "totalStepsParam": "max_steps",
              "windowSteps": 700}
    got, cursor, batches = await drain(config, None, max_points=1500)
    assert len(batches) > 4 and all(len(b.points) <= 1500 + 700 for b in batches)
    compare(got, truth(c, [rid]))
    assert math.isnan(got[(rid, "odd", 0)][1]) and got[(rid, "eval/acc", -5)][1] == -5 / 9000
    assert got[(rid, "eval/acc", 3000)] == (T0 / 1000 + 99.999, 0.25)  # the newest point of a step
    last = batches[-1]
    assert last.state is RunState.RUNNING and last.total_steps == 9000
    assert last.runs[rid]["params"] == {"max_steps": "9000"} and last.runs[rid]["tags"]["team"] == "nlp"
    assert last.runs[rid]["run_name"] == "llama-sft" and last.runs[rid]["status"] == "RUNNING"

    # the run grows and ends: only the new points are read, then the state is FINISHED
    log_points(c, rid, "train/loss", ((s, T0 + s * 10, 1.0 / (s + 1)) for s in range(6000, 6500)))
    c.set_terminated(rid, "FINISHED")
    got2, cursor, batches = await drain(config, cursor)
    assert {k[2] for k in got2} == set(range(6000, 6500))
    got.update(got2)
    compare(got, truth(c, [rid]))
    assert batches[-1].state is RunState.FINISHED


async def test_idle_poll_is_one_request(server: MlflowServer) -> None:
    c = server.client()
    exp = c.create_experiment("idle")
    rids = [c.create_run(exp).info.run_id for _ in range(3)]
    for rid in rids:
        log_points(c, rid, "loss", ((s, T0 + s, float(s)) for s in range(100)))
        log_points(c, rid, "lr", ((s, T0 + s, 0.1) for s in range(100)))
    config = {"trackingUri": server.url, "experimentId": exp}
    _, cursor, _ = await drain(config, None)
    before = server.requests()
    got, cursor, _ = await drain(config, cursor)
    assert not got and server.requests() - before == 1  # runs/search only: 3 runs, 6 metrics, 1 request
    log_points(c, rids[1], "loss", [(100, T0 + 100, 100.0)])
    before = server.requests()
    got, cursor, _ = await drain(config, cursor)
    assert list(got) == [(rids[1], "loss", 100)] and server.requests() - before == 2  # + one history window


async def test_filter_picks_up_later_runs_and_a_deleted_run_is_reported(server: MlflowServer) -> None:
    c = server.client()
    exp = c.create_experiment("filtered")
    a = c.create_run(exp, tags={"job": "sft"}).info.run_id
    b = c.create_run(exp).info.run_id
    for rid in (a, b):
        log_points(c, rid, "loss", ((s, T0 + s, float(s)) for s in range(50)))
    config = {"trackingUri": server.url, "experimentName": "filtered", "filter": "tags.job = 'sft'"}
    got, cursor, batches = await drain(config, None)
    assert {k[0] for k in got} == {a} and batches[-1].info["runs"] == 1
    c.set_tag(b, "job", "sft")  # b starts matching
    got, cursor, batches = await drain(config, cursor)
    compare(got, truth(c, [b]))
    c.set_terminated(a, "KILLED")
    c.set_terminated(b, "FAILED")
    c.delete_run(a)
    _, cursor, batches = await drain(config, cursor)
    last = batches[-1]
    assert any(a in n and "deleted" in n for n in last.notes), last.notes
    assert last.runs[a]["deleted"] is True and last.state is RunState.FAILED and last.info["runs"] == 1


async def test_run_id_and_missing_things(server: MlflowServer) -> None:
    c = server.client()
    rid = c.create_run(c.create_experiment("single")).info.run_id
    log_points(c, rid, "loss", ((s, T0 + s, float(s)) for s in range(10)))
    got, _, _ = await drain({"trackingUri": server.url, "runId": rid, "keys": {"include": ["lo*"]}}, None)
    compare(got, truth(c, [rid]))
    for config, words in (({"trackingUri": server.url, "runId": "nope"}, "run nope not found"),
                          ({"trackingUri": server.url, "experimentName": "nope"}, "'nope' not found")):
        with pytest.raises(SourceError) as e:
            await source(config).poll(None)
        assert e.value.reason == "NotFound" and words in str(e.value)


# ---- HTTP failures, from a server that answers with the status codes MLflow and its proxies send ----------------


class _Scripted(BaseHTTPRequestHandler):
    answers: list[tuple[int, dict[str, str], bytes]] = []
    seen: list[dict[str, str]] = []

    def _answer(self) -> None:
        self.seen.append(dict(self.headers))
        status, headers, body = self.answers[0]
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[_Scripted]]]:
    handler = type("H", (_Scripted,), {"answers": [], "seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(("status", "headers", "body", "reason", "retry"), [
    (401, {}, b'{"error_code": "UNAUTHENTICATED", "message": "bad"}', "Unauthorized", 300.0),
    (403, {}, b'{"error_code": "PERMISSION_DENIED", "message": "no"}', "Unauthorized", 300.0),
    (404, {"Content-Type": "text/html"}, b"<html>nginx</html>", "NotFound", None),
    (429, {"Retry-After": "7"}, b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}', "RateLimited", 7.0),
    (503, {}, b"upstream", "ServerError", None),
    (200, {"Content-Type": "text/html"}, b"<html>login</html>", "BadResponse", None),
    (200, {}, b'{"runs": {"a": 1}}', "BadResponse", None),
])
async def test_http_failures_have_their_own_reason(scripted: tuple[str, type[_Scripted]], status: int,
                                                   headers: dict[str, str], body: bytes, reason: str,
                                                   retry: float | None) -> None:
    url, handler = scripted
    handler.answers[:] = [(status, headers, body)]

    async def resolve(ref: dict[str, str]) -> str:
        return {"token": "s3cr3t-token"}[ref["key"]]

    src = source({"trackingUri": url, "experimentId": "1", "tokenSecretRef": {"name": "mlflow"}},
                 resolve_secret=resolve)
    with pytest.raises(SourceError) as e:
        await src.poll(None)
    await src.aclose()
    assert e.value.reason == reason and "s3cr3t" not in str(e.value)
    if retry is None:
        assert e.value.retry_after is None
    else:
        assert retry <= (e.value.retry_after or 0) <= retry * 1.2
    assert handler.seen[-1]["Authorization"] == "Bearer s3cr3t-token"


async def test_basic_auth_from_a_secret_and_timeouts(scripted: tuple[str, type[_Scripted]]) -> None:
    url, handler = scripted
    handler.answers[:] = [(200, {}, b'{"runs": []}')]

    async def resolve(ref: dict[str, str]) -> str:
        return {"username": "ada", "password": "pw"}[ref["key"]]

    src = source({"trackingUri": url, "experimentId": "1", "basicAuthSecretRef": {"name": "m"}},
                 resolve_secret=resolve)
    batch = await src.poll(None)
    await src.aclose()
    assert handler.seen[-1]["Authorization"] == "Basic YWRhOnB3" and batch.state is None and batch.notes
    with pytest.raises(SourceError) as e:
        await source({"trackingUri": "http://127.0.0.1:9", "runId": "x", "timeout": "1s"}).poll(None)
    assert e.value.reason == "Unreachable"



class _NoBulkProxy(BaseHTTPRequestHandler):
    """A front for the real server that has no /ajax-api/ route (MLflow before 2.9, or a host serving only
    /api/2.0): a plain 404 there, everything else forwarded."""

    upstream = ""

    def _forward(self) -> None:
        import httpx

        if self.path.startswith("/ajax-api/"):
            body = b"<html>404 Not Found</html>"
            self.send_response(404)
            self.send_header("Content-Type", "text/html")
        else:
            length = int(self.headers.get("Content-Length") or 0)
            resp = httpx.request(self.command, self.upstream + self.path, content=self.rfile.read(length),
                                 headers={"Content-Type": self.headers.get("Content-Type", "application/json")})
            body = resp.content
            self.send_response(resp.status_code)
            self.send_header("Content-Type", resp.headers.get("content-type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _forward

    def log_message(self, *args: Any) -> None:
        pass


async def test_a_server_without_the_bulk_endpoint_is_read_through_get_history(server: MlflowServer) -> None:
    c = server.client()
    rid = c.create_run(c.create_experiment("old-server")).info.run_id
    log_points(c, rid, "loss", ((s, T0 + s, float(s)) for s in range(3000)))
    log_points(c, rid, "odd", [(0, T0, math.nan), (1, T0 + 1, math.inf)])
    handler = type("P", (_NoBulkProxy,), {"upstream": server.url})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        config = {"trackingUri": f"http://127.0.0.1:{httpd.server_address[1]}", "runId": rid}
        got, cursor, batches = await drain(config, None, max_points=1000)
        compare(got, truth(c, [rid]))
        assert len(batches) >= 3 and all(len(b.points) <= 1000 + 2 for b in batches)  # still bounded batches
        log_points(c, rid, "loss", [(3000, T0 + 3000, 3000.0)])
        got, _, _ = await drain(config, cursor)
        assert list(got) == [(rid, "loss", 3000)]
    finally:
        httpd.shutdown()
        httpd.server_close()
