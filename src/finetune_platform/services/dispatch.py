"""Sending jobs to the broker, recording in their rows (and their outbox rows) whether the message went (the
reconciler re-sends those that did not). A new or retried job is sent by ``services.outbox`` once its transaction
commits; this module is the reconciler's and the worker's way to send again."""

from __future__ import annotations

from finetune_platform import broker
from finetune_platform.db.session import session_scope
from finetune_platform.services import outbox
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
    with session_scope(settings) as session:
        outbox.mark_sent(session, sent)  # a message owed by the outbox went too
        mark_enqueued(session, failed, sent=False)
    return sent


def drain(settings: Settings, older_than: float = outbox.DRAIN_AFTER_SECONDS) -> list[str]:
    """Send the outbox rows left unsent for more than ``older_than`` seconds (their writer died between commit
    and send, or the broker refused); returns the ids sent. A second drain finds them sent and sends nothing."""
    with session_scope(settings) as session:
        due = outbox.due(session, older_than)
    return enqueue(settings, due) if due else []
