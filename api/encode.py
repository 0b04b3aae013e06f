"""Points -> the seed's item shape, as JSON, NDJSON or CSV text, written row by row (nothing is built twice).

An item is `{"metric_name", "value", "timestamp" (ms), "iteration", "data_source"}` plus `run`/`source` when
asked for (`include=run,source`). JSON has no NaN or infinities: a non-finite value is `null` in JSON and NDJSON
and `nan`/`inf`/`-inf` in CSV (which pandas and most CSV readers parse back).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

from trainscope.api.queries import Row, Series

CSV_COLUMNS = ("metric_name", "value", "timestamp", "iteration", "data_source")
_isfinite = math.isfinite


def json_value(v: float) -> str:
    return repr(v) if _isfinite(v) else "null"


def _csv_field(text: str) -> str:
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


class ItemWriter:
    """Formats the points of one series at a time; the per-series parts are escaped once."""

    def __init__(self, include: Sequence[str] = ()):
        self.include = tuple(include)
        self._cache: dict[int, tuple[str, str, str, str]] = {}

    def _parts(self, s: Series) -> tuple[str, str, str, str]:
        """(JSON before the value, JSON after the iteration, CSV before the value, CSV after the iteration)."""
        parts = self._cache.get(s.id)
        if parts is None:
            extra = "".join(f',"{f}":{json.dumps(getattr(s, f))}' for f in self.include)
            csv_extra = "".join("," + _csv_field(getattr(s, f)) for f in self.include)
            parts = (f'{{"metric_name":{json.dumps(s.metric)},"value":',
                     f',"data_source":{json.dumps(s.data_source)}{extra}}}',
                     f"{_csv_field(s.metric)},",
                     f",{_csv_field(s.data_source)}{csv_extra}\n")
            self._cache[s.id] = parts
        return parts

    def json_items(self, s: Series, rows: Iterable[Row]) -> list[str]:
        head, tail, _, _ = self._parts(s)
        return [f'{head}{json_value(v)},"timestamp":{t},"iteration":{i}{tail}' for i, t, v in rows]

    def csv_header(self) -> str:
        return ",".join((*CSV_COLUMNS, *self.include)) + "\n"

    def csv_lines(self, s: Series, rows: Iterable[Row]) -> str:
        _, _, head, tail = self._parts(s)
        return "".join(f"{head}{v!r},{t},{i}{tail}" for i, t, v in rows)
