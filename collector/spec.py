"""The Workload spec: its JSON schema (the CRD's openAPIV3Schema is built from it) and its parsed form.

One schema serves both the cluster (the CRD) and `trainscope local` / the operator's own check, so a bad spec
gets the same message, naming the field, wherever it comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import jsonschema

from trainscope.collector.health import HealthSpec
from trainscope.collector.schema import (  # noqa: F401  (re-exported: the names spec users know)
    DURATION_PATTERN,
    MetricFilter,
    SpecError,
    exactly_one_of,
    globs,
    metric_filter_schema,
    parse_duration,
)

SOURCE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MAX_SOURCES = 16
MIN_POLL_INTERVAL = 0.05  # seconds (the CRD's CEL rule says 50ms); below this a source would be polled in a tight loop
_PATTERN_HINTS = {
    DURATION_PATTERN: "is not a duration: use e.g. 30s, 5m, 1h30m, 500ms",
    SOURCE_NAME_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
}


def _duration_field(description: str) -> dict[str, Any]:
    return {"type": "string", "pattern": DURATION_PATTERN, "description": description}


def _poll_interval_schema() -> dict[str, Any]:
    return {"type": "string", "pattern": DURATION_PATTERN, "x-kubernetes-validations": [{
        # guarded: CEL's duration() throws on text the pattern already rejects
        "rule": f"!self.matches(r'{DURATION_PATTERN}') || duration(self) >= duration('50ms')",
        "message": "must be at least 50ms"}]}


def health_schema() -> dict[str, Any]:
    """`spec.health`: detector settings; every field is optional and defaults to measured values."""
    def obj(description: str, **props: Any) -> dict[str, Any]:
        return {"type": "object", "additionalProperties": False, "description": description, "properties": props}

    return obj(
        "Training health detection (docs/health.md).",
        metrics=globs("Metrics watched for non-finite values, spikes and divergence (default: the primary)."),
        stall=obj("Stalled: no new step for a while, while the run is not finished.",
                  after=_duration_field("Fixed threshold; default derived from the run's own step interval."),
                  factor={"type": "number", "minimum": 1, "maximum": 1000,
                          "description": "Derived threshold = factor x median seconds per step (default 10)."},
                  floor=_duration_field("Lower bound of the derived threshold (default 10m)."),
                  ceiling=_duration_field("Upper bound of the derived threshold (default 2h).")),
        spike=obj("A value far above the robust band of its recent values.",
                  window={"type": "integer", "minimum": 5, "maximum": 10000,
                          "description": "Recent values forming the band (default 50)."},
                  threshold={"type": "number", "exclusiveMinimum": 0, "maximum": 1000,
                             "description": "Robust standard deviations above the median (default 8)."},
                  minPoints={"type": "integer", "minimum": 3, "maximum": 10000,
                             "description": "Values needed before judging (default 20)."},
                  clearAfter={"type": "integer", "minimum": 1, "maximum": 100000,
                              "description": "In-band values that clear the condition (default 10)."}),
        rising=obj("Divergence: the metric rises steadily over a span of points.",
                   span={"type": "integer", "minimum": 0, "maximum": 100000,
                         "description": "Points judged (default 400; 0 turns it off; at least 8 otherwise)."},
                   minIncrease={"type": "number", "exclusiveMinimum": 0, "maximum": 1000,
                                "description": "Relative rise of the last quarter's median (default 0.25)."}),
        disagreement=obj("The same metric from two sources at the same step differs (off unless set).",
                         tolerance={"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                    "description": "Relative difference allowed."}),
    )


def spec_schema(source_schemas: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The openAPIV3/JSON schema of `spec`, with one optional property per registered source kind."""
    source_item: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "description": "One metrics source: an optional name plus exactly one kind block.",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": SOURCE_NAME_PATTERN,
                     "description": "Unique within the Workload; defaults to the kind."},
            "pollInterval": {**_poll_interval_schema(), "description": "This source's own poll interval (e.g. a "
                             "hosted job's status every 5m); default spec.pollInterval."},
            **{kind: schema for kind, schema in sorted(source_schemas.items())},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["sources"],
        "properties": {
            "selector": {
                "type": "object",
                "description": "Label selector of the training job's pods (used by sources that read pods).",
                "additionalProperties": False,
                "properties": {
                    "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "matchExpressions": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["key", "operator"],
                            "properties": {
                                "key": {"type": "string"},
                                "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                                "values": {"type": "array", "items": {"type": "string"}},
                            },
                        },
                    },
                },
            },
            "sources": {"type": "array", "minItems": 1, "maxItems": MAX_SOURCES, "items": source_item,
                        "description": "Where the run's metrics live."},
            "totalSteps": {"type": "integer", "minimum": 1, "description": "Steps in the whole run (progress, ETA)."},
            "pollInterval": {**_poll_interval_schema(), "default": "30s",
                             "description": "How often each source is polled, e.g. 30s, 1m."},
            "primaryMetric": {"type": "string", "minLength": 1, "maxLength": 256,
                              "description": "Metric shown as Loss; default: a loss-like name is detected."},
            "metrics": {**metric_filter_schema(), "description": "Which metrics are stored."},
            "prometheus": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"metrics": globs("Metrics exported as gauges (default: the primary metric).")},
            },
            "health": health_schema(),
            "retainData": {"type": "boolean", "default": True,
                           "description": "Keep stored points after the Workload is deleted."},
            "jobRef": {
                "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "name"],
                "description": "The training job this Workload follows (same namespace): its state drives the "
                               "phase, its pods are the logs source's default pods (docs/following-jobs.md).",
                "properties": {
                    "apiVersion": {"type": "string", "minLength": 1, "maxLength": 253,
                                   "pattern": r"^([a-z0-9.-]+/)?v[0-9]+[a-z0-9]*$",
                                   "description": "e.g. batch/v1, kubeflow.org/v1, jobset.x-k8s.io/v1alpha2."},
                    "kind": {"type": "string", "minLength": 1, "maxLength": 63, "pattern": r"^[A-Z][A-Za-z0-9]*$",
                             "description": "e.g. Job, PyTorchJob, MPIJob, TrainJob, JobSet, RayJob."},
                    "name": {"type": "string", "minLength": 1, "maxLength": 253,
                             "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "description": "The job's name."},
                },
            },
            "retainGaugesFor": {**_duration_field("How long the gauges of an ended job keep their final values "
                                                  "(default 10m)."), "default": "10m"},
        },
    }


@dataclass(frozen=True, slots=True)
class SourceSpec:
    """One validated `spec.sources[i]`: its name, kind and the kind's config block."""

    name: str
    kind: str
    config: dict[str, Any]
    poll_interval: float | None = None  # seconds; None: the Workload's


@dataclass(frozen=True, slots=True)
class WorkloadSpec:
    """A validated Workload spec."""

    sources: tuple[SourceSpec, ...]
    poll_interval: float = 30.0
    total_steps: int | None = None
    primary_metric: str | None = None
    metrics: MetricFilter = field(default_factory=MetricFilter)
    prometheus_metrics: tuple[str, ...] = ()
    retain_data: bool = True
    selector: dict[str, Any] = field(default_factory=dict)
    health: HealthSpec = field(default_factory=HealthSpec)
    job_ref: JobRef | None = None
    retain_gauges_for: float = 600.0


@dataclass(frozen=True, slots=True)
class JobRef:
    """`spec.jobRef`: the training job, in the Workload's namespace."""

    api_version: str
    kind: str
    name: str


def _field_path(path: Any) -> str:
    out = "spec"
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _explain(err: jsonschema.ValidationError, kinds: set[str]) -> SpecError:
    """Turn a JSON-schema error into a SpecError that names the field and says what is wrong in plain words."""
    path = list(err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            hint = f" (source kinds: {', '.join(sorted(kinds))})" if len(path) == 2 and path[0] == "sources" else ""
            return SpecError(_field_path([*path, extra[0]]), "unknown field" + hint)
    if err.validator == "required":
        missing = [r for r in err.validator_value if r not in err.instance]
        return SpecError(_field_path([*path, missing[0]]), "required field is missing")
    if err.validator == "pattern" and err.validator_value in _PATTERN_HINTS:
        return SpecError(_field_path(path), f"{err.instance!r} {_PATTERN_HINTS[err.validator_value]}")
    if err.validator in ("maxItems", "minItems"):
        bound = "at most" if err.validator == "maxItems" else "at least"
        return SpecError(_field_path(path), f"must have {bound} {err.validator_value} items (got {len(err.instance)})")
    if err.validator in ("oneOf", "anyOf"):
        rules = err.schema.get("x-kubernetes-validations") or []
        if rules:
            return SpecError(_field_path(path), rules[0]["message"])
    return SpecError(_field_path(path), err.message)


def parse_spec(spec: Any, source_schemas: dict[str, dict[str, Any]] | None = None) -> WorkloadSpec:
    """Validate a Workload `spec` dict and parse it; raises SpecError naming the first bad field."""
    from trainscope.collector.sources import REGISTRY

    if source_schemas is None:
        source_schemas = {kind: cls.schema for kind, cls in REGISTRY.items()}
    if not isinstance(spec, dict):
        raise SpecError("spec", "must be an object")
    validator = jsonschema.Draft202012Validator(spec_schema(source_schemas))
    errors = sorted(validator.iter_errors(spec), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise _explain(errors[0], set(source_schemas))
    kinds = set(source_schemas)
    sources: list[SourceSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(spec["sources"]):
        present = sorted(k for k in item if k in kinds)
        if len(present) != 1:
            raise SpecError(f"spec.sources[{i}]", "must set exactly one source kind, one of: "
                            + ", ".join(sorted(kinds)) + (f" (got {', '.join(present)})" if present else ""))
        kind = present[0]
        name = item.get("name", kind)
        if name in seen:
            raise SpecError(f"spec.sources[{i}].name", f"duplicate source name {name!r}: give each source a name")
        seen.add(name)
        own = parse_duration(item["pollInterval"]) if "pollInterval" in item else None
        if own is not None and own < MIN_POLL_INTERVAL:
            raise SpecError(f"spec.sources[{i}].pollInterval", f"must be at least {MIN_POLL_INTERVAL:g}s")
        check = getattr(REGISTRY.get(kind), "check_config", None)
        for where, problem in check(item[kind]) if check is not None else ():
            raise SpecError(f"spec.sources[{i}].{kind}.{where}", problem)
        sources.append(SourceSpec(name=name, kind=kind, config=dict(item[kind]), poll_interval=own))
    poll_interval = parse_duration(spec.get("pollInterval", "30s"))
    if poll_interval < MIN_POLL_INTERVAL:
        raise SpecError("spec.pollInterval", f"must be at least {MIN_POLL_INTERVAL:g}s (got {spec['pollInterval']!r})")
    return WorkloadSpec(
        sources=tuple(sources),
        poll_interval=poll_interval,
        total_steps=spec.get("totalSteps"),
        primary_metric=spec.get("primaryMetric"),
        metrics=MetricFilter.from_dict(spec.get("metrics")),
        prometheus_metrics=tuple(spec.get("prometheus", {}).get("metrics", ())),
        retain_data=spec.get("retainData", True),
        selector=dict(spec.get("selector", {})),
        health=_health(spec.get("health")),
        job_ref=JobRef(spec["jobRef"]["apiVersion"], spec["jobRef"]["kind"], spec["jobRef"]["name"])
        if "jobRef" in spec else None,
        retain_gauges_for=parse_duration(spec.get("retainGaugesFor", "10m")),
    )


def _health(d: dict[str, Any] | None) -> HealthSpec:
    """Cross-field checks the schema cannot say, each naming its field."""
    health = HealthSpec.from_dict(d, parse_duration)
    if 0 < health.rising_span < 8:
        raise SpecError("spec.health.rising.span", "must be 0 (off) or at least 8")
    if health.spike_min_points > health.spike_window:
        raise SpecError("spec.health.spike.minPoints", f"must not exceed spike.window ({health.spike_window})")
    if health.stall_floor > health.stall_ceiling:
        raise SpecError("spec.health.stall.floor", "must not exceed stall.ceiling")
    return health
