"""What several benches share: one source's catch-up through the real writer, timed; a server child's readiness
and memory."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from trainscope.collector.store import Store


async def catch_up(src: Any, dsn: str, uid: str, name: str, kind: str) -> tuple[int, float]:
    """Poll `src` from no cursor until it has no more, writing every batch with its cursor (Store.write, one
    transaction each); (points written, seconds). Closes the source."""
    store = await Store.open(dsn)
    n, cursor = 0, None
    started = time.perf_counter()
    try:
        while True:
            batch = await src.poll(cursor)
            await store.write(uid, name, kind, batch.points, batch.cursor, batch.runs)
            n += len(batch.points)
            cursor = batch.cursor
            if not batch.more:
                break
        return n, time.perf_counter() - started
    finally:
        await src.aclose()
        await store.close()


def wait_ready(base: str, proc: subprocess.Popen, label: str, timeout: float = 60) -> None:
    """Block until `base`/readyz answers 200; RuntimeError if `proc` exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{label}: the API server did not start")
        time.sleep(0.1)


def proc_memory(pid: int, field: str = "VmHWM") -> float:
    """VmRSS (now) or VmHWM (peak so far) of process `pid`, in MB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def wandb_sandbox(tmp: Path, api_key: str | None = None) -> None:
    """Point the wandb SDK's directories into `tmp` (nothing written to the user's home), silence it, and set the
    API key the fake server accepts, if given."""
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        os.environ[var] = str(tmp / var.lower())
    if api_key is not None:
        os.environ["WANDB_SILENT"] = "true"
        os.environ["WANDB_API_KEY"] = api_key
