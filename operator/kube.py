"""The operator's own small Kubernetes client: Secrets (get only), pods and pod logs, over httpx.

kopf talks to the API for Workloads; this client serves the sources (through `PodLogReader` and the secret
resolver) with the same credentials, taken from kopf's public login helpers.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import kopf

from trainscope.collector.sources.base import ContainerState, PodRef, SecretResolver, SourceError


class KubeError(Exception):
    """The API answered with an error; `status` is the HTTP status (404 for a missing object)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def login(settings: kopf.OperatorSettings | None = None) -> kopf.ConnectionInfo:
    """In-cluster service account first, then the kubeconfig, as kopf itself does (kopf 1.45's helpers require
    the operator's settings as a keyword)."""
    settings = settings or kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    if info is None:
        raise RuntimeError("no Kubernetes credentials: not in a cluster and no kubeconfig found")
    return info


def label_selector(selector: dict[str, Any]) -> str:
    """A LabelSelector object -> the `labelSelector` query string of the API."""
    parts = [f"{k}={v}" for k, v in sorted((selector.get("matchLabels") or {}).items())]
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], sorted(expr.get("values") or [])
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts)


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether labels satisfy a LabelSelector (applied again client-side: cheap, and emulators ignore it)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {"In": key in labels and labels[key] in values, "NotIn": labels.get(key) not in values,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def _tls(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=os.fspath(info.ca_path) if info.ca_path else None,
                                     cadata=_text(info.ca_data) if info.ca_data else None)
    cert, key = _file(info.certificate_path, info.certificate_data), _file(info.private_key_path, info.private_key_data)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _text(data: str | bytes) -> str:
    raw = data.encode() if isinstance(data, str) else data
    try:  # kubeconfig *-data fields are base64; kopf passes them through as given
        return base64.b64decode(raw, validate=True).decode()
    except ValueError:
        return raw.decode()


def _file(path: Any, data: str | bytes | None) -> str | None:
    if path:
        return os.fspath(path)
    if not data:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as f:
        f.write(_text(data))
    return f.name


class KubeClient:
    """Get Secrets, list pods and stream pod logs; implements collector's PodLogReader."""

    def __init__(self, info: kopf.ConnectionInfo, *, timeout: float = 30.0, read_timeout: float = 60.0):
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"Bearer {info.token}"
        auth = (info.username, info.password) if info.username and info.password else None
        self._http = httpx.AsyncClient(base_url=info.server.rstrip("/"), headers=headers, auth=auth,
                                       verify=_tls(info), timeout=httpx.Timeout(timeout, read=read_timeout))
        # read_timeout bounds the silence between two chunks: logs are read with follow=false, so the API server
        # sends what it has without pausing; a longer silence is a hung connection, ended before the poll deadline

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get_json(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = await self._http.get(path, params=params)
        if response.status_code >= 400:
            raise KubeError(response.status_code, f"GET {path}: HTTP {response.status_code}")
        return response.json()

    async def request_json(self, method: str, path: str, body: Any = None, *,
                           content_type: str = "application/json") -> dict[str, Any]:
        """One JSON request of the job follower (operator/follow.py): get/list jobs, create/patch/delete Workloads."""
        headers = {"Content-Type": content_type} if body is not None else None
        response = await self._http.request(method, path, json=body, headers=headers)
        if response.status_code >= 400:
            raise KubeError(response.status_code, f"{method} {path}: HTTP {response.status_code}: "
                            f"{_status_message(response.text[:300])}")
        return response.json()

    async def get_secret(self, namespace: str, name: str) -> dict[str, str]:
        """The Secret's data, decoded. Only `get` is used: the operator never lists or watches Secrets."""
        obj = await self._get_json(f"/api/v1/namespaces/{namespace}/secrets/{name}")
        data = {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        data.update(obj.get("stringData") or {})
        return data

    async def list_pods(self, namespace: str, selector: dict[str, Any]) -> list[PodRef]:
        params = {"labelSelector": label_selector(selector)} if selector else None
        obj = await self._get_json(f"/api/v1/namespaces/{namespace}/pods", params)
        pods = []
        for item in obj.get("items") or []:
            meta, status = item.get("metadata") or {}, item.get("status") or {}
            if selector and not selector_matches(selector, meta.get("labels") or {}):
                continue
            states = {c.get("name"): container_state(c) for c in status.get("containerStatuses") or []}
            restarts = {name: st.restarts for name, st in states.items()}
            containers = {c["name"]: restarts.get(c["name"], 0) for c in (item.get("spec") or {}).get(
                "containers") or []}
            pods.append(PodRef(name=meta.get("name", ""), uid=meta.get("uid", ""), labels=meta.get("labels") or {},
                               phase=status.get("phase", ""), containers=containers,
                               deleted=bool(meta.get("deletionTimestamp")), states=states))
        return pods

    async def stream_log(self, namespace: str, pod: str, container: str | None, *, since_time: str | None = None,
                         follow: bool = True, previous: bool = False) -> AsyncIterator[bytes]:
        """The container's log with kubelet timestamps; `previous`: the instance before a restart."""
        params = {"timestamps": "true", "follow": "true" if follow else "false"}
        if container:
            params["container"] = container
        if since_time:
            params["sinceTime"] = since_time
        if previous:
            params["previous"] = "true"
        async with self._http.stream("GET", f"/api/v1/namespaces/{namespace}/pods/{pod}/log",
                                     params=params) as response:
            if response.status_code >= 400:
                body = (await response.aread())[:300].decode("utf-8", "replace")
                raise KubeError(response.status_code, f"log of {namespace}/{pod}: HTTP {response.status_code}: "
                                f"{_status_message(body)}")
            async for chunk in response.aiter_raw():
                yield chunk


def _status_message(body: str) -> str:
    """The `message` of a Kubernetes Status answer, else the body itself."""
    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return body


def secret_resolver(namespace: str, kube: KubeClient | None, secrets_dir: Path | None = None) -> SecretResolver:
    """Resolve `{name, key}` (a Secret in the Workload's namespace) or `{env}` references to their value.

    In a cluster the Secret is read through the API; in local mode from `secrets_dir/<name>/<key>`, the layout of
    a mounted Secret volume. Errors name the Secret and key, never a value.
    """

    async def resolve(ref: dict[str, str]) -> str:
        if "env" in ref:
            value = os.environ.get(ref["env"])
            if value is None:
                raise SourceError(f"environment variable {ref['env']} is not set", reason="SecretMissing")
            return value
        name, key = ref["name"], ref["key"]
        if kube is not None:
            try:
                data = await kube.get_secret(namespace, name)
            except KubeError as exc:
                reason = "SecretMissing" if exc.status == 404 else "SecretUnreadable"
                raise SourceError(f"Secret {namespace}/{name}: HTTP {exc.status}", reason=reason,
                                  retry_after=60.0) from None
            if key not in data:
                raise SourceError(f"Secret {namespace}/{name} has no key {key!r}", reason="SecretMissing",
                                  retry_after=60.0)
            return data[key]
        if secrets_dir is not None and (secrets_dir / name / key).is_file():
            return (secrets_dir / name / key).read_text().strip()
        raise SourceError(f"Secret {name}/{key} is not available here (local mode reads "
                          f"<secrets-dir>/{name}/{key})", reason="SecretMissing", retry_after=60.0)

    return resolve


def container_state(c: dict[str, Any]) -> ContainerState:
    """pod.status.containerStatuses[i] -> ContainerState (fields as in the core/v1 ContainerStatus reference)."""
    state, last = c.get("state") or {}, (c.get("lastState") or {}).get("terminated") or {}
    waiting, term = state.get("waiting") or {}, state.get("terminated") or {}
    code = term.get("exitCode")
    return ContainerState(restarts=int(c.get("restartCount") or 0), waiting=waiting.get("reason"),
                          exit_code=int(code) if code is not None else None, reason=term.get("reason"),
                          message=term.get("message"),
                          last_exit_code=int(last["exitCode"]) if last.get("exitCode") is not None else None)
