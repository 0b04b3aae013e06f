"""Which failures mean "the database cannot be used right now" (retry the same batch later), why, and the
process's record of it (StoreState: the StoreReady condition, the trainscope_store_up gauge, readiness)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import asyncpg

from trainscope.collector.store.model import StoreHealth, StoreUnavailable

log = logging.getLogger(__name__)

# Errors after which nothing can be said about the server except that it is not there for us right now.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08, incl. ConnectionDoesNotExistError
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,  # starting up or shutting down
    asyncpg.TooManyConnectionsError,
    OSError,  # refused, reset, socket file gone; TimeoutError is one too
)

# Errors that need a person (a fixed password or URL, a created database, a GRANT), by SQLSTATE class; checked
# before _UNAVAILABLE. What each means, and what to do, is the hint.
_NEEDS_A_PERSON: tuple[tuple[type[BaseException], str, str], ...] = (
    (asyncpg.InvalidPasswordError, "AuthenticationFailed",
     "the database refused the credentials: fix the user/password of the database URL (or its Secret)"),
    (asyncpg.InvalidAuthorizationSpecificationError, "AuthenticationFailed",  # no such role, no pg_hba.conf entry
     "the database refused the login: fix the user of the database URL or the server's pg_hba.conf"),
    (asyncpg.InvalidCatalogNameError, "DatabaseMissing",
     "the database named in the URL does not exist: create it or fix the URL"),
    (asyncpg.InsufficientPrivilegeError, "PermissionDenied",
     "the database role lacks a privilege: GRANT it, or run `trainscope db upgrade` once as the owner"),
)
# Kept for the API and callers that only need yes/no.
CONFIG_REASONS = frozenset(r for _, r, _ in _NEEDS_A_PERSON)


def classify(exc: BaseException) -> tuple[str, str] | None:
    """(reason, hint) when `exc` means the database cannot be used now; None for everything else (a request the
    server refused, a bug), which a retry of the same request would not fix."""
    for kind, reason, hint in _NEEDS_A_PERSON:
        if isinstance(exc, kind):
            return reason, hint
    if isinstance(exc, TimeoutError | asyncpg.QueryCanceledError):  # command/connect timeout, statement_timeout
        return "Timeout", "the database did not answer in time (hung, overloaded, or a lock held)"
    if is_unavailable(exc):
        return "Unreachable", "the database cannot be reached"
    return None


def is_unavailable(exc: BaseException) -> bool:
    """True when `exc` means the connection or the server is gone, not that the request was wrong."""
    if isinstance(exc, _UNAVAILABLE):
        return True
    # asyncpg reports use of a connection the server already closed as a bare InterfaceError.
    return isinstance(exc, asyncpg.InterfaceError) and "connection" in str(exc) and "closed" in str(exc)


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message ("" when it has none), at most `limit` characters: what logs and
    health messages quote of the server's words."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""


def as_store_error(exc: BaseException) -> StoreUnavailable | None:
    """The StoreUnavailable that `exc` amounts to, or None. Its message is one line: what is wrong, the server's
    own words, and what to do."""
    found = classify(exc)
    if found is None:
        return None
    reason, hint = found
    said = first_line(exc) or type(exc).__name__
    return StoreUnavailable(f"{hint} ({type(exc).__name__}: {said})", reason)


@contextlib.contextmanager
def unavailable_as_store_error() -> Iterator[None]:
    """Re-raise failures that mean "the database cannot be used now" as StoreUnavailable; let everything else
    through unchanged."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        err = as_store_error(exc)
        if err is not None:
            raise err from exc
        raise


class StoreState:
    """The process's view of its database, updated by every store call: one log line per change (an ERROR naming
    the reason when it goes away or the reason changes, a WARNING when it is back), never one per retry."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._health = StoreHealth(None, "Connecting", "connecting to the database", clock())

    @property
    def health(self) -> StoreHealth:
        return self._health

    @property
    def up(self) -> bool | None:
        return self._health.up

    def ok(self) -> None:
        h = self._health
        if h.up:
            return
        if h.up is False:
            log.warning("database reachable again after %.0fs (%s)", self._clock() - h.since, h.reason)
        self._health = StoreHealth(True, "Connected", "the database answers", self._clock())

    def failed(self, err: StoreUnavailable) -> None:
        h = self._health
        message = str(err)
        if h.up is False and h.reason == err.reason:
            if h.message != message:
                self._health = StoreHealth(False, err.reason, message, h.since)
            return
        log.error("database unavailable (%s): %s; retrying", err.reason, message)
        self._health = StoreHealth(False, err.reason, message, self._clock() if h.up is not False else h.since)
