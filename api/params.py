"""Query parameters of the metrics endpoints, checked once, and the opaque pagination cursor."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from trainscope.api.datasources import ACCEPTED, canonical
from trainscope.api.errors import invalid

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the end of PostgreSQL's and JavaScript's common range
INCLUDABLE = ("run", "source")

SeriesKey = tuple[str, str, str, str]  # (metric, data_source, source, run): the order of series in every answer


@dataclass(frozen=True, slots=True)
class Filters:
    """Which points of a workload: every field is optional and they combine (AND)."""

    metrics: tuple[str, ...] | None = None
    data_source: str | None = None  # canonical name
    runs: tuple[str, ...] | None = None
    start_ms: int | None = None  # inclusive, on the millisecond the answer shows
    end_ms: int | None = None  # inclusive
    from_step: int | None = None
    to_step: int | None = None

    def fingerprint(self, uid: str) -> str:
        """A short hash of the workload and filters, so a cursor cannot be replayed against another query."""
        raw = json.dumps([uid, self.metrics, self.data_source, self.runs, self.start_ms, self.end_ms,
                          self.from_step, self.to_step])
        return hashlib.blake2s(raw.encode(), digest_size=6).hexdigest()


def split_list(value: str | None) -> tuple[str, ...] | None:
    """"a, b,,c" -> ("a", "b", "c"); None or only separators -> None (no filter)."""
    if value is None:
        return None
    items = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    return items or None


def data_source(value: str | None) -> str | None:
    """The canonical data_source for a client's value; 400 naming `data_source` if it is none we know."""
    if value is None or not value.strip():
        return None
    name = canonical(value)
    if name is None:
        raise invalid("data_source", f"{value!r} is not one of {', '.join(ACCEPTED)}")
    return name


def include(value: str | None) -> tuple[str, ...]:
    """Extra per-point fields the client asked for (run, source)."""
    items = split_list(value) or ()
    for item in items:
        if item not in INCLUDABLE:
            raise invalid("include", f"{item!r} is not one of {', '.join(INCLUDABLE)}")
    return tuple(f for f in INCLUDABLE if f in items)


def filters(*, metrics: str | None = None, data_source_: str | None = None, run: str | None = None,
            start: int | None = None, end: int | None = None, from_step: int | None = None,
            to_step: int | None = None) -> Filters:
    """Check the combination of filters (ranges the right way round); single values are checked by FastAPI."""
    if start is not None and end is not None and end < start:
        raise invalid("end", f"must not be before start ({end} < {start})")
    if from_step is not None and to_step is not None and to_step < from_step:
        raise invalid("to_step", f"must not be below from_step ({to_step} < {from_step})")
    return Filters(split_list(metrics), data_source(data_source_), split_list(run), start, end, from_step, to_step)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a page ended: the last point's series (by its sort key) and step."""

    key: SeriesKey
    step: int


def encode_cursor(fingerprint: str, pos: Position) -> str:
    raw = json.dumps([1, fingerprint, *pos.key, pos.step], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, fingerprint: str) -> Position:
    """The position in a cursor from `encode_cursor`; 400 naming `cursor` if it is not one, or not this query's."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        version, fp, metric, ds, source, run, step = raw
        ok = (version == 1 and all(isinstance(v, str) for v in (fp, metric, ds, source, run))
              and isinstance(step, int) and not isinstance(step, bool) and INT64_MIN <= step <= INT64_MAX)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        ok = False
    if not ok:
        raise invalid("cursor", "not a cursor returned by this API")
    if fp != fingerprint:
        raise invalid("cursor", "belongs to a query with other filters (keep every parameter but cursor unchanged)")
    return Position((metric, ds, source, run), step)


# ---- request limits (docs/api.md, Limits) -------------------------------------------------------------------------

MAX_DOWNSAMPLE = 10_000  # points per series a `downsample` answer may ask for
MAX_ANSWER_POINTS = 100_000  # points one bounded answer (a page, a downsampled view) holds at most
MAX_NAME = 253  # a path parameter (uid, namespace, name): Kubernetes' longest object name


def downsample_points(n: int, n_series: int) -> int:
    """Points per series for `downsample=n` over `n_series` series: n, lowered so the whole answer stays within
    MAX_ANSWER_POINTS; 400 naming `downsample` above MAX_DOWNSAMPLE or when even 4 per series would not fit."""
    if n > MAX_DOWNSAMPLE:
        raise invalid("downsample", f"must be at most {MAX_DOWNSAMPLE} points per series (got {n})")
    if n_series * n <= MAX_ANSWER_POINTS:
        return n
    per_series = MAX_ANSWER_POINTS // max(1, n_series)
    if per_series < 4:
        raise invalid("downsample", f"{n_series} series at 4 points each exceed the {MAX_ANSWER_POINTS} points one "
                      "answer may hold: select fewer metrics or runs")
    return per_series
