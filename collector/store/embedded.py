"""Where the database is: TRAINSCOPE_DATABASE_URL, or an embedded PostgreSQL (the `embedded` extra, pgserver)."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import Any

DATABASE_URL_ENV = "TRAINSCOPE_DATABASE_URL"
DATA_DIR_ENV = "TRAINSCOPE_DATA_DIR"


class DatabaseNotConfigured(RuntimeError):
    """No database URL is configured and the embedded server is not allowed or not installed."""


def embedded_data_dir(data_dir: Path | None = None) -> Path:
    """The embedded server's PGDATA: `<data_dir or $TRAINSCOPE_DATA_DIR or the user data dir>/postgres`."""
    if data_dir is None and os.environ.get(DATA_DIR_ENV):
        data_dir = Path(os.environ[DATA_DIR_ENV])
    if data_dir is None:
        import platformdirs  # comes with pgserver

        data_dir = Path(platformdirs.user_data_dir("trainscope"))
    return data_dir.expanduser() / "postgres"


_started: list[Any] = []  # servers this process started or reused with cleanup: stop_embedded() stops them


def _forget_dead_handles(pgdata: Path) -> list[int]:
    """Drop the pids of processes that died without cleaning up (SIGKILL, OOM) from pgserver's list of handles on
    `pgdata`; returns them. pgserver stops the server when its last handle exits cleanly, and counts the dead ones
    as alive forever: without this, a server left by a killed run would never be stopped again. Taken under
    pgserver's own lock, as pgserver edits the list."""
    from pgserver.postgres_server import PostgresServer
    from pgserver.utils import DiskList

    handles = DiskList(pgdata / ".handle_pids.json")
    with PostgresServer._lock:
        pids = handles.get() if pgdata.exists() else []
        dead = [p for p in pids if not _alive(p)]
        if dead:
            handles.put([p for p in pids if p not in dead])
    return dead


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def embedded_mark() -> int:
    """How many embedded servers this process holds now: `stop_embedded(mark)` stops only those started after."""
    return len(_started)


def stop_embedded(since: int = 0) -> None:
    """Stop the embedded servers this process started (after `since`, a mark), now (idempotent; pgserver's atexit
    hook does the same later, but a process ended by a signal runs no atexit hook: the CLI calls this on every way
    out, for the servers its own command started, never one its caller started, e.g. a test session's)."""
    while len(_started) > since:
        server = _started.pop()
        with contextlib.suppress(Exception):  # already stopped, or its data directory is gone
            server.cleanup()


def start_embedded(pgdata: Path, *, cleanup_mode: str | None = "stop") -> Any:
    """Start (or reuse) a pgserver PostgreSQL on `pgdata`; it stops when this process exits (cleanup_mode).

    A server left running by a run that was killed is reused, and stopped by this process's exit."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at pgserver's import when XDG_RUNTIME_DIR is unset (containers); harmless.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError as exc:
        raise DatabaseNotConfigured(
            f"set {DATABASE_URL_ENV} to a PostgreSQL URL, or install the embedded server: "
            "pip install 'trainscope[embedded]'") from exc
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    _forget_dead_handles(pgdata.expanduser().resolve())
    server = pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)
    if cleanup_mode is not None and server not in _started:
        _started.append(server)
    return server


def resolve_database_url(*, embedded_ok: bool = True, data_dir: Path | None = None) -> str:
    """$TRAINSCOPE_DATABASE_URL if set; else, when allowed, the URL of an embedded PostgreSQL started now."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    if not embedded_ok:
        raise DatabaseNotConfigured(
            f"no database configured: set {DATABASE_URL_ENV} (e.g. postgresql://user:pass@host:5432/trainscope)")
    return start_embedded(embedded_data_dir(data_dir)).get_uri()
