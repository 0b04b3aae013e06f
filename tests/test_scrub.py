"""No secret in any error text: a server that echoes the request's headers (the W&B key base64-encoded in HTTP
Basic auth) cannot put the key into a source's lastError, the Workload status or a log line; Bearer tokens and
Baidu's bce-auth-v1 strings (made by the real signer) are blanked by their shape."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid

import pytest

from trainscope.collector.collector import Collector
from trainscope.collector.scrub import install_log_scrubber, remember_secret, scrub
from trainscope.collector.sources.bce_auth import Credentials, authorization
from trainscope.collector.spec import parse_spec
from trainscope.collector.store import Store
from trainscope.operator.status import build_status

from rawhttp import echo_server
from waiting import eventually

T0 = 1_700_000_000.0


def _forms(key: str) -> list[str]:
    """The key and what a server may echo of it: base64 of api:<key> (W&B's Basic auth) and of the key alone."""
    return [key, base64.b64encode(f"api:{key}".encode()).decode(), base64.b64encode(key.encode()).decode()]


def assert_no_leak(text: str, key: str) -> None:
    """Not the key, not its encodings, and not 8 characters in a row of any of them (a message cut short)."""
    for form in _forms(key):
        for i in range(len(form) - 8):
            assert form[i:i + 8] not in text, (form, text)


def _auth_first(head: str) -> str:
    """The echoed head with the Authorization line first, so a 200-character excerpt holds the whole of it."""
    lines = head.split("\r\n")
    auth = [ln for ln in lines if ln.lower().startswith("authorization:")]
    assert auth, head  # the request did carry the key
    return "\r\n".join(auth + [ln for ln in lines if ln not in auth])


ECHOES = {
    "http-400-text": dict(status="400 Bad Request", content_type="text/plain", wrap=_auth_first),
    "http-200-not-json": dict(status="200 OK", content_type="text/html", wrap=lambda h: f"<pre>{_auth_first(h)}</pre>"),
    "graphql-error": dict(status="200 OK", content_type="application/json",
                          wrap=lambda h: {"errors": [{"message": f"cannot parse request: {_auth_first(h)}"}]}),
    "json-headers": dict(status="400 Bad Request", content_type="application/json",
                         wrap=lambda h: json.dumps({"headers": dict(ln.split(": ", 1) for ln in _auth_first(
                             h).split("\r\n") if ": " in ln)})),
}


@pytest.mark.parametrize("echo", list(ECHOES), ids=list(ECHOES))
@pytest.mark.parametrize("origin", ["secret", "env"])
async def test_a_server_echoing_the_w_and_b_key_leaks_it_nowhere(store: Store, echo: str, origin: str,
                                                                 monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    install_log_scrubber()
    caplog.set_level(logging.WARNING)
    key = secrets.token_hex(20)  # a W&B key is 40 hex characters
    block = {"project": "p", "entity": "e", "runId": "r1", "timeout": "5s"}
    resolve = None
    if origin == "secret":
        block["apiKeySecretRef"] = {"name": "wandb", "key": "apiKey"}

        async def resolve(ref: dict[str, str]) -> str:
            assert ref == {"name": "wandb", "key": "apiKey"}
            return key
    else:
        monkeypatch.setenv("WANDB_API_KEY", key)
    async with echo_server(**ECHOES[echo]) as url:
        spec = parse_spec({"sources": [{"name": "wb", "wandb": {**block, "baseUrl": url}}], "pollInterval": "1s"})
        c = Collector(uuid.uuid4().hex, spec, store, name="wl", resolve_secret=resolve, backoff_base=0.05,
                      backoff_cap=0.1)
        await c.start()
        try:
            h = await eventually(lambda: c.health["wb"].last_error and c.health["wb"])
        finally:
            await c.stop()
    assert "***" in h.last_error, h.last_error  # the echo did reach the message, blanked
    assert_no_leak(h.last_error, key)
    status = build_status(c.snapshot(), now=T0)
    assert_no_leak(json.dumps(status), key)
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "wb" in logged  # the failure was logged...
    assert_no_leak(logged, key)  # ...without the key


def test_log_records_are_scrubbed_whoever_logs_them(caplog) -> None:
    install_log_scrubber()
    caplog.set_level(logging.INFO)
    key = secrets.token_hex(16)
    remember_secret(key)
    other = logging.getLogger("some.library")
    other.warning("request failed: Authorization: Basic %s", base64.b64encode(f"api:{key}".encode()).decode())
    try:
        raise RuntimeError(f"server said: bad key {key}")
    except RuntimeError:
        other.exception("poll failed")
    text = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    assert "RuntimeError" in text and "poll failed" in text
    assert_no_leak(text, key)


def test_credentials_are_blanked_by_their_shape() -> None:
    signed = authorization(Credentials("ak" + secrets.token_hex(15), secrets.token_hex(16)), "POST", "/v2/finetuning",
                           headers={"host": "qianfan.baidubce.com", "x-bce-date": "2024-05-01T00:00:00Z"},
                           timestamp=1714521600)
    assert signed.startswith("bce-auth-v1/")
    token = secrets.token_urlsafe(32)
    cases = {
        f"echo: {{'Authorization': '{signed}'}}": signed.split("/")[-1],
        f"GET / HTTP/1.1\r\nauthorization: Bearer {token}\r\n": token,
        f"upstream said 401 for token {token}": None,  # not credential-shaped and not remembered: left alone
        "connect to postgresql://trainscope:hunter2hunter2@db:5432/x failed": "hunter2hunter2",
        "GET /api?api_key=abcdef123456&x=1": "abcdef123456",
    }
    for text, secret in cases.items():
        clean = scrub(text)
        if secret is None:
            assert clean == text
        else:
            assert secret not in clean and "***" in clean, clean
    assert scrub("loss=0.25 step=10 lr: 1e-4 tokens=5000") == "loss=0.25 step=10 lr: 1e-4 tokens=5000"
