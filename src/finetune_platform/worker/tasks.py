"""Celery tasks and worker signal hooks."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_shutting_down

from finetune_platform.broker import RUN_JOB
from finetune_platform.observability import worker_metrics
from finetune_platform.settings import Settings
from finetune_platform.worker.control import StopKind
from finetune_platform.worker.executor import current_job, execute_job

logger = logging.getLogger("finetune_platform.worker")


def register_tasks(app: Celery, settings: Settings) -> None:
    @app.task(name=RUN_JOB, bind=True)
    def run_job(task, job_id: str) -> str:
        """Claim job ``job_id`` in the database and run it; a job not queued any more is skipped."""
        metrics = worker_metrics()
        if metrics is None:
            return execute_job(settings, job_id, worker_name=task.request.hostname)
        metrics.running(True)
        outcome = "error"
        try:
            outcome = execute_job(settings, job_id, worker_name=task.request.hostname)
            return outcome
        finally:
            metrics.running(False)
            metrics.ended(outcome)


@worker_shutting_down.connect
def _preempt_running_job(sig: str = "", how: str = "", exitcode: int = 0, **kwargs) -> None:
    """A warm shutdown (SIGTERM, e.g. a rolling deploy) would wait for the training to end, hours maybe.

    Instead the running job saves a checkpoint at its next step and goes back to the queue, and the
    worker exits as soon as that is written; another worker resumes the job from that checkpoint.
    """
    control = current_job()
    if control is not None:
        logger.warning("worker shutting down (%s): checkpointing the running job and handing it back", sig)
        control.request_stop(StopKind.PREEMPT, f"worker shut down ({sig or how})")
