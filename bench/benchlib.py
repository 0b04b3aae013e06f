"""What several benches share: one source's catch-up through the real writer, timed."""

from __future__ import annotations

import time
from typing import Any

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
