"""The Workload CRD: generated file up to date, structural, and validating the same specs as parse_spec.

No API server can run here, so "the cluster path" is emulated: prune unknown fields like apiextensions v1,
validate with the CRD's openAPIV3Schema (jsonschema Draft 4 = OpenAPI 3.0 semantics) and evaluate every
`x-kubernetes-validations` rule with cel-python on the node it sits on. What this cannot show: CEL cost limits,
Kubernetes' own CEL library extensions, defaulting, and kubectl's strict field validation.
"""

from __future__ import annotations

import copy
import functools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from celpy import celtypes

from trainscope.collector.spec import DURATION_PATTERN, SpecError, metric_filter_schema, parse_spec
from trainscope.operator import crd as crdmod
from trainscope.operator.crd import (
    API_VERSION,
    CRD_FILE,
    HELM_CRD_FILE,
    REGENERATE,
    StructuralSchemaError,
    build_crd,
    crd_yaml,
    registry_schemas,
    status_schema,
    to_structural,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

# ---------------------------------------------------------------------------------------------------------------
# Helpers: a structural-schema checker, pruning, schema + CEL validation as the API server would do it.
# ---------------------------------------------------------------------------------------------------------------

K8S_KEYS = {
    "description", "type", "format", "title", "default", "maximum", "exclusiveMaximum", "minimum",
    "exclusiveMinimum", "maxLength", "minLength", "pattern", "maxItems", "minItems", "multipleOf", "enum",
    "maxProperties", "minProperties", "required", "items", "allOf", "oneOf", "anyOf", "not", "properties",
    "additionalProperties", "externalDocs", "example", "nullable", "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-embedded-resource", "x-kubernetes-int-or-string", "x-kubernetes-list-map-keys",
    "x-kubernetes-list-type", "x-kubernetes-map-type", "x-kubernetes-validations",
}
OPENAPI_TYPES = {"object", "array", "string", "integer", "number", "boolean"}
JUNCTOR_FORBIDDEN = {"description", "type", "default", "additionalProperties", "nullable"}


def structural_problems(node: Any, path: str = "", *, in_junctor: bool = False) -> list[str]:
    """The main structural-schema rules of apiextensions.k8s.io/v1 (and a few other CRD schema rules)."""
    problems: list[str] = []
    if not isinstance(node, dict):
        return [f"{path}: schema is not an object"]
    for key in node:
        if key not in K8S_KEYS:
            problems.append(f"{path}: keyword {key!r} is not part of a CRD schema")
    untyped_ok = node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
    if not in_junctor:
        if "type" not in node and not untyped_ok:
            problems.append(f"{path}: no type")
        if "type" in node and node["type"] not in OPENAPI_TYPES:
            problems.append(f"{path}: type {node['type']!r}")
    else:
        for key in JUNCTOR_FORBIDDEN & set(node):
            problems.append(f"{path}: {key} inside allOf/anyOf/oneOf/not")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: additionalProperties beside properties")
    if "additionalProperties" in node and not isinstance(node["additionalProperties"], dict):
        problems.append(f"{path}: additionalProperties must be a schema")
    if node.get("uniqueItems"):
        problems.append(f"{path}: uniqueItems: true is forbidden")
    if node.get("x-kubernetes-preserve-unknown-fields") is False:
        problems.append(f"{path}: x-kubernetes-preserve-unknown-fields must be true or absent")
    if "properties" in node and node.get("type", "object") != "object":
        problems.append(f"{path}: properties on a non-object")
    if "items" in node and node.get("type", "array") != "array":
        problems.append(f"{path}: items on a non-array")
    if "default" in node:
        try:
            jsonschema.Draft4Validator(_plain(node)).validate(node["default"])
        except jsonschema.ValidationError as e:
            problems.append(f"{path}: default does not validate: {e.message}")
    for rule in node.get("x-kubernetes-validations", []):
        if not rule.get("rule") or not rule.get("message") or "\n" in rule["message"]:
            problems.append(f"{path}: x-kubernetes-validations entry needs a rule and a one-line message")
        else:
            try:
                _program(rule["rule"])
            except Exception as e:  # celpy's parse errors have several types
                problems.append(f"{path}: CEL rule does not compile: {e}")
    if node.get("x-kubernetes-list-type") == "map":
        item = node.get("items", {})
        for key in node.get("x-kubernetes-list-map-keys", []):
            if key not in item.get("required", []) and "default" not in item.get("properties", {}).get(key, {}):
                problems.append(f"{path}: list-map key {key!r} must be required or defaulted")
    for name, sub in node.get("properties", {}).items():
        problems += structural_problems(sub, f"{path}.{name}", in_junctor=in_junctor)
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}.*", in_junctor=in_junctor)
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]", in_junctor=in_junctor)
    for junctor in ("allOf", "anyOf", "oneOf"):
        for i, sub in enumerate(node.get(junctor, [])):
            if junctor == "anyOf" and node.get("x-kubernetes-int-or-string"):
                continue  # the allowed int-or-string pattern
            problems += structural_problems(sub, f"{path}.{junctor}[{i}]", in_junctor=True)
    if "not" in node:
        problems += structural_problems(node["not"], f"{path}.not", in_junctor=True)
    return problems


def _plain(node: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in node.items() if k != "default"}


@functools.cache
def _program(rule: str) -> Any:
    env = celpy.Environment()
    return env.program(env.compile(rule))


def cel_eval(rule: str, value: Any) -> bool:
    """Evaluate one CEL rule with `self` bound to `value` (JSON data converted by celpy.json_to_cel)."""
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    return isinstance(result, celtypes.BoolType) and bool(result)


def field_path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def prune(value: Any, schema: dict[str, Any], path: str, dropped: list[str]) -> Any:
    """Drop fields the schema does not specify, like the API server does for apiextensions v1 CRDs."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        addl = schema.get("additionalProperties")
        keep_unknown = schema.get("x-kubernetes-preserve-unknown-fields", False)
        out = {}
        for key, sub in value.items():
            if key in props:
                out[key] = prune(sub, props[key], f"{path}.{key}", dropped)
            elif isinstance(addl, dict):
                out[key] = prune(sub, addl, f"{path}.{key}", dropped)
            elif keep_unknown:
                out[key] = sub
            else:
                dropped.append(f"{path}.{key}")
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(v, schema["items"], f"{path}[{i}]", dropped) for i, v in enumerate(value)]
    return value


def cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[tuple[str, str]]:
    """Every x-kubernetes-validations rule on the nodes present in `value`, as (field, message) failures."""
    out: list[tuple[str, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        if not cel_eval(rule["rule"], value):
            out.append((path, rule["message"]))
    if isinstance(value, dict):
        for key, sub in value.items():
            sub_schema = schema.get("properties", {}).get(key)
            if sub_schema is None and isinstance(schema.get("additionalProperties"), dict):
                sub_schema = schema["additionalProperties"]
            if sub_schema is not None:
                out += cel_errors(sub_schema, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, sub in enumerate(value):
            out += cel_errors(schema["items"], sub, f"{path}[{i}]")
    return out


def openapi_schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def cluster_check(obj: dict[str, Any], crd: dict[str, Any]) -> tuple[list[tuple[str, str]], list[str], dict]:
    """(errors as (field, message), pruned field paths, the pruned object) for a Workload object."""
    root = openapi_schema(crd)
    obj = copy.deepcopy(obj)
    dropped: list[str] = []
    for part in ("spec", "status"):
        if part in obj:
            obj[part] = prune(obj[part], root["properties"][part], part, dropped)
    errors: list[tuple[str, str]] = []
    for err in jsonschema.Draft4Validator(root).iter_errors(obj):
        parts = list(err.absolute_path)
        if err.validator == "required":
            parts += [r for r in err.validator_value if r not in err.instance][:1]
        errors.append((field_path(parts), err.message))
    for part in ("spec", "status"):
        if part in obj:
            errors += cel_errors(root["properties"][part], obj[part], part)
    return errors, dropped, obj


def workload(spec: dict[str, Any], name: str = "run-1") -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "Workload", "metadata": {"name": name, "namespace": "ml"},
            "spec": spec}


# ---------------------------------------------------------------------------------------------------------------
# A registry for table tests: the real one plus a second kind, and a stand-in with the real TensorBoard shape.
# ---------------------------------------------------------------------------------------------------------------

OTHER = {"type": "object", "additionalProperties": False, "properties": {"project": {"type": "string"}}}
TB_LIKE = {
    "type": "object",
    "additionalProperties": False,
    "description": "TensorBoard event files (logDir) or a TensorBoard server (url).",
    "properties": {
        "logDir": {"type": "string", "minLength": 1},
        "url": {"type": "string", "pattern": "^https?://"},
        "tags": metric_filter_schema(),
        "timeout": {"type": "string", "pattern": DURATION_PATTERN, "default": "10s"},
    },
    "x-kubernetes-validations": [{"rule": "has(self.logDir) != has(self.url)",
                                  "message": "set exactly one of logDir or url"}],
}
TABLE_SCHEMAS = {**registry_schemas(), "other": OTHER}
TB = {"logDir": "/runs/a"}
TB2 = {"logDir": "/runs/b"}


@pytest.fixture(scope="module")
def table_crd() -> dict[str, Any]:
    return build_crd(TABLE_SCHEMAS)


# ---------------------------------------------------------------------------------------------------------------
# The generated file, its copies, the module entry point.
# ---------------------------------------------------------------------------------------------------------------


def test_committed_crd_is_generated_output():
    assert CRD_FILE.exists(), f"{CRD_FILE} is missing: run `{REGENERATE}`"
    assert CRD_FILE.read_text(encoding="utf-8") == crd_yaml(), (
        f"{CRD_FILE.relative_to(ROOT)} is stale (the spec or a source schema changed): run `{REGENERATE}`")
    assert yaml.safe_load(CRD_FILE.read_text(encoding="utf-8")) == build_crd()


def test_helm_chart_crd_is_identical_copy():
    assert HELM_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), (
        f"{HELM_CRD_FILE.relative_to(ROOT)} differs from {CRD_FILE.relative_to(ROOT)}: run `{REGENERATE}`")


def test_module_prints_the_crd():
    out = subprocess.run([sys.executable, "-m", "trainscope.operator.crd"], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out == crd_yaml()


def test_main_writes_output(tmp_path):
    target = tmp_path / "sub" / "crd.yaml"
    assert crdmod.main(["-o", str(target)]) == 0
    assert yaml.safe_load(target.read_text()) == build_crd()


# ---------------------------------------------------------------------------------------------------------------
# Shape of the CRD.
# ---------------------------------------------------------------------------------------------------------------


def test_names_scope_and_version():
    crd = build_crd()
    spec = crd["spec"]
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["metadata"]["name"] == "workloads.trainscope.io"
    assert spec["group"] == "trainscope.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "Workload" and spec["names"]["plural"] == "workloads"
    assert spec["names"]["singular"] == "workload"
    [version] = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}


def test_short_names_and_categories_do_not_collide_with_kueue():
    names = build_crd()["spec"]["names"]
    # kueue.x-k8s.io's Workload: shortNames [wl], no categories (config/components/crd/bases, kueue v0.10).
    assert names["shortNames"] and "wl" not in names["shortNames"]
    assert "workload" not in names["shortNames"] and "workloads" not in names["shortNames"]
    assert "trainscope" in names["categories"]
    assert "all" not in names["categories"]  # `kubectl get all` must not list every run


def test_schema_is_structural():
    assert structural_problems(openapi_schema(build_crd()), "openAPIV3Schema") == []


def test_schema_is_structural_with_more_kinds():
    crd = build_crd({**TABLE_SCHEMAS, "tensorboard": TB_LIKE})
    assert structural_problems(openapi_schema(crd), "openAPIV3Schema") == []


def test_root_metadata_is_unrestricted():
    root = openapi_schema(build_crd())
    assert root["properties"]["metadata"] == {"type": "object"}
    assert root["required"] == ["spec"]


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in json_path.strip(".").split("."):
        if node is None:
            return None
        if part == "creationTimestamp" and node.get("properties", {}) == {} and node.get("type") == "object":
            return {"type": "string", "format": "date-time"}  # metadata is ObjectMeta, not in our schema
        node = node.get("properties", {}).get(part)
    return node


def test_printer_columns_point_at_schema_fields():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert list(columns)[:5] == ["Phase", "Step", "Progress", "Loss", "ETA"]
    assert list(columns)[-1] == "Age" and columns["Age"]["type"] == "date"
    root = openapi_schema(crd)
    for col in columns.values():
        node = _resolve(root, col["jsonPath"])
        assert node is not None, f"column {col['name']}: {col['jsonPath']} is not in the schema"
        if col["type"] == "integer":
            assert node.get("type") == "integer", col
        elif col["type"] == "number":
            # Loss may be "NaN": an untyped (preserve-unknown) node carries number-or-string.
            assert node.get("type") in ("number", "integer") or node.get("x-kubernetes-preserve-unknown-fields")
        elif col["type"] == "string":
            assert node.get("type") == "string", col


def table_row(crd: dict, obj: dict) -> dict[str, str]:
    """The cells `kubectl get` shows for `obj`, as the API server's table convertor fills them
    (apiextensions-apiserver pkg/registry/customresource/tableconvertor/tableconvertor.go): the jsonPath's value,
    and <none> when it is missing or not of the column's type (a string in a number column is dropped)."""
    row = {}
    for col in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        value: Any = obj
        for part in col["jsonPath"].strip(".").split("."):
            value = value.get(part) if isinstance(value, dict) else None
        ok = {"integer": lambda v: isinstance(v, int), "number": lambda v: isinstance(v, int | float),
              "string": lambda v: isinstance(v, str), "date": lambda v: isinstance(v, str)}[col["type"]]
        row[col["name"]] = "<none>" if value is None or isinstance(value, bool) or not ok(value) else str(value)
    return row


def test_a_nan_loss_shows_in_kubectl_get():
    """The Loss column reads the string status.lossText: a NaN or infinite loss shows as such, never <none>."""
    from trainscope.operator.status import metric_text, metric_value

    crd = build_crd()
    for value, shown in ((math.nan, "NaN"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (1.23456789, "1.23457")):
        obj = {"metadata": {"creationTimestamp": "2025-01-02T03:04:05Z"},
               "status": {"phase": "Degraded", "step": 10,
                          "primaryMetric": {"name": "loss", "value": metric_value(value), "step": 10},
                          "lossText": metric_text(value)}}
        assert table_row(crd, obj)["Loss"] == shown
        # the number column it replaces would have dropped the string
        number_column = {**crd, "spec": {**crd["spec"], "versions": [{"additionalPrinterColumns": [
            {"name": "Loss", "type": "number", "jsonPath": ".status.primaryMetric.value"}]}]}}
        assert table_row(number_column, obj)["Loss"] == ("<none>" if not math.isfinite(value) else "1.23457")


def test_status_schema_accepts_what_the_operator_writes():
    status = {
        "observedGeneration": 3,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Collecting", "message": "1/1 source(s)",
                        "lastTransitionTime": "2025-01-02T03:04:05Z"}],
        "phase": "Collecting", "runState": "running", "step": 4200, "totalSteps": 10000, "progress": 42.0,
        "throughput": 3.512, "eta": "27m", "etaSeconds": 1651,
        "primaryMetric": {"name": "train/loss", "value": 1.2345, "step": 4200},
        "latest": {"train/loss": 1.2345, "grad_norm": "NaN", "lr": 0.0003, "scale": "Infinity"},
        "lastPointTime": "2025-01-02T03:04:00Z", "lastUpdateTime": "2025-01-02T03:04:05Z",
        "sources": [{"name": "tensorboard", "kind": "tensorboard", "state": "Healthy", "points": 8400,
                     "lastSuccessTime": "2025-01-02T03:04:05Z", "lagSeconds": 5, "runState": "running",
                     "notes": ["sampled"], "skipped": {"non-scalar": 3}, "someFutureField": 1}],
        "someFutureField": {"x": 1},
    }
    obj = {**workload({"sources": [{"tensorboard": TB}]}), "status": status}
    errors, dropped, _ = cluster_check(obj, build_crd())
    assert errors == []
    assert dropped == []  # status keeps unknown fields: a newer operator can add some


@pytest.mark.parametrize(("status", "field"), [
    ({"phase": "Running"}, "status.phase"),
    ({"progress": "42%"}, "status.progress"),
    ({"step": "12"}, "status.step"),
    ({"conditions": [{"type": "Ready", "status": "Yes"}]}, "status.conditions[0].status"),
    ({"conditions": [{"status": "True"}]}, "status.conditions[0].type"),
    ({"latest": {f"m{i}": 1.0 for i in range(crdmod.MAX_LATEST_METRICS + 1)}}, "status.latest"),
])
def test_status_schema_rejects(status, field):
    obj = {**workload({"sources": [{"tensorboard": TB}]}), "status": status}
    errors, _, _ = cluster_check(obj, build_crd())
    assert field in [f for f, _ in errors], errors


def test_status_phases():
    assert status_schema()["properties"]["phase"]["enum"] == ["Pending", "Collecting", "Succeeded", "Failed",
                                                              "Degraded", "Suspended"]


def test_cel_rules_are_built_from_the_registry():
    crd = build_crd({"tensorboard": {"type": "object"}, "wandb": {"type": "object"}, "swanlab": {"type": "object"}})
    sources = openapi_schema(crd)["properties"]["spec"]["properties"]["sources"]
    [item_rule] = sources["items"]["x-kubernetes-validations"]
    assert item_rule["rule"] == "[has(self.swanlab), has(self.tensorboard), has(self.wandb)].filter(x, x).size() == 1"
    assert "swanlab, tensorboard, wandb" in item_rule["message"]
    assert "self.exists_one" in sources["x-kubernetes-validations"][0]["rule"]


def test_source_schema_rules_are_kept_after_the_one_kind_rule():
    crd = build_crd({"tensorboard": TB_LIKE})
    item = openapi_schema(crd)["properties"]["spec"]["properties"]["sources"]["items"]
    tb = item["properties"]["tensorboard"]
    assert tb["x-kubernetes-validations"] == TB_LIKE["x-kubernetes-validations"]
    assert "additionalProperties" not in tb
    assert tb["properties"]["timeout"]["default"] == "10s"


def test_bad_kind_names_are_refused():
    with pytest.raises(ValueError, match="lowercase word"):
        build_crd({"tensor-board": {"type": "object"}})
    with pytest.raises(ValueError, match="CEL keyword"):
        build_crd({"namespace": {"type": "object"}})


# ---------------------------------------------------------------------------------------------------------------
# to_structural
# ---------------------------------------------------------------------------------------------------------------


def test_to_structural_drops_closed_objects_and_annotations():
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$comment": "x", "type": "object",
              "additionalProperties": False, "examples": [{}],
              "properties": {"a": {"type": "string", "deprecated": True}}}
    assert to_structural(schema) == {"type": "object", "properties": {"a": {"type": "string"}}}


def test_to_structural_maps_and_open_objects():
    assert to_structural({"type": "object", "additionalProperties": {"type": "integer"}}) == {
        "type": "object", "additionalProperties": {"type": "integer"}}
    assert to_structural({"type": "object", "additionalProperties": True, "properties": {"a": {"type": "string"}}}) \
        == {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {"type": "string"}}}
    with pytest.raises(StructuralSchemaError, match="mutually exclusive"):
        to_structural({"type": "object", "properties": {"a": {"type": "string"}},
                       "additionalProperties": {"type": "string"}})


def test_to_structural_json_schema_2020_spellings():
    assert to_structural({"const": "x", "type": "string"}) == {"enum": ["x"], "type": "string"}
    assert to_structural({"type": "number", "exclusiveMinimum": 0}) == {
        "type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert to_structural({"type": "number", "exclusiveMaximum": 1, "minimum": 0}) == {
        "type": "number", "maximum": 1, "exclusiveMaximum": True, "minimum": 0}
    assert to_structural({"type": ["string", "null"]}) == {"type": "string", "nullable": True}
    assert to_structural({"type": "number", "exclusiveMinimum": True, "minimum": 0}) == {
        "type": "number", "exclusiveMinimum": True, "minimum": 0}


def test_to_structural_infers_types():
    assert to_structural({"properties": {"a": {"items": {"type": "string"}}}}) == {
        "type": "object", "properties": {"a": {"type": "array", "items": {"type": "string"}}}}


@pytest.mark.parametrize(("schema", "match"), [
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/a"}}}, r"a: '\$ref'"),
    ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
    ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "if": {}, "then": {}}, "'if'"),
    ({"type": "array", "items": [{"type": "string"}]}, "items must be one schema"),
    ({"type": ["string", "integer"]}, "one type"),
    ({"type": "null"}, "nullable"),
    ({"type": "string", "pattern": "^(?!x)"}, "RE2"),
    ({"type": "string", "frobnicate": 1}, "unknown schema keyword"),
    ({"enum": ["a"]}, "needs a type"),
    ({"type": "number", "exclusiveMinimum": 0, "minimum": 1}, "keep one"),
])
def test_to_structural_refuses(schema, match):
    with pytest.raises(StructuralSchemaError, match=match):
        to_structural(schema)


def test_to_structural_junctors():
    schema = {
        "type": "object",
        "properties": {"logDir": {"type": "string"}, "url": {"type": "string"}},
        "oneOf": [{"required": ["logDir"], "description": "files"},
                  {"required": ["url"], "type": "object", "properties": {"url": {"type": "string", "minLength": 1}}}],
    }
    out = to_structural(schema)
    assert out["oneOf"] == [{"required": ["logDir"]}, {"required": ["url"], "properties": {"url": {"minLength": 1}}}]
    assert structural_problems(out) == []
    with pytest.raises(StructuralSchemaError, match="specified outside"):
        to_structural({"type": "object", "properties": {}, "anyOf": [{"properties": {"x": {"minLength": 1}}}]})
    with pytest.raises(StructuralSchemaError, match="not allowed inside"):
        to_structural({"type": "object", "oneOf": [{"type": "string"}]})
    with pytest.raises(StructuralSchemaError, match="not allowed inside"):
        to_structural({"type": "string", "not": {"default": "x"}})


def test_to_structural_int_or_string():
    out = to_structural({"anyOf": [{"type": "integer"}, {"type": "string"}]})
    assert out == {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
    assert structural_problems(out) == []


def test_to_structural_does_not_mutate_its_input():
    schema = {"type": "object", "additionalProperties": False, "properties": {"a": {"const": 1, "type": "integer"}}}
    before = copy.deepcopy(schema)
    to_structural(schema)
    assert schema == before


# ---------------------------------------------------------------------------------------------------------------
# Examples validate on both paths.
# ---------------------------------------------------------------------------------------------------------------


def _example_docs() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text(encoding="utf-8"))):
            if isinstance(doc, dict) and doc.get("kind") == "Workload":
                docs.append((f"{path.name}#{i}", doc))
    return docs


EXAMPLE_DOCS = _example_docs()


def test_there_are_examples():
    names = {name.split("#")[0] for name, _ in EXAMPLE_DOCS}
    assert {"tensorboard-logdir.yaml", "tensorboard-server.yaml", "full.yaml"} <= names


@pytest.mark.parametrize(("name", "doc"), EXAMPLE_DOCS, ids=[n for n, _ in EXAMPLE_DOCS])
def test_example_is_valid(name, doc):
    assert doc["apiVersion"] == API_VERSION
    assert doc["metadata"].get("name") and doc["metadata"].get("namespace")
    schemas = registry_schemas()
    errors, dropped, _ = cluster_check(doc, build_crd())
    assert errors == [], f"{name}: {errors}"
    # Nothing the example sets may be silently pruned, except inside a kind whose schema is still a stub.
    stubs = [k for k, s in schemas.items() if not s.get("properties")]
    real_drops = [d for d in dropped if not any(f".{k}." in d for k in stubs)]
    assert real_drops == [], f"{name}: fields not in the CRD (pruned in a cluster): {real_drops}"
    parsed = parse_spec(doc["spec"])
    assert parsed.sources


# ---------------------------------------------------------------------------------------------------------------
# Invalid specs: the CRD (schema + CEL) and parse_spec reject them, naming the field.
# ---------------------------------------------------------------------------------------------------------------

SRC = {"sources": [{"tensorboard": TB}]}

INVALID: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, spec, field named by the cluster, field named by parse_spec)
    ("two-kinds", {"sources": [{"tensorboard": TB, "other": {}}]}, "spec.sources[0]", "spec.sources[0]"),
    ("no-kind", {"sources": [{"name": "train"}]}, "spec.sources[0]", "spec.sources[0]"),
    ("empty-source", {"sources": [{}]}, "spec.sources[0]", "spec.sources[0]"),
    ("unknown-kind", {"sources": [{"nosuchkind": {"run": "x"}}]}, "spec.sources[0]", "spec.sources[0].nosuchkind"),
    ("duplicate-default-names", {"sources": [{"tensorboard": TB}, {"tensorboard": TB2}]},
     "spec.sources", "spec.sources[1].name"),
    ("duplicate-explicit-names", {"sources": [{"name": "a", "tensorboard": TB}, {"name": "a", "other": {}}]},
     "spec.sources", "spec.sources[1].name"),
    ("name-equals-default-of-another", {"sources": [{"name": "other", "tensorboard": TB}, {"other": {}}]},
     "spec.sources", "spec.sources[1].name"),
    ("bad-name", {"sources": [{"name": "Train_1", "tensorboard": TB}]}, "spec.sources[0].name",
     "spec.sources[0].name"),
    ("long-name", {"sources": [{"name": "a" * 64, "tensorboard": TB}]}, "spec.sources[0].name",
     "spec.sources[0].name"),
    ("missing-sources", {"totalSteps": 10}, "spec.sources", "spec.sources"),
    ("empty-sources", {"sources": []}, "spec.sources", "spec.sources"),
    ("too-many-sources", {"sources": [{"name": f"s{i}", "tensorboard": TB} for i in range(17)]},
     "spec.sources", "spec.sources"),
    ("sources-not-a-list", {"sources": {"tensorboard": TB}}, "spec.sources", "spec.sources"),
    ("source-not-an-object", {"sources": ["tensorboard"]}, "spec.sources[0]", "spec.sources[0]"),
    ("poll-no-unit", {**SRC, "pollInterval": "30"}, "spec.pollInterval", "spec.pollInterval"),
    ("poll-days", {**SRC, "pollInterval": "1d"}, "spec.pollInterval", "spec.pollInterval"),
    ("poll-spaces", {**SRC, "pollInterval": "1m 30s"}, "spec.pollInterval", "spec.pollInterval"),
    ("poll-number", {**SRC, "pollInterval": 30}, "spec.pollInterval", "spec.pollInterval"),
    ("total-steps-zero", {**SRC, "totalSteps": 0}, "spec.totalSteps", "spec.totalSteps"),
    ("total-steps-negative", {**SRC, "totalSteps": -100}, "spec.totalSteps", "spec.totalSteps"),
    ("total-steps-string", {**SRC, "totalSteps": "1000"}, "spec.totalSteps", "spec.totalSteps"),
    ("total-steps-float", {**SRC, "totalSteps": 10.5}, "spec.totalSteps", "spec.totalSteps"),
    ("retain-data-string", {**SRC, "retainData": "yes"}, "spec.retainData", "spec.retainData"),
    ("primary-metric-empty", {**SRC, "primaryMetric": ""}, "spec.primaryMetric", "spec.primaryMetric"),
    ("metrics-include-string", {**SRC, "metrics": {"include": "loss"}}, "spec.metrics.include",
     "spec.metrics.include"),
    ("metrics-empty-glob", {**SRC, "metrics": {"exclude": [""]}}, "spec.metrics.exclude[0]",
     "spec.metrics.exclude[0]"),
    ("prometheus-not-a-list", {**SRC, "prometheus": {"metrics": "loss"}}, "spec.prometheus.metrics",
     "spec.prometheus.metrics"),
    ("selector-bad-operator", {**SRC, "selector": {"matchExpressions": [{"key": "app", "operator": "Equals"}]}},
     "spec.selector.matchExpressions[0].operator", "spec.selector.matchExpressions[0].operator"),
    ("selector-missing-key", {**SRC, "selector": {"matchExpressions": [{"operator": "Exists"}]}},
     "spec.selector.matchExpressions[0].key", "spec.selector.matchExpressions[0].key"),
    ("match-labels-not-string", {**SRC, "selector": {"matchLabels": {"app": 1}}}, "spec.selector.matchLabels.app",
     "spec.selector.matchLabels.app"),
]


@pytest.mark.parametrize(("spec", "cluster_field", "parse_field"), [c[1:] for c in INVALID],
                         ids=[c[0] for c in INVALID])
def test_invalid_spec_rejected_by_crd_and_parse_spec(table_crd, spec, cluster_field, parse_field):
    errors, _, _ = cluster_check(workload(spec), table_crd)
    assert cluster_field in [f for f, _ in errors], f"cluster errors: {errors}"
    assert all(msg for _, msg in errors)
    with pytest.raises(SpecError) as info:
        parse_spec(spec, TABLE_SCHEMAS)
    assert info.value.field == parse_field, str(info.value)
    assert str(info.value).startswith(parse_field + ": ")


UNKNOWN_FIELDS = [
    ("spec-typo", {**SRC, "pollIntervall": "1m"}, "spec.pollIntervall"),
    ("source-typo", {"sources": [{"tensorboard": TB, "nmae": "x"}]}, "spec.sources[0].nmae"),
    ("selector-typo", {**SRC, "selector": {"matchLabel": {"app": "x"}}}, "spec.selector.matchLabel"),
    ("metrics-typo", {**SRC, "metrics": {"includes": ["loss"]}}, "spec.metrics.includes"),
    ("prometheus-typo", {**SRC, "prometheus": {"metric": ["loss"]}}, "spec.prometheus.metric"),
    ("match-expression-typo", {**SRC, "selector": {"matchExpressions": [{"key": "a", "operator": "Exists",
                                                                         "value": ["x"]}]}},
     "spec.selector.matchExpressions[0].value"),
]


@pytest.mark.parametrize(("spec", "field"), [c[1:] for c in UNKNOWN_FIELDS], ids=[c[0] for c in UNKNOWN_FIELDS])
def test_unknown_fields_pruned_by_cluster_rejected_by_parse_spec(table_crd, spec, field):
    errors, dropped, pruned = cluster_check(workload(spec), table_crd)
    assert errors == []
    assert dropped == [field]
    parse_spec(pruned["spec"], TABLE_SCHEMAS)  # what the operator reads after pruning is fine
    with pytest.raises(SpecError) as info:
        parse_spec(spec, TABLE_SCHEMAS)
    assert info.value.field == field
    assert info.value.message.startswith("unknown field")


VALID = [
    ("minimal", SRC),
    ("two-kinds-two-items", {"sources": [{"tensorboard": TB}, {"other": {"project": "p"}}]}),
    ("same-kind-named", {"sources": [{"name": "train", "tensorboard": TB}, {"name": "eval", "tensorboard": TB2}]}),
    ("one-named-one-default", {"sources": [{"name": "eval", "tensorboard": TB}, {"tensorboard": TB2}]}),
    ("sixteen-sources", {"sources": [{"name": f"s{i}", "tensorboard": TB} for i in range(16)]}),
    ("durations", {**SRC, "pollInterval": "1m30s"}),
    ("ms", {**SRC, "pollInterval": "500ms"}),
]


@pytest.mark.parametrize("spec", [c[1] for c in VALID], ids=[c[0] for c in VALID])
def test_valid_spec_accepted_by_both(table_crd, spec):
    errors, dropped, _ = cluster_check(workload(spec), table_crd)
    assert errors == [] and dropped == []
    parse_spec(spec, TABLE_SCHEMAS)


# ---------------------------------------------------------------------------------------------------------------
# A source's own CEL rule (the TensorBoard shape: exactly one of logDir / url).
# ---------------------------------------------------------------------------------------------------------------

TB_MODES = [
    ("logdir", {"logDir": "/runs/a"}, True),
    ("url", {"url": "http://tensorboard.ml:6006"}, True),
    ("both", {"logDir": "/runs/a", "url": "http://tensorboard.ml:6006"}, False),
    ("neither", {"tags": {"include": ["loss"]}}, False),
]


@pytest.mark.parametrize(("config", "ok"), [m[1:] for m in TB_MODES], ids=[m[0] for m in TB_MODES])
def test_source_cel_rule_in_the_cluster_path(config, ok):
    crd = build_crd({"tensorboard": TB_LIKE})
    errors, _, _ = cluster_check(workload({"sources": [{"tensorboard": config}]}), crd)
    if ok:
        assert errors == []
    else:
        assert ("spec.sources[0].tensorboard", "set exactly one of logDir or url") in errors


@pytest.mark.parametrize(("config", "ok"), [m[1:] for m in TB_MODES], ids=[m[0] for m in TB_MODES])
def test_real_tensorboard_modes(config, ok):
    spec = {"sources": [{"tensorboard": config}]}
    errors, _, _ = cluster_check(workload(spec), build_crd())
    if ok:
        assert errors == []
        parse_spec(spec)
    else:
        assert any(f.startswith("spec.sources[0].tensorboard") for f, _ in errors), errors
        with pytest.raises(SpecError) as info:
            parse_spec(spec)
        assert info.value.field.startswith("spec.sources[0].tensorboard"), str(info.value)


def test_status_written_by_operator_validates():
    """Contract: what operator/status.py builds passes the CRD's status schema (else the patch is refused)."""
    import trainscope.operator.status as status_mod
    from trainscope.collector.collector import Latest, Snapshot, SourceHealth
    from trainscope.collector.points import RunState

    health = SourceHealth(name="train", kind="tensorboard", state="Failing", last_success=1_700_000_000.0,
                          last_error="boom", last_error_reason="Timeout", points=10, newest_ts=1_700_000_000.0,
                          run_state=RunState.RUNNING, notes=("sampled",), skipped={"non-scalar": 2})
    snap = Snapshot(step=420, total_steps=1000, progress=0.42, throughput=3.5, eta_seconds=165.7,
                    primary_metric="loss",
                    latest={"loss": Latest(float("nan"), 420, 1_700_000_000.0, "train", "."),
                            "lr": Latest(3e-4, 420, 1_700_000_000.0, "train", "."),
                            "scale": Latest(float("inf"), 420, 1_700_000_000.0, "train", ".")},
                    run_state=RunState.RUNNING, sources=(health,), last_point_ts=1_700_000_000.0,
                    taken_at=1_700_000_010.0)
    for status in (status_mod.build_status(snap, now=1_700_000_010.0, generation=2),
                   status_mod.build_status(None, now=1_700_000_010.0, spec_error="spec.sources: bad")):
        status["lastUpdateTime"] = "2023-11-14T22:13:30Z"
        obj = {**workload({"sources": [{"tensorboard": TB}]}), "status": status}
        errors, dropped, _ = cluster_check(obj, build_crd())
        assert errors == [], status
        assert dropped == []
