"""The FastAPI application: `finetune api` serves it; `create_app` builds it for tests and benchmarks."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from finetune_platform import __version__
from finetune_platform.errors import ErrorCode, PlatformError
from finetune_platform.http_guard import BodyLimit, SecurityHeaders, invalid_fields
from finetune_platform.settings import Settings, get_settings

logger = logging.getLogger("finetune_platform.api")

_STATUS = {
    ErrorCode.INVALID_CONFIG: 422,
    ErrorCode.INVALID_DATASET: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNSUPPORTED: 422,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
}
DENIALS = {401, 403, 404, 405, 413, 429}  # 404: also what another user's object answers
AUDITED = DENIALS | {400, 422}  # refused input too ("rejected"): a client probing the API shows in the log
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class RequestMetrics:
    """Counts and times requests per route template and status (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, registry: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.app = app
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "finetune_api_requests", "API requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "finetune_api_request_seconds",
            "API request latency",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500

        async def sending(message):
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.requests.labels(scope["method"], template, str(code)).inc()
            self.latency.labels(scope["method"], template, str(code)).observe(time.perf_counter() - started)


def _audit_denial(request: Request, status_code: int, reason: str) -> None:
    """Every refused request goes into the audit log (its own transaction: the request's rolled back): action
    "denied" (outcome "denied") for DENIALS, "rejected" (outcome "failed") for invalid input (422)."""
    if getattr(request.state, "audited", False):
        return
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import record

    route = request.scope.get("route")
    try:
        with session_scope(request.app.state.settings) as session:
            denied = status_code in DENIALS
            record(
                session,
                "denied" if denied else "rejected",
                actor_id=getattr(request.state, "actor_id", None),
                target=f"{request.method} {getattr(route, 'path', request.url.path)}"[:255],
                outcome="denied" if denied else "failed",
                address=request.client.host if request.client else None,
                detail={"status": status_code, "reason": reason[:200]},
            )
        request.state.audited = True  # once: a route's refusal may also end in the guard's answer
    except Exception as exc:  # the refusal stands even if the log cannot be written
        logger.error("audit: could not record a denial: %s", exc)


LOGIN_BODY_BYTES = 4096  # a login form: a username of at most 64 characters and a password of at most 1,024


def _body_caller(scope: Scope) -> str | None:
    """Why a request with a body is refused before it is read (401), or None: the same token check as the
    routes' ``current_user`` (signature, expiry, revocation, an active account)."""
    from finetune_platform.api.auth import NOT_AUTHENTICATED, InvalidToken, token_caller

    app = scope["app"]
    scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return NOT_AUTHENTICATED
    try:
        user = token_caller(app.state.tokens, app.state.settings, token.strip())
    except InvalidToken as exc:
        return str(exc)
    scope.setdefault("state", {})["actor_id"] = user.id
    return None


async def _audit_guard_refusal(scope: Scope, status_code: int, detail: str) -> None:
    """The body guard's own answers (400, 401 unread, 413) never reach FastAPI's exception handlers, which
    audit every other refusal: the guard reports them here. One already audited is not written twice."""
    from fastapi.concurrency import run_in_threadpool

    await run_in_threadpool(_audit_denial, Request(scope), status_code, detail)


def create_app(settings: Settings | None = None) -> FastAPI:
    from finetune_platform.api.auth import Tokens, login_throttle
    from finetune_platform.api.routes import router
    from finetune_platform.db.session import ensure_database

    settings = settings or get_settings()
    tokens = Tokens(settings)  # refuses to start without a usable signing secret
    ensure_database(settings)
    app = FastAPI(
        title="finetune-platform",
        version=__version__,
        description="Train LoRA adapters as queued tasks, track them, and manage the model registry.",
        docs_url=None,  # served below from local files: the docs page loads nothing from a CDN
        redoc_url=None,
    )
    mount_docs(app)
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.throttle = login_throttle(settings)
    app.include_router(router)
    # Bodies are capped per route and an anonymous body is refused unread, before FastAPI parses it; the
    # refusals these guards answer themselves are audited like every other.
    app.add_middleware(
        BodyLimit,
        default_limit=settings.MAX_JSON_BODY_BYTES,
        limits={("POST", "/datasets"): settings.MAX_UPLOAD_BYTES, ("POST", "/login"): LOGIN_BODY_BYTES},
        authenticate=_body_caller,
        public=[("POST", "/login")],
        on_refusal=_audit_guard_refusal,
    )
    app.add_middleware(SecurityHeaders, environment=settings.ENVIRONMENT, no_store_paths=("/login",))

    @app.exception_handler(PlatformError)
    async def platform_error(request: Request, exc: PlatformError):
        from fastapi.concurrency import run_in_threadpool

        from finetune_platform.data.validation import DatasetValidationError

        code = _STATUS.get(exc.code, 500)
        body: dict = {"detail": exc.message, "code": exc.code.value}
        if isinstance(exc, DatasetValidationError):
            body["report"] = exc.report.to_json()
            for document in body["report"]["files"]:
                document["path"] = document["role"]  # no server paths in responses
        if code in AUDITED:
            await run_in_threadpool(_audit_denial, request, code, exc.message)
        return JSONResponse(body, status_code=code)

    @app.exception_handler(StarletteHTTPException)  # FastAPI's and the router's own (unknown path: 404, 405)
    async def http_error(request: Request, exc: StarletteHTTPException):
        from fastapi.concurrency import run_in_threadpool

        if exc.status_code in AUDITED:
            await run_in_threadpool(_audit_denial, request, exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        from fastapi.concurrency import run_in_threadpool

        problems = invalid_fields(exc)
        first = f": {problems[0]['field']}: {problems[0]['message']}" if problems else ""
        await run_in_threadpool(_audit_denial, request, 422, f"invalid request{first}")
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError):
        """A value the database cannot hold (PostgreSQL: a NUL character, a string past its column): the
        client's input, never a server fault."""
        from fastapi.concurrency import run_in_threadpool

        detail = "invalid request: a value the database cannot store (a NUL character, or too long)"
        await run_in_threadpool(_audit_denial, request, 422, detail)
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(SqlTimeoutError)
    async def busy(request: Request, exc: SqlTimeoutError):
        logger.warning("database connection pool exhausted: %s", exc)
        return JSONResponse(
            {"detail": "the server is busy; retry shortly"}, status_code=503, headers={"Retry-After": "2"}
        )

    if settings.METRICS_ENABLED:
        from finetune_platform.observability import JobCollector, system_registry

        registry = system_registry(settings)
        registry.register(JobCollector(settings))
        mount_metrics(app, registry, settings)
    return app


DOCS_ASSETS = "/docs-assets"


def mount_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the JavaScript and CSS shipped in the fastapi-offline package:
    a browser opening them fetches nothing from a third party (no CDN that could serve altered scripts)."""
    from pathlib import Path

    import fastapi_offline
    from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API docs",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc():
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} - API reference",
            redoc_js_url=f"{DOCS_ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            with_google_fonts=False,
        )


def mount_metrics(app: FastAPI, registry: Any, settings: Settings) -> RequestMetrics:
    """GET /metrics serving ``registry``, and request counts and latencies by route template and status."""
    metrics = RequestMetrics(app.router, registry)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus_metrics(request: Request) -> PlainTextResponse:
        """Open in local mode; elsewhere only with `Authorization: Bearer <METRICS_TOKEN>` (404 when no token
        is configured): job counts, queue depth and latencies are not for every client."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        refusal = metrics_refusal(settings, request.headers.get("authorization"))
        if refusal is not None:
            raise HTTPException(refusal[0], refusal[1], headers={"WWW-Authenticate": "Bearer"})
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Wrap, metrics=metrics)
    return metrics


def metrics_refusal(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """Why a /metrics request is refused (status, detail), or None."""
    import hmac

    if settings.ENVIRONMENT == "local":
        return None
    if settings.METRICS_TOKEN is None:
        return 404, "Not Found"
    scheme, _, credentials = (authorization or "").partition(" ")
    expected = settings.METRICS_TOKEN.get_secret_value().encode("utf-8")
    if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode("utf-8"), expected):
        return 401, "metrics need Authorization: Bearer <METRICS_TOKEN>"
    return None


class _Wrap:
    """Put the metrics middleware (created above, holding the registry /metrics reads) in the stack."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        metrics.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.metrics(scope, receive, send)
