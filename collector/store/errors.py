"""Telling "the database is unreachable" (retry the same batch later) apart from every other failure."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import asyncpg

from trainscope.collector.store.model import StoreUnavailable

# Errors after which nothing can be said about the server except that it is not there for us right now.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, incl. ConnectionDoesNotExistError
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.TooManyConnectionsError,
    OSError,  # refused, reset, socket file gone; TimeoutError is one too
)


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the connection or the server is gone, not that the request was wrong."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # asyncpg reports use of a connection the server already closed as a bare InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc) and "closed" in str(exc)


@contextlib.contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Re-raise connection-level failures as StoreUnavailable; let everything else through unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if is_unavailable(exc):
            raise StoreUnavailable(f"database unavailable: {type(exc).__name__}: {exc}") from exc
        raise
