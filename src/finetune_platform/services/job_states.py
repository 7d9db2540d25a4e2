"""The job lifecycle as one table: which event moves a job from which state to which, and the retry policy.

Every write of a job's state goes through ``services.jobs.transition``, which asks ``next_state`` here and
then moves the row with one conditional ``UPDATE … WHERE status = <the state read>``: the table says which
moves are legal, the database makes each one atomic, so two writers can never both win.

No SQLAlchemy here: the faces import the vocabulary (``JobStatus``, ``JobStage``, ``FINISHED``) from this
module without loading the database layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING

from finetune_platform.db.job_vocabulary import JobKind, JobStage, JobStatus
from finetune_platform.errors import ErrorCode, PlatformError

if TYPE_CHECKING:  # the UI reads this module's vocabulary and needs no settings class
    from finetune_platform.settings import Settings

__all__ = [
    "ACTIVE",
    "FINISHED",
    "NO_BACKOFF",
    "STAGE_AFTER",
    "TABLE",
    "Backoff",
    "IllegalTransition",
    "JobKind",
    "JobStage",
    "JobStatus",
    "LifecycleEvent",
    "after_failed_attempt",
    "after_lost_worker",
    "failure_reason",
    "gave_up",
    "next_state",
    "retries",
    "sources",
]


class LifecycleEvent(StrEnum):
    SUBMIT = "submit"  # a new job is queued
    CLAIM = "claim"  # a worker takes the lease of a queued job and counts an attempt
    HOLD = "hold"  # a claim refused (the owner's running-jobs limit, the retry backoff): queued and unsent
    HEARTBEAT = "heartbeat"  # the lease holder renews its lease
    PROGRESS = "progress"  # the lease holder writes stage, progress or run fields
    FINISH = "finish"  # the attempt succeeded
    FAIL = "fail"  # failed for good: not retryable, or out of attempts
    STOP = "stop"  # a running job stopped on its cancel request
    PRUNE = "prune"  # a sweep trial its pruner stopped early (ended on purpose; keeps its run folder and run)
    RELEASE = "release"  # a retryable failure hands the job back to the queue; the attempt counts
    PREEMPT = "preempt"  # a worker shutting down hands the job back; the attempt is given back
    CANCEL = "cancel"  # its owner cancels: a queued job at once, a running one is asked to STOP
    RETRY = "retry"  # a failed or cancelled job is queued again by hand, with a fresh attempt budget
    RECONCILE = "reconcile"  # a running job whose worker went silent (lease expired) is queued again


Q, R = JobStatus.QUEUED, JobStatus.RUNNING
E = LifecycleEvent

# (state, event) -> state. ``None`` is a job not yet written. A pair not in the table is an illegal move.
TABLE: Mapping[tuple[JobStatus | None, LifecycleEvent], JobStatus] = MappingProxyType(
    {
        (None, E.SUBMIT): Q,
        (Q, E.CLAIM): R,
        (Q, E.HOLD): Q,
        (Q, E.CANCEL): JobStatus.CANCELLED,
        (R, E.CANCEL): R,  # cancel_requested is set; the worker hears it at its next heartbeat and STOPs
        (R, E.HEARTBEAT): R,
        (R, E.PROGRESS): R,
        (R, E.FINISH): JobStatus.SUCCEEDED,
        (R, E.FAIL): JobStatus.FAILED,
        (R, E.STOP): JobStatus.CANCELLED,
        (R, E.PRUNE): JobStatus.PRUNED,
        (R, E.RELEASE): Q,
        (R, E.PREEMPT): Q,
        (R, E.RECONCILE): Q,
        (JobStatus.FAILED, E.RETRY): Q,
        (JobStatus.CANCELLED, E.RETRY): Q,
    }
)
del Q, R, E

# The stage an event leaves a job in. Any other event keeps the stage: while running, the worker reports its way
# through validating, training, evaluating and registering (or predicting); a failed or cancelled job keeps the
# stage it stopped in, to say how far it got.
STAGE_AFTER: Mapping[LifecycleEvent, JobStage] = MappingProxyType(
    {
        LifecycleEvent.CLAIM: JobStage.VALIDATING,
        LifecycleEvent.FINISH: JobStage.DONE,
    }
)

# A job has ended when nothing but a retry by hand moves it on.
FINISHED = frozenset(
    state
    for state in JobStatus
    if {on for (source, on) in TABLE if source == state} <= {LifecycleEvent.RETRY}
)
ACTIVE = frozenset(JobStatus) - FINISHED

# How an event reads in "only <states> jobs can be <…>".
_DONE_TO = {
    LifecycleEvent.SUBMIT: "submitted",
    LifecycleEvent.CLAIM: "claimed",
    LifecycleEvent.HOLD: "held",
    LifecycleEvent.HEARTBEAT: "kept alive",
    LifecycleEvent.PROGRESS: "updated",
    LifecycleEvent.FINISH: "finished",
    LifecycleEvent.FAIL: "failed",
    LifecycleEvent.STOP: "stopped",
    LifecycleEvent.PRUNE: "pruned",
    LifecycleEvent.RELEASE: "released",
    LifecycleEvent.PREEMPT: "preempted",
    LifecycleEvent.CANCEL: "cancelled",
    LifecycleEvent.RETRY: "retried",
    LifecycleEvent.RECONCILE: "requeued",
}


class IllegalTransition(PlatformError):
    """An event the job's state does not allow (409): names the job, its state and the event."""

    code = ErrorCode.CONFLICT

    def __init__(self, job_id: str, state: JobStatus | None, event: LifecycleEvent) -> None:
        self.job_id, self.state, self.event = job_id, state, event
        names = [("new" if source is None else source.value) for source in _ordered(sources(event))]
        either = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        already = "already " if state in FINISHED else ""
        message = f"job {job_id} is {already}{state or 'new'}: only {either} jobs can be {_DONE_TO[event]}"
        super().__init__(message)


def sources(event: LifecycleEvent) -> frozenset[JobStatus | None]:
    """The states ``event`` may leave from."""
    return frozenset(state for state, on in TABLE if on == event)


def _ordered(states: frozenset[JobStatus | None]) -> list[JobStatus | None]:
    return [state for state in (None, *JobStatus) if state in states]


def next_state(state: JobStatus | str | None, event: LifecycleEvent, *, job_id: str = "?") -> JobStatus:
    """The state ``event`` moves a job in ``state`` to; IllegalTransition when the table has no such move."""
    current = None if state is None else JobStatus(state)
    target = TABLE.get((current, event))
    if target is None:
        raise IllegalTransition(job_id, current, event)
    return target


# -- the retry policy: which failures retry, the attempt budget, the backoff ------------------------------------
# Budget: a job gets ``max_attempts`` attempts (3 unless the submit says otherwise; a retry by hand starts a fresh
# budget). A failed attempt (RELEASE) and a worker that went silent (RECONCILE) count; a preemption gives its
# attempt back. Backoff: a job RELEASEd after failed attempt n may be claimed again only after
# RETRY_BACKOFF_SECONDS * 2**(n-1) seconds, at most RETRY_BACKOFF_MAX_SECONDS (``Backoff``; the row's
# ``not_before``). A claim before then is HELD (the message dropped, the job left unsent) and the reconciler sends
# the job once its backoff ends; a preemption, a lost worker (its lease expiry was the wait) and a retry by hand
# wait for nothing. A job that cannot run yet for its owner's running-jobs limit is HELD too, not failed, so
# waiting costs no attempt.


@dataclass(frozen=True)
class Backoff:
    """How long a job released after a retryable failure waits before it may be claimed again."""

    base_seconds: float = 0.0
    max_seconds: float = 0.0

    @classmethod
    def of(cls, settings: Settings) -> Backoff:
        return cls(settings.RETRY_BACKOFF_SECONDS, settings.RETRY_BACKOFF_MAX_SECONDS)

    def after(self, attempts: int) -> float:
        """Seconds to wait after failed attempt ``attempts`` (1, 2, ...): the base doubled per further attempt."""
        if self.base_seconds <= 0:
            return 0.0
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(max(attempts - 1, 0), 62))


NO_BACKOFF = Backoff()


def retries(error: BaseException) -> bool:
    """Whether another attempt could succeed. A PlatformError (bad config or data, a missing model, a diverged
    loss, the time limit) fails the same way again unless it says it is ``retryable`` (a checkpoint write that
    hit a full disk); anything else (an I/O error, CUDA out of memory, a lost connection) may pass."""
    if isinstance(error, PlatformError):
        return bool(getattr(error, "retryable", False))
    return True


def failure_reason(error: BaseException) -> str:
    """What the job row says about a failed attempt: a PlatformError's message is written for users already."""
    return str(error) if isinstance(error, PlatformError) else f"{error.__class__.__name__}: {error}"


def after_failed_attempt(attempts: int, max_attempts: int) -> LifecycleEvent:
    """A retryable failure of attempt ``attempts``: another attempt while the budget lasts, else failed."""
    return LifecycleEvent.RELEASE if attempts < max_attempts else LifecycleEvent.FAIL


def after_lost_worker(*, cancel_requested: bool, attempts: int, max_attempts: int) -> LifecycleEvent:
    """A running job whose worker went silent: cancelled if that was asked, else as a failed attempt."""
    if cancel_requested:
        return LifecycleEvent.STOP
    return LifecycleEvent.RECONCILE if attempts < max_attempts else LifecycleEvent.FAIL


def gave_up(attempts: int, reason: str) -> str:
    """The error of a job that failed for good because its attempt budget ran out."""
    return f"gave up after {attempts} attempts; last: {reason}"
