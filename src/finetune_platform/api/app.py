"""The FastAPI application: `finetune api` serves it; `create_app` builds it for tests and benchmarks."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from finetune_platform import __version__
from finetune_platform.errors import ErrorCode, PlatformError
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
DENIALS = {401, 403, 404, 413, 429}  # 404: also what another user's object answers
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
    """Every refused request goes into the audit log (its own transaction: the request's rolled back)."""
    if getattr(request.state, "audited", False):
        return
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import record

    route = request.scope.get("route")
    try:
        with session_scope(request.app.state.settings) as session:
            record(
                session,
                "denied",
                actor_id=getattr(request.state, "actor_id", None),
                target=f"{request.method} {getattr(route, 'path', request.url.path)}"[:255],
                outcome="denied",
                address=request.client.host if request.client else None,
                detail={"status": status_code, "reason": reason[:200]},
            )
    except Exception as exc:  # the refusal stands even if the log cannot be written
        logger.error("audit: could not record a denial: %s", exc)


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
    )
    app.state.settings = settings
    app.state.tokens = tokens
    app.state.throttle = login_throttle(settings)
    app.include_router(router)

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
        if code in DENIALS:
            await run_in_threadpool(_audit_denial, request, code, exc.message)
        return JSONResponse(body, status_code=code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        from fastapi.concurrency import run_in_threadpool

        if exc.status_code in DENIALS:
            await run_in_threadpool(_audit_denial, request, exc.status_code, str(exc.detail))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = [
            {"field": ".".join(str(part) for part in error["loc"]), "message": error["msg"]}
            for error in exc.errors()
        ]
        return JSONResponse({"detail": "invalid request", "problems": problems}, status_code=422)

    if settings.METRICS_ENABLED:
        from finetune_platform.observability import JobCollector, system_registry

        registry = system_registry(settings)
        registry.register(JobCollector(settings))
        mount_metrics(app, registry)
    return app


def mount_metrics(app: FastAPI, registry: Any) -> RequestMetrics:
    """GET /metrics serving ``registry``, and request counts and latencies by route template and status."""
    metrics = RequestMetrics(app.router, registry)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=PlainTextResponse)
    def prometheus_metrics() -> PlainTextResponse:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Wrap, metrics=metrics)
    return metrics


class _Wrap:
    """Put the metrics middleware (created above, holding the registry /metrics reads) in the stack."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        metrics.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.metrics(scope, receive, send)
