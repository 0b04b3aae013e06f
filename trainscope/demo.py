"""A simulated training job that writes real TensorBoard event files, for the local demo on a machine with no
network and no ML framework. The files are the format tensorboard and tensorboardX write (TFRecord framing,
Event protobufs with simple_value scalars), so the demo exercises the same reader as a real job.
"""

from __future__ import annotations

import math
import os
import random
import socket
import struct
import threading
import time
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
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self.path = logdir / name
        self._file = open(self.path, "ab")
        self._file.write(frame(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._file.flush()

    def add_scalars(self, step: int, scalars: dict[str, float], wall_time: float | None = None) -> None:
        self._file.write(frame(encode_event(wall_time or time.time(), step, scalars)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def loss_at(step: int, rng: random.Random) -> float:
    return 2.4 * math.exp(-step / 700) + 0.35 + rng.gauss(0, 0.03)


def simulate(logdir: Path, *, total_steps: int = 3000, steps_per_second: float = 20.0,
             stop: threading.Event | None = None, seed: int = 0) -> Path:
    """Write a training run into logdir/<run>: train/loss and train/learning_rate every step, eval/loss every
    250 steps, at a steady pace, until total_steps or `stop`. Returns the run's directory."""
    rng = random.Random(seed)
    run_dir = logdir / time.strftime("run-%Y%m%d-%H%M%S")
    writer = EventFileWriter(run_dir)
    try:
        for step in range(1, total_steps + 1):
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
