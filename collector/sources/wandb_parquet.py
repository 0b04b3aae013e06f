"""W&B's exported run history (parquet files) as history rows, for catching up on a long run.

W&B's server exports a run's history to parquet files; `parquetHistory(liveKeys)` answers their (signed storage)
URLs and the rows not exported yet as `liveData` (wandb-core's runhistoryreader reads history this way). Reading an
exported range from the files is several times faster than paging it through `HistoryPage`
(bench/bench_wandb_parquet.py), so the wandb source reads exported steps from here and the rest through
HistoryPage. The rows given back are the same dicts HistoryPage answers (a key a row lacks is left out), so points,
cursor and exactly-once semantics do not change. Needs pyarrow (the `parquet` extra); without it, or when the
server has no export, nothing changes.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass
from typing import Any

import httpx

from trainscope.collector.sources.base import SourceError

PARQUET_QUERY = """query RunParquetHistory($entity: String!, $project: String!, $runName: String!,
    $liveKeys: [String!]!) {
  project(name: $project, entityName: $entity) {
    run(name: $runName) { parquetHistory(liveKeys: $liveKeys) { parquetUrls liveData } }
  }
}"""
MIN_BACKLOG_STEPS = 20_000  # below this the export is not worth a download: HistoryPage windows it
ROWS_PER_WINDOW = 20_000  # rows turned into dicts at a time


def available() -> bool:
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class _File:
    first: int
    last: int
    steps: list[int]
    table: Any  # pyarrow.Table, sorted by _step


class ExportedHistory:
    """One run's exported history files, downloaded once and kept while a catch-up reads through them."""

    def __init__(self, files: list[_File]):
        self.files = sorted(files, key=lambda f: f.first)
        self.end = max((f.last for f in files), default=-1)  # the last exported step

    def rows(self, lo: int) -> tuple[list[dict[str, Any]], int]:
        """Rows with step >= lo from the file holding lo (or the next one), at most ROWS_PER_WINDOW of them, and
        the step the window ends before (every exported row below it is in the list)."""
        self.files = [f for f in self.files if f.last >= lo]  # read through: let them go
        if not self.files:
            return [], self.end + 1
        f = self.files[0]
        i = bisect.bisect_left(f.steps, lo)
        j = min(len(f.steps), i + ROWS_PER_WINDOW)
        hi = f.steps[j] if j < len(f.steps) else (self.files[1].first if len(self.files) > 1 else self.end + 1)
        return [_drop_nulls(r) for r in f.table.slice(i, j - i).to_pylist()], hi


def _drop_nulls(row: dict[str, Any]) -> dict[str, Any]:
    """A parquet row holds every column of its file: the keys this row never logged are null. HistoryPage leaves
    them out, and so does this."""
    out = {}
    for k, v in row.items():
        if isinstance(v, dict):
            v = _drop_nulls(v)
        if v is not None:
            out[k] = v
    return out


async def fetch(gql: Any, entity: str, project: str, run: str, seconds: float) -> ExportedHistory | None:
    """The run's export (None when the server has none or answers no parquetHistory); `gql` is the source's
    GraphQL call. Files are fetched without credentials: the URLs are signed storage URLs, and the W&B key must
    not travel to another host."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        data = await gql("RunParquetHistory", PARQUET_QUERY, {"entity": entity, "project": project,
                                                              "runName": run, "liveKeys": ["_step"]})
    except SourceError as e:
        if e.reason in ("BadResponse", "GraphQLError", "HttpError"):  # an older server without the export
            return None
        raise
    node = ((data.get("project") or {}).get("run") or {}).get("parquetHistory") if isinstance(data, dict) else None
    urls = node.get("parquetUrls") if isinstance(node, dict) else None
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        return None
    files = []
    async with httpx.AsyncClient(timeout=seconds, headers={"User-Agent": "trainscope-wandb-source"}) as client:
        for url in urls:
            try:
                resp = await client.get(url)
            except httpx.HTTPError as e:
                raise SourceError(f"cannot download W&B's history export of run {run}: {type(e).__name__}",
                                  reason="Unreachable") from None
            if resp.status_code != 200:
                return None  # an expired or refused URL: HistoryPage reads the steps instead
            try:
                table = pq.read_table(io.BytesIO(resp.content))
                table = table.sort_by("_step")
                steps = pc.cast(table.column("_step"), "int64").to_pylist()
            except Exception:  # a file we cannot read: HistoryPage reads the steps instead
                return None
            if steps:
                files.append(_File(steps[0], steps[-1], steps, table))
    return ExportedHistory(files)
