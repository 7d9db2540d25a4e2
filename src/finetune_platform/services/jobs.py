"""Training jobs: submit, list, show, cancel, retry. The database owns job state; the queue only carries ids.

Shared by the CLI, the API and the worker. Ownership: a user sees and changes only their own jobs; an admin
sees all. Someone else's job is reported as not found, so ids do not leak. Every submit and retry holds to the
account's queued-jobs limit, a claim to its running-jobs limit (``services.quotas``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import Job, JobEvent, Role, utcnow
from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError
from finetune_platform.inference.batch import check_columns
from finetune_platform.services import job_states, outbox, quotas
from finetune_platform.services.job_states import JobKind, JobStatus, LifecycleEvent
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.jobs import JobEventPublic, JobLogs, JobPublic
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings, get_settings
from finetune_platform.training.config import config_from_dict


@dataclass(frozen=True)
class Submission:
    job: JobPublic
    created: bool  # False when the idempotency key matched an earlier submission


# A line of a job's history: (kind, message, data), written as a JobEvent row.
History = tuple[str, str, dict[str, Any]]


def transition(
    session: Session,
    job_id: str,
    event: LifecycleEvent,
    *,
    state: JobStatus | str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    values: dict[str, Any] | None = None,
    history: Sequence[History] | Callable[[RowMapping], Sequence[History]] = (),
) -> RowMapping | None:
    """Move a job by ``event`` from ``state`` (what the caller read; by default the one state the event leaves)
    to the state the lifecycle table names, in one conditional UPDATE: ``WHERE id = job_id AND status = state``
    plus the caller's ``where`` (the lease holder, the attempt read). Writes ``values`` with it (and the stage
    the event leaves the job in, ``job_states.STAGE_AFTER``) and appends ``history`` (or what it makes of the
    moved row) to the job's events.

    Returns the moved row, or None when the row is not in ``state`` (or fails ``where``) any more: someone else
    moved it first, and nothing was written. Raises IllegalTransition when the table has no such move.
    This is the only place that writes a job's status once the job exists (``queue_job`` inserts it).
    """
    if state is None:
        (state,) = job_states.sources(event)  # an event with several sources needs the state read
    current = JobStatus(state)
    target = job_states.next_state(current, event, job_id=job_id)
    jobs_table = Job.__table__
    now = utcnow()
    changes = {**(values or {}), "updated_at": now}
    if event in job_states.STAGE_AFTER:
        changes["stage"] = job_states.STAGE_AFTER[event].value
    if target != current:
        changes["status"] = target.value
    row = (
        session.execute(
            update(jobs_table)
            .where(jobs_table.c.id == job_id, jobs_table.c.status == current.value, *where)
            .values(**changes)
            .returning(*jobs_table.c)  # one round trip: the move and the moved row
        )
        .mappings()
        .one_or_none()
    )
    loaded = session.identity_map.get(session.identity_key(Job, job_id))
    if loaded is not None:  # a Job the session read before (``_visible``, ``_held``) is stale now
        session.expire(loaded)
    if row is None:
        return None
    lines = history(row) if callable(history) else history
    if lines:
        session.execute(
            insert(JobEvent.__table__),
            [
                {"job_id": job_id, "at": now, "kind": kind, "message": message, "data": data}
                for kind, message, data in lines
            ],
        )
    return row


def earlier_submission(session: Session, user: UserPublic, idempotency_key: str | None) -> Submission | None:
    """The user's job submitted with this idempotency key, if one was."""
    if idempotency_key is None:
        return None
    existing = session.scalar(
        select(Job).where(Job.owner_id == user.id, Job.idempotency_key == idempotency_key)
    )
    return None if existing is None else Submission(JobPublic.of(existing), created=False)


def queue_job(
    session: Session,
    settings: Settings,
    user: UserPublic,
    kind: JobKind,
    config: dict[str, Any],
    *,
    dataset_version: str | None,
    idempotency_key: str | None,
    max_attempts: int,
    **fields: Any,
) -> Submission:
    """Insert a queued job row (once per idempotency key, even when two requests race), within the account's
    queued-jobs limit (counted under the account's row lock: two racing submits cannot both take the last slot).
    ``fields``: more columns of the row (a sweep trial's sweep, number and values)."""
    quotas.check_queue_room(session, user.id, settings, lock=True)
    job = Job(
        id=str(uuid.uuid4()),
        owner_id=user.id,
        kind=kind.value,
        status=job_states.next_state(None, LifecycleEvent.SUBMIT).value,
        config=config,
        dataset_version=dataset_version,
        idempotency_key=idempotency_key,
        attempts=0,
        max_attempts=max_attempts,
        progress={},
        cancel_requested=False,
        # The outbox row below is sent once the caller commits; a failed send clears this again.
        enqueued_at=utcnow(),
        **fields,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # the same key submitted concurrently: the other request won
        session.rollback()
        earlier = earlier_submission(session, user, idempotency_key)
        if earlier is None:
            raise
        return earlier
    session.add(
        JobEvent(
            job_id=job.id,
            kind="submitted",
            message=f"queued by {user.username}",
            data={"dataset_version": job.dataset_version},
        )
    )
    outbox.add(session, settings, job.id)  # same transaction: the message is owed exactly when the job exists
    return Submission(JobPublic.of(job), created=True)


def submit_job(
    session: Session,
    user: UserPublic,
    config: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    settings: Settings | None = None,
) -> Submission:
    """Validate the config and its data, then queue a training job (once per idempotency key).

    Refused before anything is written: an invalid config or one asking for more devices than a worker of its
    pool has (422), an account at its queued-jobs limit (429, checked before the data is read), invalid data.
    """
    # lazy: pandas and pyarrow (data.validation), which a worker or `finetune jobs list` never needs
    from finetune_platform.training.data_check import check_data, validation_options

    settings = settings or get_settings()
    earlier = earlier_submission(session, user, idempotency_key)
    if earlier is not None:
        return earlier
    train_config = config_from_dict(config)  # ConfigError names the field
    quotas.check_pool_devices(train_config, settings)
    quotas.check_queue_room(session, user.id, settings, lock=False)
    report = check_data(train_config)
    submission = queue_job(
        session,
        settings,
        user,
        JobKind.TRAIN,
        train_config.to_yaml_dict(),
        dataset_version=report.file("train").version,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
    )
    if submission.created:
        record_dataset_versions(session, report, validation_options(train_config), owner_id=user.id)
    return submission


def submit_prediction_job(
    session: Session,
    settings: Any,
    user: UserPublic,
    *,
    model: str,
    input_file: Path,
    text_column: str = "text",
    label_column: str = "label",
    idempotency_key: str | None = None,
    max_attempts: int = 3,
    text_pair_column: str | None = None,
) -> Submission:
    """Queue prediction over a file with a registered model, pinned now to the version it resolves to
    (so a promotion while the job waits does not change what it runs). The file must have the text column
    (and the pair column, when one is named: a model trained on text pairs reads its second texts there)."""
    from finetune_platform.tracking.registry import (
        ModelRegistry,  # lazy: numpy and mlflow, only for prediction
    )

    earlier = earlier_submission(session, user, idempotency_key)
    if earlier is not None:
        return earlier
    version = ModelRegistry(settings).resolve(model)  # NotFoundError names the model
    check_columns(Path(input_file), text_column, text_pair_column)
    config = {
        "model": f"{version.name}@{version.version}",
        "requested_model": model,
        "input_file": str(Path(input_file).resolve()),
        "text_column": text_column,
        "label_column": label_column,
        "output_dir": str(Path(settings.RESULTS_DIR).resolve()),
        **({"text_pair_column": text_pair_column} if text_pair_column is not None else {}),
    }
    return queue_job(
        session,
        settings,
        user,
        JobKind.PREDICT,
        config,
        dataset_version=None,
        idempotency_key=idempotency_key,
        max_attempts=max_attempts,
    )


def record_dataset_versions(session: Session, report: Any, options: Any, owner_id: int | None) -> list[str]:
    """Lineage in the database: one row per (content hash, file) a job trains or validates on."""
    from finetune_platform.data.versioning import (  # lazy: pandas, as in submit_job
        DatasetVersion,
        record_version,
    )

    versions = []
    for file_report in report.files:
        if file_report.content_hash is None:
            continue
        versions.append(file_report.version)
        record_version(
            session, DatasetVersion.from_report(file_report, options, source="api"), owner_id=owner_id
        )
    return versions


def run_folder_path(output_dir: str | Path, experiment: str, job_id: str) -> Path:
    """A job's run folder is named after the job, so every attempt finds the one before it."""
    return Path(output_dir) / experiment / job_id


def prediction_folder(output_dir: str | Path, job_id: str) -> Path:
    """Where a prediction job writes predictions.csv and logs.txt."""
    return Path(output_dir) / "predictions" / job_id


def audit_folder(output_dir: str | Path, dataset_id: str, job_id: str) -> Path:
    """Where a data audit job writes audit.json, audit.md, its plots and logs.txt (``output_dir``:
    FINETUNE_HOME/audits)."""
    return Path(output_dir) / dataset_id / job_id


def predictions_path(session: Session, user: UserPublic, job_id: str) -> Path:
    """The predictions.csv of a succeeded prediction job the user may see."""
    job = _visible(session, user, job_id)
    if job.kind != JobKind.PREDICT.value:
        raise PlatformError(
            f"task {job_id} is a {job.kind} task: only prediction tasks have predictions", ErrorCode.CONFLICT
        )
    if job.status != JobStatus.SUCCEEDED.value:
        raise PlatformError(
            f"task {job_id} is {job.status}: predictions are ready when it has succeeded", ErrorCode.CONFLICT
        )
    path = prediction_folder(job.config["output_dir"], job.id) / "predictions.csv"
    if not path.is_file():
        raise NotFoundError(f"task {job_id}: predictions.csv is no longer on the server")
    return path


def job_log_path(job: JobPublic) -> Path:
    if job.kind == JobKind.PREDICT.value:
        return prediction_folder(job.config["output_dir"], job.id) / "logs.txt"
    if job.kind == JobKind.AUDIT.value:
        return audit_folder(job.config["output_dir"], job.config["dataset_id"], job.id) / "logs.txt"
    return run_folder_path(job.config["output_dir"], job.config["experiment"], job.id) / "logs.txt"


def _visible(session: Session, user: UserPublic, job_id: str) -> Job:
    # An id no job can have (too long, a NUL PostgreSQL cannot compare) is simply not found, on every database.
    job = session.get(Job, job_id) if len(job_id) <= 36 and "\x00" not in job_id else None
    if job is None or (user.role != Role.ADMIN.value and job.owner_id != user.id):
        raise NotFoundError(f"no job {job_id!r}")
    return job


def get_job(session: Session, user: UserPublic, job_id: str) -> JobPublic:
    return JobPublic.of(_visible(session, user, job_id))


def list_jobs(
    session: Session, user: UserPublic, *, status: str | None = None, offset: int = 0, limit: int = 50
) -> Page[JobPublic]:
    query = select(Job)
    if user.role != Role.ADMIN.value:
        query = query.where(Job.owner_id == user.id)
    if status is not None:
        query = query.where(Job.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit))
    return Page[JobPublic](data=[JobPublic.of(job) for job in rows], count=count, limit=limit, offset=offset)


def visible_runs(session: Session, user: UserPublic) -> set[str] | None:
    """The tracking-store runs a user may see: every run for an admin (None), else the runs of their own jobs."""
    if user.role == Role.ADMIN.value:
        return None
    return set(session.scalars(select(Job.run_id).where(Job.owner_id == user.id, Job.run_id.is_not(None))))


def job_events(session: Session, user: UserPublic, job_id: str) -> list[dict[str, Any]]:
    job = _visible(session, user, job_id)
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    return [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "data": e.data} for e in events]


def job_logs(session: Session, user: UserPublic, job_id: str, lines: int = 200) -> JobLogs:
    """The job's events, oldest first, and the last ``lines`` lines of its logs.txt (none before it has one)."""
    job = get_job(session, user, job_id)
    events = [
        JobEventPublic(at=event["at"], kind=event["kind"], message=event["message"])
        for event in job_events(session, user, job_id)
    ]
    log_path = job_log_path(job)
    tail: list[str] = []
    if lines and log_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return JobLogs(events=events, log_lines=tail)


def cancel_job(session: Session, user: UserPublic, job_id: str) -> JobPublic:
    """A queued job is cancelled at once; a running one is asked to stop (its worker does, at the next step)."""
    job = _visible(session, user, job_id)
    while True:  # a worker may claim the job between the read and the write: then decide again
        state = job.status
        if state == JobStatus.QUEUED.value:
            values = {"finished_at": utcnow()}
            line = ("cancelled", f"cancelled by {user.username} while queued", {})
        else:
            values = {"cancel_requested": True}
            line = ("cancel_requested", f"cancel requested by {user.username}", {})
        row = transition(session, job_id, LifecycleEvent.CANCEL, state=state, values=values, history=[line])
        if row is not None:
            return JobPublic.of(SimpleNamespace(**row))
        session.refresh(job)


def retry_job(
    session: Session, user: UserPublic, job_id: str, *, settings: Settings | None = None
) -> JobPublic:
    """Queue a failed or cancelled job again, with a fresh attempt budget (not a fresh time budget: the hours
    it ran count on), within its owner's queued-jobs limit."""
    job = _visible(session, user, job_id)
    # Refused before the quota is asked: a running job is not retried, whatever the account's room.
    job_states.next_state(job.status, LifecycleEvent.RETRY, job_id=job_id)
    settings = settings or get_settings()
    quotas.check_queue_room(session, job.owner_id, settings, lock=True)
    while True:  # retried by someone else meanwhile: the next pass refuses it as queued
        row = transition(
            session,
            job_id,
            LifecycleEvent.RETRY,
            state=job.status,
            values={
                "error": None,
                "attempts": 0,
                "cancel_requested": False,
                "finished_at": None,
                "not_before": None,
                # The outbox row below is sent once the caller commits; a failed send clears this again.
                "enqueued_at": utcnow(),
            },
            history=[("retried", f"queued again by {user.username}", {})],
        )
        if row is not None:
            outbox.add(session, settings, job_id)
            return JobPublic.of(SimpleNamespace(**row))
        session.refresh(job)


# -- the worker's side: claim, heartbeat, progress, outcome ----------------------------------------
# Every write below is a transition: a compare-and-set on (id, status, lease_owner): a worker that lost
# its lease cannot overwrite the state written by the worker that holds it now.


@dataclass(frozen=True)
class Claim:
    job: JobPublic
    lease_owner: str


@dataclass(frozen=True)
class Held:
    """A claim refused because the job's owner already runs as many jobs as the account may: the job stays
    queued, no attempt counted, unsent (``enqueued_at`` cleared), so the reconciler sends it again later."""

    reason: str


def claim_job(
    session: Session,
    job_id: str,
    lease_owner: str,
    lease_seconds: float,
    *,
    running_limit: int | None = None,
) -> Claim | Held | None:
    """Take the lease of a queued job and count an attempt; None when it is not queued (or someone won).

    ``running_limit`` (the default of MAX_RUNNING_JOBS_PER_USER; the account's own max_running_jobs wins):
    the claim also needs the owner to run fewer jobs than that, counted under the owner's row lock so two
    workers claiming two of one account's jobs take turns; else the job is ``Held``. None: no such limit.

    Core statements, not the ORM: this is the path from message to training start, run for every job.
    """
    jobs_table = Job.__table__
    now = utcnow()
    claimable = [
        jobs_table.c.cancel_requested.is_(False),
        or_(jobs_table.c.not_before.is_(None), jobs_table.c.not_before <= now),  # its retry backoff is over
    ]
    limit = None
    if running_limit is not None:
        owner = quotas.lock_account(
            session, select(jobs_table.c.owner_id).where(jobs_table.c.id == job_id).scalar_subquery()
        )
        if owner is None:
            return None
        limit = running_limit if owner.max_running_jobs is None else owner.max_running_jobs
        running = jobs_table.alias("running")
        claimable.append(
            select(func.count())
            .select_from(running)
            .where(running.c.owner_id == owner.id, running.c.status == JobStatus.RUNNING.value)
            .scalar_subquery()
            < limit
        )
    row = transition(
        session,
        job_id,
        LifecycleEvent.CLAIM,
        where=claimable,
        values={
            "lease_owner": lease_owner,
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "heartbeat_at": now,
            "attempts": jobs_table.c.attempts + 1,
            "started_at": func.coalesce(jobs_table.c.started_at, now),
            "error": None,
            "not_before": None,
        },
        history=lambda job: [
            (
                "started",
                f"attempt {job['attempts']} of {job['max_attempts']} on {lease_owner}",
                {"attempt": job["attempts"], "worker": lease_owner},
            )
        ],
    )
    if row is None:
        deferred = _defer(session, job_id, now)
        if deferred is not None or limit is None:
            return deferred
        return _hold(session, job_id, limit, own=owner.max_running_jobs is not None)
    return Claim(JobPublic.of(SimpleNamespace(**row)), lease_owner)


def _defer(session: Session, job_id: str, now: datetime) -> Held | None:
    """A message that came before the job's retry backoff ended: the job stays queued and unsent, and the
    reconciler sends it once the backoff is over. None when the job is not backing off (not why it was refused)."""
    table = Job.__table__
    row = transition(
        session,
        job_id,
        LifecycleEvent.HOLD,
        where=[table.c.cancel_requested.is_(False), table.c.not_before > now],
        values={"enqueued_at": None},
    )
    if row is None:
        return None
    return Held(f"retry backoff: not claimed before {_aware(row['not_before']):%Y-%m-%d %H:%M:%S} UTC")


def _hold(session: Session, job_id: str, limit: int, *, own: bool) -> Held | None:
    """Leave a queued job (that the running-jobs limit kept from starting) queued and unsent, saying why in its
    error and, once per reason, in an event. None when the job is not queued any more (that is why)."""
    source = "the account's max_running_jobs" if own else "MAX_RUNNING_JOBS_PER_USER"
    reason = (
        f"waiting: its owner already runs the most jobs one account may run at once ({limit}, {source}); "
        "it starts after one of them ends"
    )
    last = session.scalar(
        select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(1)
    )
    held = transition(
        session,
        job_id,
        LifecycleEvent.HOLD,
        where=[Job.__table__.c.cancel_requested.is_(False)],
        values={"enqueued_at": None, "error": reason},
        history=[] if last == reason else [("waiting", reason, {"running_limit": limit})],
    )
    return None if held is None else Held(reason)


def _held(session: Session, job_id: str, lease_owner: str) -> Job | None:
    job = session.get(Job, job_id, populate_existing=True, with_for_update=True)
    if job is None or job.status != JobStatus.RUNNING.value or job.lease_owner != lease_owner:
        return None
    return job


def renew_lease(session: Session, job_id: str, lease_owner: str, lease_seconds: float) -> bool | None:
    """Extend the lease. Returns whether a cancel was requested, or None when the lease is no longer ours."""
    now = utcnow()
    row = transition(
        session,
        job_id,
        LifecycleEvent.HEARTBEAT,
        where=[Job.__table__.c.lease_owner == lease_owner],
        values={"lease_expires_at": now + timedelta(seconds=lease_seconds), "heartbeat_at": now},
    )
    return None if row is None else bool(row["cancel_requested"])


def record_progress(
    session: Session,
    job_id: str,
    lease_owner: str,
    *,
    stage: str | None = None,
    progress: dict[str, Any] | None = None,
    event: tuple[str, str] | None = None,
    **fields: Any,
) -> bool:
    """Write stage, progress (merged into the stored dict) and run fields; False when the lease is lost."""
    job = _held(session, job_id, lease_owner)
    if job is None:
        return False
    values, history = dict(fields), []
    if stage is not None and stage != job.stage:
        values["stage"] = stage
        history.append(("stage", stage, {}))
    if progress:
        values["progress"] = {**job.progress, **progress}
    if event is not None:
        history.append((*event, {}))
    return _as_holder(session, job, LifecycleEvent.PROGRESS, values, history) is not None


def _as_holder(
    session: Session, job: Job, event: LifecycleEvent, values: dict[str, Any], history: list[History]
) -> RowMapping | None:
    """A transition of the running job ``job`` (read under ``_held``) by its lease holder, on the lease and
    attempt it read."""
    table = Job.__table__
    return transition(
        session,
        job.id,
        event,
        where=[table.c.lease_owner == job.lease_owner, table.c.attempts == job.attempts],
        values=values,
        history=history,
    )


def _with_run_time(job: Job, run_seconds: float | None) -> dict[str, Any]:
    """Record the seconds the job has run over all its attempts (what JOB_MAX_HOURS limits)."""
    return {} if run_seconds is None else {"progress": {**job.progress, "run_seconds": round(run_seconds, 1)}}


# The event that ends an attempt with each final status.
_ENDING = {
    JobStatus.SUCCEEDED: LifecycleEvent.FINISH,
    JobStatus.FAILED: LifecycleEvent.FAIL,
    JobStatus.CANCELLED: LifecycleEvent.STOP,
    JobStatus.PRUNED: LifecycleEvent.PRUNE,
}


def finish_job(
    session: Session,
    job_id: str,
    lease_owner: str,
    status: JobStatus,
    message: str,
    *,
    run_seconds: float | None = None,
    **fields: Any,
) -> JobPublic | None:
    """End the attempt for good: succeeded, failed or cancelled. None when the lease is no longer ours."""
    job = _held(session, job_id, lease_owner)
    if job is None:
        return None
    values = {
        **_with_run_time(job, run_seconds),
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
        **({"error": message} if status in (JobStatus.FAILED, JobStatus.PRUNED) else {}),
        **fields,
    }
    row = _as_holder(session, job, _ENDING[status], values, [(status.value, message, {})])
    return None if row is None else JobPublic.of(SimpleNamespace(**row))


def release_job(
    session: Session,
    job_id: str,
    lease_owner: str,
    reason: str,
    *,
    count_attempt: bool,
    run_seconds: float | None = None,
    backoff: job_states.Backoff = job_states.NO_BACKOFF,
) -> JobPublic | None:
    """Hand a running job back to the queue (a retryable failure, or a worker shutting down).

    A failed attempt with no attempts left fails the job instead (``job_states.after_failed_attempt``); one with
    attempts left is not claimed again before its ``backoff`` (``not_before`` on the row). A preemption
    (``count_attempt`` False) gives the attempt back and waits for nothing. Returns the job (queued or failed),
    or None when the lease is not ours.
    """
    job = _held(session, job_id, lease_owner)
    if job is None:
        return None
    values: dict[str, Any] = {
        **_with_run_time(job, run_seconds),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    if not count_attempt:
        event = LifecycleEvent.PREEMPT
        values.update(attempts=job.attempts - 1, preemptions=job.preemptions + 1, enqueued_at=None)
        history = [("preempted", reason, {})]
    else:
        event = job_states.after_failed_attempt(job.attempts, job.max_attempts)
        if event is LifecycleEvent.FAIL:
            error = job_states.gave_up(job.attempts, reason)
            values.update(finished_at=utcnow(), error=error)
            history = [("failed", error, {})]
        else:
            wait = backoff.after(job.attempts)
            values.update(
                error=reason,
                enqueued_at=None,
                not_before=utcnow() + timedelta(seconds=wait) if wait else None,
            )
            retrying = f"attempt {job.attempts} of {job.max_attempts} failed: {reason}"
            history = [("retrying", retrying, {"backoff_seconds": wait} if wait else {})]
    row = _as_holder(session, job, event, values, history)
    return None if row is None else JobPublic.of(SimpleNamespace(**row))


def mark_enqueued(session: Session, job_ids: list[str], sent: bool = True) -> None:
    """Record that messages for these queued jobs went to the broker (``sent`` False: they did not)."""
    if job_ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED.value)
            .values(enqueued_at=utcnow() if sent else None)
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class ReconcilePass:
    """What one reconciler pass found and changed."""

    expired: list[str]  # running jobs whose worker went silent, now queued again
    abandoned: list[str]  # of those, the ones out of attempts (now failed) or cancelled
    to_enqueue: list[str]  # queued jobs that need a (new) broker message
    queued_total: int
    next_due: datetime | None = None  # when the earliest retry backoff of a queued job ends


def reconcile(session: Session, *, requeue_after: float, broker_lost_messages: bool) -> ReconcilePass:
    """Recover from dead workers and lost broker messages, using the database as the truth.

    - A running job whose lease expired lost its worker (SIGKILL, OOM killer, host gone): it is queued
      again with its attempt counted, failed when it is out of attempts, cancelled if a cancel was asked.
    - A queued job never sent (``enqueued_at`` unset) is sent; one sent more than ``requeue_after``
      seconds ago is sent again when the broker holds fewer messages than there are queued jobs
      (``broker_lost_messages``), e.g. after Redis restarted with no persistence. A duplicate message is
      harmless: only one worker can claim a queued job.
    """
    now = utcnow()
    expired, abandoned = [], []
    stale = session.execute(
        select(
            Job.id, Job.lease_owner, Job.heartbeat_at, Job.attempts, Job.max_attempts, Job.cancel_requested
        )
        .where(Job.status == JobStatus.RUNNING.value, Job.lease_expires_at < now)
        .with_for_update(skip_locked=True)
    ).all()
    for job in stale:
        silent = f"worker {job.lease_owner} stopped renewing its lease (last heartbeat {job.heartbeat_at:%H:%M:%S})"
        reason = f"{silent}: the process was killed (for example by the out-of-memory killer) or its host went away"
        event = job_states.after_lost_worker(
            cancel_requested=job.cancel_requested, attempts=job.attempts, max_attempts=job.max_attempts
        )
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if event is LifecycleEvent.STOP:
            values["finished_at"] = now
            line = ("cancelled", f"cancelled; {silent}", {})
        elif event is LifecycleEvent.FAIL:
            error = job_states.gave_up(job.attempts, reason)
            values.update(finished_at=now, error=error)
            line = ("failed", error, {})
        else:
            values.update(error=reason, enqueued_at=None)
            line = ("worker_lost", f"attempt {job.attempts} of {job.max_attempts} lost: {reason}", {})
        # Compare-and-set on what was read: SQLite has no row locks, so another worker's reconciler may
        # have moved this job on (and a new attempt claimed it) since the select; then this one does nothing.
        moved = transition(
            session,
            job.id,
            event,
            where=[Job.lease_owner == job.lease_owner, Job.attempts == job.attempts],
            values=values,
            history=[line],
        )
        if moved is not None:
            (expired if event is LifecycleEvent.RECONCILE else abandoned).append(job.id)
    session.flush()
    queued = session.scalars(select(Job).where(Job.status == JobStatus.QUEUED.value)).all()
    cutoff = now - timedelta(seconds=requeue_after)
    backing_off = [
        _aware(job.not_before) for job in queued if job.not_before and _aware(job.not_before) > now
    ]
    to_enqueue = [
        job.id
        for job in queued
        if not (job.not_before and _aware(job.not_before) > now)  # sent once its retry backoff is over
        and (job.enqueued_at is None or (broker_lost_messages and _aware(job.enqueued_at) <= cutoff))
    ]
    return ReconcilePass(expired, abandoned, to_enqueue, len(queued), min(backing_off, default=None))


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes (stored as UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def count_queued(session: Session) -> int:
    """Queued jobs that were sent to the broker: each should have a message there. Those not sent (new, or
    held back by their owner's running-jobs limit) have none; the reconciler sends them anyway."""
    return (
        session.scalar(
            select(func.count()).where(Job.status == JobStatus.QUEUED.value, Job.enqueued_at.is_not(None))
        )
        or 0
    )
