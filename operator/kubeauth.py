"""Credentials for the operator's Kubernetes client, loaded and reloaded by kubernetes_asyncio's config loaders.

kubernetes_asyncio reads what real clusters hand out: the in-cluster service account (its token file re-read every
minute, as client-go does, and at once when the file changes, because the kubelet rewrites a bound token before it
expires), and kubeconfig files with
`exec` plugins (EKS, GKE, AKS; re-run when their credential expires), client certificates (files or inline data),
`tokenFile`, the cluster CA and `proxy-url`. kopf logs in through the same library (its piggybacking login), so the
operator and its pod-log/Secret reads authenticate alike. On a 401 the client calls `reload()`: the loader runs again
(the token file is read again, the exec plugin re-run), then the request is retried once.

The API server is reached directly unless the kubeconfig names a `proxy-url`: HTTPS_PROXY and friends are not
followed, as kubectl and kopf do not follow them for in-cluster addresses either.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any, Protocol

import kopf
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config
from kubernetes_asyncio.config.incluster_config import SERVICE_HOST_ENV_NAME, SERVICE_TOKEN_FILENAME


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API server is and how to reach it (TLS, proxy); changes only when credentials are reloaded."""

    server: str
    verify: ssl.SSLContext | bool
    proxy: str | None = None
    tls_server_name: str | None = None


class Credentials(Protocol):
    """What the client asks of its credentials: where to go, which headers to send, and a reload after a 401."""

    @property
    def endpoint(self) -> Endpoint: ...

    async def headers(self) -> dict[str, str]: ...

    async def reload(self) -> None: ...


class StaticCredentials:
    """A fixed kopf.ConnectionInfo (tests, or a login handler's result): nothing to reload."""

    def __init__(self, info: kopf.ConnectionInfo):
        self.info = info
        self.endpoint = Endpoint(info.server.rstrip("/"), _static_tls(info), proxy=info.proxy_url or None)

    async def headers(self) -> dict[str, str]:
        info = self.info
        if info.token:
            return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
        if info.username and info.password:
            raw = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        return {}

    async def reload(self) -> None:
        return None


class LoadedCredentials:
    """Credentials kept current by kubernetes_asyncio: in-cluster or from a kubeconfig file."""

    def __init__(self, *, in_cluster: bool, config_file: str | None = None, context: str | None = None,
                 service_account: dict[str, Any] | None = None):
        self.in_cluster, self.config_file, self.context = in_cluster, config_file, context
        # in-cluster loader overrides (token_filename, cert_filename, environ): where a pod's mount would be
        self.service_account = service_account or {}
        self._cfg = Configuration()
        self._loader: Any = None
        self._lock = asyncio.Lock()
        self.endpoint = Endpoint("", True)
        self.reloads = 0  # how often the loader ran again after a 401

    async def load(self) -> LoadedCredentials:
        cfg = Configuration()
        if self.in_cluster:
            # refresh hook: the token file re-read every minute
            load_incluster_config(client_configuration=cfg, **self.service_account)
        else:
            # persist_config=False: a refreshed credential is never written back into the user's kubeconfig
            self._loader = await load_kube_config(config_file=self.config_file, context=self.context,
                                                  client_configuration=cfg, persist_config=False)
        self._cfg = cfg
        self._token_stamp = _mtime(self._token_file())
        self.endpoint = Endpoint(cfg.host.rstrip("/"), _loaded_tls(cfg), proxy=cfg.proxy or None,
                                 tls_server_name=getattr(cfg, "tls_server_name", None))
        return self

    def _token_file(self) -> str | None:
        return self.service_account.get("token_filename", SERVICE_TOKEN_FILENAME) if self.in_cluster else None

    async def headers(self) -> dict[str, str]:
        if self.in_cluster and _mtime(self._token_file()) != self._token_stamp:
            await self.reload()  # the kubelet rewrote the projected token: use the new one at once
        cfg = self._cfg
        if self._loader is not None and hasattr(self._loader, "exec_plugin_expiry"):
            # the exec plugin's credential carried an expirationTimestamp: the loader re-runs the plugin once it
            # has passed (one without is kept until a 401, as client-go does)
            await self._loader.load_from_exec_plugin()
            if getattr(self._loader, "token", None):
                cfg.api_key["BearerToken"] = self._loader.token
        token = await cfg.get_api_key_with_prefix("BearerToken")  # in-cluster: re-reads the token file when due
        if token:
            return {"Authorization": token.strip()}
        if cfg.username and cfg.password:
            raw = base64.b64encode(f"{cfg.username}:{cfg.password}".encode()).decode()
            return {"Authorization": f"Basic {raw}"}
        return {}

    async def reload(self) -> None:
        """After a 401 (or a rewritten token file): load everything again (token file, exec plugin, certificates)."""
        async with self._lock:
            await self.load()
            self.reloads += 1


async def load_credentials(config_file: str | None = None, context: str | None = None) -> LoadedCredentials:
    """In-cluster service account when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    if config_file is None and _in_cluster():
        return await LoadedCredentials(in_cluster=True).load()
    # read now, not at import (kubernetes_asyncio's default is fixed when it is imported); paths joined by ':'
    config_file = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"  # the loader expands ~
    try:
        return await LoadedCredentials(in_cluster=False, config_file=config_file, context=context).load()
    except (ConfigException, OSError) as exc:
        raise RuntimeError(f"no Kubernetes credentials: not in a cluster and no usable kubeconfig ({exc})") from exc


def _mtime(path: str | None) -> int | None:
    """The file's modification time (ns), following the projected volume's symlinks; None if absent."""
    try:
        return os.stat(path).st_mtime_ns if path else None
    except OSError:
        return None


def _in_cluster() -> bool:
    return bool(os.environ.get(SERVICE_HOST_ENV_NAME)) and os.path.isfile(SERVICE_TOKEN_FILENAME)


def _loaded_tls(cfg: Configuration) -> ssl.SSLContext | bool:
    if not cfg.verify_ssl:
        return False
    ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file or None)
    return ctx


def _static_tls(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    ctx = ssl.create_default_context(cafile=os.fspath(info.ca_path) if info.ca_path else None,
                                     cadata=_text(info.ca_data) if info.ca_data else None)
    cert = _file(info.certificate_path, info.certificate_data)
    if cert:
        ctx.load_cert_chain(cert, _file(info.private_key_path, info.private_key_data))
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
