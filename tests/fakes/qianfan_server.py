"""A fake Baidu Qianfan console API on 127.0.0.1 that verifies the BCE signature of every request: V1 `jobDetail`,
and V2 `POST /v2/finetuning?Action=DescribeFineTuningTask` (route, Action and body as the qianfan SDK's
FineTune.V2.task_detail builds them, qianfan/resources/console/finetune.py; answer fields from Baidu's
DescribeFineTuningTask doc: requestId + result{taskId, jobId, jobName, jobDescription, model, trainMode,
parameterScale, runStatus Running/Done/Stopped/Failed/Waiting, runProgress "NN%" while Running, vdlLink}), and
`Action=DescribeFineTuningTasks`, a job's task list (FineTune.V2.task_list; Baidu's "获取模型精调任务列表" doc,
cloud.baidu.com/doc/qianfan/s/Hmh4suxsa: body {jobId required, marker = where the page starts, maxKeys default 10
and at most 100, pageReverse default false}; answer result{taskList, pageInfo{marker, maxKeys, isTruncated,
nextMarker}} with the item fields of the doc and the SDK's own mock server, createDate/finishDate included).

Verification uses Baidu's own signer (`baidubce.auth.bce_v1_signer.sign`), not trainscope's, on what arrived on
the wire: the raw request path (decoded, then encoded again the BCE way), the query string, and exactly the headers
the Authorization names (all of BCE's default set when it names none, as the SDK's own client does). A job serves
a script of answers, one per request, staying on the last; the test changes scripts between polls.
"""

from __future__ import annotations

import email.utils
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from baidubce import utils as bce_utils
from baidubce.auth import bce_v1_signer
from baidubce.auth.bce_credentials import BceCredentials

JOB_DETAIL = "/wenxinworkshop/finetune/jobDetail"
V2_ROUTE, V2_DETAIL, V2_LIST = "/v2/finetuning", "DescribeFineTuningTask", "DescribeFineTuningTasks"
FUTURE_TOLERANCE = 900.0  # a request dated this far ahead of the server's clock is refused too


@dataclass
class Error:
    """An answer other than a result: an HTTP status and a JSON body (Qianfan's `error_code` form or BCE's `code`
    form), or a text body (a proxy's HTML page)."""

    status: int
    body: dict[str, Any] | str


def qianfan_error(code: int, msg: str) -> Error:
    """Qianfan's business error: HTTP 200 with {"error_code", "error_msg"}."""
    return Error(200, {"error_code": code, "error_msg": msg})


@dataclass
class Seen:
    """One request as the server saw it, and its verdict."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    access_key: str | None
    verdict: str  # "ok" or the BCE error code it was refused with


@dataclass
class FakeQianfan:
    """The fake's state; `serve()` runs it. `jobs[(taskId, jobId)]` is the list of answers (result dicts or Error)."""

    keys: dict[str, str]
    clock_offset: float = 0.0  # the server's clock minus the real one (clock skew tests)
    auth_errors: str = "bce"  # "bce": 4xx {"code", "message"}; "qianfan": 200 {"error_code": 14, ...}
    jobs: dict[tuple[int, int], list[dict[str, Any] | Error]] = field(default_factory=dict)
    positions: dict[tuple[int, int], int] = field(default_factory=dict)
    tasks: dict[str, list[dict[str, Any] | Error]] = field(default_factory=dict)  # V2: "task-…" -> answers
    task_positions: dict[str, int] = field(default_factory=dict)
    job_tasks: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # V2 job -> [(taskId, createDate)]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def set_job(self, task_id: int, job_id: int, answers: list[dict[str, Any] | Error]) -> None:
        with self.lock:
            self.jobs[(task_id, job_id)] = list(answers)
            self.positions[(task_id, job_id)] = 0

    def set_task(self, task_id: str, answers: list[dict[str, Any] | Error]) -> None:
        with self.lock:
            self.tasks[task_id] = list(answers)
            self.task_positions[task_id] = 0

    def add_job_task(self, job_id: str, task_id: str, created: str,
                     answers: list[dict[str, Any] | Error]) -> None:
        """A new task (run) of a V2 job, created at `created` (ISO, as the list's createDate)."""
        with self.lock:
            self.job_tasks.setdefault(job_id, []).append((task_id, created))
            self.tasks[task_id] = list(answers)
            self.task_positions[task_id] = 0

    def now(self) -> float:
        return datetime.now(UTC).timestamp() + self.clock_offset

    # ---- verification

    def verify(self, method: str, target: str, headers: dict[str, str]) -> tuple[str | None, Error | None]:
        """(access key, None) when the signature is right, else (access key or None, the error to answer)."""
        auth = headers.get("authorization", "")
        parts = auth.split("/")
        if len(parts) != 6 or parts[0] != "bce-auth-v1":
            return None, _bce(400, "InvalidHTTPAuthHeader", f"malformed Authorization header {auth[:40]!r}")
        _, ak, stamp, expiration, signed, _signature = parts
        sk = self.keys.get(ak)
        if sk is None:  # real services echo the unknown key id; the source must not repeat it
            return ak, _bce(403, "InvalidAccessKeyId", f"The access key id {ak} does not exist")
        try:
            when = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
            ttl = int(expiration)
        except ValueError:
            return ak, _bce(400, "InvalidHTTPAuthHeader", f"bad timestamp or expiration in {auth[:60]!r}")
        now = self.now()
        if when + ttl < now or when > now + FUTURE_TOLERANCE:
            return ak, _bce(400, "RequestExpired", f"Request has expired. Timestamp date is {stamp}")
        names = [n for n in signed.split(";") if n]
        if names and ("host" not in names or ("x-bce-date" in headers and "x-bce-date" not in names)):
            return ak, _bce(400, "InvalidHTTPAuthHeader", "host and x-bce-date must be signed")
        split = urlsplit(target)
        canonical_uri = bce_utils.normalize_string(unquote(split.path).encode("utf-8"), False)
        params = {k.encode(): v.encode() for k, v in parse_qsl(split.query, keep_blank_values=True)}
        if names:
            signed_headers = {n.encode(): headers.get(n, "").encode() for n in names}
            to_sign = [n.encode() for n in names]
        else:  # the SDK's own client signs BCE's default set and names none
            signed_headers = {k.encode(): v.encode() for k, v in headers.items()}
            to_sign = None
        expected = bce_v1_signer.sign(BceCredentials(ak, sk), method.encode(), canonical_uri, signed_headers, params,
                                      timestamp=int(when), expiration_in_seconds=ttl, headers_to_sign=to_sign)
        if not hmac.compare_digest(expected.decode(), auth):
            return ak, _bce(400, "SignatureDoesNotMatch",
                            f"The request signature we calculated does not match the signature you provided "
                            f"(auth string prefix bce-auth-v1/{ak}/{stamp}/{expiration})")
        return ak, None

    # ---- answering

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Error:
        ak, refused = self.verify(method, target, headers)
        with self.lock:
            verdict = "ok" if refused is None else str(refused.body["code"] if isinstance(refused.body, dict) else "")
            self.seen.append(Seen(method, target, headers, body, ak, verdict))
        if refused is not None:
            if self.auth_errors == "qianfan":
                return qianfan_error(14, "IAM Certification failed")
            return refused
        split = urlsplit(target)
        if method == "POST" and split.path == V2_ROUTE:
            return self._answer_v2(dict(parse_qsl(split.query)).get("Action"), body)
        if method != "POST" or split.path != JOB_DETAIL:
            return _bce(404, "NoSuchAPI", f"no API at {method} {split.path}")
        try:
            req = json.loads(body)
            key = (req["taskId"], req["jobId"])
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in key):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return qianfan_error(500001, "param invalid")
        with self.lock:
            script = self.jobs.get(key)
            if not script:
                return qianfan_error(500001, "param invalid")
            pos = self.positions[key]
            self.positions[key] = min(pos + 1, len(script) - 1)
            item = script[pos]
        if isinstance(item, Error):
            return item
        return Error(200, {"log_id": uuid.uuid4().hex, "result": item})


    def _answer_v2(self, action: str | None, body: bytes) -> Error:
        """V2 DescribeFineTuningTask; errors in BCE's common form {requestId, code, message} (the code names for a
        missing task or a bad body are this fake's: Baidu's pages do not list them)."""
        if action == V2_LIST:
            return self._list_v2(body)
        if action != V2_DETAIL:
            return _bce(400, "InvalidAction", f"unknown Action {action!r}")
        try:
            task = json.loads(body)["taskId"]
            if not isinstance(task, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _bce(400, "InvalidParameter", "taskId must be a string")
        with self.lock:
            script = self.tasks.get(task)
            if not script:
                return _bce(404, "ResourceNotFound", f"task {task} not found")
            pos = self.task_positions[task]
            self.task_positions[task] = min(pos + 1, len(script) - 1)
            item = script[pos]
        if isinstance(item, Error):
            return item
        return Error(200, {"requestId": str(uuid.uuid4()), "result": item})


    def _list_v2(self, body: bytes) -> Error:
        """DescribeFineTuningTasks: one page of the job's tasks in creation order (reversed with pageReverse), from
        `marker` (a taskId: that task starts the page) on; nextMarker is the first task of the next page."""
        try:
            req = json.loads(body)
            job_id, marker = req["jobId"], req.get("marker")
            keys = min(100, int(req.get("maxKeys", 10)))
            if not isinstance(job_id, str) or keys < 1:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return _bce(400, "InvalidParameter", "jobId must be a string, maxKeys a positive integer")
        with self.lock:
            if job_id not in self.job_tasks:
                return _bce(404, "ResourceNotFound", f"job {job_id} not found")
            order = list(self.job_tasks[job_id])
            if req.get("pageReverse"):
                order.reverse()
            ids = [t for t, _ in order]
            start = ids.index(marker) if marker in ids else 0
            page = order[start:start + keys]
            items = []
            for task_id, created in page:
                script = self.tasks[task_id]
                now = script[min(self.task_positions[task_id], len(script) - 1)]
                summary = {k: v for k, v in now.items() if k not in ("runProgress", "vdlLink")} \
                    if isinstance(now, dict) else {}
                items.append({**summary, "taskId": task_id, "jobId": job_id, "createDate": created,
                              "finishDate": "0000-00-00T00:00:00Z"})
        more = start + keys < len(order)
        info: dict[str, Any] = {"marker": marker or "", "maxKeys": keys, "isTruncated": more}
        if more:
            info["nextMarker"] = ids[start + keys]
        return Error(200, {"requestId": str(uuid.uuid4()), "result": {"taskList": items, "pageInfo": info}})


# ---- test data: keys, a job, a secret resolver

AK, SK = "AKqianfanTEST0123456789abcdef", "SKqianfanTESTsecret9876543210zyx"
TASK, JOB = 7263, 4612
START = "2023-10-20 18:19:09"  # China Standard Time, as Qianfan answers
START_TS = datetime(2023, 10, 20, 10, 19, 9, tzinfo=UTC).timestamp()
LABEL = f"{TASK}/{JOB}"


def job(status: str = "RUNNING", progress: float = 0, run_time: int = 0, train_time: int = 0, *,
        finish: str = "0000-00-00 00:00:00", finish_key: str = "finishTime", **extra: Any) -> dict[str, Any]:
    """A jobDetail `result` shaped like the seed's examples."""
    return {"id": JOB, "description": "", "taskId": TASK, "taskName": "sdk_test_7", "version": 5,
            "jobRunType": 0, "trainType": "ernieBotLite-v201-8k", "trainMode": "SFT", "peftType": "ALL",
            "trainStatus": status, "progress": progress, "runTime": run_time, "trainTime": train_time,
            "startTime": START, finish_key: finish,
            "vdlLink": "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=abc", **extra}


V2_TASK = "task-0tgmn4a7h4i6"  # the id in Baidu's DescribeFineTuningTask example


def task(status: str = "Running", progress: str | None = "0%", **extra: Any) -> dict[str, Any]:
    """A DescribeFineTuningTask `result`; runProgress is sent only while Running (Baidu's doc)."""
    out = {"taskId": V2_TASK, "jobId": "job-hy5wdm6b9ewq", "jobName": "sft_llama", "jobDescription": "",
           "model": "ERNIE-Speed-8K", "trainMode": "SFT", "parameterScale": "LoRA", "runStatus": status,
           "vdlLink": "https://console.bce.baidu.com/qianfan/visualdl/index?displayToken=v2", **extra}
    if progress is not None and status == "Running":
        out["runProgress"] = progress
    return out


class Secrets:
    """A resolve_secret that reads a dict {(secret name, key): value} and records what it was asked."""

    def __init__(self, data: dict[tuple[str, str], str | None] | None = None):
        self.data = {("qianfan", "QIANFAN_ACCESS_KEY"): AK, ("qianfan", "QIANFAN_SECRET_KEY"): SK} \
            if data is None else data
        self.calls: list[dict[str, str]] = []

    async def __call__(self, ref: dict[str, str]) -> str | None:
        self.calls.append(dict(ref))
        return self.data.get((ref["name"], ref["key"]))


def _bce(status: int, code: str, message: str) -> Error:
    return Error(status, {"requestId": str(uuid.uuid4()), "code": code, "message": message})


def _handler(fake: FakeQianfan) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            out = fake.answer(self.command, self.path, headers, body)
            text = isinstance(out.body, str)
            data = (out.body if text else json.dumps(out.body, ensure_ascii=False)).encode()
            self.send_response(out.status)
            self.send_header("Content-Type", "text/html" if text else "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = _serve

        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(fake.now() if timestamp is None else timestamp, usegmt=True)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@contextmanager
def serve(fake: FakeQianfan) -> Iterator[FakeQianfan]:
    """Run `fake` on 127.0.0.1 (a free port) in a thread; `fake.url` is its base URL while inside."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-qianfan",
                              daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
