"""Prometheus metrics every exporter shares: the host's, the HTTP requests', and a worker's own.

Every exporter (API, worker, inference server) adds the host's ``system_cpu_percent``,
``system_memory_usage_gigabytes`` and ``system_disk_free_ratio``; the API and the inference server serve
``/metrics`` with request counts and latencies by route template (``mount_metrics``); workers serve theirs on
their own port (``finetune worker --metrics-port``). Job and sweep metrics come from the database at scrape time
(``services.job_metrics`` and ``services.sweep_metrics``, served by the API's /metrics).
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from starlette.types import ASGIApp, Receive, Scope, Send

from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.observability")
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class SystemCollector:
    """The host's CPU and memory use, and the free share of the disk holding the platform's data."""

    def __init__(self, data_path: Path) -> None:
        import psutil  # lazy: psutil, only in exporters that collect host metrics (not a declared dependency)

        self.psutil, self.data_path = psutil, data_path
        psutil.cpu_percent(interval=None)  # the first reading only starts the measurement

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "system_cpu_percent",
            "Host CPU use since the last scrape, percent",
            self.psutil.cpu_percent(interval=None),
        )
        memory = self.psutil.virtual_memory()
        yield GaugeMetricFamily(
            "system_memory_usage_gigabytes", "Host memory in use, GB", (memory.total - memory.available) / 1e9
        )
        path = self.data_path
        while not path.exists() and path != path.parent:
            path = path.parent
        disk = self.psutil.disk_usage(str(path))
        free = GaugeMetricFamily("system_disk_free_ratio", "Free share of the data disk", labels=["path"])
        free.add_metric(
            ["finetune_home"], disk.free / disk.total
        )  # what, not where: no server paths in /metrics
        yield free


def system_registry(settings: Settings) -> CollectorRegistry:
    """A registry with the host metrics (every exporter starts from one)."""
    registry = CollectorRegistry()
    registry.register(SystemCollector(Path(settings.FINETUNE_HOME)))
    return registry


class RequestMetrics:
    """Counts and times requests per route template and status (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, registry: Any = None) -> None:
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


def mount_metrics(
    app: FastAPI, registry: Any, settings: Settings, responses: dict[int | str, dict[str, Any]] | None = None
) -> RequestMetrics:
    """GET /metrics serving ``registry``, and request counts and latencies by route template and status;
    ``responses`` documents its refusals in the app's error body."""
    metrics = RequestMetrics(app.router, registry)

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses=responses,
    )
    def prometheus_metrics(request: Request) -> PlainTextResponse:
        """Open in local mode; elsewhere only with `Authorization: Bearer <METRICS_TOKEN>` (404 when no token
        is configured): job counts, queue depth and latencies are not for every client."""
        refusal = metrics_refusal(settings, request.headers.get("authorization"))
        if refusal is not None:
            raise HTTPException(refusal[0], refusal[1], headers={"WWW-Authenticate": "Bearer"})
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(_Wrap, metrics=metrics)
    return metrics


def metrics_refusal(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """Why a /metrics request is refused (status, detail), or None."""
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


class WorkerMetrics:
    """What a worker serves on its own port: that it is up, whether it is busy, its outcomes, the host."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.registry = system_registry(settings)
        labels = {"worker": name}
        self.up = Gauge("worker_up", "1 while the worker process runs", ["worker"], registry=self.registry)
        self.up.labels(**labels).set(1)
        self.busy = Gauge("worker_busy", "1 while the worker runs a job", ["worker"], registry=self.registry)
        self.outcomes = Counter(
            "worker_jobs",
            "Jobs this worker process ended, by outcome",
            ["worker", "outcome"],
            registry=self.registry,
        )
        self.started = Gauge(
            "worker_start_time_seconds", "When the worker process started", ["worker"], registry=self.registry
        )
        self.started.labels(**labels).set(time.time())
        self.name = name

    def serve(self, port: int, address: str = "0.0.0.0") -> None:
        start_http_server(port, addr=address, registry=self.registry)
        logger.info("worker metrics on http://%s:%d/metrics", address, port)

    def running(self, busy: bool) -> None:
        self.busy.labels(worker=self.name).set(1 if busy else 0)

    def ended(self, outcome: str) -> None:
        self.outcomes.labels(worker=self.name, outcome=outcome).inc()


_worker_metrics: WorkerMetrics | None = None


def install_worker_metrics(metrics: WorkerMetrics | None) -> None:
    global _worker_metrics
    _worker_metrics = metrics


def worker_metrics() -> WorkerMetrics | None:
    return _worker_metrics
