"""CRC32C and fixed-width fields of many equal-length byte strings at once, with numpy (the event-file reader's
block decode): no Python object per record.
"""

from __future__ import annotations

import google_crc32c
import numpy as np

MASK_DELTA = 0xA282EAD8  # TFRecord's masked CRC: rotate right by 15, then add this
MAX_ROW_BYTES = 512  # crc32c_rows() takes rows up to this long (its tables: 512 KiB)


def rows_at(u8: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The `width` bytes at each offset of `at` as rows of a (len(at), width) array (offsets past the end are
    clamped: callers mask those rows out)."""
    win = np.lib.stride_tricks.sliding_window_view(u8, width)
    return win[np.minimum(at, len(u8) - width)]


def _crc_tables(size: int) -> np.ndarray:
    """Row d: the CRC32C state (reflected, no init) that a byte leaves after d more zero bytes, per byte value."""
    poly = 0x82F63B78
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = (t >> 1) ^ np.where(t & 1, np.uint32(poly), np.uint32(0))
    tables = np.empty((size, 256), np.uint32)
    tables[0] = t
    for d in range(1, size):
        s = tables[d - 1]
        tables[d] = t[s & 0xFF] ^ (s >> 8)
    return tables


_CRC_TABLES = _crc_tables(MAX_ROW_BYTES)
_ZEROS_CRC = [0] + [google_crc32c.value(bytes(n)) for n in range(1, MAX_ROW_BYTES + 1)]


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """CRC32C of every row of a uint8 matrix at once, equal to google_crc32c.value(row).

    CRC is linear: a row's CRC is the CRC of as many zero bytes xor each byte's own contribution at its distance
    from the end, which one table lookup per column gives for all rows.
    """
    size = rows.shape[1]
    tables = _CRC_TABLES[size - 1::-1] if size else _CRC_TABLES[:0]
    acc = np.full(len(rows), _ZEROS_CRC[size], np.uint32)
    for j in range(size):
        acc ^= tables[j][rows[:, j]]
    return acc


def masked_crcs(crc: np.ndarray) -> np.ndarray:
    """TFRecord's masked CRC (tfrecord.masked_crc) of many CRCs (uint32)."""
    c = crc.astype(np.uint32)
    return ((c >> np.uint32(15)) | (c << np.uint32(17))) + np.uint32(MASK_DELTA)
