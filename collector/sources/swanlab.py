"""SwanLab source: scalars of SwanLab experiments, from a SwanLab log directory or a `swanlab watch` dashboard.

logDir mode reads the log directory itself (runs.swanlab for experiments and tags, the per-metric .log files by
byte offset) and sees every point. url mode asks the dashboard's HTTP API, which caps each metric at 1,499 points
(LTTB-downsampled above 1,500), has no incremental query and cannot serve a metric holding NaN or infinity: it
refetches whole series and says when they are sampled or unreadable. See docs/sources/swanlab.md.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from trainscope.collector.points import Batch, Cursor, Point, RunState
from trainscope.collector.schema import (
    DURATION_PATTERN,
    MetricFilter,
    metric_filter_schema,
    parse_duration,
)
from trainscope.collector.sources import swanlab_files as files
from trainscope.collector.sources.base import (
    LogDirOrUrlSource,
    SourceContext,
    SourceError,
    log_dir_or_url_schema,
    url_timeout_property,
)

HTTP_CAP = 1499  # points /tag returns for a metric of more than 1,500 points (swanboard's lttb(threshold=1500))
STATUS_STATES = {0: RunState.RUNNING, 1: RunState.FINISHED, -1: RunState.FAILED}
_FETCH_WINDOW = 8  # metric series fetched concurrently in url mode
_RETRIES = 4  # extra attempts on an HTTP 500 (the dashboard reads files SwanLab is rewriting)
_RETRY_BASE = 0.05  # seconds, doubled per attempt
# Messages of the dashboard's 500s that no retry will change.
_NON_FINITE = "Out of range float values"
_NO_TAG = "has no attribute 'folder'"
_NO_EXPERIMENT = "Experiment does not exist"


def _strings(description: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "maxItems": 256, "description": description, "items": item}


def unwrap_config(config: Any) -> dict[str, Any] | None:
    """SwanLab stores each config value as {"desc", "sort", "value"}: keep the values, in the logged order."""
    if not isinstance(config, dict):
        return None
    items = []
    for key, val in config.items():
        if isinstance(val, dict) and "value" in val and set(val) <= {"desc", "sort", "value"}:
            items.append((val.get("sort") if isinstance(val.get("sort"), int) else 1 << 30, key, val["value"]))
        else:
            items.append((1 << 30, key, val))
    return {str(k): files.jsonable(v) for _, k, v in sorted(items, key=lambda t: t[0])}


def run_state(status: Any) -> RunState:
    """SwanLab experiment status (0 running, 1 finished, -1 crashed or stopped) -> RunState."""
    return STATUS_STATES.get(status, RunState.UNKNOWN) if isinstance(status, int) else RunState.UNKNOWN


def _age(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ExperimentSelector:
    """Which experiments a source reads: those named, or with these ids or run ids; all of them when none is set."""

    def __init__(self, config: dict[str, Any] | None):
        config = config or {}
        self.names = frozenset(config.get("names", ()))
        self.ids = frozenset(int(i) for i in config.get("ids", ()))
        self.run_ids = frozenset(config.get("runIds", ()))

    @property
    def everything(self) -> bool:
        return not (self.names or self.ids or self.run_ids)

    def pick(self, exps: Iterable[files.Experiment]) -> tuple[list[files.Experiment], list[str]]:
        """The chosen experiments (by id) and a description of each wanted one that does not exist (yet)."""
        exps = sorted(exps, key=lambda e: e.id)
        if self.everything:
            return exps, []
        chosen = [e for e in exps if e.name in self.names or e.id in self.ids or e.run_id in self.run_ids]
        missing = [f"name {n!r}" for n in sorted(self.names - {e.name for e in exps})]
        missing += [f"id {i}" for i in sorted(self.ids - {e.id for e in exps})]
        missing += [f"run id {r!r}" for r in sorted(self.run_ids - {e.run_id for e in exps})]
        return chosen, missing


class SwanLabSource(LogDirOrUrlSource):
    """Scalars of SwanLab experiments; see docs/sources/swanlab.md."""

    kind: ClassVar[str] = "swanlab"
    program: ClassVar[str] = "SwanLab"
    schema: ClassVar[dict[str, Any]] = log_dir_or_url_schema(
        "Scalars of SwanLab experiments, from a SwanLab log directory (logDir, complete) or a `swanlab watch` "
        "dashboard (url, at most 1,499 points per metric). Set exactly one of logDir or url.",
        log_dir="SwanLab log directory (the one holding runs.swanlab, i.e. swanlab.init's logdir in local mode). "
                "Relative paths start at the collector's base dir.",
        url="Base URL of a SwanLab dashboard (`swanlab watch`), e.g. http://swanlab:5092. It serves at most 1,499 "
            "points per metric and no metric holding NaN/Inf.",
        properties={
            "experiments": {
                "type": "object",
                "additionalProperties": False,
                "description": "Which experiments are read (any that matches one entry); unset: all experiments, "
                               "new ones picked up as they appear.",
                "properties": {
                    "names": _strings("Experiment names, exact.",
                                      {"type": "string", "minLength": 1, "maxLength": 256}),
                    "ids": _strings("Experiment ids (the number in the dashboard's /experiment/<id>).",
                                    {"type": "integer", "minimum": 1}),
                    "runIds": _strings("Run ids (the run directory name, e.g. run-20250321_125806-a3b1799d).",
                                       {"type": "string", "minLength": 1, "maxLength": 256}),
                },
            },
            "metrics": {**metric_filter_schema(), "description": "Which SwanLab metric keys are read (globs)."},
            "timeout": url_timeout_property(),
            "staleAfter": {"type": "string", "pattern": DURATION_PATTERN, "default": "10m",
                           "description": "A run still 'running' whose newest point is older than this gets a "
                                          "health note (a killed SwanLab run never leaves 'running')."},
        },
    )

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        super().__init__(config, ctx)
        self.metrics = MetricFilter.from_dict(config.get("metrics"))
        self.selector = ExperimentSelector(config.get("experiments"))
        self.stale_after = parse_duration(config.get("staleAfter", "10m"))
        self._sent: dict[str, dict[str, Any]] = {}  # run label -> metadata already handed out by this instance
        self._extra: dict[str, dict[str, Any]] = {}  # run label -> config/system/error once read
        self._unservable: set[tuple[str, str]] = set()

    # ---- shared

    def _select(self, exps: list[files.Experiment], where: str) -> tuple[list[files.Experiment], list[str]]:
        chosen, missing = self.selector.pick(exps)
        if missing and not chosen:
            known = ", ".join(f"{e.name!r} (id {e.id})" for e in exps[:10]) or "none"
            raise SourceError(f"no SwanLab experiment with {', '.join(missing)} in {where}; experiments there: "
                              f"{known}", reason="ExperimentNotFound")
        notes = [f"SwanLab experiment with {m} not found (yet) in {where}" for m in missing]
        return chosen, notes

    def _run_info(self, exp: files.Experiment, project: str | None) -> dict[str, Any] | None:
        """The run's metadata for Batch.runs when it changed since this instance last handed it out."""
        info: dict[str, Any] = {"experiment_id": exp.id, "name": exp.name, "project": project,
                                "status": exp.status, "state": run_state(exp.status).value,
                                "create_time": exp.create_time, "finish_time": exp.finish_time,
                                **self._extra.get(exp.run_id, {})}
        if self._sent.get(exp.run_id) == info:
            return None
        self._sent[exp.run_id] = info
        return info

    def _state_and_notes(self, chosen: list[files.Experiment], newest: dict[str, float]) -> tuple[RunState | None,
                                                                                                   list[str]]:
        """The newest chosen experiment's state is the source's; a 'running' run with old points gets a note."""
        notes = []
        now = time.time()
        for exp in chosen:
            ts = newest.get(exp.run_id)
            if exp.status == 0 and ts is not None and now - ts > self.stale_after:
                notes.append(f"run {exp.run_id} ({exp.name}) reports running but its newest point is "
                             f"{_age(now - ts)} old (a killed SwanLab run stays 'running')")
        return (run_state(chosen[-1].status) if chosen else None), notes

    # ---- logDir mode

    def _poll_logdir(self, cursor: Cursor | None) -> Batch:
        root = self.log_dir
        assert root is not None
        if not root.is_dir():
            raise SourceError(f"logDir {root} does not exist or is not a directory", reason="LogDirMissing")
        catalog = files.read_catalog(root)
        if catalog is None:
            if not self.selector.everything:
                raise SourceError(f"no SwanLab experiments in {root} yet (no {files.DB_NAME}): is this the "
                                  "logdir given to swanlab.init(mode='local')?", reason="ExperimentNotFound")
            return Batch(points=[], cursor=cursor, notes=[f"no {files.DB_NAME} in {root} yet"],
                         info={"mode": "logDir", "experiments": 0})
        project, exps, tags = catalog
        chosen, notes = self._select(exps, str(root))
        old = cursor if isinstance(cursor, dict) else {}
        old_files: dict[str, Any] = old.get("files", {})
        newest: dict[str, float] = dict(old.get("newest", {}))
        new_files: dict[str, Any] = {}
        reader = files.FileReader(self.ctx.max_batch_points, [], {}, notes)
        runs: dict[str, dict[str, Any]] = {}
        media = 0
        for exp in chosen:
            run_dir = root / exp.run_id
            self._load_extra_files(exp, run_dir)
            if (info := self._run_info(exp, project)) is not None:
                runs[exp.run_id] = info
            for tag in tags.get(exp.id, []):
                if tag.type != "line":
                    media += 1
                    continue
                if tag.folder is None or not self.metrics.allows(tag.name):
                    continue
                prefix = f"{exp.run_id}/{tag.folder}"
                ts = reader.read_tag(run_dir / "logs" / tag.folder, prefix, tag.name, exp.run_id,
                                     old_files, new_files)
                if ts is not None and ts > newest.get(exp.run_id, float("-inf")):
                    newest[exp.run_id] = ts
        state, stale = self._state_and_notes(chosen, newest)
        return Batch(points=reader.points, cursor={"files": new_files, "newest": newest}, state=state,
                     more=reader.full, skipped=reader.skipped, notes=notes + stale, runs=runs,
                     info={"mode": "logDir", "experiments": len(chosen), "runs": [e.run_id for e in chosen],
                           "media_metrics": media})

    def _load_extra_files(self, exp: files.Experiment, run_dir: Path) -> None:
        extra = self._extra.setdefault(exp.run_id, {})
        if "config" not in extra and (config := files.read_config(run_dir)) is not None:
            extra["config"] = unwrap_config(config)
        if "system" not in extra and (system := files.read_system(run_dir)) is not None:
            extra["system"] = files.jsonable(system)
        if exp.status == -1 and "error" not in extra and (error := files.read_error(run_dir)) is not None:
            extra["error"] = error[-50:]

    # ---- url mode

    async def _get(self, path: str) -> Any:
        """GET an API path and unwrap {"code": 0, "data": ...}; 500s are retried a few times (see _RETRIES)."""
        url = f"{self.url}{path}"
        for attempt in range(_RETRIES + 1):
            try:
                resp = await self._http().get(url)
            except httpx.RemoteProtocolError as e:
                if "disconnected" not in str(e):
                    raise self._no_answer(path, e) from e
                if attempt < _RETRIES:  # a server going away, or restarting
                    await asyncio.sleep(_RETRY_BASE * 2 ** attempt)
                    continue
                raise SourceError(f"SwanLab at {self.url} closed the connection without an HTTP answer to GET "
                                  f"{path} (it went away, or this is not a SwanLab dashboard)",
                                  reason="Unreachable") from e
            except httpx.HTTPError as e:  # timeouts, refused connections, ...
                raise self._no_answer(path, e) from e
            if resp.status_code == 500:
                message = _message(resp)
                if _NON_FINITE in message:
                    raise SourceError(f"SwanLab cannot serve {path}: {message}", reason="NonFiniteValues")
                if _NO_TAG in message:
                    raise SourceError(f"SwanLab has no metric {path.split('/tag/', 1)[-1]!r} in that experiment "
                                      f"(GET {path}: {message})", reason="MetricNotFound")
                if _NO_EXPERIMENT in message:
                    raise SourceError(f"SwanLab has no such experiment (GET {path}: {message})",
                                      reason="ExperimentNotFound")
                if attempt < _RETRIES:  # e.g. _summary.json read while SwanLab rewrites it
                    await asyncio.sleep(_RETRY_BASE * 2 ** attempt)
                    continue
                raise SourceError(f"SwanLab answered 500 to GET {path} {_RETRIES + 1} times: {message}",
                                  reason="ServerError")
            if resp.status_code >= 400:
                hint = " (is this a `swanlab watch` dashboard? check the url)" if resp.status_code == 404 else ""
                raise SourceError(f"SwanLab answered {resp.status_code} to GET {path}{hint}: {resp.text[:200]!r}",
                                  reason="HttpError")
            try:
                body = resp.json()
            except ValueError as e:
                raise SourceError(f"SwanLab's answer to GET {path} is not JSON: {resp.text[:200]!r}",
                                  reason="BadResponse") from e
            if not isinstance(body, dict) or body.get("code") != 0 or not isinstance(body.get("data"), dict):
                raise SourceError(f"SwanLab's answer to GET {path} is not {{\"code\": 0, \"data\": {{...}}}}: "
                                  f"{str(body)[:200]}", reason="BadResponse")
            return body["data"]
        raise AssertionError("unreachable")

    async def _experiments(self) -> tuple[str | None, list[files.Experiment]]:
        data = await self._get("/api/v1/project")
        try:
            exps = [files.Experiment(int(e["id"]), str(e["run_id"]), str(e["name"]), int(e["status"]),
                                     e.get("create_time"), e.get("finish_time")) for e in data["experiments"]]
            configs = {str(e["run_id"]): e.get("config") for e in data["experiments"]}
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"SwanLab's /api/v1/project has no valid experiments list: {str(data)[:200]}",
                              reason="BadResponse") from e
        for run_id, config in configs.items():
            if config is not None:
                self._extra.setdefault(run_id, {})["config"] = unwrap_config(config)
        name = data.get("name")
        return (name if isinstance(name, str) else None), exps

    async def _metric_names(self, exp: files.Experiment) -> list[str]:
        """The experiment's scalar metrics, from its line charts in /status (each chart's `source` lists tags)."""
        data = await self._get(f"/api/v1/experiment/{exp.id}/status")
        try:
            names: list[str] = []
            for chart in data["charts"]["charts"]:
                if chart.get("type") != "line":
                    continue
                for tag in chart.get("source") or [chart["name"]]:
                    if isinstance(tag, str) and tag not in names:
                        names.append(tag)
            return names
        except (KeyError, TypeError, AttributeError) as e:
            raise SourceError(f"SwanLab's /status of experiment {exp.id} has no charts list: {str(data)[:200]}",
                              reason="BadResponse") from e

    async def _series(self, exp: files.Experiment, metric: str) -> tuple[list[tuple[int, float, float]], int] | None:
        """(points as (step, ts, value) sorted, the full count `sum`), or None when the dashboard cannot serve it."""
        try:
            data = await self._get(f"/api/v1/experiment/{exp.id}/tag/{quote(metric, safe='/')}")
        except SourceError as e:
            if e.reason == "NonFiniteValues":
                return None
            raise
        out = []
        try:
            for obj in data["list"]:
                rec = files.parse_record(obj)
                if isinstance(rec, str):
                    raise ValueError(rec)
                out.append(rec)
            total = int(data.get("sum", len(out)))
        except (KeyError, TypeError, ValueError) as e:
            raise SourceError(f"SwanLab's /tag/{metric} of experiment {exp.id} is not "
                              f"{{sum, list: [{{index, data, create_time}}]}}: {str(data)[:200]}",
                              reason="BadResponse") from e
        out.sort()
        return out, total

    async def _extras_from_api(self, exp: files.Experiment) -> None:
        extra = self._extra.setdefault(exp.run_id, {})
        if "system" not in extra:
            data = await self._get(f"/api/v1/experiment/{exp.id}")
            if isinstance(data.get("system"), dict):
                extra["system"] = files.jsonable(data["system"])
        if exp.status == -1 and "error" not in extra:
            try:
                data = await self._get(f"/api/v1/experiment/{exp.id}/recent_log")
            except SourceError as e:
                if e.reason != "HttpError":  # 404 until the first console flush
                    raise
                return
            if isinstance(data.get("error"), list):
                extra["error"] = [str(line) for line in data["error"][-50:]]

    async def _poll_url(self, cursor: Cursor | None) -> Batch:
        project, exps = await self._experiments()
        chosen, notes = self._select(exps, f"the SwanLab dashboard at {self.url}")
        old_runs: dict[str, Any] = cursor.get("runs", {}) if isinstance(cursor, dict) else {}
        new_runs: dict[str, Any] = {}
        points: list[Point] = []
        limit = self.ctx.max_batch_points
        sampled: list[tuple[str, int]] = []
        unservable: list[str] = []
        skipped: dict[str, int] = {}
        runs: dict[str, dict[str, Any]] = {}
        newest: dict[str, float] = {}
        more = False
        for exp in chosen:
            label = exp.run_id
            old = old_runs.get(label, {})
            new = new_runs[label] = {"series": dict(old.get("series", {})), "done": bool(old.get("done"))}
            if not (more or new["done"]):
                await self._extras_from_api(exp)
            if (info := self._run_info(exp, project)) is not None:
                runs[label] = info
            if more or new["done"]:
                continue
            final = exp.status != 0  # read before its values: nothing is added after this
            metrics = [m for m in await self._metric_names(exp) if self.metrics.allows(m)]
            complete = True
            for i in range(0, len(metrics), _FETCH_WINDOW):
                window = metrics[i:i + _FETCH_WINDOW]
                fetched = await asyncio.gather(*(self._series(exp, m) for m in window))
                for metric, got in zip(window, fetched, strict=True):
                    if got is None:
                        unservable.append(f"{label}/{metric}")
                        if (label, metric) not in self._unservable:
                            self._unservable.add((label, metric))
                            skipped["non_finite_metric"] = skipped.get("non_finite_metric", 0) + 1
                        continue
                    series, total = got
                    if total > len(series):
                        sampled.append((f"{label}/{metric}", total))
                    if series:
                        newest[label] = max(newest.get(label, float("-inf")), max(s[1] for s in series))
                    if more:
                        complete = False
                        continue
                    max_step, max_ts = new["series"].get(metric, (None, None))
                    fresh = [s for s in series if max_step is None or s[0] > max_step or s[1] > max_ts]
                    room = limit - len(points)
                    if len(fresh) > room:
                        fresh, more, complete = fresh[:room], True, False
                    if not fresh:
                        continue
                    points.extend(Point(metric, step, ts, value, label) for step, ts, value in fresh)
                    top_step, top_ts = max(s[0] for s in fresh), max(s[1] for s in fresh)
                    if max_step is not None:
                        top_step, top_ts = max(top_step, max_step), max(top_ts, max_ts)
                    new["series"][metric] = [top_step, top_ts]
            new["done"] = final and complete
        # runs the source no longer selects keep their cursor entries, so selecting them again resumes
        for label, old in old_runs.items():
            new_runs.setdefault(label, old)
        state, stale = self._state_and_notes(chosen, newest)
        if sampled:
            sampled.sort(key=lambda s: -s[1])
            notes.append(f"HTTP mode is sampled for {len(sampled)} metric(s) ({HTTP_CAP:,}-point cap; `sum` says "
                         f"{sampled[0][1]:,} for {sampled[0][0]}): use logDir for every point")
        if unservable:
            notes.append(f"HTTP mode cannot read {len(unservable)} metric(s) holding NaN or infinity (the dashboard "
                         f"answers 500 'Out of range float values'), e.g. {unservable[0]}: use logDir")
        return Batch(points=points, cursor={"runs": new_runs}, state=state, more=more, skipped=skipped,
                     notes=notes + stale, runs=runs,
                     info={"mode": "url", "experiments": len(chosen), "runs": [e.run_id for e in chosen],
                           "sampled_metrics": len(sampled), "unreadable_metrics": len(unservable)})


def _message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
        return str(body.get("message", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        return resp.text[:200]
