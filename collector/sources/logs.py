"""Training-log source: metrics parsed from what the training processes print, read from the job's pod logs
through the Kubernetes API (`pods`) or from log files (`path`). Parsing lives in `logformats/`.

Pod mode reads each pod's log with `follow=false` from the stream's cursor on every poll, so nothing is held open
between polls and an operator restart resumes exactly: the cursor keeps, per pod and container, where the stream is
in the container instance's log (podlogs.py: how the kubelet serves it and how each of its quirks is met), the
container restart count already read, and the parser's running state.
"""

from __future__ import annotations

import asyncio
import glob
import os
from pathlib import Path
from typing import Any, ClassVar

from trainscope.collector.points import Batch, Cursor, RunState
from trainscope.collector.schema import exactly_one_of
from trainscope.collector.sources.base import ContainerState, PodRef, SourceContext, SourceError
from trainscope.collector.sources.logformats import (
    FORMATS,
    LineSplitter,
    LogParser,
    PointSink,
    compile_katib,
    compile_patterns,
    decode_lines,
)
from trainscope.collector.sources.podlogs import Feed, dead, read_instance, reason_of
from trainscope.collector.sources.userregex import check_log_regexes

# A source that read this many lines without one data point says so in its health (NoMetricLines); fewer lines
# may still be a job's start-up (DeepSpeed's config dump, Megatron's arguments are a few hundred lines).
NO_METRIC_LINES = 500
CHUNK_BYTES = 1 << 20  # log files are read in pieces of this size
# Labels that carry a pod's rank/index, tried in order when `ranks` is set without `rankLabel`.
RANK_LABELS = (
    "training.kubeflow.org/replica-index",  # Kubeflow PyTorchJob / TrainJob
    "batch.kubernetes.io/job-completion-index",  # Indexed Jobs, JobSet
    "apps.kubernetes.io/pod-index",  # StatefulSets
    "leaderworkerset.sigs.k8s.io/worker-index",  # LeaderWorkerSet
    "volcano.sh/task-index",  # Volcano
)

_LABEL_SELECTOR: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "description": "Label selector of the pods to read (default: the Workload's spec.selector).",
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"},
                        "description": "Labels the pods must have, exactly."},
        "matchExpressions": {
            "type": "array", "maxItems": 32, "description": "Label requirements, as in Kubernetes selectors.",
            "items": {
                "type": "object", "additionalProperties": False, "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 317, "description": "Label key."},
                    "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"],
                                 "description": "How the key's value is tested."},
                    "values": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 63},
                               "description": "Values for In and NotIn."},
                },
            },
        },
    },
}


def _strings(description: str, max_items: int) -> dict[str, Any]:
    return {"type": "array", "maxItems": max_items, "description": description,
            "items": {"type": "string", "minLength": 1, "maxLength": 1024}}


def _line_end(blob: bytes, i: int) -> int:
    """The offset just after line `i` (0-based; -1: the start) of a blob of whole lines."""
    pos = 0
    for _ in range(i + 1):
        pos = blob.index(b"\n", pos) + 1
    return pos


def _new_instance(st: dict[str, Any]) -> None:
    """The position moves to another container instance: its log starts at sinceTime = the cursor's second (it
    began after the lines taken), and nothing of it was taken yet."""
    st["k"] = 0
    st.pop("t", None)
    st.pop("h", None)


class LogsSource:
    """Metrics from training logs; see docs/sources/logs.md."""

    kind: ClassVar[str] = "logs"
    schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "description": "Metrics parsed from the training job's logs: its pods' logs through the Kubernetes API "
                       "(pods) or log files (path). Set exactly one of pods or path.",
        "additionalProperties": False,
        "properties": {
            "pods": {
                "type": "object", "additionalProperties": False,
                "description": "Read the logs of the Workload's pods (in its namespace).",
                "properties": {
                    "selector": _LABEL_SELECTOR,
                    "container": {"type": "string", "minLength": 1, "maxLength": 253,
                                  "description": "Container to read (default: the pod's first container)."},
                    "ranks": {"type": "array", "maxItems": 1024, "items": {"type": "integer", "minimum": 0},
                              "description": "Read only pods with these ranks (default: all pods). The rank is "
                                             "the value of rankLabel."},
                    "rankLabel": {"type": "string", "minLength": 1, "maxLength": 317,
                                  "description": "Label holding a pod's rank (default: the first present of the "
                                                 "well-known index labels of Kubeflow, Indexed Jobs, "
                                                 "StatefulSets, LeaderWorkerSet and Volcano)."},
                },
            },
            "path": {"type": "string", "minLength": 1, "maxLength": 4096,
                     "description": "A log file or a glob (*, ?, [..], ** for any depth). Relative paths start at "
                                    "the collector's base dir."},
            "format": {"type": "string", "enum": list(FORMATS), "default": "auto",
                       "description": "Log format: auto (detected per stream and line), hf, megatron, deepspeed, "
                                      "lightning, keyvalue, json, or none (patterns/filter only)."},
            "patterns": _strings("Extra regexes tried on every line: named groups metric and value (and "
                                 "optionally step), or one named group per metric (and optionally step).", 32),
            "filter": {
                "type": "object", "additionalProperties": False,
                "description": "Katib-style filter, for users coming from Katib's StdOut collector.",
                "properties": {"metricsFormat": _strings(
                    "Regexes whose group 1 is the metric name and group 2 its value, e.g. "
                    r"([\w|-]+)\s*=\s*([+-]?\d*(\.\d+)?([Ee][+-]?\d+)?)", 16)},
            },
            "loggingSteps": {"type": "integer", "minimum": 1,
                             "description": "HF Trainer's logging_steps, for logs without a progress bar (or whose "
                                            "dicts are printed apart from it): the step of the n-th training log "
                                            "dict is n * loggingSteps. Unset: 1 without a bar; dicts whose bar "
                                            "frame is unknown are skipped."},
        },
        **exactly_one_of("pods", "path", {
            "rule": "!has(self.format) || self.format != 'none' || has(self.patterns) || has(self.filter)",
            "message": "format none needs patterns or filter"}),
    }

    # Checks the schema cannot state (RE2 syntax of the user regexes): parse_spec names the field of each problem.
    check_config = staticmethod(check_log_regexes)

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        if ("pods" in config) == ("path" in config):
            raise SourceError("logs: set exactly one of pods or path", reason="BadConfig")
        self.ctx = ctx
        self.fmt = config.get("format", "auto")
        try:
            self.patterns = compile_patterns(config.get("patterns", ()))
            self.katib = compile_katib((config.get("filter") or {}).get("metricsFormat", ()))
        except ValueError as e:
            raise SourceError(f"logs: {e}", reason="BadConfig") from None
        if self.fmt not in FORMATS:
            raise SourceError(f"logs: unknown format {self.fmt!r}", reason="BadConfig")
        if self.fmt == "none" and not self.patterns and not self.katib:
            raise SourceError("logs: format none needs patterns or filter", reason="BadConfig")
        steps = config.get("loggingSteps")
        self.logging_steps = int(steps) if steps is not None else None
        pods = config.get("pods")
        self.pods: dict[str, Any] | None = dict(pods) if pods is not None else None
        self.path: str | None = None
        if "path" in config:
            path = os.path.expanduser(config["path"])
            self.path = path if os.path.isabs(path) else os.path.join(ctx.base_dir, path)
        self._parsers: dict[str, LogParser] = {}  # stream -> parser (its learned layouts survive polls)
        self._lines = self._parsed = 0  # for health, this process

    def _parser(self, key: str, state: dict[str, Any] | None) -> LogParser:
        parser = self._parsers.get(key)
        if parser is None:
            parser = self._parsers[key] = LogParser(self.fmt, patterns=self.patterns, katib=self.katib,
                                                    logging_steps=self.logging_steps)
        parser.restore(state)
        parser.lines = parser.parsed = parser.failed = parser.nostep = 0
        return parser

    async def poll(self, cursor: Cursor | None) -> Batch:
        """The points after `cursor`, at most ctx.max_batch_points of them (one line is never split)."""
        if self.path is not None:
            return await asyncio.to_thread(self._poll_files, cursor)
        return await self._poll_pods(cursor)

    async def aclose(self) -> None:
        self._parsers.clear()

    def _batch(self, points: PointSink, streams: dict[str, Any], parsers: dict[str, LogParser], more: bool,
               cut: int, notes: list[str], runs: dict[str, dict[str, Any]],
               ends: dict[str, tuple[str, str]] | None = None, **info: Any) -> Batch:
        failed = sum(p.failed for p in parsers.values())
        nostep = sum(p.nostep for p in parsers.values())
        lines = sum(p.lines for p in parsers.values())
        self._lines += lines
        self._parsed += sum(p.parsed for p in parsers.values())
        skipped = {k: v for k, v in (("unparsed", failed), ("line_too_long", cut), ("no_step", nostep)) if v}
        if nostep:
            notes.append(f"{nostep} HF log dict(s) printed apart from the progress bar, so without a step (stdout "
                         "buffered? set PYTHONUNBUFFERED=1, or loggingSteps): skipped")
        totals = [p.total_steps for p in parsers.values() if p.total_steps]
        totals += [s["p"]["t"] for s in streams.values() if s.get("p", {}).get("t")]
        for key, parser in parsers.items():
            if parser.meta and parser.parsed:
                runs.setdefault(_run_of(key, streams), {}).update(parser.meta)
        state, message = run_state(streams, ends or {})
        if state == RunState.FAILED and message:
            notes.append(message)
        return Batch(points=points.result(), cursor={"streams": streams}, more=more, skipped=skipped, notes=notes,
                     total_steps=max(totals) if totals else None, runs=runs, state=state,
                     problem=no_metric_lines(streams, state),
                     info={"lines": self._lines, "parsedLines": self._parsed, "runEnd": message, **info})

    # ---- pods ----------------------------------------------------------------------------------------------

    def _wanted(self, pod: PodRef) -> bool:
        ranks = (self.pods or {}).get("ranks")
        if not ranks:
            return True
        label = (self.pods or {}).get("rankLabel")
        keys = (label,) if label else RANK_LABELS
        for key in keys:
            if key in pod.labels:
                try:
                    return int(pod.labels[key]) in ranks
                except ValueError:
                    return False
        return False

    async def _poll_pods(self, cursor: Cursor | None) -> Batch:
        reader = self.ctx.pods
        if reader is None:
            raise SourceError("logs: pods mode needs access to a Kubernetes API (none here); in local mode use "
                              "path", reason="NoCluster")
        selector = (self.pods or {}).get("selector") or self.ctx.selector
        if not selector:
            raise SourceError("logs: no pod selector: set logs.pods.selector or spec.selector", reason="BadConfig")
        try:
            found = await reader.list_pods(self.ctx.namespace, selector)
        except Exception as e:
            raise SourceError(f"cannot list pods in {self.ctx.namespace}: {e}", reason=reason_of(e)) from e
        pods = sorted((p for p in found if self._wanted(p)), key=lambda p: p.name)
        old = cursor.get("streams", {}) if isinstance(cursor, dict) else {}
        streams: dict[str, Any] = {}
        parsers: dict[str, LogParser] = {}
        points = PointSink()  # bulk-parsed runs of lines as columns (a catch-up), other lines as tuples
        notes: list[str] = []
        runs: dict[str, dict[str, Any]] = {}
        limit = self.ctx.max_batch_points
        cut = 0
        full = False
        want = (self.pods or {}).get("container")
        skipped: dict[str, int] = {}
        reads = 0
        ends: dict[str, tuple[str, str]] = {}
        for pod in pods:
            container = want or next(iter(pod.containers), None)
            if container is None or container not in pod.containers:
                notes.append(f"pod {pod.name} has no container {want!r}" if want else f"pod {pod.name} has no "
                             "containers")
                continue
            key = f"{pod.name}/{container}"
            end = container_end(pod.states.get(container), key)
            if end is not None:
                ends[key] = end
            restarts = pod.containers[container]
            st = old.get(key)
            if not isinstance(st, dict) or st.get("uid") != pod.uid:  # new pod (or one recreated under its name)
                st = {"uid": pod.uid, "r": max(0, restarts - 1), "s": 0, "k": 0, "p": {}}
            final = dead(pod, container)
            if full or (pod.phase == "Pending" and restarts == 0) or (final and st.get("e") == restarts):
                streams[key] = st  # not started, or its last instance is over and was read to its end
                continue
            st = dict(st)
            st.pop("e", None)
            parser = parsers[key] = self._parser(key, st.get("p"))
            feed = Feed(parser, pod.name, points, limit)
            if restarts > st["r"]:
                if restarts > st["r"] + 1:
                    lost = restarts - st["r"] - 1
                    notes.append(f"{key}: {lost} container restart(s) between polls: the logs of those instances "
                                 "are gone")
                    skipped["lost_instances"] = skipped.get("lost_instances", 0) + lost
                    _new_instance(st)  # the previous instance is not the one the position was in
                # the instance before the latest one, to its end
                reads += 1
                done, c = await read_instance(reader, self.ctx.namespace, pod.name, container, st, feed, notes,
                                              skipped, previous=True, final=True)
                cut += c
                if done:  # the latest instance is read from its own start
                    st["r"] = restarts
                    _new_instance(st)
                else:
                    full = True
            if not full:
                reads += 1
                done, c = await read_instance(reader, self.ctx.namespace, pod.name, container, st, feed, notes,
                                              skipped, previous=False, final=final)
                cut += c
                full = feed.full
                if done and final:
                    st["e"] = restarts
            st["p"] = parser.state()
            streams[key] = st
            if parser.parsed:
                runs[pod.name] = {"pod": pod.name, "container": container, "format": parser.detected or self.fmt}
        # a container's exit counts once its log is read to the end (not while a backlog is caught up)
        batch = self._batch(points, streams, parsers, full, cut, notes, runs, None if full else ends,
                            pods=len(pods), logReads=reads)
        for reason, n in skipped.items():
            batch.skipped[reason] = batch.skipped.get(reason, 0) + n
        return batch

    # ---- files ---------------------------------------------------------------------------------------------

    def _files(self) -> list[tuple[str, str]]:
        """(run, path) of every file the path names, sorted; run is the path below the glob's fixed part."""
        path = self.path
        assert path is not None
        if not glob.has_magic(path):
            if not os.path.isfile(path):
                raise SourceError(f"log file {path} does not exist", reason="LogFileMissing")
            return [(os.path.basename(path), path)]
        parts = Path(path).parts
        fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
        root = Path(*parts[:fixed])
        found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        return sorted((Path(p).relative_to(root).as_posix(), p) for p in found)

    def _poll_files(self, cursor: Cursor | None) -> Batch:
        files = self._files()
        old = cursor.get("streams", {}) if isinstance(cursor, dict) else {}
        streams: dict[str, Any] = {}
        parsers: dict[str, LogParser] = {}
        points = PointSink()  # bulk-parsed runs of lines as columns (a catch-up), other lines as tuples
        notes: list[str] = [] if files else [f"no file matches {self.path}"]
        runs: dict[str, dict[str, Any]] = {}
        limit = self.ctx.max_batch_points
        cut = 0
        full = False
        for run, path in files:
            st = old.get(run)
            st = dict(st) if isinstance(st, dict) else {"o": 0, "p": {}}
            if full:
                streams[run] = st
                continue
            try:
                with open(path, "rb") as f:
                    info = os.fstat(f.fileno())
                    if st.get("i", info.st_ino) != info.st_ino or info.st_size < st["o"]:
                        notes.append(f"{run} was replaced or truncated: read again from the start")
                        st = {"o": 0, "p": {}}
                    st["i"] = info.st_ino
                    if info.st_size == st["o"]:
                        streams[run] = st
                        continue
                    parser = parsers[run] = self._parser(run, st.get("p"))
                    feed = Feed(parser, run, points, limit)
                    st["o"], c = self._read_file(f, st["o"], info.st_mtime, feed)
                    cut += c
            except FileNotFoundError:
                continue  # rotated away between listing and opening: it leaves the cursor
            except OSError as e:
                raise SourceError(f"cannot read log file {path}: {e.strerror or e}", reason="FileUnreadable") from e
            st["p"] = parser.state()
            streams[run] = st
            full = feed.full
            if parser.parsed:
                runs[run] = {"file": path, "format": parser.detected or self.fmt}
        return self._batch(points, streams, parsers, full, cut, notes, runs, files=len(files))

    @staticmethod
    def _read_file(f: Any, offset: int, ts: float, feed: Feed) -> tuple[int, int]:
        """Lines from `offset` to the last complete one (or until the batch is full); (new offset, lines cut)."""
        f.seek(offset)
        splitter = LineSplitter()
        while True:
            chunk = f.read(CHUNK_BYTES)
            if not chunk:
                return offset, splitter.cut
            for blob, nbytes in splitter.feed(chunk):
                lines = decode_lines(blob)
                taken = feed.lines(lines, ts)
                if taken < len(lines):
                    return offset + _line_end(blob, taken - 1), splitter.cut
                if feed.full:
                    return offset + nbytes, splitter.cut
                offset += nbytes


# ---- the run's end ------------------------------------------------------------------------------------------------


def _run_of(key: str, streams: dict[str, Any]) -> str:
    """The run label of a stream key (pod mode: `<pod>/<container>` -> the pod; path mode: the key itself)."""
    st = streams.get(key) or {}
    return key.rsplit("/", 1)[0] if "uid" in st else key


def container_end(state: ContainerState | None, key: str) -> tuple[str, str] | None:
    """What a container's status says of the run: ("finished", why) when it terminated with 0, ("failed", why)
    when it terminated otherwise or keeps crashing (CrashLoopBackOff after a non-zero exit); None while it runs."""
    if state is None:
        return None
    if state.exit_code is not None:
        if state.exit_code == 0:
            return "finished", f"{key}: container terminated with exit code 0 ({state.reason or 'Completed'})"
        detail = f": {state.message.strip()}" if state.message and state.message.strip() else ""
        return "failed", f"{key}: container terminated with exit code {state.exit_code} ({state.reason or 'Error'})" \
                         f"{detail}"
    if state.waiting == "CrashLoopBackOff" and state.last_exit_code not in (None, 0):
        return "failed", f"{key}: container is in CrashLoopBackOff (last exit code {state.last_exit_code})"
    return None


def run_state(streams: dict[str, Any], ends: dict[str, tuple[str, str]]) -> tuple[RunState | None, str | None]:
    """The run's state from its streams: the log's own end (a traceback, a framework's normal end) per stream,
    overridden by the container's exit in pod mode. A failed stream makes the run failed (its last error line is
    the message); it is finished when every stream that printed data (or whose container ended) has finished;
    running once any stream printed data; None (unknown) before."""
    failed: str | None = None
    finished: list[str] = []
    active = 0
    for key, st in streams.items():
        p = st.get("p") or {}
        end = ends.get(key)
        state, why = end if end is not None else (p.get("e"), p.get("em"))
        if end is not None and end[0] == "failed" and p.get("e") == "failed" and p.get("em"):
            why = f"{end[1]}; last error line: {p['em']}"
        if not p.get("P") and state is None:
            continue  # a stream without data and without an end (a rank that prints nothing) says nothing
        active += 1
        if state == "failed":
            failed = failed or (f"{key}: {why}" if end is None else why)
        elif state == "finished":
            finished.append(why or key)
    if failed:
        return RunState.FAILED, failed
    if active and len(finished) == active:
        return RunState.FINISHED, "; ".join(dict.fromkeys(finished))
    return (RunState.RUNNING, None) if active else (None, None)


def no_metric_lines(streams: dict[str, Any], state: RunState | None) -> tuple[str, str] | None:
    """("NoMetricLines", message) when the source read lines but none gave a data point: after NO_METRIC_LINES
    lines, or as soon as the run has ended."""
    lines = parsed = 0
    for st in streams.values():
        p = st.get("p") or {}
        lines += p.get("L", 0)
        parsed += p.get("P", 0)
    if parsed or not lines or (lines < NO_METRIC_LINES and state not in (RunState.FINISHED, RunState.FAILED)):
        return None
    return "NoMetricLines", f"read {lines} lines, none matched a known format; set format or patterns"
