"""The dispatch outbox: a job's message is written in the transaction that queues the job, and sent after it commits.

``add`` inserts an outbox row beside the job row (same transaction) and notes it on the session; once that
session commits, the row's message goes to the broker and the row is marked sent. A process that dies between
the commit and the send leaves the row unsent: the reconciler's ``drain`` sends it a few seconds later. A
rolled-back transaction takes its rows with it and sends nothing. A row of a job in its retry backoff waits: it
is due once the backoff is over. Sent rows are kept a while for the record, then ``prune``d by the reconciler.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, event, or_, select, update
from sqlalchemy.orm import Session

from finetune_platform import broker
from finetune_platform.db.models import Job, JobOutbox, JobStatus, utcnow
from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.worker")

_PENDING = "finetune_outbox_pending"  # session.info: {job id: settings} to send after commit
_COMMITTED = "finetune_outbox_committed"  # session.info: pending rows whose transaction committed
_UNSENT = "finetune_outbox_unsent"  # session.info: job ids whose send after commit failed
DRAIN_AFTER_SECONDS = 5.0  # an unsent row younger than this may still be sent by the process that wrote it


def add(
    session: Session, settings: Settings, job_id: str, task: str = broker.RUN_JOB, *, send: bool = True
) -> None:
    """Queue a message for ``job_id`` in the session's transaction; it is sent when the session commits (``send``
    False: by the reconciler's drain, once the job's retry backoff is over)."""
    session.add(JobOutbox(job_id=job_id, task=task))
    if send:
        session.info.setdefault(_PENDING, {})[job_id] = settings


def unsent(session: Session) -> list[str]:
    """The jobs this session queued whose message could not be sent after its commit (the reconciler will)."""
    return list(session.info.get(_UNSENT, []))


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.in_nested_transaction():  # a savepoint was released: the transaction itself goes on
        return
    if _PENDING in session.info:
        session.info[_COMMITTED] = session.info.pop(_PENDING)


@event.listens_for(Session, "after_transaction_end")
def _send_after_commit(session: Session, transaction) -> None:
    # After the commit, once the transaction has given its connection back: sending and marking then take no
    # second connection while the first is held (a pool at its limit would wait on itself).
    if transaction.parent is not None or _COMMITTED not in session.info:
        return
    pending: dict[str, Settings] = session.info.pop(_COMMITTED)
    by_settings: dict[int, tuple[Settings, list[str]]] = {}
    for job_id, settings in pending.items():
        by_settings.setdefault(id(settings), (settings, []))[1].append(job_id)
    # The committed session cannot run SQL inside this hook: the rows are marked through a fresh one.
    bind = session.get_bind()
    for settings, job_ids in by_settings.values():
        try:
            sent, failed = broker.send(settings, job_ids)
            with Session(bind=bind) as marker, marker.begin():
                mark_sent(marker, sent)
                unmark_enqueued(marker, failed)
        except Exception as exc:  # database or broker away: the rows stay unsent, the reconciler drains them
            logger.warning(
                "could not send or mark jobs %s after commit (%s); the reconciler will", job_ids, exc
            )
            failed = job_ids
        session.info.setdefault(_UNSENT, []).extend(failed)


@event.listens_for(Session, "after_rollback")
def _forget_after_rollback(session: Session) -> None:
    session.info.pop(_PENDING, None)  # the rows went with the transaction


def mark_sent(session: Session, job_ids: list[str]) -> None:
    """Mark the unsent outbox rows of these jobs sent."""
    if job_ids:
        session.execute(
            update(JobOutbox)
            .where(JobOutbox.job_id.in_(job_ids), JobOutbox.sent_at.is_(None))
            .values(sent_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def unmark_enqueued(session: Session, job_ids: list[str]) -> None:
    """A send failed: the job counts as never sent (``enqueued_at`` cleared), as ``dispatch.enqueue`` does."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED.value)
            .values(enqueued_at=None)
            .execution_options(synchronize_session=False)
        )


def due(session: Session, older_than: float = DRAIN_AFTER_SECONDS) -> list[str]:
    """Jobs whose outbox row is unsent and older than ``older_than`` seconds (their writer died before sending, or
    the send failed), unless the job is in its retry backoff. Rows of jobs no longer queued (cancelled meanwhile)
    need no message: they are closed here."""
    now = utcnow()
    cutoff = now - timedelta(seconds=older_than)
    rows = session.execute(
        select(JobOutbox.job_id, Job.status)
        .join(Job, Job.id == JobOutbox.job_id)
        .where(
            JobOutbox.sent_at.is_(None),
            JobOutbox.created_at <= cutoff,
            or_(Job.not_before.is_(None), Job.not_before <= now),
        )
        .with_for_update(of=JobOutbox, skip_locked=True)
    ).all()
    closed = sorted({job_id for job_id, status in rows if status != JobStatus.QUEUED.value})
    mark_sent(session, closed)
    return sorted({job_id for job_id, status in rows if status == JobStatus.QUEUED.value})


def prune(session: Session, older_than: float) -> int:
    """Delete the rows sent more than ``older_than`` seconds ago; returns how many. Unsent rows are never pruned."""
    cutoff = utcnow() - timedelta(seconds=older_than)
    result = session.execute(
        delete(JobOutbox)
        .where(JobOutbox.sent_at.is_not(None), JobOutbox.sent_at < cutoff)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount or 0
