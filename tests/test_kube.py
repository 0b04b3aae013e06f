"""The operator's Kubernetes client against the KMock emulator: Secrets, pods by selector, secret references."""

from __future__ import annotations

import base64

import kopf
import pytest

from trainscope.collector.sources.base import SourceError
from trainscope.operator.kube import KubeClient, label_selector, secret_resolver, selector_matches

from kube import Cluster


async def post(cluster: Cluster, path: str, body: dict) -> None:
    response = await cluster.emu.post(path, json=body)
    assert response.status in (200, 201), await response.text()


async def test_secrets_are_read_by_reference_and_errors_never_carry_values(cluster):
    await post(cluster, "/api/v1/namespaces/ml/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wandb", "namespace": "ml"},
        "data": {"apiKey": base64.b64encode(b"k" * 40).decode()}})
    kube = KubeClient(kopf.ConnectionInfo(server=cluster.url))
    try:
        resolve = secret_resolver("ml", kube)
        assert await resolve({"name": "wandb", "key": "apiKey"}) == "k" * 40
        with pytest.raises(SourceError, match=r"Secret ml/wandb has no key 'token'") as err:
            await resolve({"name": "wandb", "key": "token"})
        assert "k" * 40 not in str(err.value)
        with pytest.raises(SourceError) as missing:
            await resolve({"name": "nope", "key": "apiKey"})
        assert missing.value.reason == "SecretMissing"
    finally:
        await kube.aclose()


async def test_local_secrets_come_from_files_or_env(tmp_path, monkeypatch):
    (tmp_path / "qianfan").mkdir()
    (tmp_path / "qianfan" / "secretKey").write_text("sk-value\n")
    resolve = secret_resolver("default", None, tmp_path)
    assert await resolve({"name": "qianfan", "key": "secretKey"}) == "sk-value"
    monkeypatch.setenv("TS_TEST_TOKEN", "tok")
    assert await resolve({"env": "TS_TEST_TOKEN"}) == "tok"
    with pytest.raises(SourceError) as err:  # the message names the file to create
        await resolve({"name": "qianfan", "key": "accessKey"})
    assert f"no file {tmp_path}/qianfan/accessKey" in str(err.value) and err.value.reason == "SecretMissing"
    with pytest.raises(SourceError, match="local mode reads it from --secrets-dir DIR, as the file DIR/qianfan/"):
        await secret_resolver("default", None, None)({"name": "qianfan", "key": "accessKey"})


async def test_pods_are_listed_by_selector_with_restart_counts(cluster):
    pods = (("train-0", {"job": "llm", "rank": "0"}, 1), ("train-1", {"job": "llm", "rank": "1"}, 0),
            ("other", {"job": "x"}, 0))
    for name, labels, restarts in pods:
        await post(cluster, "/api/v1/namespaces/ml/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "ml", "labels": labels},
            "spec": {"containers": [{"name": "trainer"}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "trainer", "restartCount": restarts}]}})
    kube = KubeClient(kopf.ConnectionInfo(server=cluster.url))
    try:
        pods = await kube.list_pods("ml", {"matchLabels": {"job": "llm"}})
        assert sorted((p.name, p.containers["trainer"]) for p in pods) == [("train-0", 1), ("train-1", 0)]
        rank0 = await kube.list_pods("ml", {"matchExpressions": [{"key": "rank", "operator": "In", "values": ["0"]}]})
        assert [p.name for p in rank0] == ["train-0"]
    finally:
        await kube.aclose()


def test_label_selectors_render_and_match_like_the_api():
    sel = {"matchLabels": {"job": "llm"}, "matchExpressions": [
        {"key": "rank", "operator": "In", "values": ["1", "0"]}, {"key": "spot", "operator": "DoesNotExist"},
        {"key": "role", "operator": "NotIn", "values": ["eval"]}, {"key": "team", "operator": "Exists"}]}
    assert label_selector(sel) == "job=llm,rank in (0,1),!spot,role notin (eval),team"
    assert selector_matches(sel, {"job": "llm", "rank": "0", "team": "a"})
    assert not selector_matches(sel, {"job": "llm", "rank": "0", "team": "a", "spot": "y"})
    assert not selector_matches(sel, {"job": "llm", "rank": "2", "team": "a"})
    assert not selector_matches(sel, {"job": "llm", "rank": "0", "team": "a", "role": "eval"})


def test_login_finds_the_kubeconfig_like_kopf(tmp_path, monkeypatch):
    """kopf 1.45's login helpers take the operator's settings; without them the operator had no client at all."""
    from trainscope.operator.kube import login

    config = tmp_path / "kubeconfig"
    config.write_text("""
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://10.0.0.1:6443", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t0ken}}]
contexts: [{name: x, context: {cluster: c, user: u, namespace: ml}}]
current-context: x
""")
    monkeypatch.setenv("KUBECONFIG", str(config))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = login()
    assert (info.server, info.token, info.default_namespace) == ("https://10.0.0.1:6443", "t0ken", "ml")
