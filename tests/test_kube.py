"""The operator's Kubernetes client against the KMock emulator: Secrets, pods by selector, secret references."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import time

import kopf
import pytest

from trainscope.collector.sources.base import SourceError
from trainscope.operator.kube import KubeClient, KubeError, label_selector, secret_resolver, selector_matches
from trainscope.operator.kubeauth import LoadedCredentials, load_credentials

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


def kubeconfig(path, server: str, user: dict) -> str:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ml"}}]}))
    return str(path)


async def test_token_file_rotation_and_401_reload_the_credentials(cluster, tmp_path):
    """A kubeconfig `tokenFile` (what a projected service-account token is): the file is rewritten and the old
    token refused; the next request gets 401, the credentials are loaded again and the request is retried."""
    token_file = tmp_path / "token"
    cluster.require_token(token_file, "tok-1")
    await post_secret(cluster)
    creds = await load_credentials(kubeconfig(tmp_path / "config", cluster.url, {"tokenFile": str(token_file)}))
    kube = KubeClient(creds)
    try:
        assert (await kube.get_secret("ml", "wandb"))["apiKey"] == "k" * 40
        cluster.rotate_token(token_file, "tok-2")
        before = cluster.emu.unauthorized
        assert (await kube.get_secret("ml", "wandb"))["apiKey"] == "k" * 40
        assert cluster.emu.unauthorized == before + 1 and creds.reloads == 1
        cluster.rotate_token(token_file, "tok-3")  # the same for a streamed pod log
        await cluster.add_pod("p", {})
        cluster.write_log("p", "step=1 loss=0.5\n", at=1_714_564_800.0)
        body = b"".join([c async for c in kube.stream_log("default", "p", None, follow=False)])
        assert body.endswith(b" step=1 loss=0.5\n") and creds.reloads == 2
        cluster.rotate_token(token_file, "tok-4")  # the same for a status patch (the publisher's, over aiohttp)
        await cluster.create("wl", {"sources": [{"tensorboard": {"logDir": "/x"}}]})
        obj = await kube.patch_merge(cluster.path("wl") + "/status", {"status": {"phase": "Collecting"}})
        assert obj["status"] == {"phase": "Collecting"} and creds.reloads == 3
        cluster.emu.tokens = {"someone-else"}  # a token that stays refused: one retry, then the 401 is reported
        with pytest.raises(KubeError) as err:
            await kube.get_secret("ml", "wandb")
        assert err.value.status == 401
    finally:
        await kube.aclose()


async def test_exec_plugin_credentials_are_run_and_rerun_on_401(cluster, tmp_path):
    """A kubeconfig `exec` plugin (as EKS/GKE/AKS use) prints an ExecCredential; a 401 runs it again."""
    counter = tmp_path / "runs"
    plugin = tmp_path / "plugin.py"
    plugin.write_text(
        "import json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(json.dumps({'apiVersion': 'client.authentication.k8s.io/v1beta1', 'kind': 'ExecCredential',\n"
        "                  'status': {'token': f'exec-{n}'}}))\n")
    cluster.require_token(tmp_path / "unused", "exec-1")
    await post_secret(cluster)
    creds = await load_credentials(kubeconfig(tmp_path / "config", cluster.url, {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1beta1", "command": sys.executable, "args": [str(plugin)]}}))
    kube = KubeClient(creds)
    try:
        assert (await kube.get_secret("ml", "wandb"))["apiKey"] == "k" * 40
        cluster.emu.tokens = {"exec-2"}
        assert (await kube.get_secret("ml", "wandb"))["apiKey"] == "k" * 40
        assert int(counter.read_text()) >= 2
    finally:
        await kube.aclose()


async def test_the_api_server_is_reached_without_the_environment_proxy(cluster, tmp_path, monkeypatch):
    """HTTPS_PROXY/HTTP_PROXY point at nothing: the API server is still reached directly (kopf does the same)."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    await post_secret(cluster)
    creds = await load_credentials(kubeconfig(tmp_path / "config", cluster.url, {"token": "t"}))
    kube = KubeClient(creds)
    try:
        assert (await kube.get_secret("ml", "wandb"))["apiKey"] == "k" * 40
        await cluster.create("wl", {"sources": [{"tensorboard": {"logDir": "/x"}}]})
        assert (await kube.patch_merge(cluster.path("wl") + "/status", {"status": {"step": 2}}))["status"]["step"] == 2
        assert creds.endpoint.proxy is None
    finally:
        await kube.aclose()


@pytest.fixture
def self_signed(tmp_path) -> tuple[bytes, bytes]:
    """A self-signed certificate and its key (PEM), made by the openssl command."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"), "-days", "1",
                    "-subj", "/CN=trainscope"], check=True, capture_output=True)
    return (tmp_path / "cert.pem").read_bytes(), (tmp_path / "key.pem").read_bytes()


async def test_kubeconfig_client_certificates_and_ca_are_used(tmp_path, monkeypatch, self_signed):
    """certificate-authority-data, client-certificate-data and client-key-data end up in the TLS context."""
    pem, key_pem = self_signed
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    path = tmp_path / "config"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://10.0.0.1:6443",
                                               "certificate-authority-data": b64(pem)}}],
        "users": [{"name": "u", "user": {"client-certificate-data": b64(pem), "client-key-data": b64(key_pem)}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}]}))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(path))
    creds = await load_credentials()
    assert creds.endpoint.server == "https://10.0.0.1:6443"
    ctx = creds.endpoint.verify
    assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
    assert [c["subject"] for c in ctx.get_ca_certs()] == [((("commonName", "trainscope"),),)]
    assert await creds.headers() == {}


async def test_in_cluster_token_and_ca_come_from_the_service_account_mount(tmp_path, self_signed):
    """The in-cluster loader: server from KUBERNETES_SERVICE_HOST/PORT, the CA and the token from the mount; the
    token file is read again on reload (what a 401 triggers)."""
    (tmp_path / "token").write_text("sa-1")
    (tmp_path / "ca.crt").write_bytes(self_signed[0])
    creds = await LoadedCredentials(in_cluster=True, service_account={
        "token_filename": str(tmp_path / "token"), "cert_filename": str(tmp_path / "ca.crt"),
        "environ": {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}}).load()
    assert creds.endpoint.server == "https://10.96.0.1:443" and creds.endpoint.proxy is None
    assert isinstance(creds.endpoint.verify, ssl.SSLContext) and creds.endpoint.verify.get_ca_certs()
    assert await creds.headers() == {"Authorization": "Bearer sa-1"}
    (tmp_path / "token").write_text("sa-2")  # the kubelet rewrites the file: read at the next request
    os.utime(tmp_path / "token", ns=(time.time_ns(), time.time_ns() + 10**9))
    assert await creds.headers() == {"Authorization": "Bearer sa-2"}
    (tmp_path / "token").write_text("sa-3")  # a 401 reloads it whatever the file's time says
    await creds.reload()
    assert await creds.headers() == {"Authorization": "Bearer sa-3"} and creds.reloads == 2


async def post_secret(cluster: Cluster) -> None:
    await post(cluster, "/api/v1/namespaces/ml/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "wandb", "namespace": "ml"},
        "data": {"apiKey": base64.b64encode(b"k" * 40).decode()}})
