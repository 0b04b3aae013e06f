"""Deadline-based waiting for tests: poll a condition instead of sleeping a fixed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(check: Callable[[], Any | Awaitable[Any]], *, timeout: float = 20.0,  # noqa: ASYNC109
                     interval: float = 0.05, describe: Callable[[], Any] | None = None) -> Any:
    """Return the first truthy result of `check()`; fail with `describe()` (the state seen last) on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            state = describe() if describe else result
            raise AssertionError(f"timed out after {timeout}s; last state: {state!r}")
        await asyncio.sleep(interval)
