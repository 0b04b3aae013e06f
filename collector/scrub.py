"""One scrubber for every error text the process makes (source health, status, events, logs): secrets out.

Two nets. The values the process holds (API keys, passwords read from Secrets or the environment) are remembered
with the encodings a server may echo them in (HTTP Basic's base64 of `user:key`, URL-encoding), and replaced
wherever they appear, also cut short by a truncated message. Independently, what looks like a credential by its
shape is blanked: an `Authorization:` header's value, `Basic`/`Bearer` tokens, Baidu's `bce-auth-v1/...` strings,
`password=`/`api_key=`-style pairs and the password of a URL. A leaf module: sources, the store and the operator
all use it.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
from urllib.parse import quote

MASK = "***"
MIN_SECRET = 6  # shorter values (e.g. "api", a port) would blank ordinary words
_MAX_REMEMBERED = 1024
_MIN_PARTIAL = 8  # a cut-off secret is still blanked when at least this much of it shows

_lock = threading.Lock()
_variants: dict[str, None] = {}  # ordered set of every form of every remembered secret

_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # an echoed header, in HTTP, JSON or Python-repr form: `Authorization: Basic abc`, "authorization": "Bearer x"
    (re.compile(r"""(?i)((?:proxy-)?authorization["']?\s*[:=]\s*["']?)(?:(basic|bearer|token|digest|bce-auth-v1)\b"""
                r"""[\s/]*)?[^\r\n"'}\]]+"""), r"\1\2 " + MASK),
    (re.compile(r"(?i)\b(basic|bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"), r"\1 " + MASK),
    (re.compile(r"bce-auth-v1/[^\s\"',}\]]+"), "bce-auth-v1/" + MASK),  # signed headers are joined by ;
    (re.compile(r"""(?i)\b((?:api[_-]?key|access[_-]?token|secret(?:[_-]?(?:access[_-]?)?key)?|passw(?:or)?d|pwd|token)"""
                r"""["']?\s*[:=]\s*["']?)[^\s"'&,;}\]]+"""), r"\1" + MASK),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://[^/\s:@]*):[^@\s/]+@"), r"\1:" + MASK + "@"),  # URL userinfo
)


def remember_secret(value: str | None) -> None:
    """Blank `value` (and how a server may echo it) from every later scrubbed text; cheap to call again."""
    if not value or len(value) < MIN_SECRET:
        return
    forms = [value, quote(value, safe="")]
    for text in (value, f"api:{value}", f"{value}:", f":{value}"):  # W&B's Basic auth sends api:<key>
        b64 = base64.b64encode(text.encode()).decode()
        forms += [b64, b64.rstrip("=")]
    with _lock:
        for form in forms:
            _variants[form] = None
        while len(_variants) > _MAX_REMEMBERED:
            del _variants[next(iter(_variants))]


def scrub(text: str) -> str:
    """`text` with every remembered secret and everything shaped like a credential replaced by ***."""
    if not text:
        return text
    with _lock:
        forms = sorted(_variants, key=len, reverse=True)
    for form in forms:
        text = _blank(text, form)
    for pattern, repl in _SHAPES:
        text = pattern.sub(repl, text)
    return text


def _blank(text: str, secret: str) -> str:
    """Replace `secret`, and any run of at least _MIN_PARTIAL of its first characters (a message cut short), by
    MASK."""
    anchor = secret[:_MIN_PARTIAL]
    i = text.find(anchor)
    if i < 0:
        return text
    out = []
    last = 0
    while i >= 0:
        n = _MIN_PARTIAL
        while n < len(secret) and i + n < len(text) and text[i + n] == secret[n]:
            n += 1
        out.append(text[last:i])
        out.append(MASK)
        last = i + n
        i = text.find(anchor, last)
    out.append(text[last:])
    return "".join(out)


_installed = False


def install_log_scrubber() -> None:
    """Scrub every log record of the process (message, arguments and traceback) as it is made, whichever library
    logs it. Idempotent."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    make = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to logging's own error report
            return record
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = scrub(formatter.formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
