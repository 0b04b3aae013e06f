"""TensorBoard source: scalars from event files under a log directory, or from a running TensorBoard server.

logDir mode reads the event files itself (no TensorFlow, no TensorBoard at runtime), incrementally by byte
offset, and sees every point. url mode asks a TensorBoard server's HTTP API, which serves a reservoir sample
(1,000 points per tag by default) and has no incremental query: it refetches whole series and says when they
are sampled.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
from pathlib import Path
from typing import Any, ClassVar

import httpx

from trainscope.collector.points import Batch, Columns, Cursor, Point
from trainscope.collector.schema import MetricFilter, metric_filter_schema
from trainscope.collector.sources.base import (
    LogDirOrUrlSource,
    SourceContext,
    SourceError,
    log_dir_or_url_schema,
    url_timeout_property,
)
from trainscope.collector.sources.sink import ColumnSink
from trainscope.collector.sources.tfevents import EventScanner, read_file

SERVER_SAMPLE_SIZE = 1000  # TensorBoard's default reservoir size for scalars
_FETCH_WINDOW = 8  # tag series fetched concurrently in url mode
_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
# A poll that reads at least this many bytes of one file (a catch-up) hands the collector columns: no Python object
# per point from the decoder to the writer. Smaller reads (a live run's last few events) stay a list of Points,
# cheaper for a handful of records.
COLUMNS_BYTES = 64 << 10


def _walk_runs(root: Path) -> tuple[list[tuple[str, str, str]], list[str]]:
    """Every event file under root as (run, cursor key, path), in (run, file name) order, plus notes.

    The run is the directory relative to root ("." for root itself), the names TensorBoard gives its runs.
    Symlinked directories are followed once (mounted volumes are often symlinks); loops are cut by inode.
    """
    found: list[tuple[str, str, str]] = []
    notes: list[str] = []
    seen: set[tuple[int, int]] = set()

    def onerror(err: OSError) -> None:
        if Path(err.filename or "") == root:
            raise err
        notes.append(f"cannot read directory {err.filename}: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            continue  # removed while walking
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).as_posix()
        for name in sorted(filenames):
            if "tfevents" in name:
                key = name if rel == "." else f"{rel}/{name}"
                found.append((rel, key, os.path.join(dirpath, name)))
    found.sort(key=lambda f: (f[0], f[1]))
    return found, notes


class TensorBoardSource(LogDirOrUrlSource):
    """Scalars of TensorBoard runs; see docs/sources/tensorboard.md."""

    kind: ClassVar[str] = "tensorboard"
    program: ClassVar[str] = "TensorBoard"
    schema: ClassVar[dict[str, Any]] = log_dir_or_url_schema(
        "Scalars from TensorBoard event files (logDir, complete) or a TensorBoard server (url, sampled). Set exactly "
        "one of logDir or url.",
        log_dir="Directory holding event files (searched recursively; each directory with *tfevents* files is a "
                "run). Relative paths start at the collector's base dir.",
        url="Base URL of a running TensorBoard server (including any --path_prefix). It serves a sample of 1,000 "
            "points per tag unless started with --samples_per_plugin scalars=<large>.",
        properties={"tags": {**metric_filter_schema(), "description": "Which TensorBoard tags are read (globs)."},
                    "timeout": url_timeout_property()},
    )

    def __init__(self, config: dict[str, Any], ctx: SourceContext):
        super().__init__(config, ctx)
        self.tags = MetricFilter.from_dict(config.get("tags"))
        if self.log_dir is not None:
            self._scanner = EventScanner(self.tags.allows)

    # ---- logDir mode

    def _poll_logdir(self, cursor: Cursor | None) -> Batch:
        root = self.log_dir
        assert root is not None
        if not root.exists():
            raise SourceError(f"logDir {root} does not exist", reason="LogDirMissing")
        if not root.is_dir():
            raise SourceError(f"logDir {root} is not a directory", reason="LogDirMissing")
        try:
            files, notes = _walk_runs(root)
        except OSError as e:
            raise SourceError(f"cannot read logDir {root}: {e.strerror or e}", reason="LogDirUnreadable") from e
        old = dict(cursor.get("files", {})) if isinstance(cursor, dict) else {}
        offsets: dict[str, int] = {}
        points: list[Point] = []
        out: list[Point] | ColumnSink = points
        skipped: dict[str, int] = {}
        limit = self.ctx.max_batch_points
        full = False
        for run, key, path in files:
            offset = int(old.get(key, 0))
            if full:
                if offset:
                    offsets[key] = offset
                continue
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if size < offset:
                        notes.append(f"{key} shrank below the read offset (replaced?): read again from the start")
                        offset = 0
                    if size > offset:
                        if size - offset >= COLUMNS_BYTES and out is points:
                            out = ColumnSink()
                            out.extend(points)  # what earlier files gave stays first
                        offset, full = read_file(f, offset, size, self._scanner, run, out, limit, skipped)
            except FileNotFoundError:
                continue  # rotated away between listing and opening: it leaves the cursor
            except OSError as e:
                raise SourceError(f"cannot read event file {path}: {e.strerror or e}", reason="FileUnreadable") from e
            if offset:
                offsets[key] = offset
        runs = sorted({run for run, _, _ in files})
        batch_points: list[Point] | Columns = points
        if isinstance(out, ColumnSink) and len(out):
            batch_points = Columns(*out.columns())
        return Batch(points=batch_points, cursor={"files": offsets}, more=full, skipped=skipped, notes=notes,
                     info={"runs": runs, "files": len(files)})

    # ---- url mode

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            resp = await self._http().get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as e:
            raise self._no_answer(path, e) from e
        if resp.status_code == 404 and params is not None:
            return None  # the tag went away between listing and fetching (TensorBoard reloaded)
        if resp.status_code >= 400:
            hint = ""
            if resp.status_code == 404:
                hint = " (is this a TensorBoard server? check the url and any --path_prefix)"
            raise SourceError(f"TensorBoard answered {resp.status_code} to GET {path}{hint}: {resp.text[:200]!r}",
                              reason="HttpError")
        try:
            return resp.json()  # json.loads also accepts the bare NaN/Infinity some servers write
        except ValueError as e:
            raise SourceError(f"TensorBoard's answer to GET {path} is not JSON: {resp.text[:200]!r}",
                              reason="BadResponse") from e

    async def _series(self, run: str, tag: str) -> list[tuple[float, int, float]] | None:
        data = await self._get_json("/data/plugin/scalars/scalars", {"run": run, "tag": tag})
        if data is None:
            return None
        try:
            if not isinstance(data, list):
                raise TypeError
            out = []
            for wall, step, value in data:
                if isinstance(value, str):
                    value = _SPECIAL_FLOATS[value]
                if isinstance(step, bool) or not isinstance(step, int) or not isinstance(wall, int | float) \
                        or not isinstance(value, int | float):
                    raise TypeError
                out.append((float(wall), step, float(value)))
            return out
        except (TypeError, ValueError, KeyError) as e:
            raise SourceError(f"TensorBoard's scalars for run {run!r} tag {tag!r} are not [[wall_time, step, value],"
                              f" ...]: {str(data)[:200]}", reason="BadResponse") from e

    async def _poll_url(self, cursor: Cursor | None) -> Batch:
        tags = await self._get_json("/data/plugin/scalars/tags")
        if not isinstance(tags, dict) or not all(isinstance(v, dict) for v in tags.values()):
            raise SourceError("TensorBoard's /data/plugin/scalars/tags is not {run: {tag: ...}}: "
                              f"{str(tags)[:200]}", reason="BadResponse")
        wanted = [(run, tag) for run in sorted(tags) for tag in sorted(tags[run]) if self.tags.allows(tag)]
        seen: dict[str, dict[str, list]] = cursor.get("series", {}) if isinstance(cursor, dict) else {}
        new_seen: dict[str, dict[str, list]] = {r: dict(t) for r, t in seen.items()}
        points: list[Point] = []
        limit = self.ctx.max_batch_points
        sampled: list[str] = []
        skipped: dict[str, int] = {}
        more = False
        for i in range(0, len(wanted), _FETCH_WINDOW):
            window = wanted[i:i + _FETCH_WINDOW]
            fetched = await asyncio.gather(*(self._series(run, tag) for run, tag in window))
            for (run, tag), series in zip(window, fetched, strict=True):
                if series is None:
                    skipped["vanished"] = skipped.get("vanished", 0) + 1
                    continue
                if _looks_sampled(series):
                    sampled.append(f"{run}/{tag}")
                if more:
                    continue
                max_step, max_wall = seen.get(run, {}).get(tag, (None, None))
                fresh = sorted((s for s in series if max_step is None or s[1] > max_step or s[0] > max_wall),
                               key=lambda s: (s[1], s[0]))
                if not fresh:
                    continue
                room = limit - len(points)
                if len(fresh) > room:
                    # cut at a step boundary so the cursor's (max step, max wall) covers exactly what is returned
                    cut = room
                    while 0 < cut < len(fresh) and fresh[cut][1] == fresh[cut - 1][1]:
                        cut -= 1
                    if cut == 0 and not points:  # one step's duplicates alone exceed the limit: take them whole
                        while cut < len(fresh) and fresh[cut][1] == fresh[0][1]:
                            cut += 1
                    fresh, more = fresh[:cut], True
                    if not fresh:
                        continue
                points.extend(Point(tag, step, wall, value, run) for wall, step, value in fresh)
                top_step = max(s[1] for s in fresh)
                top_wall = max(s[0] for s in fresh)
                if max_step is not None:
                    top_step, top_wall = max(top_step, max_step), max(top_wall, max_wall)
                new_seen.setdefault(run, {})[tag] = [top_step, top_wall]
            if more:
                break
        notes = []
        if sampled:
            notes.append(f"HTTP mode is sampled for {len(sampled)} tag(s) (e.g. {sampled[0]}): the TensorBoard server "
                         f"keeps {SERVER_SAMPLE_SIZE:,} points per tag by default. Use logDir, or start tensorboard "
                         "with --samples_per_plugin scalars=1000000")
        return Batch(points=points, cursor={"series": new_seen}, more=more, skipped=skipped, notes=notes,
                     info={"runs": sorted(tags), "sampled_tags": len(sampled)})


def _looks_sampled(series: list[tuple[float, int, float]]) -> bool:
    """A series is taken as sampled when it has exactly the server's default reservoir size and uneven step gaps.

    An unsampled run logged every k steps has even gaps; a reservoir sample of a longer run almost never does.
    """
    if len(series) != SERVER_SAMPLE_SIZE:
        return False
    steps = sorted(s[1] for s in series)
    return len({b - a for a, b in itertools.pairwise(steps)}) > 1
