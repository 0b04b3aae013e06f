"""MLflow source: metric history of MLflow runs, read incrementally from a tracking server's REST API (2.x and 3.x).

Runs are one run id, or every run of an experiment (by name or id) matching MLflow's own `filter` string, evaluated
by the server on every poll. One `runs/search` (or `runs/get`) per poll lists the runs with each metric's latest
step and timestamp; only a metric whose latest point moved is read, by step windows of
`get-history-bulk-interval` (complete, never sampled: a window that comes back full is split). An idle run costs
nothing beyond the listing. See docs/sources/mlflow.md.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, ClassVar

import httpx

from trainscope.collector.points import Batch, Cursor, Point, RunState
from trainscope.collector.schema import DURATION_PATTERN, MetricFilter, metric_filter_schema, parse_duration
from trainscope.collector.sources import httperrors
from trainscope.collector.sources.base import SourceContext, SourceError

TOKEN_ENV = "MLFLOW_TRACKING_TOKEN"  # the env vars MLflow's own client reads (mlflow/environment_variables.py)
USER_ENV, PASSWORD_ENV = "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"
UNAUTHORIZED_RETRY_AFTER = 300.0  # seconds: rejected credentials are not retried in a storm
# The server's cap on points per run in one get-history-bulk-interval answer (MAX_RESULTS_PER_RUN in
# mlflow/server/handlers.py). A window answered with fewer rows than this is complete; a full one may be sampled.
BULK_MAX = 2500
TARGET = BULK_MAX * 4 // 5  # rows a history window aims at
HISTORY_PAGE = 25_000  # get-history page size for the rare step holding more than BULK_MAX rows
RUNS_PER_PAGE = 1000
MAX_META_KEYS = 64
MIN_STEP = -(2**63)  # MLflow steps are int64 and may be negative
API = "/api/2.0/mlflow"
AJAX = "/ajax-api/2.0/mlflow"  # where MLflow serves get-history-bulk-interval (its UI's endpoint)

# MLflow RunStatus -> the Workload's run state (mlflow/protos/service.proto: RUNNING, SCHEDULED, FINISHED, FAILED,
# KILLED).
STATE_MAP: dict[str, RunState] = {
    "RUNNING": RunState.RUNNING, "SCHEDULED": RunState.RUNNING,
    "FINISHED": RunState.FINISHED, "FAILED": RunState.FAILED, "KILLED": RunState.FAILED,
}
_ACTIVE = frozenset({"RUNNING", "SCHEDULED"})

_SECRET_REF = {"type": "object", "additionalProperties": False, "required": ["name"],
               "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 253,
                                       "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "description": "Secret name."}}}


def _key_prop(default: str, what: str) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[-._a-zA-Z0-9]+$", "default": default,
            "description": f"Key within the Secret holding the {what}."}


class MlflowSource:
    """Metric history of MLflow runs; see docs/sources/mlflow.md."""

    kind: ClassVar[str] = "mlflow"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "description": "Metric history from an MLflow tracking server (REST API 2.x/3.x, self-hosted or Databricks): "
                       "one run (runId) or the runs of an experiment matching a filter, read incrementally.",
        "additionalProperties": False,
        "required": ["trackingUri"],
        "properties": {
            "trackingUri": {"type": "string", "pattern": r"^https?://[^\s/]+(/\S*)?$", "maxLength": 2048,
                            "description": "Tracking server URL, e.g. http://mlflow.mlflow:5000."},
            "runId": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^/\s]+$",
                      "description": "One run's id."},
            "experimentName": {"type": "string", "minLength": 1, "maxLength": 1024,
                               "description": "The experiment whose runs are read, by name."},
            "experimentId": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^/\s]+$",
                             "description": "The experiment whose runs are read, by id."},
            "filter": {"type": "string", "maxLength": 4096,
                       "description": "MLflow search filter over the experiment's runs, as mlflow.search_runs "
                                      "takes it, e.g. \"tags.team = 'nlp' and params.lr = '0.001'\". Evaluated on "
                                      "every poll, so runs that start matching later are picked up."},
            "keys": {**metric_filter_schema(), "description": "Which metric keys are read (globs)."},
            "totalStepsParam": {"type": "string", "minLength": 1, "maxLength": 250,
                                "description": "Run param holding the run's total steps (e.g. max_steps): "
                                               "progress and ETA."},
            "windowSteps": {"type": "integer", "minimum": 1, "maximum": BULK_MAX - 1, "default": 2000,
                            "description": "Steps per history request (complete points, never sampled)."},
            "timeout": {"type": "string", "pattern": DURATION_PATTERN, "default": "30s",
                        "description": "Per-request timeout, e.g. 30s."},
            "tokenSecretRef": {**_SECRET_REF, "description": "Secret holding a bearer token (Databricks or a "
                                                             "token-protected server); default: the operator's "
                                                             f"{TOKEN_ENV}.",
                               "properties": {**_SECRET_REF["properties"], "key": _key_prop("token", "token")}},
            "basicAuthSecretRef": {**_SECRET_REF, "description": "Secret holding a username and password (mlflow "
                                                                 "server --app-name basic-auth); default: the "
                                                                 f"operator's {USER_ENV}/{PASSWORD_ENV}.",
                                   "properties": {**_SECRET_REF["properties"],
                                                  "usernameKey": _key_prop("username", "username"),
                                                  "passwordKey": _key_prop("password", "password")}},
        },
        "oneOf": [{"required": ["runId"]}, {"required": ["experimentName"]}, {"required": ["experimentId"]}],
        "x-kubernetes-validations": [
            {"rule": "(has(self.runId) ? 1 : 0) + (has(self.experimentName) ? 1 : 0) + "
                     "(has(self.experimentId) ? 1 : 0) == 1",
             "message": "set exactly one of runId, experimentName or experimentId"},
            {"rule": "!has(self.filter) || !has(self.runId)", "message": "filter needs an experiment, not a runId"},
            {"rule": "!has(self.tokenSecretRef) || !has(self.basicAuthSecretRef)",
             "message": "set at most one of tokenSecretRef or basicAuthSecretRef"},
        ],
    }

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        chosen = [k for k in ("runId", "experimentName", "experimentId") if config.get(k)]
        if len(chosen) != 1:
            raise SourceError("mlflow: set exactly one of runId, experimentName or experimentId", reason="BadConfig")
        if "filter" in config and "runId" in config:
            raise SourceError("mlflow: filter needs an experiment, not a runId", reason="BadConfig")
        if "tokenSecretRef" in config and "basicAuthSecretRef" in config:
            raise SourceError("mlflow: set at most one of tokenSecretRef or basicAuthSecretRef", reason="BadConfig")
        self.ctx = ctx
        self.uri = str(config["trackingUri"]).rstrip("/")
        self.run_id: str | None = config.get("runId")
        self.experiment_name: str | None = config.get("experimentName")
        self.experiment_id: str | None = config.get("experimentId")
        self.filter: str = config.get("filter") or ""
        self.keys = MetricFilter.from_dict(config.get("keys"))
        self.total_param: str | None = config.get("totalStepsParam")
        self.window = int(config.get("windowSteps", 2000))
        self.timeout = parse_duration(config.get("timeout", "30s"))
        self.token_ref: dict[str, str] | None = config.get("tokenSecretRef")
        self.basic_ref: dict[str, str] | None = config.get("basicAuthSecretRef")
        self._client: httpx.AsyncClient | None = None
        self._secrets: list[str] = []
        self._no_bulk = False  # the server has no get-history-bulk-interval: read metrics/get-history instead
        self.clock = time.time

    # ---- HTTP -----------------------------------------------------------------------------------------------

    async def _secret(self, name: str, key: str) -> str:
        assert self.ctx.resolve_secret is not None
        try:
            value = await self.ctx.resolve_secret({"name": name, "key": key})
        except SourceError:
            raise
        except Exception as e:  # the resolver's message names the Secret, never its value
            raise SourceError(f"cannot read MLflow credentials from Secret {name!r} key {key!r}: {e}",
                              reason="SecretUnavailable", retry_after=60) from e
        return (value or "").strip()

    async def _auth(self) -> httpx.Auth | dict[str, str] | None:
        """Bearer token or basic auth, from the Secret named in the spec or MLflow's own env vars; None: no auth."""
        secrets = self.ctx.resolve_secret is not None
        if self.token_ref is not None and secrets:
            assert self.token_ref is not None
            token = await self._secret(self.token_ref["name"], self.token_ref.get("key", "token"))
        elif self.basic_ref is not None and secrets:
            ref = self.basic_ref
            user = await self._secret(ref["name"], ref.get("usernameKey", "username"))
            password = await self._secret(ref["name"], ref.get("passwordKey", "password"))
            self._secrets = [s for s in (password,) if s]
            return httpx.BasicAuth(user, password)
        else:
            token = os.environ.get(TOKEN_ENV, "").strip()
            if not token and os.environ.get(USER_ENV):
                password = os.environ.get(PASSWORD_ENV, "")
                self._secrets = [s for s in (password,) if s]
                return httpx.BasicAuth(os.environ[USER_ENV], password)
        self._secrets = [token] if token else []
        return {"Authorization": f"Bearer {token}"} if token else None

    def _origin(self) -> str | None:
        """Which credentials are sent and where they come from, for messages (never the credentials); None: none."""
        if self.ctx.resolve_secret is not None and (ref := self.token_ref or self.basic_ref) is not None:
            what = "the bearer token" if self.token_ref is not None else "the username and password"
            return f"{what} from Secret {ref['name']!r}"
        if os.environ.get(TOKEN_ENV, "").strip():
            return f"the bearer token from {TOKEN_ENV}"
        if os.environ.get(USER_ENV):
            return f"the username and password from {USER_ENV} / {PASSWORD_ENV}"
        return None

    def _rejected(self, status: int, name: str) -> str:
        """Why a 401/403 happened, in words a user can act on."""
        origin = self._origin()
        if status == 401 and origin is None:
            return (f"MLflow at {self.uri} requires authentication (HTTP 401 to {name}) and no credentials are set: "
                    f"set basicAuthSecretRef or tokenSecretRef (or {USER_ENV}/{PASSWORD_ENV} or {TOKEN_ENV} on the "
                    "operator)")
        if status == 401:
            return (f"MLflow at {self.uri} rejected {origin} (HTTP 401 to {name}): wrong username or password, or an "
                    "invalid token")
        return (f"MLflow at {self.uri} denied {name} (HTTP 403) to the user of {origin or 'no credentials'}: it has "
                "no permission to read this experiment or run")

    def _redact(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    async def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            auth = await self._auth()
            headers = {"User-Agent": "trainscope-mlflow-source"}
            if isinstance(auth, dict):
                headers.update(auth)
                auth = None
            self._client = httpx.AsyncClient(timeout=self.timeout, headers=headers, auth=auth)
        return self._client

    async def _call(self, method: str, path: str, *, params: Any = None, body: Any = None,
                    missing_ok: bool = False, no_route_ok: bool = False) -> dict[str, Any] | None:
        """One REST call; the JSON object answered, else a SourceError. None for a 404 of MLflow's own
        (RESOURCE_DOES_NOT_EXIST) when `missing_ok`, and for a 404 from a server without the route when
        `no_route_ok`."""
        client = await self._http()
        name = path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1]
        server = f"MLflow at {self.uri}"
        resp = await httperrors.send(client, method, f"{self.uri}{path}", server=server, op=name,
                                     seconds=self.timeout, redact=self._redact, params=params, json=body)
        status = resp.status_code
        if status in (401, 403):
            await self.aclose()  # a rotated Secret is read again on the next poll
            raise SourceError(self._redact(self._rejected(status, name)), reason="Unauthorized",
                              retry_after=UNAUTHORIZED_RETRY_AFTER)
        if (error := httperrors.throttled(resp, server=server, op=name, now=self.clock())) is not None:
            raise error
        try:
            data = json.loads(resp.content)
        except ValueError:
            data = None
        if status == 404 and missing_ok and isinstance(data, dict) and data.get("error_code"):
            return None
        if status == 404 and no_route_ok and not (isinstance(data, dict) and data.get("error_code")):
            return None
        if status >= 400:
            what = data.get("message") if isinstance(data, dict) else resp.text[:200]
            code = data.get("error_code") if isinstance(data, dict) else None
            hint = "" if code else " (is trackingUri an MLflow server?)"
            raise SourceError(self._redact(f"MLflow at {self.uri} answered HTTP {status} to {name}{hint}: "
                                           f"{str(what)[:300]}"), reason="NotFound" if status == 404 else "HttpError")
        if not isinstance(data, dict):
            raise SourceError(self._redact(f"MLflow at {self.uri} answered {name} with something that is not a JSON "
                                           f"object: {resp.text[:200]!r}"), reason="BadResponse")
        return data

    async def aclose(self) -> None:
        """Close the HTTP connection pool (credentials are read again with the next client)."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- listing --------------------------------------------------------------------------------------------

    async def _experiment(self) -> str:
        if self.experiment_id is None:
            assert self.experiment_name is not None
            data = await self._call("GET", f"{API}/experiments/get-by-name",
                                    params={"experiment_name": self.experiment_name}, missing_ok=True)
            exp = (data or {}).get("experiment")
            if not isinstance(exp, dict) or not isinstance(exp.get("experiment_id"), str):
                raise SourceError(f"MLflow experiment {self.experiment_name!r} not found at {self.uri} (or the "
                                  "credentials cannot see it)", reason="NotFound")
            self.experiment_id = exp["experiment_id"]
        return self.experiment_id

    async def _runs(self) -> list[dict[str, Any]]:
        """Every listed run (active and deleted): info + data.metrics (latest points), params, tags."""
        if self.run_id is not None:
            data = await self._call("GET", f"{API}/runs/get", params={"run_id": self.run_id}, missing_ok=True)
            if data is None:
                raise SourceError(f"MLflow run {self.run_id} not found at {self.uri}", reason="NotFound")
            return [_check_run(data.get("run"))]
        exp = await self._experiment()
        runs: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            body: dict[str, Any] = {"experiment_ids": [exp], "filter": self.filter, "run_view_type": "ALL",
                                    "max_results": RUNS_PER_PAGE, "order_by": ["attributes.start_time ASC"]}
            if token:
                body["page_token"] = token
            data = await self._call("POST", f"{API}/runs/search", body=body)
            assert data is not None
            page = data.get("runs", [])
            if not isinstance(page, list):
                raise SourceError(f"MLflow's runs/search answer has no run list: {str(data)[:200]}",
                                  reason="BadResponse")
            runs.extend(_check_run(r) for r in page)
            token = data.get("next_page_token")
            if not token or not page:
                break
        if not runs and self.experiment_name is None:
            # runs/search answers an experiment the user may not read with no runs, not an error (MLflow's auth app
            # filters the experiment ids: mlflow/server/auth/__init__.py, filter_experiment_ids); experiments/get
            # tells a missing experiment (404) and a denied one (403) apart from an empty one.
            if await self._call("GET", f"{API}/experiments/get", params={"experiment_id": exp},
                                missing_ok=True) is None:
                raise SourceError(f"MLflow experiment id {exp!r} not found at {self.uri}", reason="NotFound")
        seen: set[str] = set()
        return [r for r in runs if not (r["info"]["run_id"] in seen or seen.add(r["info"]["run_id"]))]

    # ---- history --------------------------------------------------------------------------------------------

    async def _window(self, run: str, key: str, lo: int, hi: int) -> tuple[list[dict[str, Any]], bool]:
        """Points of `key` with lo <= step <= hi, ordered by step then timestamp, and whether the answer was full
        (then it may be a sample, which still holds the range's first point: the caller narrows the window)."""
        if not self._no_bulk:
            data = await self._call("GET", f"{AJAX}/metrics/get-history-bulk-interval",
                                    params={"run_ids": run, "metric_key": key, "start_step": lo, "end_step": hi,
                                            "max_results": BULK_MAX}, no_route_ok=True)
            if data is not None:
                rows = _metric_list(data, run, key)
                return rows, len(rows) >= BULK_MAX
            self._no_bulk = True  # MLflow before 2.9, or a host that serves only /api/2.0
        return await self._history(run, key, lambda step: lo <= step <= hi), False



    async def _step_history(self, run: str, key: str, step: int) -> list[dict[str, Any]]:
        """All points of `key` at one step holding more than BULK_MAX of them."""
        return await self._history(run, key, lambda s: s == step)

    async def _history(self, run: str, key: str, wanted: Any) -> list[dict[str, Any]]:
        """The points of `key` whose step is `wanted`, from the whole history (metrics/get-history, paged), in
        step then timestamp order."""
        out: list[dict[str, Any]] = []
        token = None
        while True:
            params: dict[str, Any] = {"run_id": run, "metric_key": key, "max_results": HISTORY_PAGE}
            if token:
                params["page_token"] = token
            data = await self._call("GET", f"{API}/metrics/get-history", params=params)
            out.extend(m for m in _metric_list(data, run, key) if isinstance(m.get("step", 0), int)
                       and wanted(m.get("step", 0)))
            token = (data or {}).get("next_page_token")
            if not token:
                return sorted(out, key=lambda m: (m.get("step", 0), m.get("timestamp") or 0))

    async def _read(self, run: str, key: str, lo: int, hi: int, room: int,
                    skipped: dict[str, int]) -> tuple[list[Point], int]:
        """Points of steps lo..hi, at most about `room` of them (whole steps); returns them and the next step.

        The first request asks for the whole range (an incremental poll is one request); when that comes back
        full, windows of `windowSteps` follow, resized toward TARGET rows each (steps may be sparse or repeated)."""
        points: list[Point] = []
        nxt = lo
        width: int | None = None  # None: the whole remaining range
        while nxt <= hi and len(points) < room:
            end = hi if width is None else min(hi, nxt + max(1, min(width, room - len(points))) - 1)
            rows, full = await self._window(run, key, nxt, end)
            if full:
                steps = [r["step"] for r in rows if isinstance(r.get("step"), int)]
                nxt = max(nxt, min(steps, default=nxt))  # nothing is logged before the first (kept) point
                if end > nxt:
                    width = self.window if width is None else max(1, min(width, end - nxt + 1) // 2)
                    continue
                rows = await self._step_history(run, key, nxt)  # one step holding more than BULK_MAX points
            left = room - len(points)
            if len(rows) > left:  # stop at a step boundary near `room` (the whole-history fallback answers it all)
                cut = rows[max(left, 1)]["step"]
                if cut > rows[0]["step"]:
                    rows, end = [r for r in rows if r["step"] < cut], cut - 1
            points.extend(_points(rows, run, key, skipped))
            span = end - nxt + 1
            nxt = end + 1
            if width is not None:  # aim the next window at TARGET rows, growing at most 16x at a time
                width = max(1, min(span * 16, span * TARGET // max(len(rows), 1)))
        return points, nxt

    # ---- poll -----------------------------------------------------------------------------------------------

    async def poll(self, cursor: Cursor | None) -> Batch:
        """Points after `cursor` from every listed run, at most about ctx.max_batch_points of them."""
        old = cursor.get("runs", {}) if isinstance(cursor, dict) else {}
        state: dict[str, dict[str, Any]] = {r: json.loads(json.dumps(v)) for r, v in old.items()
                                             if isinstance(v, dict)}
        runs = await self._runs()
        limit = self.ctx.max_batch_points
        points: list[Point] = []
        skipped: dict[str, int] = {}
        notes: list[str] = []
        more = False
        for run in runs:
            info = run["info"]
            rid = info["run_id"]
            if info.get("lifecycle_stage") == "deleted":
                if rid not in state:
                    continue  # deleted before this source read it: not ours to report
                state[rid]["deleted"] = True
                notes.append(f"run {rid} was deleted in MLflow: its stored points are kept, nothing more is read")
                continue
            keys: dict[str, list[Any]] = state.setdefault(rid, {}).setdefault("keys", {})
            for m in run.get("data", {}).get("metrics", []) or []:
                key, step, ts = m.get("key"), m.get("step", 0), m.get("timestamp")
                if not isinstance(key, str) or not self.keys.allows(key) or isinstance(step, bool) \
                        or not isinstance(step, int):
                    continue
                seen = keys.get(key)  # [next step to read, latest step seen, latest timestamp seen]
                if seen is not None and seen[1:] == [step, ts]:
                    continue  # the metric's newest point is unchanged: nothing new
                if more or len(points) >= limit:
                    more = True
                    continue
                nxt = int(seen[0]) if seen else None
                lo = MIN_STEP if nxt is None else min(nxt, step)  # a re-logged newest step is read again
                if nxt is not None and step < nxt - 1:
                    notes.append(f"run {rid} metric {key} now ends at step {step}, before the {nxt - 1} already read")
                if lo <= step:
                    got, reached = await self._read(rid, key, lo, step, limit - len(points), skipped)
                    points.extend(got)
                else:
                    reached = step + 1
                done = reached > step
                keys[key] = [reached if nxt is None else max(reached, nxt), step if done else None,
                             ts if done else None]
                more |= not done
        return self._batch(runs, points, {"runs": state}, more, skipped, notes)

    def _batch(self, runs: list[dict[str, Any]], points: list[Point], cursor: dict[str, Any], more: bool,
               skipped: dict[str, int], notes: list[str]) -> Batch:
        """Run metadata (status, params, tags), the combined state and total steps around the points."""
        meta: dict[str, dict[str, Any]] = {}
        live = [r for r in runs if r["info"].get("lifecycle_stage") != "deleted"]
        totals: list[int] = []
        for run in runs:
            info, data = run["info"], run.get("data") or {}
            rid = info["run_id"]
            if info.get("lifecycle_stage") == "deleted":
                if rid in cursor["runs"]:
                    meta[rid] = {"deleted": True, "status": info.get("status")}
                continue
            params = _pairs(data.get("params"))
            entry = {"run_name": info.get("run_name"), "status": info.get("status"),
                     "experiment_id": info.get("experiment_id"), "user_id": info.get("user_id"),
                     "start_time": info.get("start_time"), "end_time": info.get("end_time"),
                     "url": f"{self.uri}/#/experiments/{info.get('experiment_id')}/runs/{rid}",
                     "params": params, "tags": _pairs(data.get("tags"))}
            meta[rid] = {k: v for k, v in entry.items() if v not in (None, {})}
            if self.total_param and (total := _int_param(params.get(self.total_param))) is not None:
                totals.append(total)
        for run in runs:
            status = run["info"].get("status")
            if status is not None and status not in STATE_MAP:
                notes.append(f"run {run['info']['run_id']} has a status this source does not know: {status!r}")
        if not live:
            notes.append(f"no live MLflow run matches yet ({self._what()})")
        info = {"runs": len(live), "trackingUri": self.uri}
        return Batch(points=points, cursor=cursor, state=_combined_state(live), total_steps=max(totals, default=None),
                     more=more, skipped=skipped, notes=notes, info=info, runs=meta)

    def _what(self) -> str:
        if self.run_id:
            return f"run {self.run_id}"
        exp = self.experiment_name or self.experiment_id
        return f"experiment {exp!r}" + (f" with filter {self.filter!r}" if self.filter else "")


# ---- helpers ------------------------------------------------------------------------------------------------------


def _check_run(run: Any) -> dict[str, Any]:
    info = run.get("info") if isinstance(run, dict) else None
    if not isinstance(info, dict) or not isinstance(info.get("run_id") or info.get("run_uuid"), str):
        raise SourceError(f"MLflow answered with a run that has no id: {str(run)[:200]}", reason="BadResponse")
    info.setdefault("run_id", info.get("run_uuid"))  # MLflow 1.x named it run_uuid only
    data = run.get("data")
    if data is not None and not isinstance(data, dict):
        raise SourceError(f"MLflow's run {info['run_id']} has data that is not an object", reason="BadResponse")
    return run


def _metric_list(data: Any, run: str, key: str) -> list[dict[str, Any]]:
    rows = data.get("metrics", []) if isinstance(data, dict) else None  # an empty history is answered as {}
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SourceError(f"MLflow's history of {key!r} in run {run} is not a list of points: {str(data)[:200]}",
                          reason="BadResponse")
    return rows


_SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}  # protobuf JSON's non-finite doubles


def _points(rows: list[dict[str, Any]], run: str, key: str, skipped: dict[str, int]) -> list[Point]:
    """MLflow metric JSON -> points; timestamps are ms since the epoch; NaN/Infinity arrive as strings."""
    out: list[Point] = []
    for r in rows:
        step, ts, value = r.get("step", 0), r.get("timestamp"), r.get("value")
        if isinstance(value, str):
            value = _SPECIAL.get(value)
        if isinstance(step, bool) or not isinstance(step, int) or isinstance(ts, bool) \
                or not isinstance(ts, int | float) or isinstance(value, bool) or not isinstance(value, int | float):
            skipped["bad_point"] = skipped.get("bad_point", 0) + 1
            continue
        out.append(Point(key, step, ts / 1000.0, float(value), run))
    return out


def _pairs(items: Any) -> dict[str, str]:
    """MLflow's [{"key", "value"}] params/tags, bounded, values cut to 256 characters."""
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        if len(out) >= MAX_META_KEYS:
            break
        if isinstance(item, dict) and isinstance(item.get("key"), str):
            out[item["key"]] = str(item.get("value", ""))[:256]
    return out


def _int_param(text: str | None) -> int | None:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return int(value) if math.isfinite(value) and value >= 1 and value == int(value) else None


def _combined_state(runs: list[dict[str, Any]]) -> RunState | None:
    """Any live run makes the Workload running; otherwise the newest run (by start time) decides."""
    if not runs:
        return None
    if any(r["info"].get("status") in _ACTIVE for r in runs):
        return RunState.RUNNING
    newest = max(runs, key=lambda r: r["info"].get("start_time") or 0)
    return STATE_MAP.get(newest["info"].get("status") or "", RunState.UNKNOWN)

