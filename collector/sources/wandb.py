"""W&B source: the history of W&B runs, read incrementally from W&B's GraphQL API (cloud or self-hosted).

Runs are found by id or by a Mongo-style filter (passed through to the server, as `wandb.Api().runs` does); each
run's history is read as complete rows (`HistoryPage`, never sampled) from the last stored step + 1 up to the
run's newest step, in windows of `pageSize` steps; a long backlog of steps W&B has already exported to parquet is
read from those files instead (collector/sources/wandb_parquet.py). An idle run costs the listing request, plus
one `lastStep` check while it is running. See docs/sources/wandb.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import math
import os
import time
from typing import Any, ClassVar, NamedTuple

import httpx

from trainscope.collector.points import Batch, Columns, Cursor, RawPoint, RunState
from trainscope.collector.schema import (
    DURATION_PATTERN,
    MetricFilter,
    exactly_one_of,
    metric_filter_schema,
    parse_duration,
)
from trainscope.collector.scrub import remember_secret, scrub
from trainscope.collector.sources import httperrors, wandb_parquet
from trainscope.collector.sources.base import SourceContext, SourceError
from trainscope.collector.sources.sink import PointSink
from trainscope.collector.sources.wandb_rows import RowReader, loads, window_rows

DEFAULT_BASE_URL = "https://api.wandb.ai"
API_KEY_ENV = "WANDB_API_KEY"
RUNS_PER_PAGE = 50
UNAUTHORIZED_RETRY_AFTER = 300.0  # seconds: a rejected key is not retried in a storm
MAX_EMPTY_WINDOW_GROWTH = 16  # windows with no rows double, up to pageSize * this (steps logged sparsely)
MAX_CONFIG_KEYS = 64
DEFAULT_PAGES_IN_FLIGHT = 4  # a catch-up's history windows out at once: round trips overlap (the SDK has one)
RAMP_PAGES = 20  # after an HTTP 429 halved the windows out at once, one more comes back per this many pages read

# W&B run state -> the Workload's run state. `crashed` means the heartbeat stopped (it can return to running if
# the process was only cut off); `preempting`/`pending` are alive; `preempted` waits for a resume: unknown.
STATE_MAP: dict[str, RunState] = {
    "running": RunState.RUNNING, "pending": RunState.RUNNING, "preempting": RunState.RUNNING,
    "finished": RunState.FINISHED,
    "failed": RunState.FAILED, "crashed": RunState.FAILED, "killed": RunState.FAILED,
    "preempted": RunState.UNKNOWN,
}
_ACTIVE = frozenset({"running", "pending", "preempting"})

_RUN_FIELDS = ("name displayName state createdAt heartbeatAt historyLineCount group jobType tags "
               "config @include(if: $withConfig)")
RUNS_QUERY = f"""query Runs($entity: String!, $project: String!, $cursor: String, $perPage: Int, $order: String,
    $filters: JSONString, $withConfig: Boolean!) {{
  project(name: $project, entityName: $entity) {{
    runs(filters: $filters, after: $cursor, first: $perPage, order: $order) {{
      edges {{ node {{ {_RUN_FIELDS} }} cursor }}
      pageInfo {{ endCursor hasNextPage }}
    }}
  }}
}}"""
RUN_QUERY = f"""query Run($entity: String!, $project: String!, $name: String!, $withConfig: Boolean!) {{
  project(name: $project, entityName: $entity) {{ run(name: $name) {{ {_RUN_FIELDS} }} }}
}}"""
LAST_STEP_QUERY = """query RunHistoryKeys($entity: String!, $project: String!, $name: String!) {
  project(name: $project, entityName: $entity) { run(name: $name) { historyKeys } }
}"""
HISTORY_QUERY = """query HistoryPage($entity: String!, $project: String!, $run: String!, $minStep: Int64!,
    $maxStep: Int64!, $pageSize: Int!) {
  project(name: $project, entityName: $entity) {
    run(name: $run) { history(minStep: $minStep, maxStep: $maxStep, samples: $pageSize) }
  }
}"""


def _duration(pattern_default: str, description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": DURATION_PATTERN, "default": pattern_default, "description": description}


class WandbSource:
    """History of W&B runs; see docs/sources/wandb.md."""

    kind: ClassVar[str] = "wandb"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "description": "Run history from W&B's GraphQL API (api.wandb.ai or a self-hosted W&B server): one run "
                       "(runId) or every run matching filters, read incrementally as complete rows.",
        "additionalProperties": False,
        "required": ["entity", "project"],
        "properties": {
            "baseUrl": {"type": "string", "pattern": r"^https?://[^\s/]+(/\S*)?$", "maxLength": 2048,
                        "default": DEFAULT_BASE_URL,
                        "description": "W&B API base URL; a self-hosted server's URL (e.g. https://wandb.corp)."},
            "entity": {"type": "string", "minLength": 1, "maxLength": 256,
                       "description": "W&B entity (user or team) that owns the project."},
            "project": {"type": "string", "minLength": 1, "maxLength": 256, "description": "W&B project name."},
            "runId": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": r"^[^/\s]+$",
                      "description": "One run's id (the last part of entity/project/<id>, not its display name)."},
            "filters": {"type": "object", "additionalProperties": True,
                        "description": "MongoDB-style query over runs, exactly as wandb.Api().runs(filters=...) "
                                       "takes it, e.g. {\"config.experiment_name\": \"foo\"} or {\"display_name\": "
                                       "{\"$regex\": \"^llama\"}}; {} is every run of the project. Evaluated by "
                                       "the server on every poll, so runs that start matching later are picked up."},
            "order": {"type": "string", "pattern": r"^[+-]?[A-Za-z0-9_.]+$", "maxLength": 256,
                      "default": "+created_at",
                      "description": "Order of matching runs (read in this order), e.g. +created_at, -heartbeat_at."},
            "keys": {**metric_filter_schema(),
                     "description": "Which history keys become metrics (globs over names flattened with '/')."},
            "pageSize": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1000,
                         "description": "Steps per history request (complete rows, never sampled)."},
            "pagesInFlight": {"type": "integer", "minimum": 1, "maximum": 16, "default": DEFAULT_PAGES_IN_FLIGHT,
                              "description": "History requests out at once while catching up (the next "
                                             "windows are asked for while this one's rows are read)."},
            "timeout": _duration("30s", "Per-request timeout, e.g. 30s."),
            "apiKeySecretRef": {
                "type": "object", "additionalProperties": False, "required": ["name", "key"],
                "description": "Secret in the Workload's namespace holding the W&B API key (default: the "
                               "operator's WANDB_API_KEY).",
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 253, "description": "Secret name.",
                             "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                    "key": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": r"^[-._a-zA-Z0-9]+$",
                            "description": "Key within the Secret."},
                },
            },
            "totalStepsConfigKey": {"type": "string", "minLength": 1, "maxLength": 256,
                                    "description": "Run config key holding the run's total steps (dots for nested "
                                                   "keys, e.g. max_steps or trainer.max_steps): progress and ETA."},
            "staleAfter": _duration("10m", "A running run whose heartbeat is older than this gets a note."),
        },
        **exactly_one_of("runId", "filters"),
    }

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        if ("runId" in config) == ("filters" in config):
            raise SourceError("wandb: set exactly one of runId or filters", reason="BadConfig")
        if not config.get("entity") or not config.get("project"):
            raise SourceError("wandb: entity and project are required", reason="BadConfig")
        if "filters" in config and not isinstance(config["filters"], dict):
            raise SourceError("wandb: filters must be an object (a MongoDB-style query)", reason="BadConfig")
        self.ctx = ctx
        self.base_url = str(config.get("baseUrl") or DEFAULT_BASE_URL).rstrip("/")
        self.entity, self.project = str(config["entity"]), str(config["project"])
        self.run_id: str | None = config.get("runId")
        self.filters: dict[str, Any] | None = config.get("filters")
        self.order = config.get("order") or "+created_at"
        self.keys = MetricFilter.from_dict(config.get("keys"))
        self.page_size = int(config.get("pageSize", 1000))
        self.pages_in_flight = int(config.get("pagesInFlight", DEFAULT_PAGES_IN_FLIGHT))
        self._in_flight = self.pages_in_flight  # halved by each HTTP 429, grown back one by one
        self._read_since = 0  # pages read since the last change of _in_flight
        self.timeout = parse_duration(config.get("timeout", "30s"))
        self.stale_after = parse_duration(config.get("staleAfter", "10m"))
        self.secret_ref: dict[str, str] | None = config.get("apiKeySecretRef")
        self.total_steps_key: str | None = config.get("totalStepsConfigKey")
        self._client: httpx.AsyncClient | None = None
        self._key: str | None = None
        self._rows = RowReader(self.keys)
        self._configs: dict[str, dict[str, Any]] = {}  # run id -> unwrapped config (fetched when due)
        self._seen_states: dict[str, str] | None = None  # run id -> W&B state at the last listing
        self._config_due = True
        self._resume: tuple[str, list[dict[str, Any]], dict[str, int]] | None = None
        self._parquet = wandb_parquet.available()
        self._exports: dict[str, tuple[wandb_parquet.ExportedHistory | None, int]] = {}  # run -> (export, asked at)
        self.clock = time.time
        self._ahead: collections.deque[_Window] = collections.deque()  # windows asked for, in step order
        self._rest: tuple[str, int, int, list[dict[str, Any]]] | None = None  # a page's rows a full batch left

    @property
    def path(self) -> str:
        return f"{self.entity}/{self.project}"

    # ---- HTTP and GraphQL -----------------------------------------------------------------------------------

    async def _api_key(self) -> str:
        if self._key is None:
            key = None
            if self.secret_ref is not None and self.ctx.resolve_secret is not None:
                ref = {"name": self.secret_ref["name"], "key": self.secret_ref["key"]}
                try:
                    key = await self.ctx.resolve_secret(ref)
                except SourceError:
                    raise
                except Exception as e:  # the resolver's message names the Secret, never its value
                    raise SourceError(f"cannot read the W&B API key from Secret {ref['name']!r} key {ref['key']!r}:"
                                      f" {e}", reason="SecretUnavailable", retry_after=60) from e
            else:
                key = os.environ.get(API_KEY_ENV)
            key = (key or "").strip()
            if not key:
                where = self._key_origin() if self._uses_secret() else f"apiKeySecretRef or {API_KEY_ENV}"
                raise SourceError(f"no W&B API key: set {where}", reason="Unauthorized",
                                  retry_after=UNAUTHORIZED_RETRY_AFTER)
            self._key = key
            remember_secret(key)
        return self._key

    def _uses_secret(self) -> bool:
        return self.secret_ref is not None and self.ctx.resolve_secret is not None

    def _key_origin(self) -> str:
        """Where the key comes from, for messages (never the key itself)."""
        if self._uses_secret():
            assert self.secret_ref is not None
            return f"Secret {self.secret_ref['name']!r} key {self.secret_ref['key']!r}"
        return f"the environment variable {API_KEY_ENV}"

    def _redact(self, text: str) -> str:
        return scrub(text.replace(self._key, "***") if self._key else text)

    async def _gql(self, op: str, query: str, variables: dict[str, Any],
                   sent: asyncio.Future[None] | None = None) -> dict[str, Any]:
        """POST one GraphQL operation; return `data`, or raise SourceError with a reason and a backoff hint.
        `sent`: a future set when the request's body has been written (httpcore's trace events)."""
        key = await self._api_key()
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout, auth=httpx.BasicAuth("api", key),
                                             headers={"User-Agent": "trainscope-wandb-source"})
        server = f"W&B at {self.base_url}"
        extensions = {"trace": _tracer(sent)} if sent is not None else None
        resp = await httperrors.send(self._client, "POST", f"{self.base_url}/graphql", server=server, op=op,
                                     seconds=self.timeout, redact=self._redact, extensions=extensions,
                                     json={"operationName": op, "query": query, "variables": variables})
        status = resp.status_code
        if status in (401, 403):
            await self._forget_key()  # a rotated Secret is read again on the next poll
            raise SourceError(f"W&B at {self.base_url} rejected the API key from {self._key_origin()} "
                              f"(HTTP {status}): check that it is valid and can read {self.path}",
                              reason="Unauthorized", retry_after=UNAUTHORIZED_RETRY_AFTER)
        # W&B's own rate-limit headers (docs.wandb.ai, "Rate limit exceeded"): without Retry-After,
        # RateLimit-Reset is the seconds until the project's quota resets
        if (error := httperrors.throttled(resp, server=server, op=op, now=self.clock(),
                                          fallback_header="RateLimit-Reset")) is not None:
            raise error
        if status >= 400:
            hint = " (is baseUrl a W&B server?)" if status == 404 else ""
            raise SourceError(self._redact(f"W&B at {self.base_url} answered HTTP {status} to {op}{hint}: "
                                           f"{resp.text[:200]!r}"), reason="HttpError")
        try:
            body = loads(resp.content)  # W&B writes bare NaN/Infinity, which json.loads accepts
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise SourceError(self._redact(f"W&B at {self.base_url} answered {op} with something that is not a "
                                           f"GraphQL JSON object: {resp.text[:200]!r}"), reason="BadResponse")
        errors = body.get("errors")
        if errors:
            msgs = [e.get("message", str(e)) if isinstance(e, dict) else str(e)
                    for e in (errors if isinstance(errors, list) else [errors])]
            raise SourceError(self._redact(f"W&B answered {op} for {self.path} with errors: {'; '.join(msgs)[:300]}"),
                              reason="GraphQLError")
        data = body.get("data")
        if not isinstance(data, dict):
            raise SourceError(f"W&B answered {op} without data: {resp.text[:200]!r}", reason="BadResponse")
        return data

    async def _forget_key(self) -> None:
        self._key = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        self._drop_ahead()
        await self._forget_key()

    # ---- queries --------------------------------------------------------------------------------------------

    def _project_of(self, data: dict[str, Any], op: str) -> dict[str, Any]:
        project = data.get("project")
        if project is None:
            raise SourceError(f"W&B project {self.path} not found at {self.base_url} (or the API key cannot see "
                              "it)", reason="NotFound")
        if not isinstance(project, dict):
            raise SourceError(f"W&B answered {op} with a project that is not an object", reason="BadResponse")
        return project

    async def _list_runs(self, with_config: bool) -> list[dict[str, Any]]:
        """The runs to read, in order: the one runId, or every run matching the filters (all pages)."""
        base = {"entity": self.entity, "project": self.project, "withConfig": with_config}
        if self.run_id is not None:
            project = self._project_of(await self._gql("Run", RUN_QUERY, {**base, "name": self.run_id}), "Run")
            run = project.get("run")
            if run is None:
                raise SourceError(f"W&B run {self.path}/{self.run_id} not found at {self.base_url}",
                                  reason="NotFound")
            return [_check_node(run)]
        nodes: list[dict[str, Any]] = []
        cursor: str | None = None
        filters = json.dumps(self.filters)
        for _ in range(100_000):
            data = await self._gql("Runs", RUNS_QUERY, {**base, "cursor": cursor, "perPage": RUNS_PER_PAGE,
                                                        "order": self.order, "filters": filters})
            conn = self._project_of(data, "Runs").get("runs")
            try:
                edges, more = conn["edges"], bool(conn["pageInfo"]["hasNextPage"])
                nodes.extend(_check_node(e["node"]) for e in edges)
                cursor = edges[-1]["cursor"] if edges else conn["pageInfo"].get("endCursor")
            except (TypeError, KeyError, IndexError) as e:
                raise SourceError(f"W&B's Runs answer for {self.path} is not a run connection: {str(conn)[:200]}",
                                  reason="BadResponse") from e
            if not more or not edges:
                break
        seen: set[str] = set()  # a run that moved between pages (order by heartbeat) is read once
        return [n for n in nodes if not (n["name"] in seen or seen.add(n["name"]))]

    async def _last_step(self, run: str) -> int:
        data = await self._gql("RunHistoryKeys", LAST_STEP_QUERY,
                               {"entity": self.entity, "project": self.project, "name": run})
        node = self._project_of(data, "RunHistoryKeys").get("run")
        if node is None:
            raise SourceError(f"W&B run {self.path}/{run} not found at {self.base_url}", reason="NotFound")
        keys = node.get("historyKeys") if isinstance(node, dict) else None
        if isinstance(keys, str):  # some servers send the JSON scalar as text
            try:
                keys = json.loads(keys)
            except ValueError:
                keys = None
        if keys is None:
            return -1
        last = keys.get("lastStep", -1) if isinstance(keys, dict) else None
        if isinstance(last, bool) or not isinstance(last, int):
            raise SourceError(f"W&B's historyKeys.lastStep for {self.path}/{run} is not an integer: "
                              f"{str(keys)[:200]}", reason="BadResponse")
        return last

    async def _history(self, run: str, lo: int, hi: int,
                       sent: asyncio.Future[None] | None = None) -> list[dict[str, Any]]:
        """Complete rows with lo <= _step < hi, by step (`samples` = the window, so the server never samples).
        `sent` is set once the request has left (httpcore's trace), so a caller can start its own work then."""
        data = await self._gql("HistoryPage", HISTORY_QUERY, {"entity": self.entity, "project": self.project,
                                                              "run": run, "minStep": lo, "maxStep": hi,
                                                              "pageSize": hi - lo}, sent)
        node = self._project_of(data, "HistoryPage").get("run")
        if node is None:
            raise SourceError(f"W&B run {self.path}/{run} not found at {self.base_url}", reason="NotFound")
        texts = node.get("history") if isinstance(node, dict) else None
        if not isinstance(texts, list):
            raise SourceError(f"W&B's history for {self.path}/{run} is not a list: {str(node)[:200]}",
                              reason="BadResponse")
        if texts and all(map(str.__instancecheck__, texts)):
            # the page's rows as one JSON array (one parse instead of a thousand); the count and types tell that
            # each row was exactly one object, else row by row below, which names the row that is not
            with contextlib.suppress(ValueError, RecursionError):
                rows = loads("[" + ",".join(texts) + "]")
                if len(rows) == len(texts) and set(map(type, rows)) == {dict}:
                    return rows
        rows = []
        for text in texts:
            try:
                row = loads(text) if isinstance(text, str) else text
            except ValueError as e:
                raise SourceError(f"W&B's history row for {self.path}/{run} is not JSON: {str(text)[:200]!r}",
                                  reason="BadResponse") from e
            if not isinstance(row, dict):
                raise SourceError(f"W&B's history row for {self.path}/{run} is not an object: {str(text)[:200]!r}",
                                  reason="BadResponse")
            rows.append(row)
        return rows

    # ---- poll -----------------------------------------------------------------------------------------------

    async def poll(self, cursor: Cursor | None) -> Batch:
        """Points after `cursor` from every matching run, at most ctx.max_batch_points of them."""
        old: dict[str, Any] = cursor.get("runs", {}) if isinstance(cursor, dict) else {}
        new: dict[str, dict[str, Any]] = {r: dict(v) for r, v in old.items() if isinstance(v, dict)}
        resume, self._resume = self._resume, None
        if resume is not None and resume[0] == _cursor_key(cursor):
            nodes, last_steps = resume[1], dict(resume[2])  # the same catch-up, continued: no re-listing
        else:
            with_config = self._config_due
            nodes, last_steps = await self._list_runs(with_config), {}
            if with_config:
                self._configs.update({n["name"]: _unwrap_config(n.get("config")) for n in nodes})
            states = {n["name"]: n.get("state") for n in nodes}
            # config is fetched on the first listing and on the one after a new run or a state change
            self._config_due = self._seen_states is not None and states != self._seen_states and not with_config
            self._config_due |= any(n["name"] not in self._configs for n in nodes)
            self._seen_states = states
        limit = self.ctx.max_batch_points
        points = PointSink()
        skipped: dict[str, int] = {}
        notes: list[str] = []
        more = False
        for node in nodes:
            rid, state = node["name"], node.get("state")
            entry = new.get(rid, {})
            nxt = int(entry.get("next", 0))
            lines = node.get("historyLineCount")
            if rid not in last_steps and state not in _ACTIVE and rid in new and entry.get("lines") == lines \
                    and lines is not None:
                continue  # a settled run, read to its end, unchanged since: costs nothing
            if len(points) >= limit:
                more = True
                break
            last = last_steps[rid] if rid in last_steps else await self._last_step(rid)
            last_steps[rid] = last
            if last + 1 < nxt:  # history was rewritten (W&B rewind): where is unknown, so read it all again
                notes.append(f"run {rid} now ends at step {last}, before the {nxt - 1} already read (rewound?): "
                             "reading its history again from the start")
                nxt = 0
            window, full = self.page_size, False
            export = await self._export(rid, nxt, last)
            while nxt <= last and not full:
                if len(points) >= limit:  # full at a page's end: the next page is the next poll's
                    full = True
                    break
                rest, self._rest = self._rest, None
                if rest is not None and rest[:2] == (rid, nxt):  # the rows a full batch left of its last page
                    hi, rows = rest[2], rest[3]
                else:
                    if export is not None and nxt <= export.end:  # exported steps: from the parquet files
                        got, hi = export.rows(nxt)
                        hi = min(hi, last + 1)
                    else:
                        got, hi = await self._page(rid, nxt, min(nxt + window, last + 1))
                    rows = window_rows(got, nxt, hi, skipped)
                next_window = self.page_size if rows else min(window * 2, self.page_size * MAX_EMPTY_WINDOW_GROWTH)
                if hi <= last and (export is None or hi > export.end):
                    # the next windows are asked for now, while this one's rows become points (and, at a
                    # batch's end, while the collector writes the batch): the server works while this process does
                    await self._read_ahead(rid, hi, next_window, last)
                i = self._rows.read(rows, rid, points, limit, skipped)
                if i < len(rows):  # the batch is full before row i: the rest waits for the next poll
                    full = True
                    nxt = rows[i]["_step"]
                    self._rest = (rid, nxt, hi, rows[i:])
                else:
                    nxt = hi
                window = next_window
            new[rid] = {"next": nxt, "lines": lines if nxt > last else None}
            if full or (len(points) >= limit and nodes[-1] is not node):
                more = True
                break
        out_cursor = {"runs": new}
        if more:
            self._resume = (_cursor_key(out_cursor), nodes, last_steps)
        batch = self._batch(nodes, points.result(), out_cursor, more, skipped, notes, last_steps)
        if not more:  # caught up: the next catch-up starts with pagesInFlight again
            self._in_flight, self._read_since = self.pages_in_flight, 0
        return batch

    async def _read_ahead(self, run: str, lo: int, window: int, last: int) -> None:
        """Ask for `run`'s windows from step `lo` on (`window` steps each, up to `last`) until pagesInFlight are
        out, and return once each new request has left: the server works on them while this process reads."""
        ahead = self._ahead
        if ahead and (ahead[0].run != run or ahead[0].lo != lo or ahead[-1].hi > last + 1):
            self._drop_ahead()
        start = ahead[-1].hi if ahead else lo
        leaving: list[tuple[asyncio.Future[None], asyncio.Future[Any]]] = []
        while len(ahead) < self._in_flight and start <= last:
            hi = min(start + window, last + 1)
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._history(run, start, hi, sent))
            ahead.append(_Window(run, start, hi, task))
            leaving.append((sent, task))
            start = hi
        for sent, task in leaving:  # sent, or failed before it could be (its error is met when it is read)
            await asyncio.wait((sent, task), return_when=asyncio.FIRST_COMPLETED)

    def _drop_ahead(self) -> None:
        while self._ahead:
            task = self._ahead.popleft().task
            task.cancel()
            task.add_done_callback(_retrieve)  # a failed page nobody reads is not an error

    async def _page(self, run: str, lo: int, hi: int) -> tuple[list[dict[str, Any]], int]:
        """The history window from step `lo`, and where it ends: the one asked for ahead when it starts there (its
        end as asked for then), else [lo, hi) asked for now."""
        ahead = self._ahead
        try:
            if ahead and ahead[0].run == run and ahead[0].lo == lo:
                window = ahead.popleft()
                rows, hi = await window.task, window.hi
            else:
                self._drop_ahead()
                rows = await self._history(run, lo, hi)
        except SourceError as e:
            if e.reason == "RateLimited":  # W&B asks us to slow down: half as many requests at once from now on
                self._in_flight, self._read_since = max(1, self._in_flight // 2), 0
            raise
        self._read_since += 1
        if self._in_flight < self.pages_in_flight and self._read_since >= RAMP_PAGES:
            self._in_flight, self._read_since = self._in_flight + 1, 0
        return rows, hi

    async def _export(self, rid: str, nxt: int, last: int) -> wandb_parquet.ExportedHistory | None:
        """The run's exported history when the backlog is long enough to be worth it; asked for again only when
        the run has grown by another MIN_BACKLOG_STEPS since (an older server has none: one query, then quiet)."""
        export, asked = self._exports.get(rid, (None, None))
        if export is not None and nxt <= export.end:
            return export  # already downloaded: read it to its end
        if not self._parquet or last - nxt < wandb_parquet.MIN_BACKLOG_STEPS:
            return None
        if asked is not None and last - asked < wandb_parquet.MIN_BACKLOG_STEPS:
            return None
        export = await wandb_parquet.fetch(self._gql, self.entity, self.project, rid, self.timeout)
        self._exports[rid] = (export, last)
        return export if export is not None and nxt <= export.end else None

    def _batch(self, nodes: list[dict[str, Any]], points: list[RawPoint] | Columns, cursor: dict[str, Any], more: bool,
               skipped: dict[str, int], notes: list[str], last_steps: dict[str, int]) -> Batch:
        """Run metadata, combined state, heartbeat age and total steps around the points."""
        now = self.clock()
        runs: dict[str, dict[str, Any]] = {}
        heartbeat_ages: list[float] = []
        app = "https://wandb.ai" if self.base_url == DEFAULT_BASE_URL else self.base_url
        for n in nodes:
            rid, state = n["name"], n.get("state")
            info: dict[str, Any] = {"display_name": n.get("displayName"), "state": state,
                                    "url": f"{app}/{self.entity}/{self.project}/runs/{rid}",
                                    "created_at": n.get("createdAt"), "heartbeat_at": n.get("heartbeatAt"),
                                    "group": n.get("group"), "job_type": n.get("jobType"), "tags": n.get("tags"),
                                    "history_lines": n.get("historyLineCount")}
            if rid in last_steps:
                info["last_step"] = last_steps[rid]
            if "config" in n and rid in self._configs:
                info["config"] = _config_subset(self._configs[rid], self.total_steps_key)
            runs[rid] = {k: v for k, v in info.items() if v is not None}
            heartbeat = _epoch(n.get("heartbeatAt"))
            if state in _ACTIVE and heartbeat is not None:
                age = max(0.0, now - heartbeat)
                heartbeat_ages.append(age)
                if age > self.stale_after:
                    notes.append(f"run {rid} is {state} but its last heartbeat was {_human(age)} ago")
            if state == "preempted":
                notes.append(f"run {rid} was preempted: waiting for it to resume")
            elif state is not None and state not in STATE_MAP:
                notes.append(f"run {rid} has a state this source does not know: {state!r}")
        if not nodes:
            notes.append(f"no run of {self.path} matches the filters yet")
        if self._in_flight < self.pages_in_flight:
            notes.append(f"W&B answered HTTP 429 while catching up: {self._in_flight} history requests at once for "
                         f"now (pagesInFlight {self.pages_in_flight}; one more per {RAMP_PAGES} pages read)")
        total = None
        if self.total_steps_key:
            values = [v for rid in runs if (v := _total_steps(self._configs.get(rid), self.total_steps_key))]
            total = max(values) if values else None
        info = {"runs": len(nodes), "project": self.path}
        if heartbeat_ages:
            info["heartbeat_age_seconds"] = round(min(heartbeat_ages), 1)
        return Batch(points=points, cursor=cursor, state=_combined_state(nodes), total_steps=total, more=more,
                     skipped=skipped, notes=notes, info=info, runs=runs)


# ---- helpers ------------------------------------------------------------------------------------------------------


class _Window(NamedTuple):
    """A history window [lo, hi) of `run` asked for ahead."""

    run: str
    lo: int
    hi: int
    task: asyncio.Future[list[dict[str, Any]]]


def _tracer(sent: asyncio.Future[None]) -> Any:
    """An httpcore trace callback that sets `sent` once the request's body has been written."""
    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("send_request_body.complete") and not sent.done():
            sent.set_result(None)
    return trace


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def _check_node(node: Any) -> dict[str, Any]:
    if not isinstance(node, dict) or not isinstance(node.get("name"), str) or not node["name"]:
        raise SourceError(f"W&B answered with a run that has no id: {str(node)[:200]}", reason="BadResponse")
    return node


def _cursor_key(cursor: Any) -> str:
    return json.dumps(cursor, sort_keys=True, default=str)


def _combined_state(nodes: list[dict[str, Any]]) -> RunState | None:
    """Any live run makes the Workload running; otherwise the newest run (by createdAt) decides."""
    if not nodes:
        return None
    states = [n.get("state") for n in nodes]
    if any(s in _ACTIVE for s in states):
        return RunState.RUNNING
    newest = max(nodes, key=lambda n: (_epoch(n.get("createdAt")) or 0.0))
    return STATE_MAP.get(newest.get("state") or "", RunState.UNKNOWN)


def _epoch(text: Any) -> float | None:
    """W&B's times are ISO-8601, naive meaning UTC."""
    if not isinstance(text, str):
        return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _human(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _unwrap_config(raw: Any) -> dict[str, Any]:
    """W&B sends config as a JSON string of {key: {"value": v, "desc": ...}}."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    if not isinstance(raw, dict):
        return {}
    return {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}


def _config_lookup(config: dict[str, Any], path: str) -> Any:
    if path in config:
        return config[path]
    value: Any = config
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _total_steps(config: dict[str, Any] | None, path: str) -> int | None:
    value = _config_lookup(config or {}, path)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 1:
        return None
    return int(value) if value == int(value) else None


def _config_subset(config: dict[str, Any], total_key: str | None) -> dict[str, Any]:
    """Top-level scalar config values (not W&B's own `_wandb`), bounded, JSON-safe: kept for the API."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if len(out) >= MAX_CONFIG_KEYS:
            break
        if k.startswith("_"):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if isinstance(v, str):
            out[k] = v[:256]
        elif v is None or isinstance(v, bool | int | float):
            out[k] = v
    if total_key and (v := _total_steps(config, total_key)) is not None:
        out[total_key] = v
    return out
