"""Baidu Cloud (BCE) request signing, auth v1: the `Authorization: bce-auth-v1/...` header.

Written from the published algorithm and checked against Baidu's own SDK signer (`baidubce.auth.bce_v1_signer`)
in tests/test_qianfan_signing.py. The keys live in a `Credentials` object whose repr never shows them.

    authStringPrefix = bce-auth-v1/{accessKey}/{timestamp}/{expirationSeconds}
    signingKey       = hex(HMAC-SHA256(secretKey, authStringPrefix))
    canonicalRequest = METHOD \\n CanonicalURI \\n CanonicalQueryString \\n CanonicalHeaders
    signature        = hex(HMAC-SHA256(signingKey, canonicalRequest))
    Authorization    = {authStringPrefix}/{signedHeaders}/{signature}
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

AUTH_VERSION = "bce-auth-v1"
DEFAULT_EXPIRATION = 1800  # seconds, the BCE SDK's default
_ASCII_SPACE = " \t\n\r\x0b\x0c"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True, slots=True)
class Credentials:
    """An access key / secret key pair. Neither appears in repr, str or comparisons' output."""

    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)

    def __repr__(self) -> str:
        return "Credentials(<redacted>)"

    __str__ = __repr__


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes: only A-Z a-z 0-9 - . _ ~ (and '/' if asked) stay as-is."""
    out = []
    for byte in text.encode("utf-8"):
        if byte in _UNRESERVED or (keep_slash and byte == 0x2F):
            out.append(chr(byte))
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def canonical_time(timestamp: float) -> str:
    """Epoch seconds -> '2023-09-19T13:42:13Z' (UTC, whole seconds), the form of x-bce-date and the auth string."""
    return datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_query(params: Mapping[str, str | None] | Iterable[tuple[str, str | None]]) -> str:
    """'k=v' pairs, both sides uri-encoded ('/' too), sorted, joined by '&'; `authorization` is left out."""
    items = params.items() if isinstance(params, Mapping) else params
    pairs = [f"{uri_encode(k)}={uri_encode(v or '')}" for k, v in items if k.lower() != "authorization"]
    return "&".join(sorted(pairs))


def canonical_headers(headers: Mapping[str, str], signed: Iterable[str]) -> tuple[str, str]:
    """(CanonicalHeaders, signedHeaders) for the headers named in `signed` (case-insensitive).

    Each line is `uri_encode(lowercased name):uri_encode(trimmed value)`, lines sorted and joined by newlines.
    A header with an empty value is not signed (BCE's rule), so it is dropped from both.
    """
    wanted = {_trim_lower(name) for name in signed}
    lines: dict[str, str] = {}
    for name, value in headers.items():
        lname, text = _trim_lower(name), _trim(str(value))
        if lname in wanted and text:
            lines[lname] = f"{uri_encode(lname)}:{uri_encode(text)}"
    names = sorted(lines)
    return "\n".join(sorted(lines.values())), ";".join(names)


def _trim(text: str) -> str:
    """Strip ASCII whitespace only, as the SDK does on bytes (str.strip would also take \\x1c-\\x1f and U+3000)."""
    return text.strip(_ASCII_SPACE)


def _trim_lower(name: str) -> str:
    """A header name trimmed and lowercased in ASCII only (str.lower would also fold non-ASCII letters)."""
    return _trim(name).translate(_ASCII_LOWER)


def authorization(credentials: Credentials, method: str, path: str, *, headers: Mapping[str, str],
                  params: Mapping[str, str | None] | Iterable[tuple[str, str | None]] = (),
                  timestamp: float | None = None, expiration: int = DEFAULT_EXPIRATION,
                  signed_headers: Iterable[str] = ("host", "x-bce-date")) -> str:
    """The Authorization header value for one request.

    `path` is the decoded path (e.g. '/a b/ü'); it is uri-encoded here with '/' kept, so send exactly
    `uri_encode(path, keep_slash=True)` on the wire. `headers` must hold every header named in `signed_headers`,
    with the values that will be sent (Host with its port when it is not the scheme's default).
    """
    ts = canonical_time(time.time() if timestamp is None else timestamp)
    prefix = f"{AUTH_VERSION}/{credentials.access_key}/{ts}/{int(expiration)}"
    signing_key = hmac.new(credentials.secret_key.encode("utf-8"), prefix.encode("utf-8"), hashlib.sha256).hexdigest()
    canon_headers, names = canonical_headers(headers, signed_headers)
    canonical_request = "\n".join([method.upper(), uri_encode(path, keep_slash=True), canonical_query(params),
                                   canon_headers])
    signature = hmac.new(signing_key.encode("utf-8"), canonical_request.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{prefix}/{names}/{signature}"
