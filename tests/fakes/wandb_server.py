"""A W&B GraphQL server fake: real HTTP on 127.0.0.1, a real GraphQL executor (graphql-core), W&B's data model.

It serves what W&B's public API answers for the operations the wandb SDK (0.31, via its wandb-core helper) and
trainscope's `wandb` source send: `Viewer`, `GetDefaultEntity`, `Runs` (Mongo-style `filters`, `order`, cursor
pagination), `Run`, `RunHistoryKeys`, `HistoryPage` (complete rows as JSON text, maxStep exclusive),
`SampledHistoryPage` (AND semantics over keys, maxStep inclusive), `RunParquetHistory` (the run's exported
history as parquet files behind plain URLs, as W&B's signed storage URLs are, plus the rows not yet exported as
`liveData`; see `FakeRun.export`). Queries are parsed and validated against the schema below, so a field or
argument the real server lacks is an error here too. Auth is HTTP Basic `api:<key>`. Faults (HTTP status,
Retry-After, GraphQL `errors` in a 200, garbage bodies, slow answers) are injected per operation; every request is
recorded.

History rows are kept as Python dicts and written with `json.dumps`, which emits bare NaN/Infinity as W&B does.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import datetime as dt
import functools
import json
import math
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from graphql import (
    DocumentNode,
    GraphQLError,
    GraphQLNonNull,
    GraphQLString,
    build_schema,
    execute_sync,
    parse,
    validate,
)
from graphql.execution.executor_throwing_on_incremental import ExecutorThrowingOnIncremental

SDL = """
scalar JSON
scalar JSONString
scalar DateTime
scalar Int64

type Query {
  viewer: User
  project(name: String, entityName: String): Project
}
type User {
  id: ID!
  name: String
  username: String
  entity: String
  email: String
  flags: JSONString
  teams: EntityConnection
}
type EntityConnection { edges: [EntityEdge!]! }
type EntityEdge { node: Entity }
type Entity { name: String! }
type Project {
  id: ID!
  internalId: ID!
  name: String!
  entityName: String!
  readOnly: Boolean
  runCount(filters: JSONString): Int!
  runs(filters: JSONString, after: String, first: Int, order: String): RunConnection
  run(name: String!): Run
}
type RunConnection { edges: [RunEdge!]! pageInfo: PageInfo! totalCount: Int }
type RunEdge { node: Run! cursor: String! }
type PageInfo { startCursor: String endCursor: String hasNextPage: Boolean! hasPreviousPage: Boolean! }
type Run {
  id: ID!
  name: String!
  displayName: String
  projectId: ID!
  tags: [String!]!
  sweepName: String
  state: String
  group: String
  jobType: String
  commit: String
  readOnly: Boolean
  createdAt: DateTime
  heartbeatAt: DateTime
  description: String
  notes: String
  historyLineCount: Int
  user: User
  config: JSONString
  summaryMetrics: JSONString
  systemMetrics: JSONString
  historyKeys(format: String): JSON
  history(samples: Int, minStep: Int64, maxStep: Int64): [String!]!
  sampledHistory(specs: [JSONString!]!): [JSON]!
  parquetHistory(liveKeys: [String!]!): ParquetHistory!
}
type ParquetHistory { parquetUrls: [String!]! liveData: [JSON!]! }
"""

SCHEMA = build_schema(SDL)
QUERY_CACHE_SIZE = 1000  # parsed, validated query documents kept, as gqlgen's default server does (an LRU of 1000)


@functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
def _parsed(query: str) -> tuple[DocumentNode | None, list[GraphQLError]]:
    """`query` parsed and validated against the schema, kept per query text (Go GraphQL servers keep an LRU of
    parsed documents: gqlgen's `handler.NewDefaultServer` sets `lru.New(1000)` as its query cache)."""
    try:
        document = parse(query)
    except GraphQLError as e:
        return None, [e]
    return document, validate(SCHEMA, document)


class _Executor(ExecutorThrowingOnIncremental):
    """graphql-core's executor, with `[String!]` lists of Python strings passed through as they are: String's
    serializer returns a str unchanged, so the answer is the same, without a call per item (a history page holds a
    thousand rows)."""

    def complete_list_value(self, return_type: Any, *args: Any) -> Any:
        result = args[3]  # (field details, info, path, result, ...)
        item = return_type.of_type
        if (isinstance(item, GraphQLNonNull) and item.of_type is GraphQLString and type(result) is list
                and all(type(x) is str for x in result)):
            return result
        return super().complete_list_value(return_type, *args)
_OP_NAME = re.compile(r"\b(?:query|mutation)\s+(\w+)")
T0 = 1_700_000_000.0


def iso(ts: float) -> str:
    """W&B writes times as naive ISO-8601 in UTC, e.g. 2024-01-31T12:00:00."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).replace(tzinfo=None).isoformat(timespec="seconds")


@dataclass
class FakeRun:
    """One W&B run: metadata, config, and history rows (dicts with `_step`, `_timestamp`, `_runtime`)."""

    name: str  # the run id (W&B's `name` field)
    display_name: str = ""
    state: str = "running"
    config: dict[str, Any] = field(default_factory=dict)
    created_at: float = T0
    heartbeat_at: float = T0
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    job_type: str | None = None
    username: str = "alice"
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exported: int = 0  # how many leading rows W&B's history export has written to parquet files
    rows_per_file: int = 100_000
    _files: list[bytes] = field(default_factory=list)  # the export, built when first asked for
    _texts: dict[int, tuple[dict[str, Any], str]] = field(default_factory=dict)  # id(row) -> (a copy, its text)
    _counted: tuple[list | None, int, dict[str, dict[str, int]]] = (None, 0, {})  # rows, how many counted, counts

    def export(self, before_step: int | None = None) -> None:
        """W&B's background export: the history rows before `before_step` (all by default) move into parquet
        files (one per `rows_per_file` rows); `parquetHistory` then serves them as URLs and only the rest as
        liveData."""
        self.exported = len(self.rows) if before_step is None else bisect.bisect_left(self.rows, before_step,
                                                                                      key=_step_of)
        self._files = []

    def parquet_files(self) -> list[bytes]:
        """The exported rows as parquet, as wandb-core reads them (core/internal/runhistoryreader: a `_step` column
        selects rows, every other history key is a column; pyarrow's own typing of the row dicts, so nested
        values are struct columns and a key a row lacks is null)."""
        if not self._files and self.exported:
            import io

            import pyarrow as pa
            import pyarrow.parquet as pq

            for lo in range(0, self.exported, self.rows_per_file):
                buf = io.BytesIO()
                chunk = pa.array(self.rows[lo:min(lo + self.rows_per_file, self.exported)])  # typed over all rows
                pq.write_table(pa.Table.from_struct_array(chunk), buf)
                self._files.append(buf.getvalue())
        return self._files

    def log(self, step: int, ts: float | None = None, **values: Any) -> dict[str, Any]:
        """Append one history row (steps must grow, as wandb.log enforces); returns it."""
        if self.rows and step <= self.rows[-1]["_step"]:
            raise ValueError(f"step {step} is not after {self.rows[-1]['_step']}")
        ts = self.created_at + step if ts is None else ts
        row = {"_step": step, "_runtime": ts - self.created_at, "_timestamp": ts, **values}
        self.rows.append(row)
        self.key_counts()  # counted as written, as W&B does
        self.summary.update({k: v for k, v in values.items()})
        self.heartbeat_at = max(self.heartbeat_at, ts)
        return row

    def text(self, row: dict[str, Any]) -> str:
        """A history row as the JSON text W&B serves (its history is kept as JSON lines, written once): kept per
        row while the row is unchanged (tests change rows in place; a shallow copy compares equal, NaN included, as
        it holds the same value objects) and holds no nested value."""
        kept = self._texts.get(id(row))
        if kept is not None and kept[0] == row:
            return kept[1]
        text = json.dumps(row)
        if not any(isinstance(v, dict | list) for v in row.values()):
            self._texts[id(row)] = (dict(row), text)
        return text

    def key_counts(self) -> dict[str, dict[str, int]]:
        """historyKeys' type counts: W&B keeps them with the run, counted as rows are written, not by reading the
        history again per request. Here they are counted once per row appended (a new `rows` list, or a shorter
        one, as a rewind leaves, is counted again from its start)."""
        counted, seen, keys = self._counted
        if counted is not self.rows or seen > len(self.rows):
            seen, keys = 0, {}
        for row in self.rows[seen:]:
            for k, t in _flat_keys(row).items():
                counts = keys.setdefault(k, {})
                counts[t] = counts.get(t, 0) + 1
        self._counted = (self.rows, len(self.rows), keys)
        return keys

    @property
    def last_step(self) -> int:
        return self.rows[-1]["_step"] if self.rows else -1

    def rows_between(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """Rows with lo <= _step < hi."""
        return [r for r in self.rows if lo <= r["_step"] < hi]


def _flat_keys(row: dict[str, Any]) -> dict[str, str]:
    out = {}
    for k, v in row.items():
        out[k] = "number" if isinstance(v, int | float) and not isinstance(v, bool) else type(v).__name__
    return out


# ---- Mongo-style filters over runs, as W&B's server reads them ------------------------------------------------

_FIELDS = {
    "name": lambda r: r.name, "displayName": lambda r: r.display_name, "display_name": lambda r: r.display_name,
    "state": lambda r: r.state, "createdAt": lambda r: iso(r.created_at), "created_at": lambda r: iso(r.created_at),
    "heartbeatAt": lambda r: iso(r.heartbeat_at), "heartbeat_at": lambda r: iso(r.heartbeat_at),
    "tags": lambda r: r.tags, "group": lambda r: r.group, "jobType": lambda r: r.job_type,
    "job_type": lambda r: r.job_type, "username": lambda r: r.username,
}
_MISSING = object()


class FilterError(ValueError):
    pass


def _lookup(run: FakeRun, path: str) -> Any:
    head, _, rest = path.partition(".")
    if head == "config" and rest:
        key, _, sub = rest.partition(".")
        if key not in run.config:
            return _MISSING
        value = run.config[key]
        parts = [p for p in sub.split(".") if p] if sub else []
        if parts[:1] == ["value"]:
            parts = parts[1:]
        for p in parts:
            if not isinstance(value, dict) or p not in value:
                return _MISSING
            value = value[p]
        return value
    if head in ("summary_metrics", "summaryMetrics") and rest:
        value: Any = run.summary
        for p in rest.split("."):
            if not isinstance(value, dict) or p not in value:
                return _MISSING
            value = value[p]
        return value
    if path in _FIELDS:
        return _FIELDS[path](run)
    raise FilterError(f"invalid filter field {path!r}")


def _eq(value: Any, arg: Any) -> bool:
    if isinstance(value, list) and not isinstance(arg, list):
        return arg in value
    return value is not _MISSING and value == arg


def _cmp(value: Any, arg: Any, op: str) -> bool:
    if value is _MISSING or value is None or isinstance(value, bool) != isinstance(arg, bool):
        return False
    if not (isinstance(value, int | float) and isinstance(arg, int | float)) and type(value) is not type(arg):
        return False
    return {"$gt": value > arg, "$gte": value >= arg, "$lt": value < arg, "$lte": value <= arg}[op]


def _test(value: Any, cond: Any) -> bool:
    if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
        for op, arg in cond.items():
            if op == "$eq":
                ok = _eq(value, arg)
            elif op == "$ne":
                ok = not _eq(value, arg)
            elif op in ("$gt", "$gte", "$lt", "$lte"):
                ok = _cmp(value, arg, op)
            elif op == "$in":
                ok = any(_eq(value, a) for a in arg)
            elif op == "$nin":
                ok = not any(_eq(value, a) for a in arg)
            elif op == "$exists":
                ok = (value is not _MISSING and value is not None) == bool(arg)
            elif op == "$regex":
                ok = isinstance(value, str) and re.search(arg, value) is not None
            else:
                raise FilterError(f"unsupported filter operator {op!r}")
            if not ok:
                return False
        return True
    return _eq(value, cond)


def matches(run: FakeRun, flt: dict[str, Any]) -> bool:
    """Whether `run` matches a Mongo-style filter ($and $or $nor $eq $ne $gt $gte $lt $lte $in $nin $exists $regex)."""
    if not isinstance(flt, dict):
        raise FilterError("filters must be a JSON object")
    for key, cond in flt.items():
        if key in ("$and", "$or", "$nor"):
            if not isinstance(cond, list):
                raise FilterError(f"{key} takes a list")
            results = [matches(run, f) for f in cond]
            ok = all(results) if key == "$and" else any(results) if key == "$or" else not any(results)
        elif key.startswith("$"):
            raise FilterError(f"unsupported filter operator {key!r}")
        else:
            ok = _test(_lookup(run, key), cond)
        if not ok:
            return False
    return True


def _order_key(order: str) -> tuple[bool, Any]:
    desc = order.startswith("-")
    name = order.lstrip("+-") or "created_at"
    if name in ("created_at", "createdAt"):
        return desc, lambda r: (0, r.created_at, r.name)
    if name in ("heartbeat_at", "heartbeatAt"):
        return desc, lambda r: (0, r.heartbeat_at, r.name)

    def by_path(r: FakeRun) -> tuple:
        v = _lookup(r, name)
        return (1, 0, r.name) if v is _MISSING or not isinstance(v, int | float | str) else (0, v, r.name)
    return desc, by_path


# ---- GraphQL resolvers: plain objects the default resolver reads ----------------------------------------------


class _RunView:
    def __init__(self, run: FakeRun, project: _ProjectView):
        self._run, self._project = run, project
        r = run
        self.id = base64.b64encode(f"Run:v1:{r.name}:{project.name}:{project.entityName}".encode()).decode()
        self.name, self.displayName, self.state = r.name, r.display_name or r.name, r.state
        self.projectId, self.tags, self.sweepName = project.internalId, list(r.tags), None
        self.group, self.jobType, self.commit, self.readOnly = r.group, r.job_type, None, False
        self.createdAt, self.heartbeatAt = iso(r.created_at), iso(r.heartbeat_at)
        self.description = self.notes = None
        self.historyLineCount = len(r.rows)
        self.user = {"id": "VXNlcjox", "name": r.username, "username": r.username}
        self.config = json.dumps({k: {"value": v, "desc": None} for k, v in r.config.items()})
        self.summaryMetrics = json.dumps(r.summary)
        self.systemMetrics = "{}"

    def historyKeys(self, info: Any, format: str | None = None) -> Any:
        keys = self._run.key_counts()
        out: dict[str, Any] = {"keys": {k: {"typeCounts": [{"type": t, "count": n} for t, n in c.items()]}
                                        for k, c in keys.items()}}
        if self._run.rows:
            out["lastStep"] = self._run.last_step
        return out

    def history(self, info: Any, samples: int | None = None, minStep: int | None = None,
                maxStep: int | None = None) -> list[str]:
        lo = 0 if minStep is None else minStep
        hi = math.inf if maxStep is None else maxStep
        rows = self._run.rows  # sorted by step (log enforces it): bisect, so long runs stay cheap to serve
        rows = rows[bisect.bisect_left(rows, lo, key=_step_of):bisect.bisect_left(rows, hi, key=_step_of)]
        rows = _downsample(rows, 500 if samples is None else samples)
        return list(map(self._run.text, rows))

    def sampledHistory(self, info: Any, specs: list[str]) -> list[Any]:
        out = []
        for text in specs:
            spec = json.loads(text)
            keys = spec.get("keys") or []
            lo, hi = spec.get("minStep", 0), spec.get("maxStep", math.inf)
            rows = [{k: r[k] for k in keys} for r in self._run.rows
                    if lo <= r["_step"] <= hi and all(k in r for k in keys)]
            out.append(_downsample(rows, spec.get("samples", 500)))
        return out

    def parquetHistory(self, info: Any, liveKeys: list[str]) -> dict[str, Any]:
        run = self._run
        server: FakeWandb = info.context
        urls = [f"{server.url}/parquet/{self._project.entityName}/{self._project.name}/{run.name}/{i}.parquet"
                for i in range(len(run.parquet_files()))]
        live = [{k: r[k] for k in liveKeys if k in r} for r in run.rows[run.exported:]]
        return {"parquetUrls": urls, "liveData": live}


def _step_of(row: dict[str, Any]) -> int:
    return row["_step"]


def _downsample(rows: list[Any], samples: int) -> list[Any]:
    """Evenly spaced rows, first and last kept, when there are more rows than `samples` (W&B samples too)."""
    if samples <= 0 or len(rows) <= samples:
        return rows
    if samples == 1:
        return rows[-1:]
    idx = sorted({round(i * (len(rows) - 1) / (samples - 1)) for i in range(samples)})
    return [rows[i] for i in idx]


class _ProjectView:
    def __init__(self, server: FakeWandb, entity: str, name: str):
        self._server, self.entityName, self.name = server, entity, name
        self.id = base64.b64encode(f"Project:{entity}/{name}".encode()).decode()
        self.internalId = str(1 + list(server.projects).index((entity, name)))  # numeric, as W&B's
        self.readOnly = False

    def _matching(self, filters: str | None, order: str | None) -> list[FakeRun]:
        try:
            flt = json.loads(filters) if filters else {}
            runs = [r for r in self._server.runs_of(self.entityName, self.name) if matches(r, flt)]
        except (ValueError, FilterError) as e:
            raise GraphQLError(f"invalid filters: {e}") from e
        desc, key = _order_key(order or "+created_at")
        return sorted(runs, key=key, reverse=desc)

    def runCount(self, info: Any, filters: str | None = None) -> int:
        return len(self._matching(filters, None))

    def runs(self, info: Any, filters: str | None = None, after: str | None = None, first: int | None = None,
             order: str | None = None) -> dict[str, Any]:
        runs = self._matching(filters, order)
        start = 0
        if after:
            try:
                name = base64.b64decode(after).decode().removeprefix("cursor:")
            except ValueError as e:
                raise GraphQLError("invalid cursor") from e
            names = [r.name for r in runs]
            if name not in names:
                raise GraphQLError("invalid cursor")
            start = names.index(name) + 1
        first = 50 if first is None else first
        page = runs[start:start + first]
        edges = [{"node": _RunView(r, self), "cursor": base64.b64encode(f"cursor:{r.name}".encode()).decode()}
                 for r in page]
        return {"edges": edges, "totalCount": len(runs), "pageInfo": {
            "startCursor": edges[0]["cursor"] if edges else None,
            "endCursor": edges[-1]["cursor"] if edges else None,
            "hasNextPage": start + first < len(runs), "hasPreviousPage": start > 0}}

    def run(self, info: Any, name: str) -> _RunView | None:
        for r in self._server.runs_of(self.entityName, self.name):
            if r.name == name:
                return _RunView(r, self)
        return None


class _Root:
    def __init__(self, server: FakeWandb):
        self._server = server

    def viewer(self, info: Any) -> dict[str, Any]:
        return {"id": "VXNlcjox", "name": "Alice", "username": "alice", "entity": self._server.default_entity,
                "email": "alice@example.com", "flags": "{}", "teams": {"edges": []}}

    def project(self, info: Any, name: str | None = None, entityName: str | None = None) -> Any:
        entity = entityName or self._server.default_entity
        if name is None or (entity, name) not in self._server.projects:
            return None
        return _ProjectView(self._server, entity, name)


# ---- faults and the HTTP layer ---------------------------------------------------------------------------------


@dataclass
class Fault:
    """An injected answer for the next `times` requests (of operation `op`, or any when None)."""

    op: str | None = None
    status: int = 500
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] | None = None  # a 200 carrying GraphQL errors
    hold: threading.Event | None = None  # answer only once set (a slow server)
    times: int = 1
    from_step: int | None = None  # only requests whose minStep is at least this (a fault at a point of the history)


def rate_limited(reset: int = 30, *, op: str | None = None, times: int = 1) -> dict[str, Any]:
    """The fault W&B answers when a project exceeds its quota: HTTP 429 "Rate limit exceeded" with the
    RateLimit-Remaining (0..1000) and RateLimit-Reset (seconds) headers its docs describe
    (docs.wandb.ai/support/models/articles/rate-limit-exceeded-on-metric-logging); no Retry-After."""
    return {"op": op, "status": 429, "times": times, "body": b'{"errors": [{"message": "Rate limit exceeded"}]}',
            "headers": {"Content-Type": "application/json", "RateLimit-Remaining": "0",
                        "RateLimit-Reset": str(reset)}}


@dataclass
class Request:
    op: str | None
    variables: dict[str, Any]
    authorized: bool


class FakeWandb:
    """The server's state. `add_run` / `FakeRun.log` change it while it serves; `requests` records each call."""

    def __init__(self, api_keys: tuple[str, ...] = ("k" * 40,), default_entity: str = "ent"):
        self.api_keys = set(api_keys)
        self.default_entity = default_entity
        self.projects: dict[tuple[str, str], list[FakeRun]] = {}
        self.faults: list[Fault] = []
        self.requests: list[Request] = []
        self.lock = threading.RLock()
        self.url = ""
        # seconds each answer takes besides its work: W&B is a remote service (a round trip and its own read),
        # and it answers requests in parallel; `most_at_once` records how many of each operation overlapped
        self.latency = 0.0
        self.at_once: dict[str | None, int] = {}
        self.most_at_once: dict[str | None, int] = {}

    def add_project(self, entity: str, project: str) -> None:
        with self.lock:
            self.projects.setdefault((entity, project), [])

    def add_run(self, entity: str, project: str, run: FakeRun) -> FakeRun:
        with self.lock:
            self.projects.setdefault((entity, project), []).append(run)
        return run

    def runs_of(self, entity: str, project: str) -> list[FakeRun]:
        return list(self.projects.get((entity, project), []))

    def inject(self, **fault: Any) -> Fault:
        f = Fault(**fault)
        with self.lock:
            self.faults.append(f)
        return f

    def count(self, op: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.requests if op is None or r.op == op)

    def ops(self) -> list[str | None]:
        with self.lock:
            return [r.op for r in self.requests]

    def _take_fault(self, op: str | None, variables: dict[str, Any]) -> Fault | None:
        with self.lock:
            for f in self.faults:
                min_step = variables.get("minStep")
                if f.from_step is not None and not (isinstance(min_step, int) and min_step >= f.from_step):
                    continue
                if f.op is None or f.op == op:
                    f.times -= 1
                    if f.times <= 0:
                        self.faults.remove(f)
                    return f
        return None

    def handle(self, auth: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        """One POST /graphql: (status, headers, body)."""
        try:
            payload = json.loads(body)
            query, variables = payload["query"], payload.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return 400, {}, b'{"errors":[{"message":"invalid request body"}]}'
        m = _OP_NAME.search(query)
        op = m.group(1) if m else None
        authorized = False
        if auth and auth.startswith("Basic "):
            with contextlib.suppress(ValueError):
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
                authorized = user == "api" and key in self.api_keys
        with self.lock:
            self.requests.append(Request(op, variables, authorized))
            self.at_once[op] = now = self.at_once.get(op, 0) + 1
            self.most_at_once[op] = max(now, self.most_at_once.get(op, 0))
        try:
            if self.latency:
                time.sleep(self.latency)
            return self._answer(op, query, variables, authorized)
        finally:
            with self.lock:
                self.at_once[op] -= 1

    def _answer(self, op: str | None, query: str, variables: Any, authorized: bool) -> tuple[int, dict[str, str],
                                                                                              bytes]:
        fault = self._take_fault(op, variables if isinstance(variables, dict) else {})
        if fault is not None:
            if fault.hold is not None:
                fault.hold.wait(30)
            if fault.errors is not None:
                return 200, fault.headers, json.dumps({"data": None, "errors": fault.errors}).encode()
            body = fault.body if fault.body is not None else b'{"errors":[{"message":"injected failure"}]}'
            return fault.status, fault.headers, body
        if not authorized:
            return 401, {}, b'{"errors":[{"message":"user is not logged in"}]}'
        document, errors = _parsed(query)
        if errors:
            return 200, {}, json.dumps({"data": None, "errors": [e.formatted for e in errors]}).encode()
        with self.lock:
            result = execute_sync(SCHEMA, document, root_value=_Root(self), variable_values=variables,
                                  operation_name=op, context_value=self, executor_class=_Executor)
        out: dict[str, Any] = {"data": _finite(result.data)}
        if result.errors:
            out["errors"] = [e.formatted for e in result.errors]
        return 200, {}, json.dumps(out).encode()


def _finite(value: Any) -> Any:
    """The answer envelope is strict JSON (W&B's server is written in Go): non-finite floats inside JSON-typed
    fields (sampledHistory, liveData) are sent as the strings "NaN", "Infinity", "-Infinity". An assumption: only
    `history`'s JSON *text* rows are known to carry bare NaN, and they are strings inside the envelope."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return value if all(type(v) is str for v in value) else [_finite(v) for v in value]
    return value


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave as one segment: no 40 ms delayed-ACK stall
    wbufsize = 1 << 16
    fake: FakeWandb

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", headers.pop("Content-Type", "application/json"))
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up (stopped, timed out)
            self.wfile.write(body)
            self.wfile.flush()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.split("?")[0].rstrip("/") != "/graphql":
            self._send(404, {"Content-Type": "text/plain"}, b"404 page not found")
            return
        status, headers, out = self.fake.handle(self.headers.get("Authorization"), body)
        self._send(status, dict(headers), out)

    def _parquet(self) -> bytes | None:
        """An exported history file: /parquet/<entity>/<project>/<run>/<i>.parquet (no auth: the real URLs are
        signed storage URLs)."""
        parts = self.path.split("?")[0].strip("/").split("/")
        if len(parts) != 5 or parts[0] != "parquet" or not parts[4].endswith(".parquet"):
            return None
        with self.fake.lock:
            runs = [r for r in self.fake.runs_of(parts[1], parts[2]) if r.name == parts[3]]
            files = runs[0].parquet_files() if runs else []
        i = int(parts[4].removesuffix(".parquet")) if parts[4].removesuffix(".parquet").isdigit() else -1
        return files[i] if 0 <= i < len(files) else None

    def do_HEAD(self) -> None:
        data = self._parquet()
        self.send_response(200 if data is not None else 404)
        self.send_header("Content-Length", str(len(data) if data is not None else 0))
        self.end_headers()

    def do_GET(self) -> None:
        data = self._parquet()
        if data is None:
            self._send(404, {"Content-Type": "text/plain"}, b"404 page not found")
            return
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
        if m is None:  # the whole file (wandb-core downloads it when no keys are asked for)
            self._send(200, {"Content-Type": "application/octet-stream"}, data)
            return
        size = len(data)  # HTTP ranges are inclusive; wandb-core's remote reader asks for one byte more than it needs
        start, end = (int(m[1]), min(int(m[2] or size - 1), size - 1)) if m[1] else (max(0, size - int(m[2])),
                                                                                  size - 1)
        self._send(206, {"Content-Type": "application/octet-stream",
                         "Content-Range": f"bytes {start}-{end}/{size}"}, data[start:end + 1])


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client resetting its idle keep-alive connection is normal (httpx does when it closes its pool); a real
        server logs nothing for it, so neither does the fake. Anything else prints its traceback as before."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(fake: FakeWandb) -> Iterator[FakeWandb]:
    """Serve `fake` on 127.0.0.1 (an ephemeral port) in a thread; sets `fake.url`."""
    handler = type("Handler", (_Handler,), {"fake": fake})
    server = _Server(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-wandb", daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield fake
    finally:
        with fake.lock:
            for f in fake.faults:
                if f.hold is not None:
                    f.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---- synthetic training runs and what they mean as points --------------------------------------------------------


def grow(run: FakeRun, steps: int, *, dt_step: float = 0.5) -> None:
    """Log `steps` more steps (a few are skipped: W&B steps may have gaps) with dense, sparse, nested, NaN/±Inf,
    text, boolean and media values."""
    s = run.last_step + 1
    end = s + steps
    while s < end:
        if s % 97 == 13:  # a gap in the steps
            s += 1
            continue
        values: dict[str, Any] = {"train/loss": 2.0 / (s + 1) + 0.1, "lr": 1e-3 * (1 - s / 1e6)}
        specials = {5: math.nan, 6: math.inf, 7: -math.inf}
        if s % 211 in specials:
            values["train/loss"] = specials[s % 211]
        if s % 50 == 0:
            values["eval"] = {"acc": s / 1e5, "loss": {"top1": 1.0 / (s + 2)}}
        if s % 300 == 1:
            values["note"] = "checkpoint saved"
        if s % 400 == 2:
            values["samples"] = {"_type": "image-file", "width": 8, "height": 8, "path": "media/x.png"}
        if s % 500 == 3:
            values["done"] = True
        run.log(s, run.created_at + s * dt_step, **values)
        s += 1


def training_run(name: str, steps: int, **kwargs: Any) -> FakeRun:
    """A run with `steps` steps of synthetic history (see `grow`)."""
    run = FakeRun(name, **kwargs)
    run.heartbeat_at = run.created_at
    grow(run, steps)
    return run


def row_points(row: dict[str, Any], run: str) -> list[tuple[str, int, float, float, str]]:
    """The points a history row stands for: numeric leaves, nested names joined with '/', W&B's `_` keys and
    media (`_type`) objects left out. The tests' own statement of the mapping, written apart from the source."""
    out: list[tuple[str, int, float, float, str]] = []

    def walk(name: str, value: Any) -> None:
        if isinstance(value, dict):
            if "_type" not in value:
                for k, v in value.items():
                    walk(f"{name}/{k}", v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out.append((name, row["_step"], float(row["_timestamp"]), float(value), run))

    for k, v in row.items():
        if not k.startswith("_"):
            walk(k, v)
    return out


def run_points(run: FakeRun) -> list[tuple[str, int, float, float, str]]:
    return [p for row in run.rows for p in row_points(row, run.name)]
