"""Helpers for the SwanLab source tests: real runs logged by the swanlab SDK, a real `swanlab watch`, an oracle.

Runs are logged in subprocesses (`python swanfixtures.py <logdir> <json plan>`) with every SwanLab directory
pointed at the test's temp folder, so nothing lands in ~/.swanlab. The values each run logs come from `value()`,
which is also the tests' oracle for what was logged; the create_time SwanLab gave each point is read back from
its files (and, for short runs, from the dashboard) independently of the source under test.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from rawhttp import free_port, stop_process

HERE = Path(__file__).resolve()
SWANLAB_EXE = Path(sys.executable).with_name("swanlab")
_MARK = "@@trainscope@@ "


def value(run: str, metric: str, step: int) -> float:
    """What run `run` logs for `metric` at `step`: a metric named *grad_norm carries NaN and +-Inf now and then."""
    if metric.endswith("grad_norm") and step % 7 == 3:
        return [math.nan, math.inf, -math.inf][step // 7 % 3]
    seed = sum(map(ord, run + metric)) % 97
    return math.sin(step * 0.37 + seed) / (1 + step) + seed / 10


def swan_env(base: Path) -> dict[str, str]:
    """An environment for swanlab subprocesses whose every folder is under `base`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWANLAB_")}
    for var, sub in (("HOME", "home"), ("SWANLAB_ROOT", "root"), ("SWANLAB_SAVE_DIR", "save"),
                     ("SWANLAB_CONFIG_DIR", "config"), ("XDG_CONFIG_HOME", "xdg-config"),
                     ("XDG_CACHE_HOME", "xdg-cache")):
        (base / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(base / sub)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def write_runs(logdir: Path, env: dict[str, str], *runs: dict[str, Any]) -> None:
    """Log finished (or crashing) runs, one after the other, in one subprocess; raises if it fails unexpectedly."""
    proc = subprocess.run([sys.executable, str(HERE), str(logdir), json.dumps(list(runs))], env=env,
                          capture_output=True, text=True, timeout=120)
    crashed = any(r.get("end") == "crash" for r in runs)
    if proc.returncode != (1 if crashed else 0) or (crashed and "boom" not in proc.stderr):
        raise AssertionError(f"swanlab writer failed ({proc.returncode}): {proc.stderr[-2000:]}")


class LiveRun:
    """A run logging on command in its own process: `log(n)` logs n more steps, `finish()` or `kill()` ends it."""

    def __init__(self, logdir: Path, env: dict[str, str], name: str, metrics: list[str]):
        plan = [{"name": name, "metrics": metrics, "steps": 0, "end": "stdin"}]
        self.proc = subprocess.Popen([sys.executable, str(HERE), str(logdir), json.dumps(plan)], env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True)
        self.run_id = self._reply()
        self.steps = 0

    def _reply(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # swanlab prints its own lines too
            if line.startswith(_MARK):
                return line[len(_MARK):].strip()
        raise AssertionError(f"swanlab live writer exited ({self.proc.wait()})")

    def _send(self, command: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def log(self, n: int) -> None:
        self._send(f"log {n}")
        self.steps += n

    def relog(self, step: int) -> None:
        """Log `step` again with value(...) + 1000."""
        self._send(f"relog {step}")

    def finish(self) -> None:
        self._send("finish")
        self.proc.wait(60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(60)


def _main(logdir: str, plan: list[dict[str, Any]]) -> None:
    """The writer: `swanlab.init(mode="local")` + `swanlab.log` per the plan (runs in a subprocess)."""
    import swanlab

    for run in plan:
        handle = swanlab.init(project="trainscope-test", experiment_name=run["name"], mode="local",
                              logdir=logdir, config=run.get("config"))
        every = run.get("every", 1)

        def log(steps: range, run: dict[str, Any] = run, every: int = every) -> None:
            for i in steps:
                step = i * every
                swanlab.log({m: value(run["name"], m, step) for m in run["metrics"]}, step=step)

        log(range(run["steps"]))
        end = run.get("end", "finish")
        if end == "crash":
            raise RuntimeError(f"boom in {run['name']}")
        if end == "stdin":
            print(f"{_MARK}{Path(handle.dir).name}", flush=True)
            done = run["steps"]
            for line in sys.stdin:
                cmd, *args = line.split()
                if cmd == "log":
                    log(range(done, done + int(args[0])))
                    done += int(args[0])
                elif cmd == "relog":  # a step logged again (training resumed from a checkpoint)
                    step = int(args[0])
                    swanlab.log({m: value(run["name"], m, step) + 1000 for m in run["metrics"]}, step=step)
                elif cmd == "finish":
                    break
                print(f"{_MARK}ok", flush=True)
        swanlab.finish()
        print(f"{_MARK}ok", flush=True)


# ---- reading back what SwanLab wrote (the oracle for create_time), waiting, the dashboard


def file_points(logdir: Path, run_id: str, folders: dict[str, str]) -> list[tuple]:
    """Every point SwanLab wrote for a run, straight from its .log files, as sorted (run, metric, step, ts, value)."""
    out = []
    for metric, folder in folders.items():
        for path in sorted((logdir / run_id / "logs" / folder).glob("*.log")):
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    ts = datetime.fromisoformat(rec["create_time"]).astimezone(UTC).timestamp()
                    out.append((run_id, metric, rec["index"], ts, _nan(rec["data"])))
    return sorted(out)


def logged_lines(logdir: Path, run_id: str) -> int:
    """How many points of a run SwanLab has written to disk so far (it writes in a background thread)."""
    total = 0
    for path in (logdir / run_id / "logs").glob("*/*.log"):
        with contextlib.suppress(FileNotFoundError):
            total += path.read_bytes().count(b"\n")
    return total


def values_at(logdir: Path, run_id: str, step: int) -> list[float]:
    """The values SwanLab has on disk for `step`, over all metrics of a run."""
    out = []
    for path in (logdir / run_id / "logs").glob("*/*.log"):
        with contextlib.suppress(FileNotFoundError):
            out += [rec["data"] for rec in map(json.loads, path.read_text().splitlines()) if rec["index"] == step]
    return out


def _nan(v: float) -> float | str:
    return "nan" if isinstance(v, float) and math.isnan(v) else v


def key(p: Any) -> tuple:
    """A comparable, hashable point in which NaN equals NaN."""
    metric, step, ts, val, run = p
    return (run, metric, step, ts, _nan(val))


def keys(points: list) -> list[tuple]:
    return sorted(key(p) for p in points)


def wait_for(predicate: Callable[[], Any], what: str, deadline_s: float = 60.0) -> Any:
    """Poll `predicate` until it returns something truthy; fail naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        with contextlib.suppress(httpx.HTTPError, ValueError, OSError, KeyError):
            if result := predicate():
                return result
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@contextlib.contextmanager
def swanlab_watch(logdir: Path, env: dict[str, str]) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real `swanlab watch` on a free local port; yields (base URL, process) once it answers."""
    port = free_port()
    proc = subprocess.Popen([str(SWANLAB_EXE), "watch", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and api(url, "/api/v1/project") is not None, "swanlab watch to answer")
        yield url, proc
    finally:
        stop_process(proc)


def api(url: str, path: str) -> Any:
    """GET a SwanLab dashboard path and return `data` (raises on errors)."""
    resp = httpx.get(url + path, timeout=10)
    resp.raise_for_status()
    return resp.json()["data"]


if __name__ == "__main__":
    _main(sys.argv[1], json.loads(sys.argv[2]))
