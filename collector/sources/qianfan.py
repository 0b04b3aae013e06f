"""Baidu Qianfan source: a fine-tuning job's state and progress, signed with BCE auth v1.

A status source: one request per poll. V2 (the current API): `POST /v2/finetuning?Action=DescribeFineTuningTask`
with `{"taskId": "task-…"}` gives runStatus and runProgress ("NN%"). V1 (frozen by Baidu in 2024):
`POST /wenxinworkshop/finetune/jobDetail` with `{"taskId", "jobId"}` gives trainStatus, progress (0-100), runTime
and trainTime. The step of every point is the job's run time in seconds (V2 answers carry none: the seconds since
the source first saw the task), so an unchanged answer writes nothing. See docs/sources/qianfan.md.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import re
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import httpx

from trainscope.collector.points import Batch, Cursor, Point, RunState
from trainscope.collector.schema import DURATION_PATTERN, parse_duration
from trainscope.collector.scrub import remember_secret, scrub
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.bce_auth import (
    Credentials,
    authorization,
    canonical_query,
    canonical_time,
    uri_encode,
)

DEFAULT_ENDPOINT = "https://qianfan.baidubce.com"
JOB_DETAIL_PATH = "/wenxinworkshop/finetune/jobDetail"
# V2: the route and Action the qianfan SDK sends (qianfan/consts.py FineTuneV2BaseRouteAPI, FineTuneTaskDetailAction;
# qianfan/resources/console/finetune.py FineTune.V2.task_detail) and Baidu's doc of DescribeFineTuningTask.
V2_ROUTE, V2_DETAIL_ACTION = "/v2/finetuning", "DescribeFineTuningTask"
# The job's task list (FineTuneTaskListAction, FineTune.V2.task_list; Baidu's "获取模型精调任务列表" doc,
# cloud.baidu.com/doc/qianfan/s/Hmh4suxsa): body {jobId, marker, maxKeys <= 100, pageReverse}, answer
# result{taskList[{taskId, runStatus, createDate, ...}], pageInfo{marker, maxKeys, isTruncated, nextMarker}}.
V2_LIST_ACTION, LIST_PAGE, LIST_PAGES = "DescribeFineTuningTasks", 100, 20
ENV_ACCESS_KEY, ENV_SECRET_KEY = "QIANFAN_ACCESS_KEY", "QIANFAN_SECRET_KEY"  # the Qianfan SDK's names
SIGN_EXPIRATION = 300  # seconds a signature stays valid (the Qianfan SDK's default)
SIGNED_HEADERS = ("content-type", "host", "x-bce-date")  # what the Qianfan SDK signs
NOT_SET = "0000-00-00 00:00:00"  # Qianfan's "no time yet" (finishTime of a job that has not ended)
MAX_CLOCK_SKEW = 300.0  # seconds between our clock and the server's Date beyond which auth failures are ClockSkew
AUTH_RETRY_AFTER = 300.0  # wrong keys do not fix themselves: ask the collector to back off slowly
RATE_RETRY_AFTER = 60.0

METRIC_PROGRESS, METRIC_RUN_TIME, METRIC_TRAIN_TIME = "qianfan/progress", "qianfan/runTime", "qianfan/trainTime"

# trainStatus -> (run state, label kept in the run's metadata). STOP (stopped by a user) is not a success: the
# Workload shows Failed, as Argo shows a stopped Workflow; the label and a note keep "stopped" visible.
_STATES: dict[str, tuple[RunState, str]] = {
    "RUNNING": (RunState.RUNNING, "running"),
    "FINISH": (RunState.FINISHED, "finished"),
    "FAIL": (RunState.FAILED, "failed"),
    "STOP": (RunState.FAILED, "stopped"),
}
# V2 runStatus (Baidu's DescribeFineTuningTask doc; qianfan/resources/console/consts.py TrainStatus). Waiting is
# queued: alive, so running, with the label saying so.
_V2_STATES: dict[str, tuple[RunState, str]] = {
    "Running": (RunState.RUNNING, "running"),
    "Waiting": (RunState.RUNNING, "waiting"),
    "Done": (RunState.FINISHED, "finished"),
    "Failed": (RunState.FAILED, "failed"),
    "Stopped": (RunState.FAILED, "stopped"),
}
_V2_TASK = r"^task-[A-Za-z0-9]+$"
_V2_JOB = r"^job-[A-Za-z0-9]+$"
# Qianfan error codes (the `error_code` of an answer) by what they mean for polling.
_AUTH_CODES = {13, 14, 110, 111}  # service token / IAM certification failed, access token invalid / expired
_PERMISSION_CODES = {6, 336004}
_RATE_CODES = {4, 17, 18, 19, 336100}  # request limits, server high load
_PARAM_CODES = {100, 336001, 336003, 500001}  # invalid parameter ("param invalid": usually a wrong taskId/jobId)
# BCE gateway errors (`{"code", "message", "requestId"}`) about the signature or the request's time.
_BCE_AUTH = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidHTTPAuthHeader",
             "InvalidSessionToken", "Unauthorized"}
_BCE_CLOCK = {"RequestExpired", "RequestTimeTooSkewed"}

_K8S_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_SECRET_KEY = r"^[-._a-zA-Z0-9]+$"


class QianfanSource:
    """One Qianfan fine-tuning job (taskId + jobId): state, progress, run and train time."""

    kind: ClassVar[str] = "qianfan"
    training_steps: ClassVar[bool] = False  # steps are run-time seconds, not training steps
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "description": "A Baidu Qianfan fine-tuning task: its state and progress (V2 DescribeFineTuningTask), or "
                       "with apiVersion v1 a V1 job's state, progress, runTime and trainTime (jobDetail). Requests "
                       "are signed (BCE auth v1) with an IAM access key / secret key.",
        "additionalProperties": False,
        "anyOf": [{"required": ["taskId"]}, {"required": ["jobId"]}],
        "properties": {
            "apiVersion": {"type": "string", "enum": ["v1", "v2"],
                           "description": "Qianfan fine-tuning API: v2 (DescribeFineTuningTask, string task ids "
                                          "task-…) or v1 (the frozen jobDetail API, integer taskId + jobId). Unset: "
                                          "v2, or v1 when taskId is an integer and jobId is set."},
            "taskId": {"x-kubernetes-int-or-string": True,
                       "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _V2_TASK}],
                       "description": "The fine-tuning task's id: task-… (V2), or an integer (V1)."},
            "jobId": {"x-kubernetes-int-or-string": True,
                      "anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _V2_JOB}],
                      "description": "V2: a fine-tuning job (job-…) whose newest task is followed, instead of a "
                                     "taskId. V1: the task's run id (an integer, with the integer taskId)."},
            "endpoint": {"type": "string", "pattern": r"^https?://[^\s/]+(/\S*)?$", "maxLength": 2048,
                         "default": DEFAULT_ENDPOINT,
                         "description": "Base URL of the Qianfan console API (a path prefix is allowed)."},
            "credentialsSecretRef": {
                "type": "object",
                "additionalProperties": False,
                "required": ["name"],
                "description": "Secret in the Workload's namespace holding the IAM access key and secret key "
                               f"(default: the collector's {ENV_ACCESS_KEY} / {ENV_SECRET_KEY} environment "
                               "variables, also used when the Secret cannot be resolved in local mode).",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _K8S_NAME,
                             "description": "Secret name."},
                    "accessKeyKey": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _SECRET_KEY,
                                     "default": ENV_ACCESS_KEY, "description": "Key of the access key in the Secret."},
                    "secretKeyKey": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": _SECRET_KEY,
                                     "default": ENV_SECRET_KEY, "description": "Key of the secret key in the Secret."},
                },
            },
            "timeZone": {"type": "string", "pattern": r"^[+-](0[0-9]|1[0-4]):[0-5][0-9]$", "default": "+08:00",
                         "description": "UTC offset of the job's startTime/finishTime, which carry none "
                                        "(Qianfan answers in China Standard Time, +08:00)."},
            "timeout": {"type": "string", "pattern": DURATION_PATTERN, "default": "10s",
                        "description": "Per-request timeout, e.g. 10s."},
        },
        "x-kubernetes-validations": [
            {"rule": "!has(self.apiVersion) || self.apiVersion != 'v1' || has(self.jobId)",
             "message": "apiVersion v1 needs a jobId"},
            {"rule": "has(self.taskId) || has(self.jobId)",
             "message": "set taskId, or with the V2 API a jobId (job-…) to follow the job's newest task"},
            {"rule": "!has(self.apiVersion) || self.apiVersion != 'v2' || !has(self.taskId) || !has(self.jobId)",
             "message": "with apiVersion v2 set taskId (task-…) or jobId (job-…), not both"},
        ],
    }

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        task = config.get("taskId")
        v1_ids = isinstance(task, int) and not isinstance(task, bool) and "jobId" in config
        self.version = config.get("apiVersion") or ("v1" if v1_ids else "v2")
        self.task_id: int | str
        self.job_id: int | None
        self.follow: str | None = None  # V2: the job whose newest task is read (the task is found every poll)
        if self.version == "v1":
            try:
                self.task_id, self.job_id = int(config["taskId"]), int(config["jobId"])
            except (KeyError, TypeError, ValueError) as e:
                raise SourceError("qianfan: with apiVersion v1, taskId and jobId must be integers",
                                  reason="BadConfig") from e
            self.label = f"{self.task_id}/{self.job_id}"
        else:
            job = config.get("jobId")
            ok_task = isinstance(task, str) and re.fullmatch(_V2_TASK, task) is not None
            ok_job = isinstance(job, str) and re.fullmatch(_V2_JOB, job) is not None
            if (task is None) == (job is None) or (task is not None and not ok_task) or (job is not None and
                                                                                        not ok_job):
                raise SourceError(f"qianfan: the V2 API takes a taskId like task-0tgmn4a7h4i6, or a jobId like "
                                  f"job-hy5wdm6b9ewq to follow the job's newest task, not both (got taskId {task!r}, "
                                  f"jobId {job!r}); for a V1 job set apiVersion: v1", reason="BadConfig")
            self.task_id, self.job_id = task or "", None
            self.follow = job
            self.label = task or job
        self.ctx = ctx
        url = httpx.URL(str(config.get("endpoint", DEFAULT_ENDPOINT)).rstrip("/"))
        self.endpoint = f"{url.scheme}://{url.netloc.decode('ascii')}{url.path.rstrip('/')}"
        self._host = url.netloc.decode("ascii")
        self._path = url.path.rstrip("/") + (JOB_DETAIL_PATH if self.version == "v1" else V2_ROUTE)
        self._params = {} if self.version == "v1" else {"Action": V2_DETAIL_ACTION}
        self._url = f"{url.scheme}://{self._host}{uri_encode(self._path, keep_slash=True)}"
        if self._params:
            self._url += "?" + canonical_query(self._params)
        self.timeout = parse_duration(config.get("timeout", "10s"))
        self.tz = _utc_offset(config.get("timeZone", "+08:00"))
        ref = config.get("credentialsSecretRef") or {}
        self.secret_name: str | None = ref.get("name")
        self.access_key_key: str = ref.get("accessKeyKey", ENV_ACCESS_KEY)
        self.secret_key_key: str = ref.get("secretKeyKey", ENV_SECRET_KEY)
        self._creds: Credentials | None = None
        self._held: list[Credentials] = []  # every key pair this source has held, blanked out of error text
        self._client: httpx.AsyncClient | None = None

    def __repr__(self) -> str:
        return (f"QianfanSource(apiVersion={self.version}, taskId={self.task_id}, jobId={self.follow or self.job_id}, "
                f"endpoint={self.endpoint!r})")

    async def poll(self, cursor: Cursor | None) -> Batch:
        """Ask for the job's detail once; points only when the answer changed since `cursor`."""
        try:
            return await self._poll(cursor)
        except SourceError as e:
            raise SourceError(self._scrub(str(e)), reason=e.reason, retry_after=e.retry_after) from None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- credentials

    async def _credentials(self) -> Credentials:
        """The keys from the Secret, else from the environment; kept until an auth failure drops them."""
        if self._creds is not None:
            return self._creds
        ak = sk = None
        where = f"environment variables {ENV_ACCESS_KEY} / {ENV_SECRET_KEY}"
        if self.secret_name and self.ctx.resolve_secret is not None:
            where = (f"Secret {self.ctx.namespace}/{self.secret_name} (keys {self.access_key_key}, "
                     f"{self.secret_key_key}) or " + where)
            try:
                ak = await self.ctx.resolve_secret({"name": self.secret_name, "key": self.access_key_key})
                sk = await self.ctx.resolve_secret({"name": self.secret_name, "key": self.secret_key_key})
            except Exception as e:  # the resolver's own errors name the Secret, never its values
                raise SourceError(f"cannot read Secret {self.ctx.namespace}/{self.secret_name}: "
                                  f"{type(e).__name__}: {str(e)[:200]}", reason="SecretUnavailable",
                                  retry_after=AUTH_RETRY_AFTER) from None
        ak = (ak or os.environ.get(ENV_ACCESS_KEY) or "").strip()  # a Secret made from a file often ends in \n
        sk = (sk or os.environ.get(ENV_SECRET_KEY) or "").strip()
        if not ak or not sk:
            raise SourceError(f"no Qianfan access key / secret key: set them in the {where}",
                              reason="MissingCredentials", retry_after=AUTH_RETRY_AFTER)
        self._creds = Credentials(ak, sk)
        remember_secret(ak)
        remember_secret(sk)
        self._held.append(self._creds)
        return self._creds

    def _scrub(self, text: str) -> str:
        """Error text with the keys blanked out, whatever a server or a resolver echoed back."""
        secrets = {k for c in self._held for k in (c.access_key, c.secret_key) if len(k) >= 4}
        for secret in sorted(secrets, key=len, reverse=True):
            text = text.replace(secret, "<redacted>")
        return scrub(text)

    # ---- one request

    async def _request(self, creds: Credentials, action: str | None = None,
                       payload: dict[str, Any] | None = None) -> tuple[httpx.Response, float]:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, follow_redirects=False)
        body = json.dumps(self.request_body() if payload is None else payload, separators=(",", ":")).encode()
        params, url = self._params, self._url
        if action is not None:  # another V2 action on the same route: the query (and so the signature) differs
            params = {"Action": action}
            url = self._url.split("?", 1)[0] + "?" + canonical_query(params)
        now = time.time()
        headers = {"Host": self._host, "Content-Type": "application/json", "x-bce-date": canonical_time(now)}
        headers["Authorization"] = authorization(creds, "POST", self._path, headers=headers, params=params,
                                                 timestamp=now, expiration=SIGN_EXPIRATION,
                                                 signed_headers=SIGNED_HEADERS)
        what = f"Qianfan at {self.endpoint}"
        try:
            resp = await self._client.post(url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise SourceError(f"{what} did not answer within {self.timeout:g}s", reason="Timeout") from None
        except httpx.ConnectError as e:
            raise SourceError(f"cannot connect to {what}: {e}", reason="Unreachable") from None
        except httpx.HTTPError as e:
            raise SourceError(f"request to {what} failed: {type(e).__name__}: {e}", reason="Unreachable") from None
        return resp, now

    async def _call(self, creds: Credentials, action: str, body: dict[str, Any]) -> dict[str, Any]:
        """One V2 action; its `result` object, else a SourceError."""
        resp, sent_at = await self._request(creds, action, body)
        answer, result = self._result(resp, sent_at, action)
        result["__requestId"] = answer.get("requestId") or answer.get("log_id")
        return result

    def _result(self, resp: httpx.Response, sent_at: float, op: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """An answer to `op` and its `result` object (V1 and V2 wrap it alike), else a SourceError saying what came."""
        try:
            answer = resp.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            reason = "HttpError" if resp.status_code >= 400 else "BadResponse"
            raise SourceError(f"Qianfan answered HTTP {resp.status_code} to {op} with something that is not a "
                              f"JSON object: {resp.text[:200]!r}", reason=reason)
        if answer.get("error_code") not in (None, 0) or (resp.status_code >= 400 and "result" not in answer):
            raise self._api_error(answer, resp, sent_at)
        result = answer.get("result")
        if not isinstance(result, dict):
            raise SourceError(f"Qianfan's {op} answer has no result object: {str(answer)[:200]}",
                              reason="BadResponse")
        return answer, result

    async def _newest_task(self, creds: Credentials) -> dict[str, Any] | None:
        """The followed job's newest task (latest createDate; on a tie the later one listed), from every page of
        DescribeFineTuningTasks; None while the job has no task."""
        assert self.follow is not None
        newest: tuple[str, int, dict[str, Any]] | None = None
        body: dict[str, Any] = {"jobId": self.follow, "maxKeys": LIST_PAGE}
        for page in range(LIST_PAGES):
            result = await self._call(creds, V2_LIST_ACTION, body)
            tasks, info = result.get("taskList"), result.get("pageInfo") or {}
            if not isinstance(tasks, list) or not isinstance(info, dict):
                raise SourceError(f"Qianfan's {V2_LIST_ACTION} answer for job {self.follow} has no taskList: "
                                  f"{str(result)[:200]}", reason="BadResponse")
            for i, t in enumerate(tasks):
                if isinstance(t, dict) and isinstance(t.get("taskId"), str):
                    key = (str(t.get("createDate") or ""), page * LIST_PAGE + i, t)
                    newest = key if newest is None or key[:2] > newest[:2] else newest
            nxt = info.get("nextMarker")
            if not info.get("isTruncated") or not isinstance(nxt, str) or not nxt or nxt == body.get("marker"):
                break
            body = {**body, "marker": nxt}
        return None if newest is None else newest[2]

    def request_body(self) -> dict[str, Any]:
        """The JSON body of the detail request (what the qianfan SDK's task_detail / get_job send)."""
        if self.version == "v1":
            return {"taskId": self.task_id, "jobId": self.job_id}
        return {"taskId": self.task_id}

    async def _poll(self, cursor: Cursor | None) -> Batch:
        creds = await self._credentials()
        if self.version == "v2":
            return await self._poll_v2(creds, cursor)
        resp, sent_at = await self._request(creds)
        answer, result = self._result(resp, sent_at, self._op)
        return self._batch(result, cursor, answer.get("log_id"))

    async def _poll_v2(self, creds: Credentials, cursor: Cursor | None) -> Batch:
        """DescribeFineTuningTask of the task, or of the followed job's newest task (found first: two requests)."""
        last = cursor if isinstance(cursor, dict) else {}
        if self.follow is not None:
            newest = await self._newest_task(creds)
            if newest is None:
                return Batch(points=[], cursor=last, notes=[f"job {self.follow} has no task yet"],
                             info={"jobId": self.follow})
            if newest["taskId"] != self.task_id:
                self.task_id = self.label = newest["taskId"]
            if last.get("task") != self.task_id:
                last = {}  # a new task of the job: a new run, read from its start
        result = await self._call(creds, V2_DETAIL_ACTION, {"taskId": self.task_id})
        batch = self._batch_v2(result, last, result.pop("__requestId", None))
        if self.follow is not None:
            batch.cursor["task"] = self.task_id
            batch.info["followedJobId"] = self.follow
        return batch

    @property
    def _op(self) -> str:
        return "jobDetail" if self.version == "v1" else V2_DETAIL_ACTION

    def _api_error(self, answer: dict[str, Any], resp: httpx.Response, sent_at: float) -> SourceError:
        """An error answer -> a SourceError saying what to do; wrong keys and clock skew back off slowly."""
        job = f"taskId={self.task_id}" + (f" jobId={self.job_id}" if self.job_id is not None else "")
        if self.follow is not None:
            job = f"jobId={self.follow}" + (f" (newest task {self.task_id})" if self.task_id else "")
        if answer.get("error_code") not in (None, 0):
            code, msg = answer.get("error_code"), str(answer.get("error_msg", ""))[:200]
            said = f"Qianfan answered error_code {code} ({msg!r}) for {job}"
            if answer.get("log_id"):
                said += f" (log_id {answer['log_id']})"
        else:
            code, msg = answer.get("code"), str(answer.get("message", ""))[:200]
            said = f"Qianfan answered HTTP {resp.status_code} {code} ({msg!r}) for {job}"
            if answer.get("requestId"):
                said += f" (requestId {answer['requestId']})"
        skew = _clock_skew(resp, sent_at)
        lowered = msg.lower()
        auth = code in _AUTH_CODES or code in _BCE_AUTH or resp.status_code in (401, 403)
        expired = "expired" in lowered and "token" not in lowered  # not "access token expired" (code 111)
        if code in _BCE_CLOCK or expired or (auth and skew is not None and abs(skew) > MAX_CLOCK_SKEW):
            how = ("check this machine's clock (NTP)" if skew is None else
                   f"this machine's clock is {abs(skew):.0f}s {'behind' if skew > 0 else 'ahead of'} the server's "
                   "Date header: sync it (NTP)")
            return SourceError(f"{said}: the request's time was refused, {how}", reason="ClockSkew",
                               retry_after=AUTH_RETRY_AFTER)
        if auth:
            self._creds = None  # read the Secret again next time: it may have been rotated
            return SourceError(f"{said}: check the access key / secret key (an IAM AK/SK of the account that owns "
                               "the job)", reason="AuthFailed", retry_after=AUTH_RETRY_AFTER)
        if code in _PERMISSION_CODES:
            return SourceError(f"{said}: the key's account may not read this job", reason="PermissionDenied",
                               retry_after=AUTH_RETRY_AFTER)
        if code in _RATE_CODES or resp.status_code == 429:
            return SourceError(f"{said}: rate limited", reason="RateLimited", retry_after=RATE_RETRY_AFTER)
        if code in _PARAM_CODES:
            what = "taskId and jobId (a job of this account, V1 ids)" if self.version == "v1" else \
                "taskId (a task-… id of this account)"
            return SourceError(f"{said}: check {what}", reason="BadRequest", retry_after=AUTH_RETRY_AFTER)
        if self.version == "v2" and resp.status_code == 404:
            what = "job" if self.follow is not None and not self.task_id else "task"
            return SourceError(f"{said}: no such {what} (or this endpoint has no V2 API)", reason="NotFound")
        return SourceError(said, reason="ApiError")

    # ---- the answer -> a batch

    def _batch(self, result: dict[str, Any], cursor: Cursor | None, log_id: Any) -> Batch:
        status = str(result.get("trainStatus", "")).upper()
        state, label = _STATES.get(status, (RunState.UNKNOWN, status.lower() or "unknown"))
        notes: list[str] = []
        if status == "STOP":
            notes.append("the job was stopped (trainStatus STOP): shown as failed")
        elif status not in _STATES:
            notes.append(f"unknown trainStatus {result.get('trainStatus')!r}: run state left unknown")
        progress, run_time, train_time = (_number(result.get(k)) for k in ("progress", "runTime", "trainTime"))
        start = self._time(result.get("startTime"))
        finish = self._time(result.get("finishTime")) or self._time(result.get("finishtime"))
        step = int(run_time) if run_time is not None and run_time >= 0 else None
        if start is not None and run_time is not None:
            ts = start + run_time
        elif finish is not None and state != RunState.RUNNING:
            ts = finish
        else:
            ts = time.time()  # nothing better: the poll's time (an unchanged answer is not written again)
        seen = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()[:16]
        last = cursor if isinstance(cursor, dict) else {}
        changed = last.get("answer") != seen
        if changed and step is not None and last.get("step") == step:
            # Revised at the same runTime (e.g. a finished job's progress 99 -> 100): stamp it with the time it was
            # seen, newer than the stored one, so the store replaces the value instead of keeping the old one.
            ts = max(ts, time.time())
        points: list[Point] = []
        skipped: dict[str, int] = {}
        if step is None:
            skipped["noRunTime"] = 1
            notes.append("the answer has no usable runTime: no points stored")
        elif changed:
            for metric, value in ((METRIC_PROGRESS, progress), (METRIC_RUN_TIME, run_time),
                                  (METRIC_TRAIN_TIME, train_time)):
                if value is not None:
                    points.append(Point(metric, step, ts, value, self.label))
        fraction = None if progress is None else min(1.0, max(0.0, progress / 100.0))
        eta = None
        if state == RunState.FINISHED:
            fraction = 1.0
        elif state == RunState.RUNNING and step and progress and 0 < progress < 100:
            eta = step * (100 / progress - 1)  # the job's average pace since it started
        run = {
            "displayName": result.get("taskName"), "taskId": result.get("taskId", self.task_id),
            "jobId": result.get("id", self.job_id), "taskName": result.get("taskName"),
            "description": result.get("description"), "version": result.get("version"),
            "trainType": result.get("trainType"), "trainMode": result.get("trainMode"),
            "peftType": result.get("peftType"), "jobRunType": result.get("jobRunType"),
            "increConfig": result.get("increConfig"), "vdlLink": result.get("vdlLink"),
            "trainStatus": result.get("trainStatus"), "state": label,
            "startTime": _iso(start), "finishTime": _iso(finish),
        }
        run = {k: v for k, v in run.items() if v is not None or k == "finishTime"}
        info = {"taskId": self.task_id, "jobId": self.job_id, "trainStatus": result.get("trainStatus"),
                "taskName": result.get("taskName"), "vdlLink": result.get("vdlLink"), "logId": log_id}
        return Batch(points=points, cursor={"answer": seen, "step": step}, state=state, progress=fraction,
                     eta_seconds=eta, skipped=skipped, notes=notes,
                     info={k: v for k, v in info.items() if v is not None},
                     runs={self.label: run} if changed else {})

    def _batch_v2(self, result: dict[str, Any], cursor: Cursor | None, request_id: Any) -> Batch:
        """A DescribeFineTuningTask result -> state, progress ("NN%", sent while Running) and a progress point.

        V2 answers carry no run time: a point's step is the seconds since the source first saw the task (kept in
        the cursor), its time the poll's; a new point is written only when the answer changed."""
        status = str(result.get("runStatus") or "")
        state, label = _V2_STATES.get(status, (RunState.UNKNOWN, status.lower() or "unknown"))
        notes: list[str] = []
        if status == "Stopped":
            notes.append("the task was stopped (runStatus Stopped): shown as failed")
        elif status == "Waiting":
            notes.append("the task is queued (runStatus Waiting)")
        elif status not in _V2_STATES:
            notes.append(f"unknown runStatus {result.get('runStatus')!r}: run state left unknown")
        progress = _percent(result.get("runProgress"))
        if state == RunState.FINISHED:
            progress = 100.0
        now = time.time()
        last = cursor if isinstance(cursor, dict) else {}
        first = last.get("first") if isinstance(last.get("first"), int | float) else now
        step = max(0, int(now - first))
        seen = hashlib.sha256(json.dumps(result, sort_keys=True, default=str).encode()).hexdigest()[:16]
        changed = last.get("answer") != seen
        points = [Point(METRIC_PROGRESS, step, now, progress, self.label)] if changed and progress is not None else []
        fraction = None if progress is None else min(1.0, max(0.0, progress / 100.0))
        run = {"displayName": result.get("jobName"), "taskId": result.get("taskId", self.task_id),
               "jobId": result.get("jobId"), "jobName": result.get("jobName"),
               "description": result.get("jobDescription"), "model": result.get("model"),
               "trainMode": result.get("trainMode"), "parameterScale": result.get("parameterScale"),
               "vdlLink": result.get("vdlLink"), "runStatus": result.get("runStatus"), "state": label}
        run = {k: v for k, v in run.items() if v is not None}
        info = {"taskId": self.task_id, "runStatus": result.get("runStatus"), "jobName": result.get("jobName"),
                "vdlLink": result.get("vdlLink"), "requestId": request_id}
        return Batch(points=points, cursor={"answer": seen, "step": step, "first": first}, state=state,
                     progress=fraction, notes=notes, info={k: v for k, v in info.items() if v is not None},
                     runs={self.label: run} if changed else {})

    def _time(self, value: Any) -> float | None:
        """'2023-10-20 18:19:09' in the job's time zone -> epoch seconds; the 0000-00-00 placeholder -> None."""
        if not isinstance(value, str) or not value.strip() or value.strip().startswith(NOT_SET[:10]):
            return None
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=self.tz)).timestamp()


def _utc_offset(text: str) -> timezone:
    """'+08:00' -> a fixed-offset timezone."""
    hours, minutes = text[1:].split(":")
    delta = timedelta(hours=int(hours), minutes=int(minutes))
    return timezone(-delta if text.startswith("-") else delta)


def _number(value: Any) -> float | None:
    """A finite number from the answer (numeric strings too), else None."""
    if isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _percent(value: Any) -> float | None:
    """V2's runProgress "45%" (a bare number too) -> 45.0; None when absent or unreadable."""
    if isinstance(value, str):
        value = value.strip().removesuffix("%").strip()
    out = _number(value)
    return None if out is None else min(100.0, max(0.0, out))


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _clock_skew(resp: httpx.Response, sent_at: float) -> float | None:
    """Server clock minus ours (seconds), from the answer's Date header; None without one."""
    try:
        server = email.utils.parsedate_to_datetime(resp.headers["date"])
    except (KeyError, TypeError, ValueError):
        return None
    return server.timestamp() - sent_at
