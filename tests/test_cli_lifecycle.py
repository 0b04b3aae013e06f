"""The `trainscope` command as a user runs it, in subprocesses: the embedded PostgreSQL is stopped on every way
out (SIGTERM, SIGINT, an error) and a server left by a SIGKILLed run is reused and then stopped; names, paths and
errors holding Rich markup print literally on a terminal (pty) and redirected; without a terminal a plain status
line per interval; log lines once, and valid JSON with --log-format json; listen addresses default to 127.0.0.1 and a
taken port is said plainly."""

from __future__ import annotations

import base64
import http.server
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from apifixtures import free_port

ROOT = Path(__file__).resolve().parents[1]


def manifest(path: Path, name: str = "wl", log_dir: str = "runs", extra: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                                    "metadata": {"name": name, "namespace": "ml"},
                                    "spec": {"pollInterval": "1s", "sources": [
                                        {"name": "tb", "tensorboard": {"logDir": log_dir}}], **(extra or {})}}))
    return path


def env(**extra: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("TRAINSCOPE_")}
    out.update(extra)
    return out


def start(args: list[str], environ: dict[str, str], **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "trainscope.cli", *args], env=environ, text=True,
                            stdout=kw.pop("stdout", subprocess.PIPE), stderr=kw.pop("stderr", subprocess.PIPE),
                            cwd=kw.pop("cwd", None), **kw)  # type: ignore[call-overload]


def read_until(proc: subprocess.Popen[str], pred: Callable[[str], bool], timeout: float = 120) -> list[str]:
    """stdout lines until one satisfies `pred` (a hang guard, not a timing assertion)."""
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if pred(line):
                return lines
    raise AssertionError(f"not seen; stdout so far: {lines}; stderr: {proc.stderr.read() if proc.poll() else ''}")


def postgres_of(pgdata: Path) -> list[psutil.Process]:
    """The running postmaster(s) serving `pgdata`."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        try:
            if p.info["name"] == "postgres" and str(pgdata) in " ".join(p.info["cmdline"] or ()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def wait_gone(pgdata: Path, timeout: float = 30) -> list[psutil.Process]:
    deadline = time.monotonic() + timeout
    while (left := postgres_of(pgdata)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the API did not come up")


# ---- the embedded PostgreSQL on every way out -----------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_local_mode_stops_its_embedded_postgres_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    data = tmp_path / "data"
    proc = start(["local", "-f", str(manifest(tmp_path / "wl.yaml")), "--data-dir", str(data), "--api-port", "0",
                  "--refresh", "0.5"], env(), cwd=tmp_path)
    try:
        read_until(proc, lambda line: "ml/wl" in line)
        assert postgres_of(data / "postgres"), "the embedded server runs while collecting"
        proc.send_signal(sig)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert wait_gone(data / "postgres") == []


def test_api_stops_its_embedded_postgres_on_sigterm_and_on_an_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    proc = start(["api", "--data-dir", str(data), "--port", str(port)], env())
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        assert postgres_of(data / "postgres")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
    assert wait_gone(data / "postgres") == []
    # An error after the server started (a port number out of range: an exception from bind) stops it as well.
    proc = start(["api", "--data-dir", str(data), "--port", "70000"], env())
    assert proc.wait(120) != 0
    assert "port must be 0-65535" in proc.stderr.read()  # the traceback of an unexpected error
    assert wait_gone(data / "postgres") == []


def test_a_server_left_by_a_sigkilled_run_is_reused_then_stopped(tmp_path: Path) -> None:
    data = tmp_path / "data"
    args = ["local", "-f", str(manifest(tmp_path / "wl.yaml")), "--data-dir", str(data), "--api-port", "0",
            "--refresh", "0.5"]
    first = start(args, env(), cwd=tmp_path)
    read_until(first, lambda line: "ml/wl" in line)
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    [left] = postgres_of(data / "postgres")  # no process stops it: it keeps running, as after a crash
    second = start(args, env(), cwd=tmp_path)
    try:
        read_until(second, lambda line: "ml/wl" in line)
        assert [p.pid for p in postgres_of(data / "postgres")] == [left.pid]  # reused, not a second server
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, second.stderr.read()
    finally:
        second.kill()
    assert wait_gone(data / "postgres") == []  # the clean exit stops it, the crashed run's handle forgotten


# ---- names, paths and errors are text, never markup ----------------------------------------------------------------

MARKUP_NAME, MARKUP_DIR = "wl[bold]", "/tmp/[bold]x[/bold]"  # short: the table cuts errors at 60 characters


def test_markup_in_names_and_errors_prints_literally_when_redirected(tmp_path: Path, database_url: str) -> None:
    path = manifest(tmp_path / "wl.yaml", name=MARKUP_NAME, log_dir=MARKUP_DIR)
    proc = start(["local", "-f", str(path), "--api-port", "0", "--refresh", "0.3"],
                 env(TRAINSCOPE_DATABASE_URL=database_url), cwd=tmp_path)
    try:
        lines = read_until(proc, lambda line: "does not exis" in line)
        lines += read_until(proc, lambda line: "ml/wl[bold]" in line)  # a further interval: a line each time
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    status = [line for line in lines + out.splitlines(keepends=True) if " ml/wl[bold] " in line]
    assert len(status) >= 3  # one per interval, plus the last at the stop
    assert f"logDir {MARKUP_DIR} does not exist" in "".join(status)  # the path with its brackets, as it is
    assert all(line.split(" ", 1)[0].endswith("Z") and "phase=" in line for line in status)
    assert "\x1b[" not in "".join(lines) + out  # no terminal codes in a redirected output


def test_markup_in_names_and_errors_prints_literally_on_a_terminal(tmp_path: Path, database_url: str) -> None:
    path = manifest(tmp_path / "wl.yaml", name=MARKUP_NAME, log_dir=MARKUP_DIR)
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "trainscope.cli", "local", "-f", str(path), "--api-port", "0",
                             "--refresh", "0.3"], env=env(TRAINSCOPE_DATABASE_URL=database_url, COLUMNS="200",
                                                           LINES="40", TERM="xterm"),
                            stdin=slave, stdout=slave, stderr=subprocess.PIPE, cwd=tmp_path)
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and screen.count(b"does not exis") < 3:  # the table keeps redrawing
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert "ml/wl[bold]" in text and f"logDir {MARKUP_DIR} does not exist" in text
    assert text.count("does not exis") >= 3


# ---- logs once; JSON lines ---------------------------------------------------------------------------------------

def _kubeconfig(path: Path) -> Path:
    """A kubeconfig whose API server refuses connections: kopf logs its retries (real log lines to count)."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    return path


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_the_operator_logs_each_line_once(tmp_path: Path, fmt: str) -> None:
    environ = env(KUBECONFIG=str(_kubeconfig(tmp_path / "kc.yaml")),
                  TRAINSCOPE_DATABASE_URL=f"postgresql://nobody@127.0.0.1:{free_port()}/x")
    proc = start(["operator", "--metrics-port", "0", "--log-format", fmt], environ)
    time.sleep(5)  # a few retries of kopf and of the store get logged
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) >= 4, err
    assert len(set(lines)) == len(lines), "a line printed twice"  # each carries its own timestamp
    if fmt == "json":
        records = [json.loads(line) for line in lines]
        assert all({"message", "timestamp", "severity"} <= set(r) for r in records)
        assert any("database unavailable" in r["message"] for r in records)  # ours, through kopf's handler
        assert any("127.0.0.1" in r["message"] and "/api" in r["message"] for r in records)  # kopf's own
    else:
        assert any("database unavailable" in line for line in lines)


def test_local_and_api_log_json_lines(tmp_path: Path, database_url: str) -> None:
    path = manifest(tmp_path / "wl.yaml", log_dir="missing")
    proc = start(["local", "-f", str(path), "--api-port", "0", "--refresh", "0.3", "--log-format", "json"],
                 env(TRAINSCOPE_DATABASE_URL=database_url), cwd=tmp_path)
    try:
        read_until(proc, lambda line: "does not exis" in line)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(r["logger"] == "trainscope.collector.collector" and "LogDirMissing" in r["message"]
               and r["severity"] == "warn" for r in records), err
    port = free_port()
    proc = start(["api", "--port", str(port), "--log-format", "json", "--access-log"],
                 env(TRAINSCOPE_DATABASE_URL=database_url))
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        err = proc.stderr.read()
    finally:
        proc.kill()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any("/healthz" in r["message"] and r["logger"] == "uvicorn.access" for r in records), err
    assert len({json.dumps(r) for r in records}) == len(records)


# ---- listen addresses ------------------------------------------------------------------------------------------------

def test_local_listens_on_loopback_and_says_when_a_port_is_taken(tmp_path: Path, database_url: str) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    busy = taken.getsockname()[1]
    api_port = free_port()
    try:
        proc = start(["local", "-f", str(manifest(tmp_path / "wl.yaml")), "--api-port", str(api_port),
                      "--metrics-port", str(busy), "--refresh", "0.3"], env(TRAINSCOPE_DATABASE_URL=database_url),
                     cwd=tmp_path)
        try:
            lines = read_until(proc, lambda line: "ml/wl" in line)
            assert any(f"/metrics could not listen on 127.0.0.1:{busy}" in line and "collecting without it" in line
                       for line in lines), lines
            listening = {(c.laddr.ip, c.laddr.port) for c in psutil.Process(proc.pid).net_connections()
                         if c.status == psutil.CONN_LISTEN}
            assert ("127.0.0.1", api_port) in listening and not any(ip == "0.0.0.0" for ip, _ in listening)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            proc.kill()
        proc = start(["api", "--port", str(busy)], env(TRAINSCOPE_DATABASE_URL=database_url))
        assert proc.wait(60) == 2
        err = proc.stderr.read()
        assert f"cannot listen on 127.0.0.1:{busy}" in err and "WARNING" not in err
        # Every interface without a token: said before anything else.
        proc = start(["api", "--host", "0.0.0.0", "--port", str(busy)], env(TRAINSCOPE_DATABASE_URL=database_url))
        assert proc.wait(60) == 2
        err = proc.stderr.read()
        assert "WARNING: the API listens on 0.0.0.0 without a token" in err
        assert f"cannot listen on 0.0.0.0:{busy}" in err
    finally:
        taken.close()


# ---- --secrets-dir -----------------------------------------------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    """A server that refuses every request with 401 (as W&B does a bad key) and keeps the Authorization header."""

    seen: list[str] = []

    def do_POST(self) -> None:
        self.seen.append(self.headers.get("Authorization", ""))
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


def test_local_mode_reads_secrets_from_the_secrets_dir(tmp_path: Path, database_url: str) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = {"pollInterval": "1s", "sources": [{"name": "wb", "wandb": {
        "baseUrl": f"http://127.0.0.1:{server.server_port}", "entity": "e", "project": "p", "runId": "r1",
        "apiKeySecretRef": {"name": "wandb-key", "key": "apiKey"}}}]}
    path = tmp_path / "wl.yaml"
    path.write_text(yaml.safe_dump({"apiVersion": "trainscope.io/v1alpha1", "kind": "Workload",
                                    "metadata": {"name": "wl", "namespace": "ml"}, "spec": spec}))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    key = "k" * 40
    try:
        for with_file in (False, True):
            if with_file:
                (secrets / "wandb-key").mkdir()
                (secrets / "wandb-key" / "apiKey").write_text(key + "\n")
            proc = start(["local", "-f", str(path), "--api-port", "0", "--refresh", "0.3",
                          "--secrets-dir", str(secrets)], env(TRAINSCOPE_DATABASE_URL=database_url), cwd=tmp_path)
            try:
                if with_file:  # the key from the file reaches the server (W&B's basic auth, user "api")
                    deadline = time.monotonic() + 60
                    while not _Recorder.seen and time.monotonic() < deadline:
                        time.sleep(0.1)
                    assert _Recorder.seen, "no request reached the server"
                    scheme, _, value = _Recorder.seen[0].partition(" ")
                    assert scheme == "Basic" and base64.b64decode(value).decode() == f"api:{key}"
                else:  # the status names the file to create
                    read_until(proc, lambda line: f"no file {secrets}/wandb-key/apiKey" in line)
                    assert not _Recorder.seen
                proc.send_signal(signal.SIGTERM)
                out, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
                assert key not in out + err  # never printed
            finally:
                proc.kill()
    finally:
        server.shutdown()


def test_secrets_dir_must_be_a_directory(tmp_path: Path) -> None:
    proc = start(["local", "-f", str(manifest(tmp_path / "wl.yaml")), "--secrets-dir", str(tmp_path / "nope")],
                 env(), cwd=tmp_path)
    assert proc.wait(60) == 2
    assert f"--secrets-dir {tmp_path / 'nope'}: not a directory" in proc.stderr.read()
