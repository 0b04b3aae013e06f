"""Helpers for the fault suite: the operator as a separate OS process, fast event files, misbehaving HTTP servers,
and one small adapter per source kind (how to grow a run, where its truth is, what its Workload spec says).

- `OperatorProcess`: `python -m trainscope.cli operator` against the KMock emulator through a kubeconfig, so a test
  can SIGKILL it and measure its RSS/CPU with psutil.
- `CountingCluster`: tests/kube.py's Cluster whose emulator counts status patches and can make chosen pods'
  `pods/{name}/log` misbehave (`set_log_fault`); the cluster entered last is `CountingCluster.active`, where the
  `logs` adapter puts its pods.
- `EventFile` / `LiveWriter`: real TensorBoard event files written with trainscope.demo's encoder (the exact
  layout tensorboardX writes, one scalar per event), fast enough for 500k points; a thread that keeps appending.
- `SourceAdapter`: the fault tests are written against this; `ADAPTERS` maps a registered kind to its adapter.
  A new kind plugs in with a class that can grow a run, name its truth and give its spec item.
- `PodLogsRun`: the `logs` kind's adapter: training pods in the emulator printing Megatron-LM lines with kubelet
  timestamps, a container crash (read back with previous=true) and the resumed run printing steps again.
- `FlakyServer`: an HTTP/1.1 server on 127.0.0.1 that serves a run correctly or misbehaves on demand (refuses,
  hangs, trickles, truncates, 5xx storms, wrong content types).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol
from urllib.parse import parse_qs, urlsplit

import aiohttp.web
import kmock
import psutil

from trainscope.collector.sources import REGISTRY
from trainscope.demo import encode_event, frame

from kube import (
    NAMESPACE,
    Cluster,
    Emulator,
    Instance,
    LogEntry,
    Scalar,
    eventually,
    read_scalars,
    render_log,
    since_ns,
)

# ---- the emulated API server, counting what the operator sends ---------------------------------------------------


# What a misbehaving pods/{name}/log answers (CountingEmulator.set_log_fault). The API server itself stays up (kopf
# and the other pods need it), so a refused connection is expressed per request as `reset`.
LOG_MODES = ("ok", "reset", "hang", "trickle", "cut", "5xx", "html")
_HTML_PAGE = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1>"
              "</center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")


class CountingEmulator(Emulator):
    """The test emulator, counting status patches (per object) as they reach the API server, and able to make the
    log of chosen pods misbehave (the pod-log endpoint failing while the rest of the API works).

    Log modes (LOG_MODES): reset: the connection is dropped as the request arrives (a refused or reset
    connection); hang: the request is read and never answered; trickle: the true answer, one byte every
    `trickle_pause` s, and then the answer never ends; cut: the true answer's first half, cut inside a line, then the
    connection is dropped; 5xx: 500/502/503 in turn, as Status objects; html: 200 with a proxy's HTML error page.
    Hanging and trickling answers end when their pod's mode changes (or the client goes away).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.status_patches = 0
        self.status_patches_by: dict[str, int] = {}
        self.stepped: set[str] = set()  # Workloads whose status got a step (cheap to read, unlike object history)
        self.log_faults: dict[str, str] = {}  # pod name -> mode of its pods/{name}/log
        self.log_requests: dict[str, int] = {}  # misbehaving log answers begun, by mode
        self.trickle_pause = 0.2
        self._n5xx = 0

    def set_log_fault(self, pods: Iterable[str], mode: str) -> None:
        assert mode in LOG_MODES, mode
        for pod in pods:
            self.log_faults[pod] = mode

    async def _handle(self, request: kmock.Request) -> Any:
        if request.subresource == "status" and request.action == kmock.action.UPDATE:
            self.status_patches += 1
            self.status_patches_by[request.name] = self.status_patches_by.get(request.name, 0) + 1
            if isinstance(request.data, dict) and (request.data.get("status") or {}).get("step"):
                self.stepped.add(request.name)
        if (request.resource is not None and request.resource.plural == "pods" and request.subresource == "log"
                and self.log_faults.get(request.name or "", "ok") != "ok"):
            return await self._misbehave(request, request.name or "", self.log_faults[request.name or ""])
        return await super()._handle(request)

    def _log_answer(self, request: kmock.Request) -> bytes | None:
        """What pods/{name}/log (follow=false) would answer now, or None where PodLogs answers with an error."""
        params = request.params
        keys = [k for k in self.pod_logs.logs if k[:2] == (request.namespace or NAMESPACE, request.name)]
        container = params.get("container") or (keys[0][2] if len(keys) == 1 else None)
        runs = self.pod_logs.logs.get((request.namespace or NAMESPACE, request.name or "", container or ""))
        previous = params.get("previous") == "true"
        if not runs or (previous and len(runs) < 2):
            return None
        entries = list((runs[-2] if previous else runs[-1]).entries)
        return render_log(entries, since_ns(params), params.get("timestamps") == "true")[0]

    async def _misbehave(self, request: kmock.Request, pod: str, mode: str) -> Any:
        self.log_requests[mode] = self.log_requests.get(mode, 0) + 1
        raw = request._raw_request
        assert raw is not None

        def gone() -> bool:
            return raw.transport is None or raw.transport.is_closing()

        def drop() -> None:
            if raw.transport is not None:
                raw.transport.abort()

        if mode == "5xx":
            self._n5xx += 1
            status = (500, 502, 503)[self._n5xx % 3]
            reason = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable"}[status]
            return aiohttp.web.json_response(
                {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status, "reason": reason,
                 "message": f"Get \"https://10.0.0.7:10250/containerLogs/{NAMESPACE}/{pod}/trainer\": "
                            "proxy error"}, status=status, headers={"Retry-After": "1"} if status == 503 else None)
        if mode == "html":
            return aiohttp.web.Response(status=200, text=_HTML_PAGE, content_type="text/html")
        if mode in ("reset", "hang"):
            while mode == "hang" and self.log_faults.get(pod) == mode and not gone():  # noqa: ASYNC110 (no event
                await asyncio.sleep(0.05)  # tells that the client went away)
            drop()
            return aiohttp.web.Response(status=500)  # never reaches the client: its connection is gone
        body = self._log_answer(request)
        if body is None:  # an error answer (no such container, no previous instance): as PodLogs gives it
            return await super()._handle(request)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        if mode == "cut":
            half = len(body) // 2
            while 0 < half < len(body) and body[half - 1:half] == b"\n":
                half -= 1  # inside a line, not at its end
            with contextlib.suppress(ConnectionError):
                await response.write(body[:half])
            drop()
            return response
        assert mode == "trickle", mode
        sent = 0
        with contextlib.suppress(ConnectionError):
            while self.log_faults.get(pod) == mode and not gone():
                if sent < len(body):
                    await response.write(body[sent:sent + 1])
                    sent += 1
                await asyncio.sleep(self.trickle_pause)
        drop()
        return response


class CountingCluster(Cluster):
    """A Cluster on a CountingEmulator. The one entered last is `CountingCluster.active` (adapters that need the
    emulator, like `PodLogsRun`, find it there: the ADAPTERS factories take only a folder and a name)."""

    active: ClassVar[CountingCluster | None] = None

    def __init__(self) -> None:
        self.emu = CountingEmulator()
        self._server = kmock.Server(self.emu)

    async def __aenter__(self) -> CountingCluster:
        await super().__aenter__()
        CountingCluster.active = self
        return self

    async def __aexit__(self, *exc: object) -> None:
        if CountingCluster.active is self:
            CountingCluster.active = None
        await super().__aexit__(*exc)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(f"""apiVersion: v1
kind: Config
clusters: [{{name: kmock, cluster: {{server: "{self.url}"}}}}]
users: [{{name: kmock, user: {{token: dummy}}}}]
contexts: [{{name: kmock, context: {{cluster: kmock, user: kmock, namespace: default}}}}]
current-context: kmock
""")
        return path


# ---- the operator as its own process ------------------------------------------------------------------------------


class OperatorProcess:
    """`trainscope operator` in a subprocess, configured by a kubeconfig and environment variables only."""

    def __init__(self, kubeconfig: Path, database_url: str, log: Path, *, status_interval: float = 0.5,
                 extra_env: dict[str, str] | None = None):
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "TRAINSCOPE_DATABASE_URL": database_url,
                    "TRAINSCOPE_STATUS_INTERVAL": str(status_interval), "TRAINSCOPE_METRICS_PORT": "0",
                    "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        self.env.pop("TRAINSCOPE_TEST_DATABASE_URL", None)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.log, "ab") as out:
            out.write(f"\n===== start #{self.starts + 1} at {time.time():.3f}\n".encode())
            out.flush()
            self.proc = subprocess.Popen([sys.executable, "-m", "trainscope.cli", "operator"], env=self.env,
                                         stdout=out, stderr=subprocess.STDOUT)
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is committed or cleaned up."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, within: float = 30.0) -> int:
        """Graceful stop (SIGTERM, as Kubernetes does); SIGKILL if it does not exit in time."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def rss(self) -> int:
        return psutil.Process(self.pid).memory_info().rss

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return t.user + t.system

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])


class RssSampler:
    """Samples a process's RSS from a thread every `interval` s, tagged with the phase the test is in."""

    def __init__(self, pid: int, interval: float = 0.2):
        self._proc = psutil.Process(pid)
        self._interval = interval
        self.phase = "before"
        self.samples: list[tuple[str, int]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="rss-sampler")

    def _main(self) -> None:
        while not self._halt.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((self.phase, self._proc.memory_info().rss))
            self._halt.wait(self._interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._halt.set()
        self._thread.join(5)

    def peak(self, phase: str) -> int:
        return max((r for p, r in self.samples if p == phase), default=0)

    def last(self, phase: str) -> int:
        vals = [r for p, r in self.samples if p == phase]
        return vals[-1] if vals else 0


# ---- TensorBoard event files, fast --------------------------------------------------------------------------------


def tb_value(tag: str, step: int) -> float:
    """Deterministic values with NaN and infinities in them."""
    if step % 997 == 0:
        return math.nan
    if step % 1999 == 0:
        return math.inf if tag.endswith("loss") else -math.inf
    return 2.0 / math.sqrt(step + 1) + 0.001 * (hash(tag) % 7)


class EventFile:
    """One events.out.tfevents file: one scalar per event, as tensorboardX writes them (the reader's fast path)."""

    def __init__(self, logdir: Path, tags: Iterable[str] = ("train/loss", "train/lr"), name: str = "0"):
        logdir.mkdir(parents=True, exist_ok=True)
        self.logdir = logdir
        self.tags = tuple(tags)
        self.path = logdir / f"events.out.tfevents.{name}.faults"
        self._f = open(self.path, "ab")
        self._f.write(frame(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()
        self.last_step = 0
        self._lock = threading.Lock()

    def write(self, steps: Iterable[int], wall: Callable[[int], float] | None = None,
              tags: Iterable[str] | None = None) -> None:
        """Append every tag at each step; wall_time is `wall(step)` or now. Whole records per write() call."""
        tags = tuple(tags or self.tags)
        buf = bytearray()
        last = self.last_step
        for step in steps:
            ts = wall(step) if wall else time.time()
            for tag in tags:
                buf += frame(encode_event(ts, step, {tag: tb_value(tag, step)}))
            last = max(last, step)
            if len(buf) > 1 << 20:
                self._flush(buf)
                buf = bytearray()
        self._flush(buf)
        self.last_step = last

    def _flush(self, buf: bytes | bytearray) -> None:
        with self._lock:
            self._f.write(buf)
            self._f.flush()

    def write_to(self, last: int) -> None:
        self.write(range(self.last_step + 1, last + 1))

    def close(self) -> None:
        self._f.close()


class LiveWriter:
    """Keeps appending steps from a thread (training going on) at about `rate` steps per second."""

    def __init__(self, grow: Callable[[int], None], last: Callable[[], int], rate: float = 50.0, chunk: int = 5):
        self._grow, self._last = grow, last
        self._pause = chunk / rate
        self._chunk = chunk
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True, name="live-writer")
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            while not self._halt.is_set():
                self._grow(self._last() + self._chunk)
                self._halt.wait(self._pause)
        except BaseException as exc:
            self.error = exc

    def start(self) -> LiveWriter:
        self._thread.start()
        return self

    def stop(self) -> int:
        self._halt.set()
        self._thread.join(10)
        assert not self._thread.is_alive() and self.error is None, f"writer failed: {self.error!r}"
        return self._last()


# ---- source adapters ------------------------------------------------------------------------------------------------

Truth = dict[tuple[str, str, int], Scalar]  # (run, metric, step) -> (ts, value), as kube.compare_points wants


class SourceAdapter(Protocol):
    """What the fault suite needs of a source kind: a run that can grow, its truth, and its spec item.

    `grow_to(step)` writes (or makes the fake server serve) every step up to `step`; `truth()` is what the source
    holds, read independently of the source's own reader; `spec_item()` is one entry of `spec.sources`.
    """

    kind: ClassVar[str]
    name: str
    exact: ClassVar[bool]  # False for snapshot APIs (no history): see `served()`

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None: ...

    @property
    def last_step(self) -> int: ...

    def truth(self) -> Truth: ...

    def served(self) -> Truth:
        """Every point the source ever offered. For an exact kind it equals `truth()`. A snapshot API (Qianfan's job
        status) shows only its current answer: an answer served while the operator was killed before committing is
        gone, so its check is truth() <= stored <= served()."""
        ...

    def spec_item(self) -> dict[str, Any]: ...

    def env(self) -> dict[str, str]:
        """Environment the operator process needs for this kind (API keys of the fake servers)."""
        ...

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        """A spec item of this kind that talks HTTP to `url` (for the misbehaving-server tests), or None."""
        ...

    def close(self) -> None: ...


class _Exact:
    exact: ClassVar[bool] = True

    def served(self) -> Truth:
        return self.truth()  # type: ignore[attr-defined]

    def env(self) -> dict[str, str]:
        return {}


class TensorBoardFiles(_Exact):
    """tensorboard in logDir mode; the truth is read back with tensorboardX's protobuf classes (kube.read_scalars)."""

    kind: ClassVar[str] = "tensorboard"

    def __init__(self, root: Path, name: str = "tb", tags: Iterable[str] = ("train/loss", "train/lr")):
        self.name = name
        self.logdir = root / name
        self.file = EventFile(self.logdir / "run-1", tags)

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        self.file.write(range(self.file.last_step + 1, step + 1), wall)

    @property
    def last_step(self) -> int:
        return self.file.last_step

    def truth(self) -> Truth:
        return read_scalars(self.logdir)

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "tensorboard": {"logDir": str(self.logdir)}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return {"name": name, "tensorboard": {"url": url, "timeout": timeout}}

    def close(self) -> None:
        self.file.close()


class SwanLabFiles(_Exact):
    """swanlab in logDir mode: a SwanLab log directory in the layout swanlab 0.10 writes (runs.swanlab catalog,
    logs/<folder>/<n>.log JSON lines, a new file every 1,000 steps), written directly so 100k+ steps take seconds
    (the SDK itself is exercised in tests/test_swanlab*.py). The truth is read back from the .log files with json."""

    kind: ClassVar[str] = "swanlab"

    def __init__(self, root: Path, name: str = "swan", tags: Iterable[str] = ("train/loss", "train/lr")):
        self.name = name
        self.logdir = root / name
        self.run_id = "run-20250101_000000-faults01"
        self.tags = tuple(tags)
        self._last = 0
        self._t0 = 1_700_000_000.0
        (self.logdir / self.run_id / "logs").mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.logdir / "runs.swanlab")
        db.executescript("""
            CREATE TABLE project (id INTEGER PRIMARY KEY, name TEXT);
            CREATE TABLE experiment (id INTEGER PRIMARY KEY, run_id TEXT, name TEXT, status INTEGER,
                                     create_time TEXT, finish_time TEXT);
            CREATE TABLE tag (id INTEGER PRIMARY KEY, experiment_id INTEGER, name TEXT, folder TEXT, type TEXT,
                              sort INTEGER);
            INSERT INTO project VALUES (1, 'faults');""")
        db.execute("INSERT INTO experiment VALUES (1, ?, 'faults', 0, '2025-01-01T00:00:00', NULL)", (self.run_id,))
        for i, tag in enumerate(self.tags):
            db.execute("INSERT INTO tag VALUES (?, 1, ?, ?, 'line', ?)", (i + 1, tag, str(i + 1), i))
            (self.logdir / self.run_id / "logs" / str(i + 1)).mkdir()
        db.commit()
        db.close()

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        for i, tag in enumerate(self.tags):
            folder = self.logdir / self.run_id / "logs" / str(i + 1)
            lines: dict[int, list[str]] = {}
            for s in range(self._last + 1, step + 1):
                ts = wall(s) if wall else time.time()
                created = datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")
                value = tb_value(tag, s)
                value = value if math.isfinite(value) else 0.0
                lines.setdefault((s // 1000 + 1) * 1000, []).append(
                    json.dumps({"index": s, "data": value, "create_time": created}))
            for n, chunk in lines.items():
                with open(folder / f"{n}.log", "a") as f:
                    f.write("\n".join(chunk) + "\n")
        self._last = max(self._last, step)

    @property
    def last_step(self) -> int:
        return self._last

    def truth(self) -> Truth:
        out: Truth = {}
        for i, tag in enumerate(self.tags):
            for path in (self.logdir / self.run_id / "logs" / str(i + 1)).glob("*.log"):
                for line in path.read_text().splitlines():
                    rec = json.loads(line)
                    ts = datetime.fromisoformat(rec["create_time"]).replace(tzinfo=UTC).timestamp()
                    out[(self.run_id, tag, rec["index"])] = Scalar(ts, float(rec["data"]))
        return out

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "swanlab": {"logDir": str(self.logdir)}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return {"name": name, "swanlab": {"url": url, "timeout": timeout}}

    def close(self) -> None:
        return None


class WandbServer(_Exact):
    """wandb against tests/fakes/wandb_server.py (W&B's GraphQL API, real HTTP in a thread of the test process);
    the truth is the fake's own statement of which points its history rows stand for (`run_points`)."""

    kind: ClassVar[str] = "wandb"
    KEY = "k" * 40

    def __init__(self, root: Path, name: str = "wandb"):
        from fakes.wandb_server import FakeRun, FakeWandb, serve

        self.name = name
        self.fake = FakeWandb(api_keys=(self.KEY,))
        self.fake.add_project("ent", "proj")
        self.run = self.fake.add_run("ent", "proj", FakeRun("run-1"))
        self._serving = serve(self.fake)
        self._serving.__enter__()

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        from fakes.wandb_server import grow

        with self.fake.lock:
            if step > self.run.last_step:
                grow(self.run, step - self.run.last_step)

    @property
    def last_step(self) -> int:
        return self.run.last_step

    def truth(self) -> Truth:
        from fakes.wandb_server import run_points

        with self.fake.lock:
            return {(run, metric, step): Scalar(ts, value) for metric, step, ts, value, run in run_points(self.run)}

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "wandb": {"baseUrl": self.fake.url, "entity": "ent", "project": "proj",
                                             "runId": "run-1"}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return {"name": name, "wandb": {"baseUrl": url, "entity": "ent", "project": "proj", "runId": "run-1",
                                        "timeout": timeout}}

    def env(self) -> dict[str, str]:
        return {"WANDB_API_KEY": self.KEY}

    def close(self) -> None:
        self._serving.__exit__(None, None, None)


class QianfanServer:
    """qianfan against tests/fakes/qianfan_server.py: a fine-tuning job whose runTime grows. The API is a snapshot
    (the job's current detail): an answer replaced before a poll saw it is never stored, by nature."""

    kind: ClassVar[str] = "qianfan"
    exact: ClassVar[bool] = False

    def __init__(self, root: Path, name: str = "qianfan"):
        from fakes.qianfan_server import AK, JOB, SK, TASK, FakeQianfan, serve

        self.name = name
        self.fake = FakeQianfan(keys={AK: SK})
        self._keys = (AK, SK)
        self._task, self._job = TASK, JOB
        self._answers: list[int] = []
        self._serving = serve(self.fake)
        self._serving.__enter__()
        self.grow_to(1)

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        from fakes.qianfan_server import job

        if self._answers and step <= self._answers[-1]:
            return
        self._answers.append(step)
        with self.fake.lock:  # the job as it is now: a snapshot API shows nothing of its past
            self.fake.jobs[(self._task, self._job)] = [
                job("RUNNING", progress=min(99, step // 100), run_time=step, train_time=max(0, step - 1))]
            self.fake.positions[(self._task, self._job)] = 0

    @property
    def last_step(self) -> int:
        return self._answers[-1]

    def _points(self, steps: Iterable[int]) -> Truth:
        from trainscope.collector.sources.qianfan import METRIC_PROGRESS, METRIC_RUN_TIME, METRIC_TRAIN_TIME

        from fakes.qianfan_server import START_TS

        out: Truth = {}
        for s in steps:
            for metric, value in ((METRIC_PROGRESS, min(99, s // 100)), (METRIC_RUN_TIME, s),
                                  (METRIC_TRAIN_TIME, max(0, s - 1))):
                out[(f"{self._task}/{self._job}", metric, s)] = Scalar(START_TS + s, float(value))
        return out

    def truth(self) -> Truth:
        return self._points(self._answers[-1:])

    def served(self) -> Truth:
        return self._points(self._answers)

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "qianfan": {"taskId": self._task, "jobId": self._job, "endpoint": self.fake.url}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return {"name": name, "qianfan": {"taskId": self._task, "jobId": self._job, "endpoint": url,
                                          "timeout": timeout}}

    def env(self) -> dict[str, str]:
        return {"QIANFAN_ACCESS_KEY": self._keys[0], "QIANFAN_SECRET_KEY": self._keys[1]}

    def close(self) -> None:
        self._serving.__exit__(None, None, None)


class MlflowRun(_Exact):
    """mlflow against a real `mlflow server` (tests/mlflowfixtures.py, SQLite backend) started for this adapter; the
    run is logged with the real MLflow client (log_batch), and the truth is MlflowClient.get_metric_history.

    The server starts in a thread (it takes seconds, and the fault tests build adapters inside a running event loop
    that also runs the operator); the spec names the experiment, so it is known before the run exists."""

    kind: ClassVar[str] = "mlflow"

    def __init__(self, root: Path, name: str = "mlflow", tags: Iterable[str] = ("train/loss", "train/lr")):
        from mlflowfixtures import MlflowServer

        self.name = name
        self.tags = tuple(tags)
        self.server = MlflowServer(root / name)
        self.run_id = ""
        self._last = 0
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._starting = threading.Thread(target=self._start, daemon=True)
        self._starting.start()

    def _start(self) -> None:
        try:
            self.server.start()
            self.client = self.server.client()
            self.run_id = self.client.create_run(self.client.create_experiment(self.name)).info.run_id
        except BaseException as e:  # handed to the first caller that needs the server
            self._error = e

    def _ready(self) -> None:
        self._starting.join()
        if self._error is not None:
            raise RuntimeError(f"mlflow adapter {self.name}: the server did not start") from self._error

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        from mlflowfixtures import log_points

        self._ready()
        with self._lock:  # the LiveWriter's thread and the test both grow the run
            steps = range(self._last + 1, step + 1)
            for tag in self.tags:
                log_points(self.client, self.run_id, tag,
                           ((s, round((wall(s) if wall else time.time()) * 1000), tb_value(tag, s)) for s in steps))
            self._last = max(self._last, step)

    @property
    def last_step(self) -> int:
        return self._last

    def truth(self) -> Truth:
        from mlflowfixtures import truth

        self._ready()
        return {k: Scalar(ts, value) for k, (ts, value) in truth(self.client, [self.run_id]).items()}

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "mlflow": {"trackingUri": self.server.url, "experimentName": self.name}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return {"name": name, "mlflow": {"trackingUri": url, "experimentName": self.name, "timeout": timeout}}

    def close(self) -> None:
        self._starting.join()
        self.server.stop()


class PodLogsRun(_Exact):
    """logs in pod mode: training pods in the active CountingCluster's emulator, printing Megatron-LM lines that the
    operator reads through the API (pods list, then pods/{name}/log with timestamps and sinceTime).

    Every pod prints one iteration line per step (five metrics), a validation block every 100 steps, checkpoint and
    NCCL noise; the lines of one step share a kubelet timestamp, and with `wall` a second holds many steps (the
    cursor counts lines within a second). Pod 0's container crashes at the steps in `restarts` (by default one
    inside the run as it first stands, read back with previous=true during catch-up, and one LIVE_RESTART steps
    later, during live collection): a partial error line ends the old instance, and the new one resumes from the
    last checkpoint, printing those steps again with other values at later times (the newest wins, as in the store).
    The API keeps only the current and the previous instance, so the default plan assumes that the run as it first
    stands has been read before LIVE_RESTART more steps are printed (the fault tests wait for the first catch-up).

    The truth is the values this class printed (each one as `float()` of its own text), at the timestamps it gave
    the lines, never what a parser made of them. Emulator changes from another thread (LiveWriter) are queued to
    the emulator's event loop in order, without waiting for it.
    """

    kind: ClassVar[str] = "logs"
    CONTAINER = "trainer"
    LABEL = "trainscope-faults/run"
    CHECKPOINT = 50  # a restarted container resumes after the last multiple of this
    LIVE_RESTART = 100  # steps after the run as it first stands: the default second crash
    TOTAL = 1_000_000  # Megatron's `iteration A/ B`: B

    def __init__(self, root: Path, name: str = "logs", cluster: CountingCluster | None = None, *, pods: int = 2,
                 restarts: Iterable[int] | None = None):
        cluster = cluster or CountingCluster.active
        assert cluster is not None, "PodLogsRun needs a CountingCluster (entered): its pods live in that emulator"
        self.name = name
        self.emu = cluster.emu
        self.pods = [f"{name}-{i}" for i in range(pods)]
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._truth: Truth = {}
        self._last = 0
        self._restarts: list[int] | None = sorted(restarts) if restarts is not None else None
        self._instance = [0] * pods  # container restarts so far, per pod
        self._last_ns = [0] * pods
        self._shift = [0] * pods  # ns added to wall(step) after a restart (the crash took time)
        self.crashes = 0
        for i, pod in enumerate(self.pods):
            self._apply(self._create_pod, pod, i)

    # ---- the emulator (on its loop)

    def _apply(self, fn: Callable[..., None], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._loop.call_soon_threadsafe(fn, *args)

    def _create_pod(self, pod: str, index: int) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.emu.objects["v1/pods", NAMESPACE, pod] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NAMESPACE, "uid": f"uid-{pod}", "resourceVersion": "1",
                         "creationTimestamp": now,
                         "labels": {self.LABEL: self.name, "training.kubeflow.org/replica-index": str(index)}},
            "spec": {"containers": [{"name": self.CONTAINER}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": self.CONTAINER, "restartCount": 0}]}}
        self.emu.pod_logs.instances(NAMESPACE, pod, self.CONTAINER).append(Instance([]))

    def _mutate(self, ops: list[tuple[int, list[LogEntry] | None]]) -> None:
        """Append entries to a pod's current container instance, or (None) restart its container."""
        for index, entries in ops:
            runs = self.emu.pod_logs.instances(NAMESPACE, self.pods[index], self.CONTAINER)
            if entries is not None:
                runs[-1].entries.extend(entries)
                continue
            runs[-1].terminated = True
            runs.append(Instance([]))
            self.emu.objects["v1/pods", NAMESPACE, self.pods[index]].patch({"status": {"containerStatuses": [
                {"name": self.CONTAINER, "restartCount": len(runs) - 1}]}})
        self.emu.pod_logs.changed()

    # ---- what the pods print

    def _lines(self, index: int, step: int, ns: int) -> list[LogEntry]:
        """The lines of one step of pod `index` (all stamped `ns`), its points going into the truth."""
        pod, inst = self.pods[index], self._instance[index]
        when = datetime.fromtimestamp(ns // 10**9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        loss = math.nan if step % 997 == 0 else 9.0 / math.sqrt(step) + 0.01 * inst + 0.001 * index
        fields = [("consumed samples", f"{step * 256:12d}"),
                  ("elapsed time per iteration (ms)", f"{800 + (step * 7 + inst * 3 + index) % 100 / 10:.1f}"),
                  ("learning rate", f"{3e-4 * min(1.0, step / 2000):.6E}"),
                  ("lm loss", f"{loss:.6E}"),
                  ("grad norm", "inf" if step % 1999 == 0 else f"{1 + 1 / step + 0.01 * inst:.3f}")]
        text = [f" [{when}] iteration {step:8d}/{self.TOTAL:8d} | "
                + " | ".join(f"{metric}: {value}" for metric, value in fields) + " |"]
        ts = ns / 1e9
        for metric, value in fields:
            self._truth[(pod, metric, step)] = Scalar(ts, float(value))
        if step % 100 == 0:
            val = 3.0 / math.sqrt(step) + 0.01 * inst
            value, ppl = f"{val:.6E}", f"{math.exp(val):.6E}"
            text += ["-" * 100, f" validation loss at iteration {step} | lm loss value: {value} | lm loss PPL: "
                                f"{ppl} | ", "-" * 100]
            self._truth[(pod, "validation lm loss value", step)] = Scalar(ts, float(value))
            self._truth[(pod, "validation lm loss PPL", step)] = Scalar(ts, float(ppl))
        if step % 10 == 0:
            text.append(f"[rank1]:[W{when[5:7]}{when[8:10]} {when[11:]}.000000000 ProcessGroupNCCL.cpp:4115] Warning: "
                        "TORCH_NCCL_AVOID_RECORD_STREAMS=1 has no effect")
        if step % self.CHECKPOINT == 0:
            text += [f"saving checkpoint at iteration {step:8d} to /ckpt/gpt in torch_dist format",
                     f"  successfully saved checkpoint from iteration {step:8d} to /ckpt/gpt [ t 1/4, p 1/2 ]"]
        return [LogEntry(ns, (line + "\n").encode()) for line in text]

    def _stamp(self, index: int, step: int, wall: Callable[[int], float] | None, now: int) -> int:
        ns = round(wall(step) * 1e6) * 1000 + self._shift[index] if wall else now
        self._last_ns[index] = max(ns, self._last_ns[index])  # a kubelet's timestamps never go back
        return self._last_ns[index]

    def grow_to(self, step: int, wall: Callable[[int], float] | None = None) -> None:
        with self._lock:
            if step <= self._last:
                return
            if self._restarts is None:
                self._restarts = [self._last + 1 + (step - self._last) * 3 // 5 + 7, step + self.LIVE_RESTART]
            now = time.time_ns() // 1000 * 1000  # without `wall`, the steps of this call are printed at once
            ops: list[tuple[int, list[LogEntry] | None]] = []
            for index in range(len(self.pods)):
                entries: list[LogEntry] = []
                for s in range(self._last + 1, step + 1):
                    entries += self._lines(index, s, self._stamp(index, s, wall, now))
                    if index == 0 and s in self._restarts:
                        entries.append(LogEntry(self._last_ns[index] + 1000, b"[rank0]: RuntimeError: CUDA error: "
                                                b"an illegal memory access was encountered"))  # no newline: cut off
                        ops += [(index, entries), (index, None)]
                        entries = []
                        self._instance[index] += 1
                        self.crashes += 1
                        resume = (s - 1) // self.CHECKPOINT * self.CHECKPOINT + 1
                        self._last_ns[index] += 2 * 10**9  # the restart took two seconds
                        if wall:
                            self._shift[index] = self._last_ns[index] - round(wall(resume) * 1e6) * 1000
                        else:
                            now = max(now, self._last_ns[index])
                        for r in range(resume, s + 1):  # from the checkpoint on, printed again
                            entries += self._lines(index, r, self._stamp(index, r, wall, now))
                ops.append((index, entries))
            self._last = step
            self._apply(self._mutate, ops)

    @property
    def last_step(self) -> int:
        return self._last

    def truth(self) -> Truth:
        with self._lock:
            return dict(self._truth)

    def spec_item(self) -> dict[str, Any]:
        return {"name": self.name, "logs": {"pods": {"selector": {"matchLabels": {self.LABEL: self.name}}}}}

    def http_item(self, name: str, url: str, timeout: str) -> dict[str, Any] | None:
        return None  # it talks to the Kubernetes API: see CountingEmulator.set_log_fault

    def close(self) -> None:
        return None


# kind -> adapter factory(root folder, source name). A kind registered in trainscope.collector.sources without an
# entry here is not covered by the fault suite: test_faults_kill.py lists it and fails, so it gets one.
ADAPTERS: dict[str, Callable[[Path, str], SourceAdapter]] = {
    "tensorboard": lambda root, name: TensorBoardFiles(root, name),
    "swanlab": lambda root, name: SwanLabFiles(root, name),
    "wandb": lambda root, name: WandbServer(root, name),
    "qianfan": lambda root, name: QianfanServer(root, name),
    "mlflow": lambda root, name: MlflowRun(root, name),
    "logs": lambda root, name: PodLogsRun(root, name),
}


# Registered kinds the fault suite does not cover yet, each with what its adapter needs. Keep this short.
PENDING: dict[str, str] = {}


def covered_kinds() -> list[str]:
    return sorted(k for k in REGISTRY if k in ADAPTERS)


def uncovered_kinds() -> list[str]:
    return sorted(k for k in REGISTRY if k not in ADAPTERS)


# ---- a misbehaving HTTP server --------------------------------------------------------------------------------------


@dataclass
class ServedRun:
    """What a FlakyServer serves in TensorBoard's HTTP API shape: run -> tag -> [[wall, step, value], ...]."""

    series: dict[str, dict[str, list[list[float]]]]

    @classmethod
    def make(cls, steps: int, tags: Iterable[str] = ("train/loss", "train/lr"), run: str = "run-1",
             t0: float = 1_700_000_000.0) -> ServedRun:
        served = cls({run: {tag: [] for tag in tags}})
        served.grow_to(steps, t0)
        return served

    def grow_to(self, steps: int, t0: float = 1_700_000_000.0) -> None:
        for tags in self.series.values():
            for tag, rows in tags.items():
                start = int(rows[-1][1]) + 1 if rows else 1
                rows.extend([t0 + s, s, tb_value(tag, s)] for s in range(start, steps + 1))

    def truth(self) -> Truth:
        return {(run, tag, int(step)): Scalar(wall, value)
                for run, tags in self.series.items() for tag, rows in tags.items() for wall, step, value in rows}


def _json_number(v: float) -> Any:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return v


MODES = ("ok", "refuse", "reset", "hang", "trickle", "cut", "truncated_json", "5xx", "html", "wrong_shape")


class FlakyServer:
    """TensorBoard's scalars HTTP API on 127.0.0.1 that misbehaves on demand (`mode`, one of MODES).

    refuse: nothing listens on the port; reset: the connection is closed as soon as the request arrives; hang: the
    request is read and never answered; trickle: an endless body, one byte every `trickle_pause` s; cut: half the
    body, then the connection closes; truncated_json: a complete HTTP answer whose JSON is cut; 5xx: 500/502/503 in
    turn; html: 200 text/html with an error page; wrong_shape: valid JSON of the wrong shape.
    """

    def __init__(self, served: ServedRun, trickle_pause: float = 0.2):
        self.served = served
        self.mode = "ok"
        self.trickle_pause = trickle_pause
        self.requests: dict[str, int] = {}
        self.in_flight = 0
        self._server: asyncio.Server | None = None
        self.port = 0
        self._conns: set[asyncio.StreamWriter] = set()
        self._n5xx = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FlakyServer:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._unlisten()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        if mode == "refuse" and self._server is not None:
            await self._unlisten()
        elif mode != "refuse" and self._server is None:
            await self._listen()
        elif self.mode in ("hang", "trickle"):
            for w in list(self._conns):  # end the hanging answers of the previous mode
                w.close()
        self.mode = mode

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._conns.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                target = line.split(" ")[1]
                mode = self.mode
                self.requests[mode] = self.requests.get(mode, 0) + 1
                self.in_flight += 1
                try:
                    if not await self._answer(mode, target, writer):
                        return
                finally:
                    self.in_flight -= 1
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, IndexError):
            return
        finally:
            self._conns.discard(writer)
            writer.close()

    def _body(self, target: str) -> tuple[int, bytes]:
        parts = urlsplit(target)
        if parts.path == "/data/plugin/scalars/tags":
            return 200, json.dumps({run: {tag: {"displayName": tag, "description": ""} for tag in tags}
                                    for run, tags in self.served.series.items()}).encode()
        if parts.path == "/data/plugin/scalars/scalars":
            q = parse_qs(parts.query)
            rows = self.served.series.get(q.get("run", [""])[0], {}).get(q.get("tag", [""])[0])
            if rows is None:
                return 404, b"not found"
            return 200, json.dumps([[w, s, _json_number(v)] for w, s, v in rows]).encode()
        return 404, b"not found"

    async def _answer(self, mode: str, target: str, w: asyncio.StreamWriter) -> bool:
        """Write the answer for `mode`; False when the connection must end."""
        if mode == "reset":
            w.transport.abort()
            return False
        if mode == "hang":
            await asyncio.Event().wait()  # until the connection is closed under us
        status, body = self._body(target)
        ctype = "application/json"
        if mode == "5xx":
            self._n5xx += 1
            status, body, ctype = (500, 502, 503)[self._n5xx % 3], b'{"error": "overloaded"}', "application/json"
        elif mode == "html":  # any path: the kinds of other APIs (W&B, Qianfan, SwanLab) get the same garbage
            status, body, ctype = 200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html"
        elif mode == "wrong_shape":
            body = json.dumps({"data": {"items": [1, 2, 3]}}).encode() if body[:1] == b"[" else b"[1, 2, 3]"
            status = 200
        elif mode == "truncated_json":
            body = body[: max(1, len(body) // 2)] if status == 200 else b'{"data": {"project": {"run": {"hist'
            status = 200
        reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 502: "Bad Gateway",
                  503: "Service Unavailable"}[status]
        if mode == "trickle":
            w.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {10**9}\r\n\r\n".encode())
            while True:  # one byte at a time, forever: never idle long enough for a read timeout
                w.write(b" ")
                await w.drain()
                await asyncio.sleep(self.trickle_pause)
        extra = "Retry-After: 1\r\n" if status == 503 else ""
        w.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                .encode())
        if mode == "cut":
            w.write(body[: len(body) // 2])
            await w.drain()
            w.transport.abort()
            return False
        w.write(body)
        await w.drain()
        return True


# ---- waiting on the database ----------------------------------------------------------------------------------------


async def wait_points(database_url: str, uid: str, source: str, want: Callable[[], Truth], within: float,
                      what: str) -> None:
    """Until the stored points of `source` equal `want()` (evaluated at each try), point for point."""
    from kube import compare_points, db_points

    async def check() -> None:
        compare_points(await db_points(database_url, uid), want(), source)
    await eventually(check, within=within, what=what)


def check_stored(stored: dict[tuple[str, str, str, int], Scalar], adapter: SourceAdapter,
                 truth: Truth | None = None, served: Truth | None = None) -> None:
    """Exact kinds: stored == truth, point for point. Snapshot kinds: truth <= stored <= served, equal values."""
    from kube import compare_points, same_value

    truth = adapter.truth() if truth is None else truth
    if adapter.exact:
        compare_points(stored, truth, adapter.name)
        return
    served = adapter.served() if served is None else served
    mine = {(run, metric, step): v for (src, run, metric, step), v in stored.items() if src == adapter.name}
    assert truth.keys() <= mine.keys(), f"{adapter.name}: missing {sorted(truth.keys() - mine.keys())[:5]}"
    assert mine.keys() <= served.keys(), f"{adapter.name}: never served {sorted(mine.keys() - served.keys())[:5]}"
    wrong = [k for k, v in mine.items() if not same_value(v.value, served[k].value) or abs(v.ts - served[k].ts) > 2e-6]
    assert not wrong, f"{adapter.name}: {len(wrong)} points differ from what was served, first {wrong[:5]}"
