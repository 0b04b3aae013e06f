"""Errors in the seed's shape, `{"code": ..., "message": ...}`, for every failure the API answers itself."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from trainscope.collector.store.errors import first_line, is_unavailable

log = logging.getLogger(__name__)

INVALID = "RequestParameterInvalid"


class Error(BaseModel):
    """The body of every error answer."""

    code: str
    message: str


class ApiError(Exception):
    """An answer other than 200, raised anywhere before the body starts."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def invalid(param: str, why: str) -> ApiError:
    """400 naming the parameter."""
    return ApiError(400, INVALID, f"{param}: {why}")


def not_found(what: str) -> ApiError:
    return ApiError(404, "WorkloadNotFound", f"no workload {what}")


def unavailable(why: str = "the database is unavailable") -> ApiError:
    return ApiError(503, "StoreUnavailable", why, {"Retry-After": "5"})


def _body(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status, headers=headers)


_HTTP_CODES = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}


def install(app: FastAPI) -> None:
    """Route FastAPI's own errors (validation, unknown route) and store outages into the seed's shape."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": ("query", "?"), "msg": "invalid"}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header")]
        param = loc[0] if loc else "request"
        return _body(400, INVALID, f"{param}: {first.get('msg', 'invalid value')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "Error")
        return _body(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_unavailable(exc):  # the operator sees why (the exception's type and first line; no URL, no query)
            log.warning("database unavailable answering %s: %s %s", request.url.path, type(exc).__name__,
                        first_line(exc, 200))
            return _body(503, "StoreUnavailable", "the database is unavailable", {"Retry-After": "5"})
        log.exception("unexpected error answering %s", request.url.path)  # the path only: no query, no headers
        return _body(500, "InternalError", "internal error")
