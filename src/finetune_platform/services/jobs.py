"""Training jobs: submit, list, show, cancel, retry. The database owns job state; the queue only carries ids.

Shared by the CLI, the API and the worker. Ownership: a user sees and changes only their own jobs; an admin
sees all. Someone else's job is reported as not found, so ids do not leak.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import Job, JobEvent, JobStatus, Role, utcnow
from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError
from finetune_platform.services.users import UserPublic

FINISHED = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}


@dataclass(frozen=True)
class JobPublic:
    id: str
    owner_id: int
    status: str
    stage: str | None
    attempts: int
    max_attempts: int
    progress: dict[str, Any]
    error: str | None
    dataset_version: str | None
    run_id: str | None
    model_name: str | None
    model_version: int | None
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    config: dict[str, Any] = field(repr=False)

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            job.id,
            job.owner_id,
            job.status,
            job.stage,
            job.attempts,
            job.max_attempts,
            dict(job.progress),
            job.error,
            job.dataset_version,
            job.run_id,
            job.model_name,
            job.model_version,
            job.cancel_requested,
            job.created_at,
            job.started_at,
            job.finished_at,
            dict(job.config),
        )


@dataclass(frozen=True)
class JobsPublic:
    data: list[JobPublic]
    count: int


@dataclass(frozen=True)
class Submission:
    job: JobPublic
    created: bool  # False when the idempotency key matched an earlier submission


def _event(session: Session, job: Job, kind: str, message: str = "", **data: Any) -> None:
    session.add(JobEvent(job_id=job.id, kind=kind, message=message, data=data))


def submit_job(
    session: Session,
    user: UserPublic,
    config: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    max_attempts: int = 3,
) -> Submission:
    """Validate the config and its data, then queue a job (once per idempotency key)."""
    from finetune_platform.data.validation import DatasetValidationError, ValidationOptions, validate_dataset
    from finetune_platform.training.config import config_from_dict

    if idempotency_key is not None:
        existing = session.scalar(
            select(Job).where(Job.owner_id == user.id, Job.idempotency_key == idempotency_key)
        )
        if existing is not None:
            return Submission(JobPublic.of(existing), created=False)
    train_config = config_from_dict(config)  # ConfigError names the field
    data = train_config.data
    options = ValidationOptions(
        text_column=data.text_column,
        label_column=data.label_column,
        label_names=data.label_names,
        drop_invalid=data.invalid_rows == "drop",
    )
    report = validate_dataset(data.train_file, options, data.validation_file)
    if not report.ok:
        raise DatasetValidationError(report)
    job = Job(
        id=str(uuid.uuid4()),
        owner_id=user.id,
        status=JobStatus.QUEUED.value,
        config=train_config.to_yaml_dict(),
        dataset_version=report.file("train").version,
        idempotency_key=idempotency_key,
        attempts=0,
        max_attempts=max_attempts,
        progress={},
        cancel_requested=False,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:  # the same key submitted concurrently: the other request won
        session.rollback()
        existing = session.scalar(
            select(Job).where(Job.owner_id == user.id, Job.idempotency_key == idempotency_key)
        )
        if existing is None:
            raise
        return Submission(JobPublic.of(existing), created=False)
    _event(session, job, "submitted", f"queued by {user.username}", dataset_version=job.dataset_version)
    return Submission(JobPublic.of(job), created=True)


def _visible(session: Session, user: UserPublic, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or (user.role != Role.ADMIN.value and job.owner_id != user.id):
        raise NotFoundError(f"no job {job_id!r}")
    return job


def get_job(session: Session, user: UserPublic, job_id: str) -> JobPublic:
    return JobPublic.of(_visible(session, user, job_id))


def list_jobs(
    session: Session, user: UserPublic, *, status: str | None = None, offset: int = 0, limit: int = 50
) -> JobsPublic:
    query = select(Job)
    if user.role != Role.ADMIN.value:
        query = query.where(Job.owner_id == user.id)
    if status is not None:
        query = query.where(Job.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Job.created_at.desc(), Job.id).offset(offset).limit(limit))
    return JobsPublic([JobPublic.of(job) for job in rows], count)


def job_events(session: Session, user: UserPublic, job_id: str) -> list[dict[str, Any]]:
    job = _visible(session, user, job_id)
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id))
    return [{"at": e.at.isoformat(), "kind": e.kind, "message": e.message, "data": e.data} for e in events]


def cancel_job(session: Session, user: UserPublic, job_id: str) -> JobPublic:
    """A queued job is cancelled at once; a running one is asked to stop (its worker does, at the next step)."""
    job = _visible(session, user, job_id)
    if job.status in FINISHED:
        raise PlatformError(f"job {job_id} is already {job.status}", ErrorCode.CONFLICT)
    if job.status == JobStatus.QUEUED.value:
        job.status, job.finished_at = JobStatus.CANCELLED.value, utcnow()
        _event(session, job, "cancelled", f"cancelled by {user.username} while queued")
    else:
        job.cancel_requested = True
        _event(session, job, "cancel_requested", f"cancel requested by {user.username}")
    session.flush()
    return JobPublic.of(job)


def retry_job(session: Session, user: UserPublic, job_id: str) -> JobPublic:
    """Queue a failed or cancelled job again, with a fresh attempt budget."""
    job = _visible(session, user, job_id)
    if job.status not in {JobStatus.FAILED.value, JobStatus.CANCELLED.value}:
        raise PlatformError(
            f"job {job_id} is {job.status}: only failed or cancelled jobs can be retried", ErrorCode.CONFLICT
        )
    job.status, job.error, job.attempts, job.cancel_requested = JobStatus.QUEUED.value, None, 0, False
    job.finished_at = None
    _event(session, job, "retried", f"queued again by {user.username}")
    session.flush()
    return JobPublic.of(job)
