"""The job queue's producer side: the Celery app every process sends through, routing, and queue depth.

The database owns every job's state; a message only says "job X may be runnable". Workers claim a job
with a compare-and-set in the database, so a lost, duplicated or redelivered message never loses a job
or runs one twice; the reconciler re-sends what the broker lost. The consumer (the tasks a worker runs)
is ``worker.app``; sending a job and recording that it went is ``services.dispatch``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery
from kombu.exceptions import ChannelError
from sqlalchemy import select

from finetune_platform.db.models import Job
from finetune_platform.db.session import read_scope
from finetune_platform.settings import Settings, get_settings

logger = logging.getLogger("finetune_platform.worker")

RUN_JOB = "finetune.run_job"
_apps: dict[str, Celery] = {}


def broker_url(settings: Settings) -> str:
    return settings.REDIS_URL or "filesystem://"


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.REDIS_URL:
        # Redis hands an unacknowledged message to another worker after this long. Jobs may run longer:
        # that second delivery then finds the job leased in the database and is dropped.
        options: dict[str, Any] = {"visibility_timeout": 3600}
    else:
        folder = (settings.queue_dir / "messages").resolve()
        folder.mkdir(parents=True, exist_ok=True)
        (settings.queue_dir / "control").mkdir(parents=True, exist_ok=True)
        options = {
            # A directory listing every 0.1 s is cheap; kombu's default of 1 s would add ~0.5 s to every job.
            "polling_interval": 0.1,
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str((settings.queue_dir / "control").resolve()),
        }
    return {**options, **settings.BROKER_TRANSPORT_OPTIONS}


def celery_app(settings: Settings | None = None) -> Celery:
    """One app per broker configuration (cached): the worker, the CLI and the API send through it."""
    settings = settings or get_settings()
    options = transport_options(settings)
    key = json.dumps([broker_url(settings), settings.QUEUE_NAME, options], sort_keys=True, default=str)
    if key in _apps:
        return _apps[key]
    app = Celery("finetune_platform", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        broker_transport_options=options,
        task_default_queue=settings.QUEUE_NAME,
        # Acknowledge after the task returns, not when it starts: a worker that dies mid-job leaves the
        # message unacknowledged, so the broker hands it out again instead of forgetting the job.
        task_acks_late=True,
        # A worker process killed by a signal (OOM killer, SIGKILL) is a lost worker, not a finished
        # task: put the message back rather than acknowledging it.
        task_reject_on_worker_lost=True,
        # Each worker reserves only the job it runs. A higher prefetch would park queued jobs behind a
        # multi-hour training while other workers sit idle, and lose them with that worker.
        worker_prefetch_multiplier=1,
        # Results live in the database: no result backend, no result messages.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # A Redis restart must not abort trainings in flight: their lease in the database keeps them
        # single, and the worker reconnects on its own, for as long as it takes.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # JSON only: a message is a job id, never a pickled object.
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        # The filesystem transport has no broadcast exchange for remote control.
        worker_enable_remote_control=bool(settings.REDIS_URL),
        worker_send_task_events=False,
    )
    _apps[key] = app
    return app


def send(settings: Settings, job_ids: list[str], task: str = RUN_JOB) -> tuple[list[str], list[str]]:
    """One message per job, each to its queue; (sent, failed): a failed one stays queued in the database."""
    app = celery_app(settings)
    queues = gpu_jobs(settings, job_ids) if settings.GPU_QUEUE_NAME else set()
    sent, failed = [], []
    for job_id in job_ids:
        try:
            app.send_task(
                task,
                args=[job_id],
                queue=settings.GPU_QUEUE_NAME if job_id in queues else settings.QUEUE_NAME,
                retry=True,
                retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            )
            sent.append(job_id)
        except Exception as exc:  # broker down: the job stays queued in the database
            logger.warning("could not send job %s to the broker (%s); the reconciler will", job_id, exc)
            failed.append(job_id)
    return sent, failed


def gpu_jobs(settings: Settings, job_ids: list[str]) -> set[str]:
    """Those of the jobs that asked for a GPU (``device: cuda``): they go to the GPU pool's queue."""
    with read_scope(settings) as session:
        rows = session.execute(select(Job.id, Job.config).where(Job.id.in_(job_ids))).all()
    return {job_id for job_id, config in rows if str((config or {}).get("device", "")).startswith("cuda")}


def queue_size(settings: Settings) -> int | None:
    """Messages waiting in the broker's queue, or None when the broker cannot be asked."""
    app = celery_app(settings)
    try:
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            try:
                return int(channel.queue_declare(queue=settings.QUEUE_NAME, passive=True).message_count)
            except ChannelError:  # Redis drops empty lists: no key means no messages
                return 0
    except Exception as exc:
        logger.warning("could not read the broker's queue size: %s", exc)
        return None
