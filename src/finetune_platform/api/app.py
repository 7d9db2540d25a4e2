"""The FastAPI application: `finetune api` serves it; `create_app` builds it for tests and benchmarks."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as SqlTimeoutError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from finetune_platform import __version__
from finetune_platform.api.auth import NOT_AUTHENTICATED, login_throttle
from finetune_platform.api.routes import ROUTERS
from finetune_platform.api.schemas import json_errors
from finetune_platform.broker import queue_size
from finetune_platform.db.session import ensure_database, session_scope
from finetune_platform.errors import PlatformError
from finetune_platform.http_guard import BodyLimit, SecurityHeaders, invalid_fields
from finetune_platform.observability import mount_metrics, system_registry
from finetune_platform.security import InvalidToken, Tokens
from finetune_platform.services.audit import record
from finetune_platform.services.job_metrics import JobCollector
from finetune_platform.services.sweep_metrics import SweepCollector
from finetune_platform.services.users import token_caller
from finetune_platform.settings import Settings, get_settings

logger = logging.getLogger("finetune_platform.api")

DENIALS = {401, 403, 404, 405, 413, 429}  # 404: also what another user's object answers
AUDITED = DENIALS | {400, 422}  # refused input too ("rejected"): a client probing the API shows in the log


def _audit_denial(request: Request, status_code: int, reason: str) -> None:
    """Every refused request goes into the audit log (its own transaction: the request's rolled back): action
    "denied" (outcome "denied") for DENIALS, "rejected" (outcome "failed") for invalid input (422)."""
    if getattr(request.state, "audited", False):
        return
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
    await run_in_threadpool(_audit_denial, Request(scope), status_code, detail)


def create_app(settings: Settings | None = None) -> FastAPI:
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
    for router in ROUTERS:
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
        # lazy: pandas and pyarrow (data.validation), not loaded at API start
        from finetune_platform.data.validation import DatasetValidationError

        code = exc.http_status  # the table in errors.py, shared with the inference server
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
        if exc.status_code in AUDITED:
            await run_in_threadpool(_audit_denial, request, exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = invalid_fields(exc)
        first = f": {problems[0]['field']}: {problems[0]['message']}" if problems else ""
        await run_in_threadpool(_audit_denial, request, 422, f"invalid request{first}")
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    @app.exception_handler(DataError)
    async def unstorable(request: Request, exc: DataError):
        """A value the database cannot hold (PostgreSQL: a NUL character, a string past its column): the
        client's input, never a server fault."""
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
        registry = system_registry(settings)
        registry.register(JobCollector(settings, queue_depth=partial(queue_size, settings)))
        registry.register(SweepCollector(settings))
        refusals = json_errors(
            401,
            404,
            e401="Outside local mode: no `Authorization: Bearer <METRICS_TOKEN>`, or a wrong one.",
            e404="Outside local mode with no METRICS_TOKEN configured: the route does not exist.",
        )
        mount_metrics(app, registry, settings, responses=refusals)
    return app


DOCS_ASSETS = "/docs-assets"


def mount_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc from the JavaScript and CSS shipped in the fastapi-offline package:
    a browser opening them fetches nothing from a third party (no CDN that could serve altered scripts)."""
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
