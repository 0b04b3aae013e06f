"""A simulated training job that writes real TensorBoard event files, for the local demo on a machine with no
network and no ML framework. The files are the format tensorboard and tensorboardX write (TFRecord framing,
Event protobufs with simple_value scalars), so the demo exercises the same reader as a real job.

A second demo resumes the same run, as a job restarted from its checkpoint does: it finds the newest run folder,
reads the highest step its event files hold and appends a new events file there from the next step on (TensorBoard
reads a run folder's files in name order). A run that already reached its last step is left as it is.
"""

from __future__ import annotations

import math
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import google_crc32c


def _masked_crc(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_event(wall_time: float, step: int, scalars: dict[str, float] | None = None,
                 file_version: str | None = None) -> bytes:
    """Serialise an Event {wall_time, step, file_version | summary{value[tag, simple_value]}}."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if file_version is not None:
        out += _field(3, file_version.encode())
    if scalars:
        values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
                          for tag, value in scalars.items())
        out += _field(5, values)
    return out


def frame(record: bytes) -> bytes:
    """TFRecord framing: length, masked CRC of the length, payload, masked CRC of the payload."""
    header = struct.pack("<Q", len(record))
    return header + _masked_crc(header) + record + _masked_crc(record)


class EventFileWriter:
    """Appends scalar events to one events.out.tfevents file, flushed per call."""

    def __init__(self, logdir: Path):
        logdir.mkdir(parents=True, exist_ok=True)
        stem = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        n = 0
        while (logdir / f"{stem}.{n}").exists():  # a resumed run in the same second gets a file of its own
            n += 1
        self.path = logdir / f"{stem}.{n}"
        self._file = open(self.path, "ab")
        self._file.write(frame(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        self._file.write(frame(encode_event(wall_time or time.time(), step, scalars)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _fields(message: bytes) -> dict[int, int]:
    """The varint and fixed64 fields of a protobuf message (field number -> raw value); others are skipped."""
    out: dict[int, int] = {}
    i = 0
    while i < len(message):
        key, i = _read_varint(message, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], i = _read_varint(message, i)
        elif wire == 1:
            out[number] = struct.unpack_from("<Q", message, i)[0]
            i += 8
        elif wire == 2:
            n, i = _read_varint(message, i)
            i += n
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"wire type {wire}")
    return out


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7


def read_steps(path: Path) -> list[int]:
    """The step of every whole, CRC-valid record of one events file (a torn last record is left out)."""
    data = path.read_bytes()
    steps, i = [], 0
    while i + 12 <= len(data):
        header = data[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        if _masked_crc(header) != data[i + 8:i + 12] or i + 16 + n > len(data):
            break
        record = data[i + 12:i + 12 + n]
        if _masked_crc(record) != data[i + 12 + n:i + 16 + n]:
            break
        try:
            steps.append(_fields(record).get(2, 0))
        except (ValueError, IndexError, struct.error):
            break
        i += 16 + n
    return steps


def resume_point(logdir: Path) -> tuple[Path, int] | None:
    """The newest run folder under `logdir` that holds events and the highest step written there, or None."""
    runs = sorted(p for p in logdir.glob("run-*") if p.is_dir() and any(p.glob("events.out.tfevents.*")))
    if not runs:
        return None
    run = runs[-1]
    return run, max((max(read_steps(f), default=0) for f in run.glob("events.out.tfevents.*")), default=0)


def loss_at(step: int, rng: random.Random) -> float:
    return 2.4 * math.exp(-step / 700) + 0.35 + rng.gauss(0, 0.03)


def simulate(logdir: Path, *, total_steps: int = 3000, steps_per_second: float = 20.0,
             stop: threading.Event | None = None, seed: int = 0, resume: bool = True,
             say: Callable[[str], None] | None = print) -> Path:
    """Write a training run into logdir/<run>: train/loss and train/learning_rate every step, eval/loss every
    250 steps, at a steady pace, until total_steps or `stop`. Returns the run's directory.

    With `resume`, the newest run under `logdir` goes on from its highest step (nothing is written when it has
    reached total_steps); `say` gets one line telling which.
    """
    found = resume_point(logdir) if resume else None
    if found is not None:
        run_dir, done = found
        if done >= total_steps:
            if say:
                say(f"demo: the simulated run {run_dir.name} finished at step {done}/{total_steps}; nothing new is "
                    f"written (delete {logdir} to start a fresh run)")
            return run_dir
        if say:
            say(f"demo: resuming the simulated run {run_dir.name} at step {done + 1}/{total_steps}")
    else:
        run_dir, done = logdir / time.strftime("run-%Y%m%d-%H%M%S"), 0
        if say:
            say(f"demo: a new simulated run {run_dir.name} in {logdir}")
    rng = random.Random(seed * 1_000_003 + done)
    writer = EventFileWriter(run_dir)
    try:
        for step in range(done + 1, total_steps + 1):
            if stop is not None and stop.is_set():
                break
            lr = 3e-4 * min(1.0, step / 100) * 0.5 * (1 + math.cos(math.pi * step / total_steps))
            scalars = {"train/loss": loss_at(step, rng), "train/learning_rate": lr}
            if step % 250 == 0:
                scalars["eval/loss"] = loss_at(step, rng) + 0.05
            writer.add_scalars(step, scalars)
            time.sleep(1.0 / steps_per_second)
    finally:
        writer.close()
    return run_dir
