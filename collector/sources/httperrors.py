"""HTTP failures -> SourceError, the same way for every source that talks to a JSON/GraphQL API over httpx.

One request (`send`): no answer in time -> `Timeout`, no connection -> `Unreachable`. An answer (`throttled`):
HTTP 429 -> `RateLimited`, 5xx -> `ServerError`, each with the server's `Retry-After` (seconds or an HTTP date; else
a fallback header such as W&B's `RateLimit-Reset`) times 1-1.2, so workloads told the same time do not return
together. What 401/403/404 mean differs per API and stays with each source.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import Callable
from typing import Any

import httpx

from trainscope.collector.sources.base import SourceError


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Retry-After in seconds (delta-seconds or an HTTP date), None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - now)


async def send(client: httpx.AsyncClient, method: str, url: str, *, server: str, op: str, seconds: float,
               redact: Callable[[str], str], **kwargs: Any) -> httpx.Response:
    """One request; a timeout or a connection failure as a SourceError naming the server and the operation."""
    try:
        return await client.request(method, url, **kwargs)
    except httpx.TimeoutException as e:
        raise SourceError(f"{server} did not answer {op} within {seconds:g}s", reason="Timeout") from e
    except httpx.HTTPError as e:
        raise SourceError(redact(f"cannot reach {server}: {type(e).__name__}: {e}"), reason="Unreachable") from e


def throttled(resp: httpx.Response, *, server: str, op: str, now: float,
              fallback_header: str | None = None) -> SourceError | None:
    """The SourceError for an HTTP 429 or 5xx answer (with its retry time), None for any other status."""
    status = resp.status_code
    if status != 429 and status < 500:
        return None
    after = retry_after_seconds(resp.headers.get("Retry-After"), now)
    if after is None and status == 429 and fallback_header:
        after = retry_after_seconds(resp.headers.get(fallback_header), now)
    hint = f", retry after {after:.0f}s" if after is not None else ""
    return SourceError(f"{server} answered HTTP {status} to {op}{hint}",
                       reason="RateLimited" if status == 429 else "ServerError",
                       retry_after=after * random.uniform(1.0, 1.2) if after is not None else None)
