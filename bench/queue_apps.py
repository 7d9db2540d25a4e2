"""The two Celery apps bench/queue.py starts workers for: a bare one, and the platform's own.

Both use the broker and transport options of the platform settings given, and a no-op task that
appends "<token> <unix time>" to BENCH_RECORD. The platform task goes through the whole job path
(claim with a lease in the database, heartbeat thread, outcome written); the bare one does nothing else.
`celery -A bench.queue_apps:bare_app` (or platform_app) builds the app from the environment.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from finetune_platform.broker import broker_url, transport_options
from finetune_platform.settings import Settings
from finetune_platform.worker.app import create_app


def record(token: str) -> None:
    with open(os.environ["BENCH_RECORD"], "a", encoding="utf-8") as handle:
        handle.write(f"{token} {time.time():.6f}\n")


def make_bare_app(settings: Settings) -> Celery:
    app = Celery("bare", broker=broker_url(settings), set_as_current=False)
    app.conf.update(
        broker_transport_options=transport_options(settings),
        task_default_queue=settings.QUEUE_NAME,
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_enable_remote_control=bool(settings.REDIS_URL),
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
    )

    @app.task(name="bench.bare_noop")
    def bare_noop(token: str) -> None:
        record(token)

    return app


def make_platform_app(settings: Settings) -> Celery:
    app = create_app(settings)

    @app.task(name="bench.platform_noop", bind=True)
    def platform_noop(task, job_id: str) -> str:
        from finetune_platform.worker.executor import execute_job

        def body(context):
            record(job_id)
            return {"message": "no-op"}

        return execute_job(settings, job_id, worker_name=task.request.hostname, body=body)

    return app


def __getattr__(name: str) -> Celery:  # built on first use, from the environment of the worker process
    if name == "bare_app":
        return make_bare_app(Settings())
    if name == "platform_app":
        return make_platform_app(Settings())
    raise AttributeError(name)
