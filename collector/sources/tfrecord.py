"""TFRecord framing, as TensorBoard's event files use it: an 8-byte length, its masked CRC32C, the payload, the
payload's masked CRC32C. Writing a record (tests, the demo), and finding the next whole record after damage."""

from __future__ import annotations

import struct

import google_crc32c

from trainscope.collector.sources.crc32c_rows import MASK_DELTA

MAX_RECORD_BYTES = 64 << 20  # a bigger record (a huge image) is skipped without being read

_crc = google_crc32c.value
_unpack_u64_u32 = struct.Struct("<QI").unpack
_unpack_u32 = struct.Struct("<I").unpack_from


def record_header(length: int) -> bytes:
    """A record's 12-byte header for a payload of `length` bytes."""
    head = struct.pack("<Q", length)
    return head + struct.pack("<I", masked_crc(head))


def masked_crc(data: bytes) -> int:
    """TFRecord's masked crc32c: rotate right by 15 and add a constant (so CRCs of CRCs stay well spread)."""
    c = _crc(data)
    return ((c >> 15 | c << 17) + MASK_DELTA) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload (used by tests)."""
    return record_header(len(payload)) + payload + struct.pack("<I", masked_crc(payload))


def resync(buf: bytes, start: int) -> int | None:
    """The first offset >= start in buf where a whole record verifies (both CRCs), or None.

    Candidates need the length's high 4 bytes zero (records are far below 4 GiB), so the scan is a C-level
    find() and does not call the CRC per byte of garbage.
    """
    pos = start
    limit = len(buf) - 16
    while pos <= limit:
        z = buf.find(b"\x00\x00\x00\x00", pos + 4)
        if z < 0:
            return None
        cand = z - 4
        if cand < pos:
            cand = pos
        if cand > limit:
            return None
        length, lcrc = _unpack_u64_u32(buf[cand:cand + 12])
        if length <= MAX_RECORD_BYTES and masked_crc(buf[cand:cand + 8]) == lcrc:
            end = cand + 12 + length
            if end + 4 > len(buf):
                return cand  # a verified header whose record is not complete yet: resume there
            if masked_crc(buf[cand + 12:end]) == _unpack_u32(buf, end)[0]:
                return cand
        pos = cand + 1
    return None
