"""Response bodies of the metrics endpoints: JSON (the seed's envelope), NDJSON and CSV; whole or streamed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from fastapi.responses import Response, StreamingResponse

from trainscope.api.encode import ItemWriter
from trainscope.api.queries import Row, Series

MEDIA = {"json": "application/json", "ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}

Chunks = AsyncIterator[tuple[Series, list[Row]]]


def envelope_head(uid: str, data_source: str | None) -> str:
    """`{"workload_uid": ..., ["data_source": ...,] "data": [` — the reference server's field order."""
    ds = f',"data_source":{json.dumps(data_source)}' if data_source else ""
    return f'{{"workload_uid":{json.dumps(uid)}{ds},"data":['


def envelope_tail(total: int, extra: dict[str, Any]) -> str:
    more = "".join(f",{json.dumps(k)}:{json.dumps(v)}" for k, v in extra.items())
    return f'],"total_count":{total}{more}}}'


def whole(fmt: str, uid: str, data_source: str | None, groups: Sequence[tuple[Series, Sequence[Row]]],
          include: Sequence[str], extra: dict[str, Any], headers: dict[str, str]) -> Response:
    """A bounded answer (a page, a downsampled view) in the asked format; `extra` goes in the envelope or headers."""
    w = ItemWriter(include)
    total = sum(len(rows) for _, rows in groups)
    if fmt == "json":
        items = [i for s, rows in groups for i in w.json_items(s, rows)]
        body = envelope_head(uid, data_source) + ",".join(items) + envelope_tail(total, extra)
    elif fmt == "ndjson":
        body = "".join(i + "\n" for s, rows in groups for i in w.json_items(s, rows))
    else:
        body = w.csv_header() + "".join(w.csv_lines(s, rows) for s, rows in groups)
    headers = {"X-Total-Count": str(total), **headers}
    return Response(body, media_type=MEDIA[fmt], headers=headers)


async def _json_stream(uid: str, data_source: str | None, chunks: Chunks, w: ItemWriter) -> AsyncIterator[str]:
    yield envelope_head(uid, data_source)
    total = 0
    async for s, rows in chunks:
        items = w.json_items(s, rows)
        yield ("," if total else "") + ",".join(items)
        total += len(items)
    yield envelope_tail(total, {})


async def _ndjson_stream(chunks: Chunks, w: ItemWriter) -> AsyncIterator[str]:
    async for s, rows in chunks:
        yield "".join(i + "\n" for i in w.json_items(s, rows))


async def _csv_stream(chunks: Chunks, w: ItemWriter) -> AsyncIterator[str]:
    yield w.csv_header()
    async for s, rows in chunks:
        yield w.csv_lines(s, rows)


def streamed(fmt: str, uid: str, data_source: str | None, chunks: Chunks, include: Sequence[str],
             headers: dict[str, str]) -> StreamingResponse:
    """An unbounded answer written as the rows come: memory stays at one chunk whatever the size."""
    w = ItemWriter(include)
    if fmt == "json":
        body = _json_stream(uid, data_source, chunks, w)
    elif fmt == "ndjson":
        body = _ndjson_stream(chunks, w)
    else:
        body = _csv_stream(chunks, w)
    return StreamingResponse(body, media_type=MEDIA[fmt], headers=headers)
