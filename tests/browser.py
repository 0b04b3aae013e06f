"""Helpers for the dashboard tests: the API with the dashboard mounted, served by uvicorn on 127.0.0.1, and a
headless Debian Chromium driven by Playwright (web/e2e/driver.mjs, playwright-core) over a line-JSON pipe."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from apifixtures import ThreadedServer

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
DRIVER = WEB / "e2e" / "driver.mjs"
CHROMIUM = os.environ.get("TRAINSCOPE_CHROMIUM", "/usr/bin/chromium")


# The API mounts the dashboard itself, so the page is served by the API's own threaded test server.
UiServer = ThreadedServer


class BrowserError(AssertionError):
    pass


class Browser:
    """One Chromium for a test module; `page()` opens a fresh context and page."""

    def __init__(self) -> None:
        node = shutil.which("node")
        assert node, "node is needed for the dashboard tests (make test installs web/node_modules)"
        assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test` installs Debian's chromium"
        assert (WEB / "node_modules" / "playwright-core").is_dir(), "run `npm ci` in web/ (make test does)"
        self._proc = subprocess.Popen([node, str(DRIVER)], cwd=WEB, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, bufsize=1)
        self._ids = itertools.count(1)
        self._answers: dict[int, queue.Queue[dict]] = {}
        self._lock = threading.Lock()
        self._stderr: list[str] = []
        self._ready: queue.Queue[dict] = queue.Queue()
        self._answers[0] = self._ready
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_err, daemon=True).start()
        try:
            self._ready.get(timeout=60)
        except queue.Empty:
            self.close()
            raise BrowserError(f"the browser driver did not start: {''.join(self._stderr)[-2000:]}") from None

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                q = self._answers.get(msg.get("id"))
            if q is not None:
                q.put(msg)

    def _read_err(self) -> None:
        assert self._proc.stderr is not None
        for line in self._proc.stderr:
            self._stderr.append(line)

    def call(self, cmd: str, timeout: float = 30, **args: Any) -> Any:
        i = next(self._ids)
        q: queue.Queue[dict] = queue.Queue()
        with self._lock:
            self._answers[i] = q
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"id": i, "cmd": cmd, "args": args}) + "\n")
        self._proc.stdin.flush()
        try:
            msg = q.get(timeout=timeout)
        except queue.Empty:
            raise BrowserError(f"{cmd}: no answer within {timeout}s; driver stderr: "
                               f"{''.join(self._stderr)[-2000:]}") from None
        finally:
            with self._lock:
                self._answers.pop(i, None)
        if not msg.get("ok"):
            raise BrowserError(f"{cmd} failed: {msg.get('error')}")
        return msg.get("result")

    def page(self, width: int = 1280, height: int = 900, init_script: str | None = None) -> Page:
        """A fresh context and page; `init_script` runs in every document before the page's own scripts."""
        return Page(self, self.call("newPage", viewport={"width": width, "height": height}, initScript=init_script))

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self._proc.stdin.flush()
                self._proc.wait(20)
            except (OSError, subprocess.TimeoutExpired, AssertionError):
                self._proc.kill()
                self._proc.wait(10)


class Page:
    def __init__(self, browser: Browser, pid: str):
        self.b, self.id = browser, pid

    def goto(self, url: str) -> str:
        return self.b.call("goto", page=self.id, url=url)

    def url(self) -> str:
        return self.b.call("url", page=self.id)

    def js(self, function: str, arg: Any = None) -> Any:
        """Call a JavaScript function (its source) in the page with `arg` (JSON); returns its JSON result."""
        return self.b.call("evaluate", page=self.id, expression=function, arg=arg)

    def wait(self, function: str, arg: Any = None, timeout: float = 15) -> Any:
        """The first truthy result of `function(arg)`, polled in the page until a deadline."""
        return self.b.call("waitForFunction", timeout=timeout + 10, page=self.id, expression=function, arg=arg,
                           timeoutMs=int(timeout * 1000))

    def click(self, selector: str) -> None:
        self.b.call("click", page=self.id, selector=selector)

    def download(self, selector: str) -> dict[str, str]:
        """Click `selector` and return the file it offers: {name, text}."""
        return self.b.call("download", page=self.id, selector=selector)

    def check(self, selector: str) -> None:
        self.b.call("check", page=self.id, selector=selector)

    def fill(self, selector: str, value: str) -> None:
        self.b.call("fill", page=self.id, selector=selector, value=value)

    def press(self, key: str) -> None:
        self.b.call("press", page=self.id, key=key)

    def box(self, selector: str) -> dict[str, float]:
        box = self.b.call("box", page=self.id, selector=selector)
        assert box, f"{selector} is not visible"
        return box

    def drag(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        self.b.call("drag", page=self.id, **{"from": list(start), "to": list(end)})

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        self.b.call("screenshot", page=self.id, path=str(path), fullPage=full_page)
        return path

    def requests(self) -> list[dict[str, str]]:
        return self.b.call("requests", page=self.id)

    def clear_requests(self) -> None:
        self.b.call("clearRequests", page=self.id)

    def logs(self) -> dict[str, list]:
        return self.b.call("logs", page=self.id)

    def route(self, pattern: str, body: str, status: int = 200) -> None:
        self.b.call("route", page=self.id, pattern=pattern, body=body, status=status)

    def axe(self, options: dict | None = None) -> dict:
        return self.b.call("axe", timeout=60, page=self.id, options=options or {})

    def close(self) -> None:
        self.b.call("closePage", page=self.id)
