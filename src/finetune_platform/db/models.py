"""Tables of the app database. Rows stay inside services; callers get schema objects, never rows."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The job vocabulary lives apart (no SQLAlchemy) and is re-exported here with the table that stores it.
from finetune_platform.db.job_vocabulary import JobKind, JobStage, JobStatus, SweepStatus  # noqa: F401


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Role(StrEnum):
    ADMIN = "admin"
    USER = "user"


class User(Base):
    __tablename__ = "users"
    # Ids never come back after a delete (SQLite reuses the largest id without AUTOINCREMENT), and
    # "Alice" and "alice" are one account.
    __table_args__: ClassVar[dict[str, Any]] = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.USER.value)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Raised on logout and password change: tokens carrying an older value are refused.
    token_version: Mapped[int] = mapped_column(Integer, default=0)
    # Random per account and carried in its tokens: a token can never authenticate another account,
    # whatever happens to ids.
    token_key: Mapped[str] = mapped_column(String(32))
    # Per-user quotas an admin may set; None means the platform default from Settings.
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_job_hours: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


Index("uq_users_username_lower", func.lower(User.username), unique=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=JobKind.TRAIN.value, server_default="train")
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value, index=True)
    stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    run_folder: Mapped[str | None] = mapped_column(Text, nullable=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The lease a worker holds while running the job, renewed by its heartbeat.
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    # Last time a message for this job went to the broker; the reconciler re-sends lost ones.
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A job released after a retryable failure is not claimed before this (its retry backoff).
    not_before: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Times a worker shutdown (SIGTERM) handed the job back; these do not use up attempts.
    preemptions: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    # A trial of a sweep: the sweep, its Optuna trial number and the values it tries (dotted config fields).
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweeps.id", ondelete="SET NULL"), nullable=True, index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    trial_params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Sweep(Base):
    """A hyperparameter sweep: its spec, base config and budget; its trials are jobs (``Job.sweep_id``) and its
    sampler's memory is an Optuna study of the same id (``services.sweep_study``)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.RUNNING.value, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    base_config: Mapped[dict[str, Any]] = mapped_column(JSON)
    dataset_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # Trials created so far: the compare-and-set that keeps max_trials and parallelism exact across processes.
    trials_started: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    best_job_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class JobOutbox(Base):
    """A broker message owed for a queued job, written in the job's transaction and marked sent once it went
    (``services.outbox``); the reconciler sends rows left unsent by a process that died after its commit."""

    __tablename__ = "job_outbox"
    __table_args__ = (Index("ix_job_outbox_unsent", "sent_at", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DatasetVersionRecord(Base):
    """The one dataset-lineage store (``data.versioning``): a version of a file, recorded by ``finetune data
    version`` (cli), a training run (train), a job submission (api) or an upload (upload, with its dataset)."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("content_hash", "file", name="uq_dataset_versions_hash_file"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(12), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    file: Mapped[str] = mapped_column(Text)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rows: Mapped[int] = mapped_column(Integer)
    label_counts: Mapped[dict[str, int]] = mapped_column(JSON, default=dict)
    text_column: Mapped[str] = mapped_column(String(128))
    label_column: Mapped[str] = mapped_column(String(128))
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="cli", server_default="cli")
    # The upload this version is of; None for files named by path.
    dataset_id: Mapped[str | None] = mapped_column(
        ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # A file `finetune data fix` made: the version it was made from, and what was removed and why.
    parent_version: Mapped[str | None] = mapped_column(String(12), nullable=True, index=True)
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Dataset(Base):
    """An uploaded file. ``path`` is chosen by the server; the client's file name is only a label."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    format: Mapped[str] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(Integer)
    version: Mapped[str | None] = mapped_column(String(12), nullable=True)
    valid: Mapped[bool] = mapped_column()
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditEvent(Base):
    __tablename__ = "audit_events"
    # One successor per entry: two writers appending at once cannot both extend the same tail. Ids only
    # grow (AUTOINCREMENT on SQLite), so a signed checkpoint's id and hash pin the log up to that entry.
    __table_args__ = (
        UniqueConstraint("prev_hash", name="uq_audit_events_prev_hash"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), default="ok", server_default="ok")
    # Each event hashes the previous one's hash: editing or deleting a past event breaks the chain.
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str] = mapped_column(String(64))


class LoginFailure(Base):
    """One failed login, kept one throttle window; shared by every API process (without Redis)."""

    __tablename__ = "login_failures"
    __table_args__ = (Index("ix_login_failures_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of the throttle key (address, or account and address): fixed size whatever was sent.
    key: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)  # seconds since the epoch


class RegisteredModel(Base):
    """A registered model name and its owner: only the owner (or an admin) registers versions under it."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersionRecord(Base):
    """What the platform wrote for a model version: the checksums it serves against (never MLflow's tags)."""

    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_checksum: Mapped[str] = mapped_column(String(80))
    artifact_checksums: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AllowedBaseModel(Base):
    """A base model users may train through the API (names only; the admin manages the list)."""

    __tablename__ = "allowed_base_models"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    added_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
