"""Where the database is: TRAINSCOPE_DATABASE_URL, or an embedded PostgreSQL (the `embedded` extra, pgserver)."""

from __future__ import annotations

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


def start_embedded(pgdata: Path, *, cleanup_mode: str | None = "stop") -> Any:
    """Start (or reuse) a pgserver PostgreSQL on `pgdata`; it stops when this process exits (cleanup_mode)."""
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
    return pgserver.get_server(pgdata, cleanup_mode=cleanup_mode)


def resolve_database_url(*, embedded_ok: bool = True, data_dir: Path | None = None) -> str:
    """$TRAINSCOPE_DATABASE_URL if set; else, when allowed, the URL of an embedded PostgreSQL started now."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    if not embedded_ok:
        raise DatabaseNotConfigured(
            f"no database configured: set {DATABASE_URL_ENV} (e.g. postgresql://user:pass@host:5432/trainscope)")
    return start_embedded(embedded_data_dir(data_dir)).get_uri()
