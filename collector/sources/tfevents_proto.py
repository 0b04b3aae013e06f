"""The few fields of TensorBoard's Event/Summary/TensorProto protobufs that carry scalars, decoded by hand.

No TensorFlow and no protobuf runtime: a wire-format field walker and the rules for which values are scalars
(simple_value; one-element float tensors of the scalars plugin or without metadata). The event-file reader
(tfevents.py) uses this for every layout it has not learnt yet.
"""

from __future__ import annotations

import struct

_unpack_f32 = struct.Struct("<f").unpack_from
_unpack_f64 = struct.Struct("<d").unpack_from
_unpack_f16 = struct.Struct("<e").unpack_from

DT_FLOAT, DT_DOUBLE, DT_BFLOAT16, DT_HALF = 1, 2, 14, 19


class DecodeError(ValueError):
    """A payload whose CRC is right but whose protobuf is not an Event we understand."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) of one message; LEN values are bytes, others ints or raw bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            val, pos = _varint(buf, pos)
        elif wt == 1:
            val, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            val, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            val, pos = buf[pos:pos + 4], pos + 4
        else:
            raise DecodeError(f"unsupported wire type {wt}")
        if pos > end:
            raise DecodeError("field runs past the end of its message")
        yield num, wt, val


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def simple_value_template(tag: str) -> bytes:
    """The bytes between an Event's step and its float for a lone `simple_value`, exactly as writers lay them out."""
    t = tag.encode()
    value = b"\x0a" + _encode_varint(len(t)) + t + b"\x15"  # Value{tag=1, simple_value=2 (4 bytes follow)}
    summary = b"\x0a" + _encode_varint(len(value) + 4) + value
    return b"\x2a" + _encode_varint(len(summary) + 4) + summary  # Event.summary=5


def _plugin_name(metadata: bytes) -> str:
    for num, wt, val in _fields(metadata):
        if num == 1 and wt == 2:  # SummaryMetadata.plugin_data
            for n2, w2, v2 in _fields(val):
                if n2 == 1 and w2 == 2:
                    return v2.decode("utf-8", "replace")
    return ""


def _half(bits: int, dtype: int) -> float:
    if dtype == DT_BFLOAT16:  # the top half of a float32
        return _unpack_f32(struct.pack("<I", (bits & 0xFFFF) << 16))[0]
    return _unpack_f16(struct.pack("<H", bits & 0xFFFF))[0]


def tensor_scalar(tensor: bytes) -> float | None:
    """The value of a one-element float/double/half/bfloat16 TensorProto, or None when it is not such a tensor."""
    dtype = 0
    elements = 1
    content = None
    values: list[float] = []
    for num, wt, val in _fields(tensor):
        if num == 1 and wt == 0:
            dtype = val
        elif num == 2 and wt == 2:  # TensorShapeProto{dim=2 {size=1}, unknown_rank=3}
            for n2, w2, v2 in _fields(val):
                if n2 == 2 and w2 == 2:
                    size = 0
                    for n3, w3, v3 in _fields(v2):
                        if n3 == 1 and w3 == 0:
                            size = v3 - (1 << 64) if v3 >> 63 else v3
                    elements *= size
                elif n2 == 3 and w2 == 0 and v2:
                    return None
        elif num == 4 and wt == 2:
            content = val
        elif num == 5:  # float_val, packed (LEN) or not (I32)
            values += [v for (v,) in struct.iter_unpack("<f", val)] if wt in (2, 5) and len(val) % 4 == 0 else []
        elif num == 6:
            values += [v for (v,) in struct.iter_unpack("<d", val)] if wt in (1, 2) and len(val) % 8 == 0 else []
        elif num == 13:  # half_val: float16/bfloat16 bit patterns as int32 varints
            if wt == 0:
                values.append(_half(val, dtype))
            elif wt == 2:
                pos = 0
                while pos < len(val):
                    bits, pos = _varint(val, pos)
                    values.append(_half(bits, dtype))
    if elements != 1 or dtype not in (DT_FLOAT, DT_DOUBLE, DT_HALF, DT_BFLOAT16):
        return None
    if content is not None:
        if dtype == DT_FLOAT and len(content) == 4:
            return _unpack_f32(content)[0]
        if dtype == DT_DOUBLE and len(content) == 8:
            return _unpack_f64(content)[0]
        if len(content) == 2 and dtype in (DT_HALF, DT_BFLOAT16):
            return _half(int.from_bytes(content, "little"), dtype)
        return None
    return values[0] if values else 0.0  # TensorFlow's convention: no values means zeros


def decode_event(payload: bytes) -> tuple[float, int, list[tuple[str, float | None, str]]]:
    """Slow path: (wall_time, step, [(tag, value or None, kind)]) of one Event.

    kind is "simple" for simple_value, "tensor" for a scalar tensor whose metadata names the scalars plugin,
    "bare_tensor" for one without plugin metadata, a plugin name for a tensor of another plugin, or
    "image"/"audio"/"histogram"/"non_scalar" for values that carry no scalar (value None).
    """
    wall, step, summary = 0.0, 0, None
    for num, wt, val in _fields(payload):
        if num == 1 and wt == 1:
            wall = _unpack_f64(val)[0]
        elif num == 2 and wt == 0:
            step = val - (1 << 64) if val >> 63 else val
        elif num == 5 and wt == 2:
            summary = val
    values: list[tuple[str, float | None, str]] = []
    if summary is None:
        return wall, step, values
    for num, wt, val in _fields(summary):
        if num != 1 or wt != 2:
            continue
        tag, simple, tensor, plugin, kind = "", None, None, "", "non_scalar"
        for n2, w2, v2 in _fields(val):
            if n2 == 1 and w2 == 2:
                tag = v2.decode("utf-8", "replace")
            elif n2 == 2 and w2 == 5:
                simple = _unpack_f32(v2)[0]
            elif n2 == 8 and w2 == 2:
                tensor = v2
            elif n2 == 9 and w2 == 2:
                plugin = _plugin_name(v2)
            elif n2 == 4:
                kind = "image"
            elif n2 == 6:
                kind = "audio"
            elif n2 in (3, 5):
                kind = "histogram"
        if simple is not None:
            values.append((tag, simple, "simple"))
        elif tensor is not None and plugin in ("", "scalars"):
            scalar = tensor_scalar(tensor)
            kind = "tensor" if plugin else "bare_tensor"
            values.append((tag, scalar, kind) if scalar is not None else (tag, None, "non_scalar"))
        else:
            values.append((tag, None, plugin if tensor is not None else kind))
    return wall, step, values
