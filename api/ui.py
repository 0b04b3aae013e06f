"""The web dashboard: the bundle built from web/ into api/static/, served at `/` by the API.

`mount_ui(app)` adds `GET /` (the page) and `/assets/...` (its script and style, content-hashed names). Nothing
else: the dashboard routes inside the page (`#/w/<uid>`) and talks to `api/v1/...` with relative URLs, so the
API's routes, `/healthz`, `/readyz`, `/openapi.json` and `/docs` are untouched and a path prefix in front of the
API works. Every asset is in the bundle (no CDN): the page works offline.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

# The page loads only its own files and talks only to this API. uPlot sets inline styles on its elements.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "same-origin"}


class _Assets(StaticFiles):
    """Static files whose names carry their content hash: cacheable for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
            response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def mount_ui(app: FastAPI, directory: Path = STATIC_DIR) -> None:
    """Serve the dashboard at `/` and its assets under `/assets`. Without a built bundle, `/` says so (503)."""
    index = directory / "index.html"
    assets = directory / "assets"
    page = index.read_bytes() if index.is_file() else None
    if page is None:
        log.warning("the dashboard bundle is missing (%s); build it with `npm run build` in web/", index)

    @app.get("/", include_in_schema=False)
    async def dashboard() -> Response:
        if page is None:
            return Response("The trainscope dashboard is not built into this package (api/static/index.html).\n",
                            status_code=503, media_type="text/plain")
        return HTMLResponse(page, headers=PAGE_HEADERS)

    if assets.is_dir():
        app.mount("/assets", _Assets(directory=assets), name="dashboard-assets")
