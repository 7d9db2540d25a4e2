"""The reconciler: the database is the truth, the broker a hint. Runs in every worker, and on demand."""

from __future__ import annotations

import logging
import threading

from finetune_platform.broker import queue_size
from finetune_platform.db.models import utcnow
from finetune_platform.db.session import session_scope
from finetune_platform.services import jobs, outbox, sweeps
from finetune_platform.services.dispatch import drain, enqueue
from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.worker")


def reconcile_once(settings: Settings) -> jobs.ReconcilePass:
    """One pass: send outbox rows a crash left unsent (or that waited out a retry backoff), prune sent ones past
    OUTBOX_RETENTION_SECONDS, requeue jobs of dead workers, give up on those out of attempts, re-send lost
    messages, send jobs whose retry backoff is over; then settle running sweeps."""
    drained = drain(settings)
    if drained:
        logger.info("reconciler: sent %d job(s) left in the outbox: %s", len(drained), drained)
    with session_scope(settings) as session:
        pruned = outbox.prune(session, settings.OUTBOX_RETENTION_SECONDS)
    if pruned:
        logger.info("reconciler: pruned %d sent outbox row(s)", pruned)
    waiting = queue_size(settings)
    with session_scope(settings) as session:
        queued = jobs.count_queued(session)
        # Each queued job has a message in the broker unless the broker lost it (Redis restarted
        # without persistence, flushed, or a send failed). Fewer messages than queued jobs: re-send.
        lost = waiting is not None and waiting < queued
        found = jobs.reconcile(
            session, requeue_after=settings.REQUEUE_AFTER_SECONDS, broker_lost_messages=lost
        )
    if found.expired or found.abandoned:
        logger.warning(
            "reconciler: %d job(s) of silent workers requeued %s, %d given up or cancelled %s",
            len(found.expired),
            found.expired,
            len(found.abandoned),
            found.abandoned,
        )
    if found.to_enqueue:
        sent = enqueue(settings, found.to_enqueue)
        logger.info(
            "reconciler: sent %d job(s) to the broker (%d queued in the database, %s in the broker)",
            len(sent),
            queued,
            "?" if waiting is None else waiting,
        )
    _settle_sweeps(settings)
    return found


def _settle_sweeps(settings: Settings) -> None:
    """Sweeps move on when their trials end; this pass catches what a killed worker left: trials not yet told
    to the study, trials not yet started, sweeps not yet finished."""
    with session_scope(settings) as session:
        active = sweeps.has_active(session)
    if not active:
        return
    try:
        sweeps.reconcile_sweeps(settings)
    except Exception as exc:  # the next pass tries again
        logger.warning("reconciler: sweeps not settled: %s", exc)


class ReconcilerThread(threading.Thread):
    """Sweeps every RECONCILE_SECONDS. Several workers may sweep at once: every change is conditional."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.settings = settings
        self._stopped = threading.Event()

    def run(self) -> None:
        while True:  # a pass at start-up, then one per interval, or sooner when a retry backoff ends first
            wait = self.settings.RECONCILE_SECONDS
            try:
                found = reconcile_once(self.settings)
                if found.next_due is not None:
                    wait = min(wait, max((found.next_due - utcnow()).total_seconds(), 0.0) + 0.1)
            except Exception as exc:  # database or broker away: try again next round
                logger.warning("reconciler pass failed: %s", exc)
            if self._stopped.wait(wait):
                return

    def stop(self) -> None:
        self._stopped.set()
