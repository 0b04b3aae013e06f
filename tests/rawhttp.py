"""Servers for the url-mode source tests: tiny raw HTTP servers that answer (or misbehave) exactly as told, a free
port, and stopping a real server's subprocess. Shared by the TensorBoard and SwanLab tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from trainscope.collector.sources.base import Source, SourceError

Handler = Callable[[str], Awaitable[bytes | None]]


def free_port() -> int:
    """A local TCP port nothing listens on (bound, then released), for a server to start on or to find closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a server subprocess: SIGTERM, then SIGKILL if it has not exited within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.asynccontextmanager
async def raw_http_server(handler: Handler) -> AsyncIterator[str]:
    """A tiny HTTP server on the running loop: `handler(path)` returns the raw answer, or None to hang up."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await reader.readuntil(b"\r\n\r\n")
            answer = await handler(request.split(b" ", 2)[1].decode())
            if answer is not None:
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


def http_response(body: Any, status: str = "200 OK", content_type: str = "application/json") -> bytes:
    """Raw HTTP/1.1 bytes; a str or bytes body is sent as it is, any other as JSON."""
    text = body if isinstance(body, str | bytes) else json.dumps(body)
    data = text.encode() if isinstance(text, str) else text
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n")
    return head.encode() + data


async def silent_server_error(make_source: Callable[[str], Source]) -> SourceError:
    """The SourceError a source (built by `make_source(url)`) raises polling a server that takes the request and
    never answers: how each url-mode kind shows its timeout."""
    release = asyncio.Event()

    async def never(path: str) -> bytes:
        await release.wait()  # never answers until the test is over
        return b""

    async with raw_http_server(never) as url:
        src = make_source(url)
        try:
            await src.poll(None)
        except SourceError as err:
            return err
        finally:
            release.set()
            await src.aclose()
    raise AssertionError("polling a server that never answers did not fail")


@contextlib.asynccontextmanager
async def echo_server(status: str = "400 Bad Request", content_type: str = "text/plain",
                      wrap: Callable[[str], Any] = lambda head: head) -> AsyncIterator[str]:
    """A server that answers every request with its own request head as the body (`wrap(head)`, JSON unless a str):
    what debugging proxies, httpbin-style endpoints and some misconfigured gateways do, Authorization header
    included."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                           if line.lower().startswith("content-length:")), 0)
            if length:
                await reader.readexactly(length)
            writer.write(http_response(wrap(head), status, content_type))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)
