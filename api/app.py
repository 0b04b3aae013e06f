"""The FastAPI application: settings, the read-only pool, auth and CORS, health, workloads; metrics in routes.py."""

import asyncio
import contextlib
import hmac
import logging
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from trainscope import __version__
from trainscope.api import errors, queries
from trainscope.api.answers import Answers
from trainscope.api.datasources import data_source_of
from trainscope.api.errors import ApiError, Error
from trainscope.api.models import Status, Workload, WorkloadList
from trainscope.api.params import MAX_NAME
from trainscope.api.queries import init_connection
from trainscope.api.ui import mount_ui
from trainscope.collector.progress import detect_primary_metric
from trainscope.collector.store.errors import first_line, is_unavailable

log = logging.getLogger(__name__)

TOKEN_ENV = "TRAINSCOPE_API_TOKEN"

# A stream needs points.ingest_xid (migration 0003); the API never migrates, it only checks.
READY_TIMEOUT = 5.0  # seconds /readyz waits for the database before answering 503 (a probe may give up sooner)
SPARE_WAIT = 0.05  # seconds a request waits for a second connection (a new one: the connect) before going alone
_SCHEMA_CHECK = ("SELECT EXISTS (SELECT 1 FROM information_schema.columns "
                 "WHERE table_name = 'points' AND column_name = 'ingest_xid')")


@dataclass(slots=True)
class ApiSettings:
    """How one API server runs. The token and the URL (it may hold a password) stay out of repr and logs."""

    database_url: str = field(repr=False)
    token: str | None = field(default=None, repr=False)
    cors_origins: tuple[str, ...] = ()
    pool_size: int = 10
    max_limit: int = 100_000
    stream_interval: float = 1.0  # seconds between a stream's polls
    stream_batch: int = 1000  # points per SSE event at most
    heartbeat: float = 15.0
    fleet_interval: float = 2.0  # seconds between the fleet stream's checks for a change
    # Bounds on what one request may hold (docs/api.md, Limits): a statement runs at most `statement_timeout`
    # seconds; waiting for a free pool connection at most `acquire_timeout` (then 503).
    statement_timeout: float = 30.0
    acquire_timeout: float = 10.0
    # Downsampled answers kept for identical requests while still exact (api/answers.py); 0 turns it off.
    answer_cache_mb: int = 64
    # trainscope local: uid -> live facts from the running collector (phase, progress...), None if not running.
    live: Callable[[str], dict[str, Any] | None] | None = None


class Database:
    """The API's pool: created on first use (a database that is down at start only delays answers), sessions
    read-only, connection failures answered as 503."""

    def __init__(self, dsn: str, size: int, statement_timeout: float = 30.0, acquire_timeout: float = 10.0):
        self._dsn, self._size = dsn, size
        self.statement_timeout, self.acquire_timeout = statement_timeout, acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._creating: asyncio.Future[asyncpg.Pool] | None = None
        self.schema_ok = False

    async def pool(self, wait: float | None = None) -> asyncpg.Pool:
        """The pool, created on first use; `wait` bounds how long this caller waits for its creation (readiness
        answers within READY_TIMEOUT even when the first connection hangs on a frozen server)."""
        if self._pool is not None:
            return self._pool
        if self._creating is None or self._creating.done():
            self._creating = asyncio.ensure_future(self._create())
            self._creating.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        try:
            return await asyncio.wait_for(asyncio.shield(self._creating), wait)
        except TimeoutError as exc:
            raise errors.unavailable(f"no database connection within {wait:g} s") from exc

    async def _create(self) -> asyncpg.Pool:
        # asyncpg's connect waits 60 s by default for a server that accepted the connection but does not answer
        # (a frozen postmaster); a request would wait that long for its 503.
        try:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._size, init=init_connection, timeout=self.acquire_timeout,
                server_settings=self._session_settings())
        except TimeoutError as exc:
            raise errors.unavailable(f"the database did not answer within {self.acquire_timeout:g} s") from exc
        except Exception as exc:
            if is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError):
                raise errors.unavailable() from exc
            raise
        return self._pool

    def _session_settings(self) -> dict[str, str]:
        """Read-only sessions whose statements and open transactions are time-bounded by PostgreSQL itself, so
        no request (nor a client that stops reading) can hold a connection or a snapshot (VACUUM) for long."""
        ms = str(max(1, round(self.statement_timeout * 1000)))
        return {"default_transaction_read_only": "on", "application_name": "trainscope-api",
                "statement_timeout": ms, "idle_in_transaction_session_timeout": ms}

    @contextlib.asynccontextmanager
    async def acquire(self, wait: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for one short piece of work; waits `wait` (default `acquire_timeout`) at most
        (then 503)."""
        pool = await self.pool(wait)
        try:
            conn = await pool.acquire(timeout=self.acquire_timeout if wait is None else wait)
        except TimeoutError as exc:
            raise errors.unavailable(f"all {self._size} database connections are busy") from exc
        except Exception as exc:
            if is_unavailable(exc):
                raise errors.unavailable() from exc
            raise
        broken = False
        try:
            yield conn
        except asyncpg.QueryCanceledError as exc:
            raise errors.unavailable(f"the query ran longer than {self.statement_timeout:g} s") from exc
        except Exception as exc:
            if is_unavailable(exc):
                broken = True
                log.warning("database connection dropped: %s %s", type(exc).__name__,
                            first_line(exc, 200))  # no URL, no query
                raise errors.unavailable() from exc
            raise
        finally:
            if broken:  # down or hung: a normal release would wait on the server to cancel the query; drop it
                conn.terminate()
            await pool.release(conn)

    @contextlib.asynccontextmanager
    async def spare(self) -> AsyncIterator[asyncpg.Connection | None]:
        """A second connection for one request's parallel part, only if one is free now (never waits: when every
        connection is busy, each serves a request of its own and splitting one would not help); else None."""
        pool = self._pool
        conn = None
        if pool is not None and not self.busy():
            with contextlib.suppress(TimeoutError):
                conn = await pool.acquire(timeout=SPARE_WAIT)
        try:
            yield conn
        finally:
            if conn is not None:  # its reset gets the pool's budget: by default asyncpg gives a release the
                # acquire's timeout (SPARE_WAIT), which a busy server's reset overran: the whole request became a 503
                await pool.release(conn, timeout=self.acquire_timeout)  # type: ignore[union-attr]

    @property
    def size(self) -> int:
        return self._size

    def busy(self) -> bool:
        """Every connection of the pool is in use (a request now would wait for one)."""
        pool = self._pool
        return pool is not None and pool.get_size() >= self._size and pool.get_idle_size() == 0

    async def check_schema(self, *, fresh: bool = False) -> bool:
        """The schema is migrated (cached once true); `fresh` asks the database now, within READY_TIMEOUT, as
        readiness must (asyncpg's own timeouts: cancelling from outside would wait on a hung server's answer)."""
        if fresh or not self.schema_ok:
            async with self.acquire(READY_TIMEOUT if fresh else None) as conn:
                self.schema_ok = bool(await conn.fetchval(_SCHEMA_CHECK, timeout=READY_TIMEOUT if fresh else None))
        return self.schema_ok

    async def close(self) -> None:
        if self._creating is not None and not self._creating.done():
            self._creating.cancel()
            await asyncio.gather(self._creating, return_exceptions=True)
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": Error, "description": "a parameter is invalid (the message names it)"},
    401: {"model": Error, "description": "a bearer token is configured and the request has no valid one"},
    404: {"model": Error, "description": "no such workload"},
    414: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "the URL is longer than the server accepts (64 KiB)"},
    431: {"content": {"text/plain": {"schema": {"type": "string"}}},
          "description": "the request line and headers are larger than the server accepts (128 KiB)"},
    503: {"model": Error, "description": "the database is unavailable"},
}


def _workload_item(row: asyncpg.Record, latest: list[asyncpg.Record], live: dict[str, Any] | None) -> dict:
    """One workload as the list shows it: the store's facts, plus live ones when this process collects it."""
    spec = row["spec"] if isinstance(row["spec"], dict) else {}
    step = max((r["step"] for r in latest), default=None)
    total = spec.get("totalSteps") if isinstance(spec.get("totalSteps"), int) else None
    name = spec.get("primaryMetric") if isinstance(spec.get("primaryMetric"), str) else None
    name = name or detect_primary_metric({r["metric"] for r in latest})
    candidates = [r for r in latest if r["metric"] == name]
    primary = None
    if candidates:
        p = max(candidates, key=lambda r: (r["step"], r["ts"]))
        value = p["value"]
        primary = {"name": name, "value": value if math.isfinite(value) else None,
                   "iteration": p["step"], "timestamp": p["ts"], "data_source": data_source_of(p["kind"])}
    deleted = row["deleted_at"] is not None
    phase = (live or {}).get("phase") or ("Deleted" if deleted else None)
    progress = (live or {}).get("progress")
    if progress is None and total and step is not None:
        progress = min(1.0, max(0.0, step / total))
    return {"uid": row["uid"], "namespace": row["namespace"], "name": row["name"], "deleted": deleted,
            "phase": phase, "step": step, "total_steps": total, "progress": progress, "primary_metric": primary,
            "data_sources": sorted({data_source_of(r["kind"]) for r in latest}),
            "created_at": row["created_at"], "updated_at": row["updated_at"], "deleted_at": row["deleted_at"]}


async def not_ready(db: Database) -> str | None:
    """Why the API cannot answer now (None: ready): the store unreachable, unmigrated, or every pooled
    connection busy (requests would queue); checked with a real round trip each time, never cached."""
    if db.busy():
        return f"all {db.size} database connections are busy"
    try:  # a fresh round trip within READY_TIMEOUT: down, hung, or no connection free in time
        ok = await db.check_schema(fresh=True)
    except ApiError as err:
        return err.message
    if not ok:
        return "database schema is not migrated (trainscope db upgrade, or start the operator once)"
    return None


def create_app(settings: ApiSettings) -> FastAPI:
    """The API over the store at `settings.database_url`; it only reads."""
    from trainscope.api import fleetstream, overview, routes

    db = Database(settings.database_url, settings.pool_size, settings.statement_timeout, settings.acquire_timeout)
    stopping = asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        stopping.set()
        await db.close()

    app = FastAPI(
        title="trainscope Training Performance API",
        version=__version__,
        description="Training metrics collected by trainscope, read-only. Seed-compatible endpoints "
                    "(`/api/v1/workloads/{uid}/metrics/...`) plus pagination, downsampling, export and a live "
                    "stream. See docs/api.md.",
        lifespan=lifespan,
        separate_input_output_schemas=False,
    )
    app.state.db = db
    app.state.stopping = stopping
    app.state.settings = settings
    errors.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET"],
                           allow_headers=["Authorization", "Last-Event-ID", "Cache-Control"],
                           expose_headers=["X-Next-Cursor", "X-Total-Count", "X-Downsampled"], max_age=600)

    bearer = HTTPBearer(auto_error=False, description="only when the server has a token (TRAINSCOPE_API_TOKEN)")

    async def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        token = settings.token or ""
        given = creds.credentials if creds is not None else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise ApiError(401, "Unauthorized", "a valid bearer token is required",
                           {"WWW-Authenticate": 'Bearer realm="trainscope"'})

    @app.get("/healthz", response_model=Status, tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is up (liveness); says nothing about the database."""
        return {"status": "ok"}

    @app.get("/readyz", response_model=Status, tags=["health"],
             responses={503: {"model": Error, "description": "database unreachable or not migrated"}})
    async def readyz() -> Any:
        """The database answers now (within READY_TIMEOUT), has the schema this API reads, and a connection is
        free (readiness)."""
        why = await not_ready(db)
        if why is not None:
            return JSONResponse({"code": "NotReady", "message": why}, status_code=503)
        return {"status": "ready"}

    async def no_nul(request: Request) -> None:
        # PostgreSQL text cannot hold NUL: refuse it here, naming the parameter, instead of failing in a query.
        for name, value in (*request.path_params.items(), *request.query_params.multi_items()):
            if "\x00" in str(value):
                raise errors.invalid(name, "must not contain a NUL character")

    # The schema declares the bearer scheme only when a token is configured: then it is required, else not.
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)] if settings.token else [],
                    responses=ERROR_RESPONSES)
    api.dependencies.insert(0, Depends(no_nul))

    async def list_workloads(namespace: str | None, name: str | None, uid: str | None,
                             include_deleted: bool) -> list[dict]:
        async with db.acquire() as conn:
            rows = await queries.workloads(conn, namespace=namespace, name=name, uid=uid,
                                           include_deleted=include_deleted)
            latest = await queries.latest_points(conn, [r["uid"] for r in rows]) if rows else []
            conds = await queries.current_conditions(conn, [r["uid"] for r in rows]) if rows else []
        by_uid: dict[str, list[asyncpg.Record]] = {}
        for r in latest:
            by_uid.setdefault(r["workload_uid"], []).append(r)
        conditions: dict[str, list[dict[str, str]]] = {}
        for c in conds:
            conditions.setdefault(c["workload_uid"], []).append(
                {"type": c["type"], "status": c["status"], "reason": c["reason"], "message": c["message"]})
        live = settings.live or (lambda uid: None)
        return [{**_workload_item(r, by_uid.get(r["uid"], []), live(r["uid"])),
                 "conditions": conditions.get(r["uid"], [])} for r in rows]

    PathName = Annotated[str, Path(max_length=MAX_NAME)]
    Namespace = Annotated[str | None, Query(max_length=MAX_NAME, description="only workloads of this namespace")]
    IncludeDeleted = Annotated[bool, Query(description="also workloads whose Workload object is gone")]

    @api.get("/workloads", response_model=WorkloadList, tags=["workloads"])
    async def workloads(namespace: Namespace = None, include_deleted: IncludeDeleted = True) -> dict:
        """Workloads the store knows, with the highest stored step and the primary metric's newest point."""
        items = await list_workloads(namespace or None, None, None, include_deleted)
        return {"workloads": items, "total_count": len(items)}

    @api.get("/namespaces/{namespace}/workloads", response_model=WorkloadList, tags=["workloads"])
    async def namespace_workloads(namespace: PathName, include_deleted: IncludeDeleted = True) -> dict:
        """The workloads of one namespace."""
        items = await list_workloads(namespace, None, None, include_deleted)
        return {"workloads": items, "total_count": len(items)}

    @api.get("/workloads/{uid}", response_model=Workload, tags=["workloads"])
    async def workload(uid: PathName) -> dict:
        """One workload by UID."""
        items = await list_workloads(None, None, uid, True)
        if not items:
            raise errors.not_found(repr(uid))
        return items[0]

    @api.get("/namespaces/{namespace}/workloads/{name}", response_model=Workload, tags=["workloads"])
    async def workload_by_name(namespace: PathName, name: PathName) -> dict:
        """One workload by namespace and name (the live one, else the one seen last)."""
        items = await list_workloads(namespace, name, None, True)
        if not items:
            raise errors.not_found(f"{namespace}/{name}")
        return sorted(items, key=lambda i: (not i["deleted"], i["updated_at"]))[-1]

    app.state.answers = answers = Answers(settings.answer_cache_mb << 20)
    routes.install(api, db, settings, stopping, answers)
    overview.install(api, db)  # GET /api/v1/overview: the fleet view's sparklines and pace
    fleetstream.install(api, db, settings, stopping, list_workloads)  # GET /api/v1/overview/stream: it live
    app.include_router(api)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    mount_ui(app)  # the dashboard at `/` (api/static, built from web/)
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema without its 422 answers: invalid parameters are 400s here (documented per route)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes,
                             separate_input_output_schemas=False)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema
