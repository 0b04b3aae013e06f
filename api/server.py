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


def read_token(token_file: str | None = None) -> str | None:
    """The bearer token: a file (a mounted Secret) wins over $TRAINSCOPE_API_TOKEN; blank means none."""
    if token_file:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


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
        config = uvicorn.Config(self.app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="on", timeout_graceful_shutdown=5)
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
        family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
        sock = socket.socket(family=family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((config.host, config.port))
        except OSError:
            sock.close()
            raise
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


def run(settings: ApiSettings, host: str, port: int, access_log: bool = False) -> None:
    """`trainscope api`: serve until SIGINT/SIGTERM (uvicorn's own handling)."""
    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=access_log, timeout_graceful_shutdown=5)
