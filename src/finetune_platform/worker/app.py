"""The worker's Celery app: the broker's app (``broker.celery_app``) with the platform's tasks registered.

Sending jobs is the producer side, in ``broker`` and ``services.dispatch``; this module is only what a
worker process consumes with.
"""

from __future__ import annotations

from celery import Celery

from finetune_platform.broker import celery_app
from finetune_platform.settings import Settings, get_settings
from finetune_platform.worker.tasks import register_tasks

_consuming: set[int] = set()  # ids of the (cached, never freed) apps whose tasks are registered


def create_app(settings: Settings | None = None) -> Celery:
    """The app a worker runs (``app.worker_main``): the same cached app as the producers', tasks added once."""
    settings = settings or get_settings()
    app = celery_app(settings)
    if id(app) not in _consuming:
        register_tasks(app, settings)
        _consuming.add(id(app))
    return app
