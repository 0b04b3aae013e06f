"""Reading scalars straight from TensorBoard event files: TFRecord framing, every record's CRC, Event decoding.

No TensorFlow and no protobuf runtime (tfevents_proto.py decodes the few fields that carry scalars). A catch-up is
cheap because writers repeat a few byte layouts: once a layout is learnt from one event, the records that follow
it are framed, CRC-checked and decoded a block at a time with numpy (crc32c_rows.py), no Python work per record
but the Point it becomes.
"""

from __future__ import annotations

import itertools
import struct
from bisect import bisect_left
from collections.abc import Callable
from itertools import repeat
from typing import BinaryIO

import google_crc32c
import numpy as np

from trainscope.collector.points import Point
from trainscope.collector.sources.crc32c_rows import MAX_ROW_BYTES, crc32c_rows, masked_crcs, rows_at
from trainscope.collector.sources.sink import ColumnSink
from trainscope.collector.sources.tfevents_proto import (
    DecodeError,
    _varint,
    decode_event,
    simple_value_template,
)
from trainscope.collector.sources.tfrecord import MAX_RECORD_BYTES, frame, masked_crc, record_header, resync

__all__ = ["DecodeError", "EventScanner", "decode_event", "frame", "masked_crc", "read_file", "resync"]

CHUNK_BYTES = 4 << 20  # read files in pieces of this size, never whole
BLOCK_RECORDS = 32768  # records framed, then checked and decoded together (bounds the block's arrays)
SMALL_BLOCK_RECORDS = 32  # blocks of at most this many records are decoded one by one
FIRST_BLOCK_RECORDS = 512  # a scan's first block (then 4x larger each): small reads stay cheap, layouts get learnt
VECTOR_MAX_BYTES = MAX_ROW_BYTES  # longer payloads are checked with one CRC call each and decoded one by one
_MAX_PERIOD = 64  # longest repeating pattern of record lengths looked for (tags logged per step)
_ONE_BY_ONE, _FILTERED = -2, -1  # a record's tag index in a block when it makes no point there
_NO_RECORDS = np.zeros(0, np.int64)

_crc = google_crc32c.value
_unpack_u64_u32 = struct.Struct("<QI").unpack
_unpack_u32 = struct.Struct("<I").unpack_from
_unpack_f32 = struct.Struct("<f").unpack_from
_unpack_f64 = struct.Struct("<d").unpack_from
_new_point = tuple.__new__  # Point(...) without the NamedTuple's Python-level __new__
_MISSING = object()


# scan() outcomes besides "records exhausted in this buffer"
NEED, FULL, OVERSIZED, RESYNC = "need", "full", "oversized", "resync"


Out = list[Point] | ColumnSink  # where the scanner puts what it decodes


class EventScanner:
    """Turns TFRecord-framed Event bytes into Points, remembering per-source caches between calls.

    `tag_ok` filters tags (its answers are cached). `foreign` remembers tags a non-scalar plugin owns, so their
    later metadata-less tensors are not taken for scalars. Not thread-safe; one scanner per source.
    """

    def __init__(self, tag_ok: Callable[[str], bool]):
        self.tag_ok = tag_ok
        self._headers: dict[bytes, int] = {}  # verified 12-byte record headers -> length (lengths repeat a lot)
        self._templates: dict[bytes, str | None] = {}  # simple_value layout -> tag (None: filtered out)
        # scalar-tensor layouts by body length (the bytes after the step): bytes before the value, bytes after it,
        # value offset, unpack, tag (None: filtered out), the tag itself, the run of a layout learnt from a tensor
        # without metadata (used in that run only, while the tag is not another plugin's) or None, value dtype
        self._tensor_templates: dict[int, list[tuple[bytes, bytes, int, Callable, str | None, str, str | None,
                                                     np.dtype]]] = {}
        self._tensor_attempts: dict[tuple[str, str | None], int] = {}
        self._allowed: dict[str, bool] = {}
        self._tag_ids: dict[str, int] = {}  # tags of learnt simple_value layouts, numbered for the block decode
        self._tag_names: list[str] = []
        self.foreign: set[tuple[str, str]] = set()

    def _allow(self, tag: str) -> bool:
        ok = self._allowed.get(tag)
        if ok is None:
            ok = self._allowed[tag] = bool(self.tag_ok(tag))
        return ok

    def scan(self, buf: bytes, pos: int, run: str, out: Out, limit: int,
             skipped: dict[str, int]) -> tuple[int, str | None, int]:
        """Decode complete records of buf from pos; return (pos, outcome, n).

        outcome None: buf is exhausted at pos (a record boundary). NEED: the record at pos needs n bytes in all.
        FULL: `limit` points reached. OVERSIZED: the record at pos is n bytes long in all, too big to read.
        RESYNC: the header at pos is corrupt (its length CRC is wrong).

        Records are framed (_frame), then checked and decoded a block at a time with numpy (_decode); blocks start
        small (a file's first records teach the layouts) and grow. `out` is a list of Points or a ColumnSink.
        """
        n = len(buf)
        block = FIRST_BLOCK_RECORDS
        while True:
            if pos + 12 > n:
                return pos, None, 0
            if len(out) >= limit:
                return pos, FULL, 0
            bounds, pos, outcome, need = self._frame(buf, pos, min(limit - len(out), block))
            if len(bounds):
                stop, full = self._decode(buf, bounds, run, out, limit, skipped)
                if full:
                    return stop, (FULL if stop + 12 <= n else None), 0
                if stop != pos:
                    pos = stop  # stopped early to decode the rest again (see _decode)
                    continue
            if outcome is not None:
                return pos, outcome, need
            block = min(block * 4, BLOCK_RECORDS)

    def _frame(self, buf: bytes, pos: int, room: int) -> tuple[np.ndarray, int, str | None, int]:
        """Frame up to `room` complete records from pos whose headers verify: their start offsets followed by the
        end of the last (empty when none), then where framing stopped and why (None: room reached or buf
        exhausted, else the outcome scan() reports for that position).

        Records are framed one by one until their lengths repeat with a period (a run logs the same tags in the
        same order, step after step); then the pattern's next headers are checked all at once (`_repeat`).
        """
        headers = self._headers
        get = headers.get
        pieces: list[np.ndarray] = []
        starts: list[int] = []
        append = starts.append
        n = len(buf)
        count = 0  # records in pieces
        probe = 2 * _MAX_PERIOD
        outcome, need = None, 0
        while outcome is None:
            for _ in range(min(room - count - len(starts), probe)):
                if pos + 12 > n:
                    break
                length = get(buf[pos:pos + 12])
                if length is None:
                    hdr = buf[pos:pos + 12]
                    length, lcrc = _unpack_u64_u32(hdr)
                    if masked_crc(hdr[:8]) != lcrc:
                        outcome = RESYNC
                        break
                    if length > MAX_RECORD_BYTES:
                        outcome, need = OVERSIZED, length + 16
                        break
                    if len(headers) < 65536:
                        headers[hdr] = length
                nxt = pos + length + 16
                if nxt > n:
                    outcome, need = NEED, length + 16
                    break
                append(pos)
                pos = nxt
            else:
                if count + len(starts) < room:
                    framed = count + len(starts)
                    pos, run = self._repeat(buf, pos, starts, room - framed)
                    if run is not None:
                        pieces += [np.array(starts, np.int64), run]
                        count += len(starts) + len(run)
                        starts = []
                        append = starts.append
                    # little repetition: frame longer one by one before trying again (a file without any pays
                    # little for the attempts)
                    probe = 2 * _MAX_PERIOD if count + len(starts) - framed >= 4 * _MAX_PERIOD else \
                        min(probe * 2, 8192)
                    continue
            break
        if not count and not starts:
            return _NO_RECORDS, pos, outcome, need
        starts.append(pos)
        pieces.append(np.array(starts, np.int64))
        return np.concatenate(pieces) if len(pieces) > 1 else pieces[0], pos, outcome, need

    def _repeat(self, buf: bytes, pos: int, starts: list[int], room: int) -> tuple[int, np.ndarray | None]:
        """If the sizes of the last records framed (`starts`, then pos) repeat with a period, frame on at pos as
        long as the headers follow that pattern, checking all predicted headers at once: return the position
        reached and the start offsets of the records framed so (None: no period).

        Each accepted header equals a verified one and sits where the previous accepted record ends, so the chain
        is exactly what framing one by one would find.
        """
        tail = [*starts[-2 * _MAX_PERIOD:], pos]
        sizes = [b - a for a, b in itertools.pairwise(tail)]  # record sizes (length + 16)
        for period in range(1, len(sizes) // 2 + 1):
            if sizes[-period:] == sizes[-2 * period:-period]:
                break
        else:
            return pos, None
        pattern = sizes[-period:]
        span = sum(pattern)
        expect = np.frombuffer(b"".join(record_header(s - 16) for s in pattern), np.uint32).reshape(period, 3)
        offsets = np.array([0, *pattern[:-1]], np.int64).cumsum()
        u8 = np.frombuffer(buf, np.uint8)
        n = len(buf)
        found: list[np.ndarray] = []
        framed = 0
        periods = 64
        while True:
            m = min((n - pos) // span, (room - framed) // period, periods)
            if m < 1:
                break
            at = (pos + span * np.arange(m, dtype=np.int64)[:, None] + offsets).ravel()
            same = (rows_at(u8, at, 12).view(np.uint32).reshape(m, period, 3) == expect).all(axis=2).ravel()
            ok = len(same) if same.all() else int(same.argmin())
            found.append(at[:ok])
            framed += ok
            if ok < len(same):
                pos = int(at[ok])
                break
            pos += span * m
            periods *= 4
        return pos, (np.concatenate(found) if len(found) > 1 else found[0]) if found else None

    def _decode(self, buf: bytes, bounds: np.ndarray, run: str, out: Out, limit: int,
                skipped: dict[str, int]) -> tuple[int, bool]:
        """Check and decode the framed records starting at bounds[:-1] (bounds[-1] is where the last one ends);
        return (offset reached, stopped because `out` reached `limit`).

        Records are grouped by payload length: each group's payloads become the rows of one byte matrix whose
        CRCs, wall times, steps, learnt simple_value layouts and values are computed column by column for all
        rows at once. What is not such a layout (or fails its CRC) is handled one by one, in file order; when
        that marks a tag as another plugin's, the records after it are left to be decoded again (the offset
        returned is then before bounds[-1]).
        """
        if len(bounds) <= SMALL_BLOCK_RECORDS:
            return self._decode_each(buf, bounds.tolist(), run, out, limit, skipped)
        u8 = np.frombuffer(buf, np.uint8)
        first = bounds[:-1] + 12  # payload starts
        end = bounds[1:] - 4  # payload ends (its CRC follows)
        length = end - first
        k = len(first)
        stored = rows_at(u8, end, 4).view("<u4").ravel()
        ok = np.zeros(k, bool)
        tid = np.full(k, _ONE_BY_ONE, np.intp)  # per record: a tag index, _FILTERED or _ONE_BY_ONE
        step = np.zeros(k, np.int64)
        wall = np.zeros(k)
        value = np.zeros(k)
        if (length == length[0]).all():  # one length (the usual case in a block of scalars)
            groups = [(int(length[0]), np.arange(k))]
        else:
            sizes, inverse = np.unique(length, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            cuts = np.cumsum(np.bincount(inverse))[:-1]
            groups = list(zip(sizes.tolist(), np.split(order, cuts), strict=True))
        for size, sel in groups:
            if size > VECTOR_MAX_BYTES:  # images, histograms, text: one C call each, then one by one
                crcs = np.fromiter(map(_crc, map(buf.__getitem__, map(slice, first[sel].tolist(),
                                                                      end[sel].tolist()))), np.uint32, len(sel))
                ok[sel] = masked_crcs(crcs) == stored[sel]
                continue
            rows = rows_at(u8, first[sel], size)
            good = masked_crcs(crc32c_rows(rows)) == stored[sel]
            ok[sel] = good
            if size > 15:
                self._decode_rows(rows, good, sel, run, tid, step, wall, value)
        special = np.flatnonzero(tid == _ONE_BY_ONE).tolist()
        rec = np.flatnonzero(tid >= 0)  # records that make a point, in file order
        emit = self._emitter(out, run, tid[rec], step[rec], wall[rec], value[rec])
        if not special:
            emit(0, len(rec))
            return int(bounds[-1]), False
        starts = bounds.tolist()
        rec_l = rec.tolist()
        first_l, end_l = first.tolist(), end.tolist()
        done = at = 0  # points of `rec` in out; the first record not handled yet
        foreign = len(self.foreign)
        for r in special:
            upto = bisect_left(rec_l, r, done)
            if upto > done:
                if len(out) + upto - done > limit:
                    break
                emit(done, upto)
                done, at = upto, rec_l[upto - 1] + 1
            if len(out) >= limit:
                return starts[at], True
            if not ok[r]:
                skipped["bad_crc"] = skipped.get("bad_crc", 0) + 1
            elif not self._one(buf[first_l[r]:end_l[r]], run, out, limit, skipped):
                return starts[r], True
            at = r + 1
            if len(self.foreign) != foreign:
                return starts[at], False  # a tag became another plugin's: the rest is decoded again knowing it
        room = limit - len(out)
        if len(rec_l) - done > room:  # only after events of several values: stop after the point that fills out
            upto = done + max(room, 0)
            emit(done, upto)
            return starts[rec_l[upto - 1] + 1 if upto > done else at], True
        emit(done, len(rec_l))
        return starts[-1], False

    def _emitter(self, out: Out, run: str, tid: np.ndarray, step: np.ndarray,
                 wall: np.ndarray, value: np.ndarray) -> Callable[[int, int], None]:
        """emit(a, b) puts the block's points a..b into out: as Points into a list, as arrays into a ColumnSink."""
        if isinstance(out, ColumnSink):
            names = self._tag_names

            def columns(a: int, b: int) -> None:
                out.add(run, names, tid[a:b], step[a:b], wall[a:b], value[a:b])
            return columns
        tags = list(map(self._tag_names.__getitem__, tid.tolist()))
        steps, walls, values = step.tolist(), wall.tolist(), value.tolist()

        def points(a: int, b: int) -> None:
            out.extend(map(_new_point, repeat(Point), zip(tags[a:b], steps[a:b], walls[a:b], values[a:b],
                                                          repeat(run))))
        return points

    def _decode_each(self, buf: bytes, starts: list[int], run: str, out: Out, limit: int,
                     skipped: dict[str, int]) -> tuple[int, bool]:
        """_decode for a few records (a live run's new events): one by one, cheaper than setting up arrays."""
        for i in range(len(starts) - 1):
            if len(out) >= limit:
                return starts[i], True
            end = starts[i + 1] - 4
            payload = buf[starts[i] + 12:end]
            if masked_crc(payload) != _unpack_u32(buf, end)[0]:
                skipped["bad_crc"] = skipped.get("bad_crc", 0) + 1
            elif not self._one(payload, run, out, limit, skipped):
                return starts[i], True
        return starts[-1], False

    def _decode_rows(self, rows: np.ndarray, good: np.ndarray, sel: np.ndarray, run: str, tid: np.ndarray,
                     step: np.ndarray, wall: np.ndarray, value: np.ndarray) -> None:
        """Decode payloads of one length (the rows) that are a wall_time, a step varint, then a learnt simple_value
        layout and the float, or a learnt scalar-tensor layout around its value; fill tid/step/wall/value at their
        records (`sel`). Other rows keep tid _ONE_BY_ONE."""
        size = rows.shape[1]
        fast = good & (rows[:, 0] == 0x09) & (rows[:, 9] == 0x10)
        # the step's varint, all rows at once (at most 9 bytes, steps below 2**63, and a layout byte after it)
        steps = np.zeros(len(rows), np.uint64)
        width = np.zeros(len(rows), np.intp)
        alive = fast.copy()
        for i in range(min(9, size - 15)):
            b = rows[:, 10 + i]
            steps |= np.where(alive, (b & 0x7F).astype(np.uint64) << np.uint64(7 * i), np.uint64(0))
            width += alive
            alive &= b >= 0x80
            if not alive.any():
                break
        fast &= ~alive
        if not fast.any():
            return
        every = bool(fast.all()) and bool((width == width[0]).all())  # the usual block: no copies of rows
        for w in [int(width[0])] if every else np.unique(width[fast]).tolist():
            hit = None if every else np.flatnonzero(fast & (width == w))
            part = rows if hit is None else rows[hit]
            ids = self._layout_ids(part[:, 10 + w:size - 4])
            vals = part[:, size - 4:].copy().view("<f4").ravel().astype(np.float64)
            miss = np.flatnonzero(ids == _ONE_BY_ONE)
            if len(miss) and self._tensor_templates:
                ids[miss], vals[miss] = self._tensor_ids(part[miss, 10 + w:], run)
            known = ids != _ONE_BY_ONE
            if known.all():
                take: slice | np.ndarray = slice(None) if hit is None else hit
                at = sel if hit is None else sel[hit]
            else:
                idx = np.flatnonzero(known)
                take = idx if hit is None else hit[idx]
                at = sel[take]
                ids, vals = ids[idx], vals[idx]
            tid[at] = ids
            step[at] = steps[take].view(np.int64)
            wall[at] = rows[take, 1:9].copy().view("<f8").ravel()
            value[at] = vals

    def _tensor_ids(self, bodies: np.ndarray, run: str) -> tuple[np.ndarray, np.ndarray]:
        """For rows of event bytes after the step (all one length): the tag index (or _FILTERED) and value of each
        row that matches a learnt scalar-tensor layout, _ONE_BY_ONE for the others."""
        ids = np.full(len(bodies), _ONE_BY_ONE, np.intp)
        vals = np.zeros(len(bodies))
        rest = np.arange(len(bodies))
        for before, after, off, _, tag, name, bare_run, dtype in self._tensor_templates.get(bodies.shape[1], ()):
            if not len(rest):
                break
            if bare_run is not None and (bare_run != run or (run, name) in self.foreign):
                continue
            end = off + dtype.itemsize
            part = bodies[rest]
            same = (part[:, :off] == np.frombuffer(before, np.uint8)).all(axis=1) & \
                (part[:, end:] == np.frombuffer(after, np.uint8)).all(axis=1)
            if same.any():
                ids[rest[same]] = self._tag_index(tag)
                vals[rest[same]] = part[same, off:end].copy().view(dtype).ravel()
                rest = rest[~same]
        return ids, vals

    def _layout_ids(self, layouts: np.ndarray) -> np.ndarray:
        """For rows of simple_value layout bytes (all one length): the tag index of each learnt layout, _FILTERED
        for a learnt layout of a filtered-out tag, _ONE_BY_ONE for one not learnt yet.

        Rows equal to the first remaining row are peeled off a few times (files repeat few layouts of one length);
        more distinct layouts are grouped by a hash of their bytes, every row then compared with its group's first.
        """
        ids = np.full(len(layouts), _ONE_BY_ONE, np.intp)
        if not len(layouts):
            return ids
        same = (layouts == layouts[0]).all(axis=1)
        ids[same] = self._layout_id(layouts[0].tobytes())
        rest = np.flatnonzero(~same)
        for _ in range(3):
            if not len(rest):
                return ids
            same = (layouts[rest] == layouts[rest[0]]).all(axis=1)
            ids[rest[same]] = self._layout_id(layouts[rest[0]].tobytes())
            rest = rest[~same]
        if len(rest):
            part = layouts[rest]
            h = np.zeros(len(rest), np.uint64)
            for j in range(part.shape[1]):
                h = h * np.uint64(0x100000001B3) ^ part[:, j]
            _, head, group = np.unique(h, return_index=True, return_inverse=True)
            same = (part == part[head[group]]).all(axis=1)  # a hash collision stays _ONE_BY_ONE: exact either way
            cand = np.array([self._layout_id(part[i].tobytes()) for i in head.tolist()], np.intp)
            ids[rest[same]] = cand[group[same]]
        return ids

    def _layout_id(self, layout: bytes) -> int:
        tag = self._templates.get(layout, _MISSING)
        return _ONE_BY_ONE if tag is _MISSING else self._tag_index(tag)

    def _tag_index(self, tag: str | None) -> int:
        """A tag's index in the block decode's names (_FILTERED for None: a tag the filter drops)."""
        if tag is None:
            return _FILTERED
        i = self._tag_ids.get(tag)
        if i is None:
            i = self._tag_ids[tag] = len(self._tag_names)
            self._tag_names.append(tag)
        return i

    def _one(self, payload: bytes, run: str, out: Out, limit: int, skipped: dict[str, int]) -> bool:
        """One verified record that the block decode did not take: a layout learnt within this block, a learnt
        scalar-tensor layout, or the slow path. False when its points would overflow a non-empty batch."""
        length = len(payload)
        if length > 15 and payload[0] == 0x09 and payload[9] == 0x10:
            try:
                step, q = _varint(payload, 10)
            except DecodeError:
                return self._slow(payload, run, out, limit, skipped)
            if step >> 63:
                step -= 1 << 64
            tag = self._templates.get(payload[q:-4], _MISSING)
            if tag is not _MISSING:
                if tag is not None:
                    out.append(_new_point(Point, (tag, step, _unpack_f64(payload, 1)[0], _unpack_f32(payload,
                                                                                                      length - 4)[0],
                                                  run)))
                return True
            for before, after, off, unpack, tag, name, bare_run, _ in self._tensor_templates.get(length - q, ()):
                if bare_run is not None and (bare_run != run or (run, name) in self.foreign):
                    continue
                if payload.startswith(before, q) and payload.endswith(after):
                    if tag is not None:
                        out.append(_new_point(Point, (tag, step, _unpack_f64(payload, 1)[0],
                                                      unpack(payload, q + off)[0], run)))
                    return True
        return self._slow(payload, run, out, limit, skipped)

    def _slow(self, payload: bytes, run: str, out: Out, limit: int, skipped: dict[str, int]) -> bool:
        """Decode one Event the general way; False when its points would overflow a non-empty batch."""
        try:
            wall, step, values = decode_event(payload)
        except (DecodeError, struct.error, IndexError):
            skipped["undecodable"] = skipped.get("undecodable", 0) + 1
            return True
        points: list[Point] = []
        reasons: list[str] = []
        for tag, value, kind in values:
            if value is None:
                if kind not in ("image", "audio", "histogram", "non_scalar"):
                    self.foreign.add((run, tag))  # e.g. a "text" or "hparams" tensor
                    kind = "non_scalar"
                reasons.append(kind)
            elif kind == "bare_tensor" and (run, tag) in self.foreign:
                reasons.append("non_scalar")
            elif self._allow(tag):
                points.append(Point(tag, step, wall, value, run))
        if points and out and len(out) + len(points) > limit:
            return False
        out.extend(points)
        for r in reasons:
            skipped[r] = skipped.get(r, 0) + 1
        if len(values) == 1 and values[0][2] == "simple" and payload[0] == 0x09 and payload[9] == 0x10:
            _, q = _varint(payload, 10)
            if payload[q:-4] == simple_value_template(values[0][0]):
                self._templates[payload[q:-4]] = values[0][0] if self._allow(values[0][0]) else None
        elif len(values) == 1 and payload[0] == 0x09 and payload[9] == 0x10:
            tag, value, kind = values[0]
            if kind == "tensor" or (kind == "bare_tensor" and (run, tag) not in self.foreign):
                self._learn_tensor_layout(payload, wall, step, tag, value, run if kind == "bare_tensor" else None)
        return True

    def _learn_tensor_layout(self, payload: bytes, wall: float, step: int, tag: str, value: float | None,
                             bare_run: str | None) -> None:
        """Remember where a one-value scalar tensor event keeps its float, so later events skip the slow path.

        The value's bytes must occur once in the event, and writing a probe value there must decode to exactly
        that probe: then every other byte is layout, and an event equal outside those bytes holds its value there.
        Only fixed-width encodings (float_val, double_val, tensor_content) qualify; half_val is a varint. A tensor
        without metadata (TF2 writes the scalars plugin's metadata on a tag's first event only) gives a layout for
        its run (`bare_run`) that holds only while no event marks the tag as another plugin's.
        """
        attempts = self._tensor_attempts.get((tag, bare_run), 0)
        if attempts >= 4 or len(self._tensor_templates) >= 4096 or value is None:
            return
        self._tensor_attempts[(tag, bare_run)] = attempts + 1
        _, q = _varint(payload, 10)
        body = payload[q:]
        for fmt in ("<f", "<d"):
            try:
                enc = struct.pack(fmt, value)
            except OverflowError:
                continue
            if struct.unpack(fmt, enc)[0] != value:
                continue  # not representable at this width (or NaN): cannot be stored this way
            off = body.find(enc)
            if off < 0 or body.find(enc, off + 1) >= 0:
                continue
            probe = struct.pack(fmt, 1234.5)
            try:
                got = decode_event(payload[:q + off] + probe + payload[q + off + len(enc):])
            except (DecodeError, struct.error, IndexError):
                continue
            if got == (wall, step, [(tag, 1234.5, "tensor" if bare_run is None else "bare_tensor")]):
                entry = (body[:off], body[off + len(enc):], off, struct.Struct(fmt).unpack_from,
                         tag if self._allow(tag) else None, tag, bare_run, np.dtype(f"<f{len(enc)}"))
                self._tensor_templates.setdefault(len(body), []).append(entry)
                return


def read_file(f: BinaryIO, offset: int, size: int, scanner: EventScanner, run: str, out: Out, limit: int,
              skipped: dict[str, int]) -> tuple[int, bool]:
    """Read records of an open event file from `offset` up to `size` bytes; return (next offset, stopped at limit).

    The next offset is always a record boundary: a partial last record (a writer mid-flush) is left for the next
    read, corrupt records are counted in `skipped` and stepped over.
    """
    f.seek(offset)
    base, buf, pos = offset, f.read(min(CHUNK_BYTES, size - offset)), 0
    while True:
        pos, outcome, n = scanner.scan(buf, pos, run, out, limit, skipped)
        if outcome == FULL:
            return base + pos, True
        if outcome == OVERSIZED:
            if base + pos + n > size:
                return base + pos, False  # wait until the whole record is there, then step over it unread
            skipped["oversized"] = skipped.get("oversized", 0) + 1
            base, buf, pos = base + pos + n, b"", 0
            f.seek(base)
        elif outcome == RESYNC:
            bad_at = base + pos
            found = resync(buf, pos + 1)
            while found is None and base + len(buf) < size:
                more = f.read(min(CHUNK_BYTES, size - base - len(buf)))
                if not more:
                    break
                keep = max(pos + 1, len(buf) - 15)  # a candidate header may straddle the boundary
                base, buf, pos = base + keep, buf[keep:] + more, 0
                found = resync(buf, 0)
            if found is None:
                # nothing verifiable after the damage yet: stay before it (it may be a write still in flight)
                return bad_at, False
            skipped["bad_length_crc"] = skipped.get("bad_length_crc", 0) + 1
            pos = found
            continue
        if base + len(buf) >= size:
            return base + pos, False
        need = n if outcome == NEED else 0
        more = f.read(min(max(CHUNK_BYTES, need - (len(buf) - pos)), size - base - len(buf)))
        if not more:
            return base + pos, False
        base, buf, pos = base + pos, buf[pos:] + more, 0

