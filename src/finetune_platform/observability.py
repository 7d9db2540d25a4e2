"""Prometheus metrics of the platform.

Job metrics come from the database at scrape time (served by the API's /metrics), so they are exact across any
number of workers and survive restarts: ``task_success_total``, ``task_failure_total``, ``task_cancelled_total``,
``task_duration_seconds`` (histogram of finished jobs), ``task_running``, the running jobs' training speed and loss,
and each worker's last heartbeat. ``task_queue_length`` is read from the broker. Every exporter (API, worker,
inference server) adds the host's ``system_cpu_percent``, ``system_memory_usage_gigabytes`` and
``system_disk_free_ratio``; workers serve theirs on their own port (``finetune worker --metrics-port``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.observability")
OUTCOMES = (("succeeded", "task_success"), ("failed", "task_failure"), ("cancelled", "task_cancelled"))
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class JobCollector:
    """Job counts, durations and live progress from the database; the queue length from the broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        from sqlalchemy import func, select

        from finetune_platform.db.models import Job, JobStatus
        from finetune_platform.db.session import read_scope

        with read_scope(self.settings) as session:
            counts = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            finished = session.execute(
                select(Job.started_at, Job.finished_at).where(
                    Job.status.in_([JobStatus.SUCCEEDED.value, JobStatus.FAILED.value]),
                    Job.started_at.is_not(None),
                    Job.finished_at.is_not(None),
                )
            ).all()
            running = session.execute(
                select(Job.id, Job.kind, Job.progress, Job.lease_owner, Job.heartbeat_at).where(
                    Job.status == JobStatus.RUNNING.value
                )
            ).all()
        for status, name in (
            ("succeeded", "task_success"),
            ("failed", "task_failure"),
            ("cancelled", "task_cancelled"),
        ):
            yield CounterMetricFamily(
                name, f"Jobs {status} so far (after their last attempt)", counts.get(status, 0)
            )
        yield GaugeMetricFamily(
            "task_queued", "Jobs waiting in the database for a worker", counts.get("queued", 0)
        )
        yield GaugeMetricFamily("task_running", "Jobs running now", len(running))
        from finetune_platform.worker.app import queue_size

        waiting = queue_size(self.settings)
        if waiting is not None:
            yield GaugeMetricFamily("task_queue_length", "Messages waiting in the broker's queue", waiting)
        yield _duration_histogram([(end - start).total_seconds() for start, end in finished])
        speed = GaugeMetricFamily(
            "task_training_samples_per_second", "Training speed of running jobs", labels=["job_id", "worker"]
        )
        loss = GaugeMetricFamily(
            "task_training_loss", "Latest training loss of running jobs", labels=["job_id"]
        )
        progress = GaugeMetricFamily(
            "task_progress_percent", "Progress of running jobs", labels=["job_id", "kind"]
        )
        heartbeat = GaugeMetricFamily(
            "worker_last_heartbeat_timestamp_seconds",
            "When a busy worker last renewed its lease",
            labels=["worker"],
        )
        for job_id, kind, state, owner, beat in running:
            worker = (owner or "").split(":")[0]  # lease owners are name:pid:nonce
            state = state or {}
            if state.get("samples_per_second") is not None:
                speed.add_metric([job_id, worker], float(state["samples_per_second"]))
            if state.get("loss") is not None:
                loss.add_metric([job_id], float(state["loss"]))
            progress.add_metric([job_id, kind], float(state.get("percent") or 0.0))
            if beat is not None:  # SQLite hands back naive UTC times
                heartbeat.add_metric(
                    [worker], (beat if beat.tzinfo else beat.replace(tzinfo=UTC)).timestamp()
                )
        yield from (speed, loss, progress, heartbeat)


def _duration_histogram(durations: list[float]) -> HistogramMetricFamily:
    buckets = [(str(bound), sum(1 for d in durations if d <= bound)) for bound in DURATION_BUCKETS]
    buckets.append(("+Inf", len(durations)))
    return HistogramMetricFamily(
        "task_duration_seconds", "Wall time of finished jobs, first start to end", buckets=buckets,
        sum_value=sum(durations),
    )  # fmt: skip


class SystemCollector:
    """The host's CPU and memory use, and the free share of the disk holding the platform's data."""

    def __init__(self, data_path: Path) -> None:
        import psutil

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


class WorkerMetrics:
    """What a worker serves on its own port: that it is up, whether it is busy, its outcomes, the host."""

    def __init__(self, settings: Settings, name: str) -> None:
        from prometheus_client import Counter, Gauge

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
        from prometheus_client import start_http_server

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
