"""PostgreSQL's binary COPY format for `points` rows, built column by column with numpy instead of row by row.

asyncpg's `copy_records_to_table` encodes every row in turn and calls the Python timestamptz codec once per row
(~0.4 µs a row, most of the writer's own CPU on a large batch); here each column is converted once at C speed and
the rows are laid out by one structured-array copy. The byte layout (PostgreSQL docs, "COPY ... Binary Format";
src/backend/commands/copyfromparse.c): an 11-byte signature, a 32-bit flags field and a 32-bit header-extension
length, then per row a 16-bit field count and per field a 32-bit length and the value in its type's binary send
format (int8 and float8 big-endian, timestamptz as int8 microseconds since 2000-01-01 UTC), then a -1 field count.

`encode` accepts only what it can encode exactly as the per-row codecs would (codecs.encode_ts and asyncpg's int8
and float8 encoders) and returns None otherwise, so that the caller's per-row path raises the same errors for the
same bad values as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from trainscope.collector.store.codecs import PG_EPOCH

SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER = SIGNATURE + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # no OIDs, no header extension
TRAILER = b"\xff\xff"
# (series_id bigint, step bigint, ts timestamptz, value float8): 2 + 4 x (4 + 8) = 50 bytes a row.
_ROW = np.dtype([("fields", ">i2"),
                 ("sid_len", ">i4"), ("sid", ">i8"),
                 ("step_len", ">i4"), ("step", ">i8"),
                 ("ts_len", ">i4"), ("ts", ">i8"),
                 ("value_len", ">i4"), ("value", ">f8")])
# Beyond 2^53 µs from 2000 (years 1714 and 2285) a float no longer holds every microsecond: an int ts there would
# be rounded where the per-row codec computes exactly, so such batches take the per-row path.
_EXACT_US = float(2**53)


def _ints(values: Sequence[int]) -> np.ndarray | None:
    """int64 column of Python ints, or None (a value beyond int64, or not an int)."""
    arr = np.asarray(values)
    return arr if arr.dtype == np.int64 else None


def _ts_us(ts: Sequence[float]) -> np.ndarray | None:
    """Epoch seconds -> microseconds since 2000, rounded half to even as codecs.encode_ts does; None if any is
    non-finite or too far from 2000 to be computed exactly this way."""
    arr = np.asarray(ts)
    if arr.dtype == np.int64:
        arr = arr.astype(np.float64)  # exact: |ts| < 2^53 s is checked below through the microseconds
    elif arr.dtype != np.float64:
        return None
    # The same two IEEE operations as (ts - PG_EPOCH) * 1_000_000 on a Python float, so the same result bit for bit
    us = (arr - float(PG_EPOCH)) * 1e6
    if us.size and not (np.abs(us).max() <= _EXACT_US):  # also False for NaN
        return None
    return np.rint(us)


def encode(sid: Sequence[int], step: Sequence[int], ts: Sequence[float], value: Sequence[float]) -> bytes | None:
    """A whole binary COPY stream of the rows (parallel columns), or None when a value needs the per-row path."""
    if not len(sid):
        return HEADER + TRAILER
    sids, steps, us = _ints(sid), _ints(step), _ts_us(ts)
    values = np.asarray(value)
    if values.dtype == np.int64:
        values = values.astype(np.float64)  # rounds to nearest, as PyFloat_AsDouble does for asyncpg's float8
    if sids is None or steps is None or us is None or values.dtype != np.float64:
        return None
    rows = np.empty(len(sids), dtype=_ROW)
    rows["fields"] = 4
    rows["sid_len"] = rows["step_len"] = rows["ts_len"] = rows["value_len"] = 8
    rows["sid"] = sids
    rows["step"] = steps
    rows["ts"] = us
    rows["value"] = values
    return HEADER + rows.tobytes() + TRAILER
