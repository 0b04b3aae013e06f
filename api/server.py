"""Serving the app with uvicorn: on its own (`trainscope api`) or inside another asyncio program (local mode)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Generator
from pathlib import Path

import uvicorn

from trainscope.api.app import TOKEN_ENV, ApiSettings, create_app

# Request limits (docs/api.md, Limits). The request head (request line + headers) is refused past MAX_HEAD bytes
# with 431 before the rest is read (uvicorn's httptools protocol would buffer it all), the URL past MAX_URL with 414.
# Sized for the longest query the schema's own parameter limits allow with common (ASCII) names.
MAX_HEAD = 128 * 1024
MAX_URL = 64 * 1024


def _http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with the head and URL limits; h11 (which has its own limit) without httptools."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        """Counts the bytes of each request head as they arrive and answers 431/414 past the limits."""

        _head_bytes = 0
        _in_head = True
        _refused = False

        def _refuse(self, status: int, reason: str, message: str) -> None:
            body = message.encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, reason.encode(), len(body), body))
            # Close a moment later, dropping what still arrives meanwhile: closing at once with unread bytes would
            # reset the connection, and the client could lose the answer.
            self._refused = True
            asyncio.get_running_loop().call_later(1.0, self.transport.close)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._in_head:
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"the request line and headers exceed {MAX_HEAD} bytes")
                    return
            super().data_received(data)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            if len(self.url) > MAX_URL:
                self._url_too_long = True
                raise ValueError("URL too long")  # httptools turns it into a parser error: send_400_response

        def send_400_response(self, msg: str) -> None:
            if getattr(self, "_url_too_long", False):
                self._refuse(414, "URI Too Long", f"the URL exceeds {MAX_URL} bytes")
            else:
                super().send_400_response(msg)

        def on_headers_complete(self) -> None:
            self._in_head, self._head_bytes = False, 0
            super().on_headers_complete()

    return LimitedHttpToolsProtocol


def uvicorn_config(app: object, host: str, port: int, **kwargs: object) -> uvicorn.Config:
    """uvicorn's settings for the API: the limited protocol, h11's head limit if it is used instead."""
    return uvicorn.Config(app, host=host, port=port, http=_http_protocol(), h11_max_incomplete_event_size=MAX_HEAD,
                          timeout_graceful_shutdown=5, **kwargs)  # type: ignore[arg-type]


def read_token(token_file: str | None = None) -> str | None:
    """The bearer token: a file (a mounted Secret) wins over $TRAINSCOPE_API_TOKEN; blank means none."""
    if token_file:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


class AddressInUse(OSError):
    """The listen address is taken (or not ours to bind); the message says which and why."""


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, or AddressInUse naming the address (uvicorn would log and exit instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise AddressInUse(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the host program owns SIGINT/SIGTERM); tells streams to end first."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def shutdown(self, sockets: list | None = None) -> None:
        self.config.app.state.stopping.set()
        await super().shutdown(sockets)


class ApiServer:
    """The API on host:port inside a running event loop: `await start()`, `await stop()`."""

    def __init__(self, settings: ApiSettings, host: str = "127.0.0.1", port: int = 8080):
        self.app = create_app(settings)
        config = uvicorn_config(self.app, host, port, log_level="warning", access_log=False, lifespan="on")
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self._server.config.host}:{self.port}"

    async def start(self) -> None:
        """Listen (OSError if the address is taken: bound here, as uvicorn would exit the process) and serve."""
        config = self._server.config
        sock = bind(config.host, config.port)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="trainscope-api")
        while not self._server.started:
            if self._task.done():
                await self._task
                raise RuntimeError("the API server stopped before it started")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None


class _Standalone(uvicorn.Server):
    """uvicorn's own SIGINT/SIGTERM handling, minus re-raising the signal once it has shut down: `run` returns
    instead, so the caller's cleanup (the embedded PostgreSQL's stop) runs rather than the signal killing it."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


def run(settings: ApiSettings, host: str, port: int, access_log: bool = False, log_config: object = None) -> None:
    """`trainscope api`: serve until SIGINT/SIGTERM, then return (OSError if the address is taken)."""
    app = create_app(settings)
    config = uvicorn_config(app, host, port, log_level="info", access_log=access_log,
                            log_config=log_config)
    sock = bind(host, port)
    _Standalone(config).run(sockets=[sock])
