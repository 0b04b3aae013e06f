"""A SwanLab log directory read directly: `runs.swanlab` (SQLite) for experiments and tags, `.log` files for values.

Layout written by `swanlab.init(mode="local")` (swanlab 0.10): `<logdir>/runs.swanlab` and one
`<logdir>/<run_id>/` per experiment holding `logs/<tag folder>/<n>.log` (one JSON object per line,
`{"index", "data", "create_time"}`, a new file every 1,000 distinct steps: 1000.log, 2000.log, ...),
`files/config.yaml`, `files/swanlab-metadata.json` and `console/` (printed output, `error.log` when it crashed).
Everything here is synchronous and runs in a worker thread.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import os
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from trainscope.collector.points import RawPoint
from trainscope.collector.sources.base import SourceError

DB_NAME = "runs.swanlab"
_READ_CHUNK = 4 << 20
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class Experiment:
    """One row of the `experiment` table (the fields the dashboard's /api/v1/project also lists)."""

    id: int
    run_id: str
    name: str
    status: int
    create_time: str | None = None
    finish_time: str | None = None


@dataclass(frozen=True, slots=True)
class Tag:
    """One metric of an experiment: its full key (e.g. train/loss), folder under logs/, chart type."""

    name: str
    folder: str | None
    type: str


def _connect(db: Path) -> sqlite3.Connection:
    """Open runs.swanlab read-only. A reader never blocks SwanLab's writer in WAL mode and never checkpoints.

    On a read-only mount a finished logdir has no -wal/-shm files and SQLite cannot create them: the file is then
    complete and is opened as immutable (no locking at all).
    """
    uri = f"file:{quote(str(db))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError:
        if Path(f"{db}-wal").exists():
            raise
    conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, timeout=5.0, check_same_thread=False)
    conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    return conn


def read_catalog(root: Path) -> tuple[str | None, list[Experiment], dict[int, list[Tag]]] | None:
    """(project name, experiments by id, tags per experiment id) from runs.swanlab; None when it does not exist yet.

    One short read transaction, closed at once, so the writer's checkpoints are never held back for long.
    """
    db = root / DB_NAME
    if not db.exists():
        return None
    try:
        conn = _connect(db)
    except sqlite3.Error as e:
        raise SourceError(f"cannot open {db} read-only: {e}", reason="DatabaseUnreadable") from e
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"experiment", "tag"} <= tables:
            return None  # created, schema not written yet
        project = None
        if "project" in tables:
            row = conn.execute("SELECT name FROM project ORDER BY id LIMIT 1").fetchone()
            project = row[0] if row else None
        exps = [Experiment(int(r[0]), str(r[1]), str(r[2]), int(r[3]), r[4], r[5]) for r in conn.execute(
            "SELECT id, run_id, name, status, create_time, finish_time FROM experiment ORDER BY id")]
        tags: dict[int, list[Tag]] = {}
        for exp_id, name, folder, kind in conn.execute(
                "SELECT experiment_id, name, folder, type FROM tag ORDER BY experiment_id, sort, id"):
            tags.setdefault(int(exp_id), []).append(Tag(str(name), None if folder is None else str(folder), str(kind)))
        return project, exps, tags
    except (sqlite3.Error, TypeError, ValueError) as e:
        raise SourceError(f"cannot read {db}: {e}", reason="DatabaseUnreadable") from e
    finally:
        conn.close()


def parse_time(text: Any) -> float:
    """SwanLab's ISO-8601 create_time (UTC, microseconds) -> epoch seconds; a time without offset is UTC."""
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# swanlab <= 0.7 wrote non-finite values as strings (swanlab/data/modules/line/__init__.py: Line.nan = "NaN",
# Line.inf = "INF", the same "INF" for -inf, so its sign is lost); its dashboard serves them back the same way.
OLD_NON_FINITE: dict[str, float] = {"NaN": math.nan, "INF": math.inf, "-INF": -math.inf}


def parse_record(obj: Any) -> tuple[int, float, float] | str:
    """(step, ts, value) of one `{"index", "data", "create_time"}` record, or the reason it is skipped."""
    if not isinstance(obj, dict):
        return "bad_line"
    step, value, created = obj.get("index"), obj.get("data"), obj.get("create_time")
    if isinstance(step, bool) or not isinstance(step, int):
        return "bad_line"
    if isinstance(value, str):
        value = OLD_NON_FINITE.get(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "non_numeric"
    try:
        ts = parse_time(created)
    except (TypeError, ValueError):
        return "bad_time"
    return step, ts, float(value)


def _log_files(folder: Path) -> list[str]:
    """The tag's .log files in writing order: 1000.log, 2000.log, ..., 10000.log (numeric, not alphabetical)."""
    try:
        names = [n for n in os.listdir(folder) if n.endswith(".log")]
    except FileNotFoundError:
        return []
    return sorted(names, key=lambda n: (0, int(n[:-4]), n) if n[:-4].isdigit() else (1, 0, n))


@dataclass(slots=True)
class FileReader:
    """Reads new complete lines of a run's metric files from per-file offsets, up to a point budget."""

    limit: int
    points: list[RawPoint]  # plain tuples: a catch-up makes millions
    skipped: dict[str, int]
    notes: list[str]
    full: bool = False

    def read_tag(self, folder: Path, key_prefix: str, metric: str, run: str,
                 old: dict[str, Any], new: dict[str, Any]) -> float | None:
        """Read one tag folder; offsets go from `old` to `new` ({key: [offset, inode]}). Returns the newest ts."""
        newest: float | None = None
        for name in _log_files(folder):
            key = f"{key_prefix}/{name}"
            offset, inode = old.get(key, (0, None))
            if self.full:
                if key in old:
                    new[key] = [offset, inode]
                continue
            path = folder / name
            try:
                with open(path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if (inode is not None and st.st_ino != inode) or st.st_size < offset:
                        # SwanLab rewrites a file (write-to-temp, rename) when a step is logged again
                        if offset:
                            self.notes.append(f"{key} was rewritten (a step logged again?): read again from the start")
                        offset = 0
                    if st.st_size > offset:
                        offset, ts = self._read(f, offset, st.st_size, metric, run)
                        if ts is not None and (newest is None or ts > newest):
                            newest = ts
            except FileNotFoundError:
                continue
            except OSError as e:
                raise SourceError(f"cannot read {path}: {e.strerror or e}", reason="FileUnreadable") from e
            new[key] = [offset, st.st_ino]
        return newest

    def _read(self, f: Any, offset: int, size: int, metric: str, run: str) -> tuple[int, float | None]:
        newest: float | None = None
        points, skipped = self.points, self.skipped
        while offset < size and not self.full:
            f.seek(offset)
            chunk = f.read(min(_READ_CHUNK, size - offset))
            end = chunk.rfind(b"\n")
            if end < 0:
                if len(chunk) == _READ_CHUNK:  # one absurdly long line: step over it
                    skipped["bad_line"] = skipped.get("bad_line", 0) + 1
                    nl = _find_newline(f, offset + len(chunk))
                    if nl is None:
                        return offset, newest
                    offset = nl + 1
                    continue
                return offset, newest  # a half-written last line: read it once complete
            lines = chunk[:end].split(b"\n")
            fast = _columns(lines[:self.limit - len(points)], metric, run)
            if fast is not None:  # every line a good record: taken column-wise
                got, taken, top = fast
                points += got
                if newest is None or top > newest:
                    newest = top
                offset += taken
                if len(points) >= self.limit:
                    self.full = True
                continue
            pos = 0
            for line in lines:
                pos += len(line) + 1
                if not line.strip():
                    continue
                try:
                    rec = parse_record(json.loads(line))
                except ValueError:
                    rec = "bad_line"
                if isinstance(rec, str):
                    skipped[rec] = skipped.get(rec, 0) + 1
                    continue
                step, ts, value = rec
                points.append((metric, step, ts, value, run))
                if newest is None or ts > newest:
                    newest = ts
                if len(points) >= self.limit:
                    self.full = True
                    break
            offset += pos
        return offset, newest


_INDEX, _DATA, _CREATED = (operator.itemgetter(k) for k in ("index", "data", "create_time"))
_NUMBERS = frozenset({int, float})


def _columns(lines: list[bytes], metric: str, run: str) -> tuple[list[RawPoint], int, float] | None:
    """(points, bytes taken, newest time) of whole lines that are all good records, or None (then line by line).

    Reading a catch-up line by line cost ~6 us a point (json.loads, parse_record, a tuple): here the lines are one
    JSON array (a comma between lines, so a line that is not exactly one value breaks the count or the parse) and
    each field is checked and converted per column, giving exactly what `parse_record` gives per line."""
    if not lines:
        return None
    try:
        recs = json.loads(b"[" + b",".join(lines) + b"]")
        if len(recs) != len(lines) or set(map(type, recs)) != {dict}:
            return None
        steps, data, created = list(map(_INDEX, recs)), list(map(_DATA, recs)), list(map(_CREATED, recs))
        if set(map(type, steps)) != {int} or not set(map(type, data)) <= _NUMBERS or set(map(type, created)) != {str}:
            return None
        stamps = list(map(datetime.fromisoformat, created))
        if None in set(map(_TZINFO, stamps)):
            stamps = [d if d.tzinfo is not None else d.replace(tzinfo=UTC) for d in stamps]  # naive: UTC
        times = list(map(datetime.timestamp, stamps))
        values = list(map(float, data))
    except (ValueError, KeyError, TypeError, OverflowError):
        return None
    points = list(zip(itertools.repeat(metric), steps, times, values, itertools.repeat(run)))
    return points, sum(map(len, lines)) + len(lines), max(times)


_TZINFO = operator.attrgetter("tzinfo")


def _find_newline(f: Any, start: int) -> int | None:
    f.seek(start)
    pos = start
    while chunk := f.read(_READ_CHUNK):
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + i
        pos += len(chunk)
    return None


def jsonable(value: Any) -> Any:
    """A value safe for JSON/jsonb: NaN and infinities as strings, unknown types (yaml dates...) as str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)


def read_config(run_dir: Path) -> dict[str, Any] | None:
    """files/config.yaml as SwanLab wrote it (values still wrapped); None if absent or unreadable."""
    try:
        with open(run_dir / "files" / "config.yaml", "rb") as f:
            data = yaml.load(f, Loader=_Loader)
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_system(run_dir: Path) -> dict[str, Any] | None:
    """files/swanlab-metadata.json (hardware, runtime, git, swanlab version); None if absent or partial."""
    try:
        data = json.loads((run_dir / "files" / "swanlab-metadata.json").read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_error(run_dir: Path) -> list[str] | None:
    """console/error.log (the traceback of a crashed run) as lines, as /recent_log's `error` gives it."""
    try:
        text = (run_dir / "console" / "error.log").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.split("\n")
