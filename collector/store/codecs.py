"""Per-connection setup: float epoch seconds for timestamptz, Python values for jsonb, the staging table."""

from __future__ import annotations

import json
import math
from typing import Any

import asyncpg

# PostgreSQL counts timestamps in microseconds from 2000-01-01 UTC; infinities are the int64 extremes.
PG_EPOCH = 946_684_800
_PG_EPOCH_US = PG_EPOCH * 1_000_000
_PG_INFINITY = 2**63 - 1
_PG_NEG_INFINITY = -(2**63)

# Rows that may overlap stored ones go here first (one per (series, step): the writer reduces duplicates), so one
# INSERT ... ON CONFLICT can merge them. Temporary: no WAL, no index, emptied at commit.
STAGING_DDL = (
    "CREATE TEMP TABLE IF NOT EXISTS points_stage "
    "(series_id bigint, step bigint, ts timestamptz, value double precision) "
    "ON COMMIT DELETE ROWS"
)


def encode_ts(ts: float) -> tuple[int]:
    """Epoch seconds -> asyncpg's tuple form of timestamptz; NaN/inf raise ValueError/OverflowError."""
    return (round((ts - PG_EPOCH) * 1_000_000),)


def decode_ts(value: tuple[int]) -> float:
    """asyncpg's tuple form of timestamptz -> epoch seconds (±inf for PostgreSQL's infinities)."""
    us = value[0]
    if us == _PG_INFINITY:
        return math.inf
    if us == _PG_NEG_INFINITY:
        return -math.inf
    # int / int is correctly rounded, so a microsecond-precise float comes back bit for bit.
    return (us + _PG_EPOCH_US) / 1_000_000


def _dump_json(value: Any) -> str:
    """Cursors and run metadata as jsonb text that PostgreSQL accepts: what it refuses (NUL, unpaired surrogates,
    NaN/Infinity) would fail the batch's transaction on every retry and block the source for good, so such
    strings and numbers are stored in a storable form instead (see `storable_json`)."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:  # a non-finite float
        return json.dumps(storable_json(value), allow_nan=False, separators=(",", ":"))
    if "\\u0000" in text or "\\ud" in text:  # only then can a string hold NUL or a surrogate (ASCII output)
        return json.dumps(storable_json(value), allow_nan=False, separators=(",", ":"))
    return text


def storable_json(value: Any) -> Any:
    """`value` with NUL as U+FFFD, unpaired surrogates as U+FFFD and NaN/±Infinity as the strings "NaN",
    "Infinity", "-Infinity" (in keys too); everything else unchanged."""
    if isinstance(value, str):
        return _storable_str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {_storable_str(k) if isinstance(k, str) else k: storable_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_json(v) for v in value]
    return value


def _storable_str(s: str) -> str:
    s = s.replace("\x00", "\ufffd")
    # a surrogate pair survives (UTF-16 joins it), a lone surrogate becomes U+FFFD
    return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace") if _has_surrogate(s) else s


def _has_surrogate(s: str) -> bool:
    return any("\ud800" <= c <= "\udfff" for c in s) if not s.isascii() else False


async def init_connection(conn: asyncpg.Connection) -> None:
    """Run on every new pool connection (also after a reconnect)."""
    await conn.set_type_codec("timestamptz", schema="pg_catalog", encoder=encode_ts, decoder=decode_ts,
                              format="tuple")
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_dump_json, decoder=json.loads,
                              format="text")
    await conn.execute(STAGING_DDL)
