"""Schema building blocks the Workload spec and every source kind share (durations, globs, filters, errors).

A leaf module: it imports nothing of trainscope, so the sources and collector/spec.py both take from it without
importing each other.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class SpecError(ValueError):
    """An invalid Workload spec; `field` is the dotted path of the offending field (e.g. spec.sources[0].name)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_duration(text: str) -> float:
    """'30s', '1m30s', '500ms', '2h' -> seconds."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 500ms)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def globs(description: str) -> dict[str, Any]:
    """A bounded list of glob patterns (metric names), as the CRD and jsonschema both accept it."""
    return {"type": "array", "maxItems": 64, "description": description,
            "items": {"type": "string", "minLength": 1, "maxLength": 256}}


def exactly_one_of(a: str, b: str, *rules: dict[str, str]) -> dict[str, Any]:
    """Schema keywords saying a source block sets exactly one of two fields: `oneOf` for jsonschema (local mode and
    the operator's own check) and the same as a CEL rule for the cluster; extra CEL `rules` are appended."""
    return {"oneOf": [{"required": [a]}, {"required": [b]}],
            "x-kubernetes-validations": [{"rule": f"has(self.{a}) != has(self.{b})",
                                          "message": f"set exactly one of {a} or {b}"}, *rules]}


def metric_filter_schema() -> dict[str, Any]:
    """include/exclude glob lists, shared by the Workload and by sources that filter tags."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "include": globs("Glob patterns of metric names to keep (default: all)."),
            "exclude": globs("Glob patterns of metric names to drop (applied after include)."),
        },
    }


@dataclass(frozen=True, slots=True)
class MetricFilter:
    """include/exclude globs; an empty include keeps everything."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def allows(self, metric: str) -> bool:
        if self.include and not any(fnmatch.fnmatchcase(metric, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(metric, p) for p in self.exclude)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MetricFilter:
        d = d or {}
        return cls(tuple(d.get("include", ())), tuple(d.get("exclude", ())))
