"""The dashboard's committed bundle (api/static/, built from web/): fresh, small, offline, and served at `/` by
mount_ui without disturbing the API's routes. Also runs the front end's unit tests (node --test web/test/)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from trainscope.api.app import ApiSettings, create_app
from trainscope.api.ui import STATIC_DIR, mount_ui

ROOT = Path(__file__).resolve().parent.parent
WEB = ROOT / "web"
INPUTS = ("index.html", "package.json", "package-lock.json", "vite.config.mjs", "buildhash.mjs", "src")
MAX_GZIP = 100 * 1024  # the dashboard stays a small page: under 100 KiB gzipped


def sources_hash() -> str:
    """web/buildhash.mjs in Python: sha256 over (path NUL bytes NUL) of every input file, paths sorted."""
    files = []
    for item in INPUTS:
        p = WEB / item
        files += [f for f in p.rglob("*") if f.is_file()] if p.is_dir() else [p]
    h = hashlib.sha256()
    for rel in sorted(f.relative_to(WEB).as_posix() for f in files):
        h.update(rel.encode() + b"\0" + (WEB / rel).read_bytes() + b"\0")
    return h.hexdigest()


def bundle_files(base: Path) -> dict[str, bytes]:
    return {f.relative_to(base).as_posix(): f.read_bytes() for f in sorted(base.rglob("*")) if f.is_file()}


def test_the_committed_bundle_was_built_from_these_sources() -> None:
    info = json.loads((STATIC_DIR / "build-info.json").read_text())
    assert info["sources_sha256"] == sources_hash(), (
        "api/static/ is stale: web/ changed since it was built. Run `npm run build` in web/ and commit api/static/")


def test_building_the_sources_gives_the_committed_bundle_byte_for_byte(tmp_path: Path) -> None:
    assert (WEB / "node_modules" / "vite").is_dir(), "run `npm ci` in web/ (make test does)"
    out = tmp_path / "static"
    npm = shutil.which("npm")
    assert npm
    run = subprocess.run([npm, "run", "--silent", "build"], cwd=WEB, env={**os.environ, "TRAINSCOPE_UI_OUT": str(out)},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert bundle_files(out) == bundle_files(STATIC_DIR)


def test_the_bundle_is_small_and_needs_no_network() -> None:
    files = bundle_files(STATIC_DIR)
    size = sum(len(gzip.compress(body, 9)) for body in files.values())
    print(f"\ndashboard bundle: {len(files)} files, {size / 1024:.1f} KiB gzipped")
    assert size < MAX_GZIP
    index = files["index.html"].decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', index)
    assets = [r for r in refs if r.startswith("./assets/")]
    assert len(assets) == 2 and all(r.removeprefix("./") in files for r in assets)  # one script, one style
    assert all(not re.match(r"^(https?:)?//", r) for r in refs), refs
    for name, body in files.items():
        text = body.decode("utf-8", "replace")
        # no fetch/import/stylesheet from another host; the SVG namespace URI is a name, not a download
        urls = set(re.findall(r"https?://[\w.-]+[^\s\"'`)]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{name} mentions {urls}"


def test_mount_ui_serves_the_page_and_keeps_the_api_routes() -> None:
    # The pool is created on first use: these routes need no database.
    app = create_app(ApiSettings(database_url="postgresql://nobody@127.0.0.1:1/none"))  # mounts the dashboard
    transport = httpx.ASGITransport(app=app)

    async def go() -> None:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            page = await c.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "default-src 'self'" in page.headers["content-security-policy"]
            assert page.text == (STATIC_DIR / "index.html").read_text()
            script = re.search(r'src="\./(assets/[^"]+\.js)"', page.text)
            assert script
            js = await c.get("/" + script.group(1))
            assert js.status_code == 200 and "javascript" in js.headers["content-type"]
            assert "immutable" in js.headers["cache-control"]
            missing = await c.get("/assets/nope.js")
            assert missing.status_code == 404
            assert (await c.get("/healthz")).json() == {"status": "ok"}
            schema = (await c.get("/openapi.json")).json()
            assert "/" not in schema["paths"] and "/api/v1/workloads" in schema["paths"]
            assert (await c.get("/docs")).status_code == 200
            nothing = await c.get("/api/v1/nothing-here")
            assert nothing.status_code == 404 and nothing.json()["code"] == "NotFound"

    asyncio.run(go())


def test_without_a_bundle_the_page_says_so(tmp_path: Path) -> None:
    app = FastAPI()
    mount_ui(app, tmp_path)

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.get("/")

    r = asyncio.run(go())
    assert r.status_code == 503 and "not built" in r.text


@pytest.mark.timeout(60)
def test_front_end_unit_tests() -> None:
    node = shutil.which("node")
    assert node
    run = subprocess.run([node, "--test", "test/"], cwd=WEB, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^# fail 0$", run.stdout, re.M) and re.search(r"^# pass [1-9]", run.stdout, re.M)
