"""Hypothesis over the Workload spec schema: whatever a user (or a fuzzer) writes, `parse_spec` answers with a
WorkloadSpec or a SpecError naming a field under `spec`, never another exception (a crash in validation would leave a
Workload "Pending" with a traceback in the operator's log instead of a message).

The specs are drawn from the schema itself (every kind's block, enums, patterns, bounds), with any subtree replaced,
now and then, by arbitrary JSON: values of the wrong type, NaN and huge numbers, odd strings, deep nesting.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainscope.collector.sources import REGISTRY
from trainscope.collector.spec import SpecError, WorkloadSpec, parse_spec, spec_schema

SCHEMA = spec_schema({kind: cls.schema for kind, cls in REGISTRY.items()})
REGEXY = ["(", ")", "(?P<loss>", "\\d+", "(?<=a)", "\\1", "a{1,99999}", "(?P<metric>\\w+)", "(?P<value>\\S+)", "+",
          "*", "[", "\\", "(?i)", "\x00", "\ud800", "é", "$"]

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                     st.sampled_from(["", "0", "30s", "0ms", "1e400s", "-1s", "99999999h", "a" * 300, "ns/x"]))
JUNK = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                    max_leaves=12)


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    parts = [st.text(max_size=schema.get("maxLength", 40) or 40)]
    if "pattern" in schema:
        parts.append(st.from_regex(schema["pattern"], fullmatch=True))
    parts.append(st.lists(st.sampled_from(REGEXY), min_size=1, max_size=6).map("".join))
    return st.one_of(*parts)


def from_schema(schema: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values shaped by `schema`, with arbitrary JSON mixed in at every level (one time in five)."""
    t = schema.get("type")
    if t == "object":
        props = schema.get("properties", {})
        required = [k for k in schema.get("required", []) if k in props]
        optional = [k for k in props if k not in required]
        extra = schema.get("additionalProperties")

        @st.composite
        def obj(draw: st.DrawFn) -> dict[str, Any]:
            keys = required + draw(st.lists(st.sampled_from(optional), max_size=3, unique=True)) if optional \
                else list(required)
            out = {k: draw(from_schema(props[k], depth + 1)) for k in keys}
            if isinstance(extra, dict):
                out.update(draw(st.dictionaries(st.text(max_size=8), from_schema(extra, depth + 1), max_size=2)))
            return out

        shaped: st.SearchStrategy[Any] = obj()
    elif t == "array":
        shaped = st.lists(from_schema(schema.get("items", {}), depth + 1), min_size=schema.get("minItems", 0),
                          max_size=min(schema.get("maxItems", 3), 3))
    elif t == "string":
        shaped = _string(schema)
    elif t == "integer":
        lo, hi = schema.get("minimum"), schema.get("maximum")
        shaped = st.one_of(st.integers(min_value=lo, max_value=hi), st.integers())
    elif t == "number":
        shaped = st.floats(allow_nan=True, allow_infinity=True)
    elif t == "boolean":
        shaped = st.booleans()
    else:
        shaped = JUNK
    return shaped if depth == 0 else st.one_of(shaped, shaped, shaped, shaped, JUNK)


def _check(spec: Any) -> None:
    try:
        parsed = parse_spec(spec)
    except SpecError as err:
        assert err.field == "spec" or err.field.startswith(("spec.", "spec[")), err.field
        assert err.message and isinstance(err.message, str)
        return
    assert isinstance(parsed, WorkloadSpec)
    assert parsed.sources and math.isfinite(parsed.poll_interval) and parsed.poll_interval > 0


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(from_schema(SCHEMA))
def test_parse_spec_raises_only_spec_errors_on_schema_shaped_input(spec: Any) -> None:
    _check(spec)


@settings(max_examples=200, deadline=None)
@given(JUNK)
def test_parse_spec_raises_only_spec_errors_on_any_json(spec: Any) -> None:
    _check(spec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(REGISTRY)), st.data())
def test_each_kind_block_alone(kind: str, data: st.DataObject) -> None:
    """One source of each kind, its block drawn from the kind's own schema: reaches the kind's own checks."""
    block = data.draw(from_schema(REGISTRY[kind].schema, depth=0))
    _check({"sources": [{kind: block}], "pollInterval": data.draw(st.sampled_from(["30s", "50ms", "1m30s"]))})
