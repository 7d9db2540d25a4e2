"""Sending jobs to the broker, recording in their rows whether the message went (the reconciler re-sends
those that did not)."""

from __future__ import annotations

from finetune_platform import broker
from finetune_platform.db.session import session_scope
from finetune_platform.services.jobs import mark_enqueued
from finetune_platform.settings import Settings


def enqueue(
    settings: Settings, job_ids: list[str], task: str = broker.RUN_JOB, *, mark: bool = True
) -> list[str]:
    """Send one message per job; returns the ids that went out (the reconciler re-sends the rest later).

    ``mark`` False: the jobs were marked sent when they were created (``submit_job`` does), which
    saves a database write on the way from submit to start.
    """
    if mark:  # before sending: a worker claiming the job must not wait on this row's lock
        with session_scope(settings) as session:
            mark_enqueued(session, job_ids)
    sent, failed = broker.send(settings, job_ids, task)
    if failed:
        with session_scope(settings) as session:
            mark_enqueued(session, failed, sent=False)
    return sent
