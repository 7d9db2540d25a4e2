"""Job metrics, read from the database at scrape time (served by the API's /metrics), so they are exact across
any number of workers and survive restarts: ``task_success_total``, ``task_failure_total``,
``task_cancelled_total``, ``task_duration_seconds`` (histogram of finished jobs), ``task_queued``,
``task_running``, the running jobs' training speed, loss and progress, and each busy worker's last heartbeat.
``task_queue_length`` is the broker's, read through the ``queue_depth`` the caller passes in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import func, select

from finetune_platform.db.models import Job, JobStatus
from finetune_platform.db.session import read_scope
from finetune_platform.settings import Settings

OUTCOMES = (("succeeded", "task_success"), ("failed", "task_failure"), ("cancelled", "task_cancelled"))
DURATION_BUCKETS = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)


class JobCollector:
    """Job counts, durations and live progress from the database; the queue length from ``queue_depth``
    (``broker.queue_size`` in the API: None when the broker cannot be asked, and then left out)."""

    def __init__(self, settings: Settings, queue_depth: Callable[[], int | None]) -> None:
        self.settings = settings
        self.queue_depth = queue_depth

    def collect(self) -> Iterator[Metric]:
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
        for status, name in OUTCOMES:
            yield CounterMetricFamily(
                name, f"Jobs {status} so far (after their last attempt)", counts.get(status, 0)
            )
        yield GaugeMetricFamily(
            "task_queued", "Jobs waiting in the database for a worker", counts.get("queued", 0)
        )
        yield GaugeMetricFamily("task_running", "Jobs running now", len(running))
        waiting = self.queue_depth()
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
