"""A real `mlflow server` (the tracking server from PyPI, SQLite backend) on 127.0.0.1 for tests and benches, and
helpers that log runs with the real MLflow client and read its truth back with `MlflowClient.get_metric_history`."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` as a child process: one uvicorn worker, no job runner (MLflow's huey consumers are for its
    GenAI jobs, not tracking), the access log kept in `log` so tests can count the requests a source made."""

    def __init__(self, root: Path, *, app_name: str | None = None, admin: tuple[str, str] | None = None):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "mlflow-server.log"
        self.app_name = app_name
        self.admin = admin  # basic-auth: the admin user the app creates on first start
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, within: float = 120.0) -> MlflowServer:
        cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
               "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port",
               str(self.port), "--workers", "1"]
        if self.app_name:
            cmd += ["--app-name", self.app_name]
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        if self.app_name == "basic-auth":
            env.update(self._basic_auth_env())
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True, cwd=self.root)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not answer /health within {within}s:\n{self.log.read_text()[-3000:]}")

    def _basic_auth_env(self) -> dict[str, str]:
        """What `mlflow server --app-name basic-auth` needs (mlflow/server/auth/config.py, basic_auth.ini): an auth
        config with its own user database, the admin to create on first start (MLflow ships no default password
        and refuses to start without one), and a static Flask secret key for its CSRF protection."""
        assert self.admin is not None, "basic-auth needs an admin (user, password of 12+ characters)"
        ini = self.root / "basic_auth.ini"
        ini.write_text("[mlflow]\ndefault_permission = READ\n"
                       f"database_uri = sqlite:///{self.root}/basic_auth.db\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": self.admin[0],
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": "trainscope-tests"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: uvicorn's worker goes too
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def requests(self, path_part: str = "/mlflow/") -> int:
        """Requests in the access log so far whose line mentions `path_part`."""
        return sum(1 for line in self.log.read_text(errors="replace").splitlines()
                   if path_part in line and ('"GET ' in line or '"POST ' in line))

    def client(self) -> Any:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.url)

    def __enter__(self) -> MlflowServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def log_points(client: Any, run_id: str, key: str, points: Iterable[tuple[int, int, float]]) -> None:
    """Log (step, timestamp ms, value) points with the real client, 1,000 per log_batch (the server's limit)."""
    from mlflow.entities import Metric

    batch: list[Any] = []
    for step, ts, value in points:
        batch.append(Metric(key, value, ts, step))
        if len(batch) == 1000:
            client.log_batch(run_id, metrics=batch, synchronous=True)
            batch = []
    if batch:
        client.log_batch(run_id, metrics=batch, synchronous=True)


def truth(client: Any, run_ids: Iterable[str]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(run, metric, step) -> (ts s, value) from MlflowClient.get_metric_history: MLflow's own answer. Several
    points at one step: the newest timestamp (what the store keeps, as MLflow's latest-metric rule does)."""
    out: dict[tuple[str, str, int], tuple[float, float]] = {}
    for rid in run_ids:
        for key in client.get_run(rid).data.metrics:
            for m in sorted(client.get_metric_history(rid, key), key=lambda m: (m.step, m.timestamp)):
                out[(rid, key, m.step)] = (m.timestamp / 1000.0, m.value)
    return out


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b
