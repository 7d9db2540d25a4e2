"""A dataset's data audit as a task: queued on the caller's upload (and a validation upload), run by a worker with
the engine of ``data.audit`` into FINETUNE_HOME/audits/<dataset id>/<task id>/, then read back: the latest
succeeded audit's audit.json, and its report and plots by a fixed list of names. Datasets are named by id and name
in everything a client reads, never by where the server keeps them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from finetune_platform.data.audit import (
    AUDIT_FILE,
    PLOTS,
    REPORT_FILE,
    AuditOptions,
    audit_files,
    check_audit_rows,
)
from finetune_platform.data.validation import ValidationOptions
from finetune_platform.db.models import Job
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.services.datasets import get_dataset, stored_dataset, upload_columns
from finetune_platform.services.job_requests import datasets_named
from finetune_platform.services.job_states import ACTIVE, JobKind, JobStatus
from finetune_platform.services.jobs import Submission, audit_folder, earlier_submission, queue_job
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.datasets import DataAuditCreate, DataAuditPublic, DatasetPublic
from finetune_platform.services.schemas.jobs import JobPublic
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings

AUDITS_DIR = "audits"  # under FINETUNE_HOME
# What GET /datasets/{id}/audit/{name} serves, and as what: nothing else of an audit's folder, whatever the name.
DOWNLOADS = {REPORT_FILE: "text/markdown; charset=utf-8", **dict.fromkeys(PLOTS, "image/png")}
# The options a client may set; the rest keep AuditOptions' defaults.
CLIENT_OPTIONS = ("folds", "near_duplicate_cosine", "outlier_z")


def submit_audit(
    session: Session,
    settings: Settings,
    user: UserPublic,
    dataset_id: str,
    request: DataAuditCreate,
    *,
    idempotency_key: str | None = None,
) -> Submission:
    """Queue an audit of the caller's dataset (and validation dataset), each read with its upload's columns."""
    earlier = earlier_submission(session, user, idempotency_key)
    if earlier is not None:
        return earlier
    options = {name: getattr(request, name) for name in CLIENT_OPTIONS} | {
        "max_rows": settings.AUDIT_MAX_ROWS
    }
    AuditOptions(**options)  # ConfigError names the option (the request's bounds are the same)
    train, train_file = stored_dataset(session, user, dataset_id)
    columns = upload_columns(session, user, dataset_id)
    datasets = {"train": _entry(train, train_file)}
    if request.validation_dataset_id is not None:
        validation, validation_file = stored_dataset(session, user, request.validation_dataset_id)
        theirs = upload_columns(session, user, request.validation_dataset_id)
        if theirs != columns:
            raise ConfigError(
                f"validation_dataset_id: {validation.label} was uploaded with other columns or task than "
                f"{train.label} ({_columns_text(theirs)}; {_columns_text(columns)}): upload it with the same ones"
            )
        datasets["validation"] = _entry(validation, validation_file)
        rows, what = train.rows + validation.rows, f"{train.label} and {validation.label}"
    else:
        rows, what = train.rows, train.label
    check_audit_rows(rows, settings.AUDIT_MAX_ROWS, what)  # the rows its upload read: refused before queueing
    config = {
        "dataset_id": train.id,
        "validation_dataset_id": request.validation_dataset_id,
        "datasets": datasets,
        "columns": columns,
        "options": options,
        "output_dir": str((settings.FINETUNE_HOME / AUDITS_DIR).resolve()),
    }
    return queue_job(
        session,
        settings,
        user,
        JobKind.AUDIT,
        config,
        dataset_version=train.version,
        idempotency_key=idempotency_key,
        max_attempts=request.max_attempts,
    )


def _entry(dataset: DatasetPublic, path: Path) -> dict[str, Any]:
    return {"id": dataset.id, "label": dataset.label, "file": str(path.resolve())}


def _columns_text(columns: dict[str, Any]) -> str:
    return ", ".join(f"{name} {value!r}" for name, value in columns.items() if value is not None)


def _audit_jobs(session: Session, user: UserPublic, dataset_id: str) -> list[Job]:
    """The caller's audit tasks of a dataset, newest first."""
    query = select(Job).where(
        Job.owner_id == user.id,
        Job.kind == JobKind.AUDIT.value,
        Job.config["dataset_id"].as_string() == dataset_id,
    )
    return list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc())))


def audit_tasks(session: Session, user: UserPublic, dataset_id: str) -> Page[JobPublic]:
    """The audit tasks of the caller's dataset, newest first, whatever their state."""
    dataset = get_dataset(session, user, dataset_id)  # another user's dataset: not found
    return Page[JobPublic].of([JobPublic.of(job) for job in _audit_jobs(session, user, dataset.id)])


def _written(job: Job) -> Path | None:
    folder = audit_folder(job.config["output_dir"], job.config["dataset_id"], job.id)
    return folder if (folder / AUDIT_FILE).is_file() else None


def _latest(session: Session, user: UserPublic, dataset_id: str) -> tuple[Job, Path, Job | None]:
    """The newest succeeded audit of a visible dataset whose files are on the server, and a newer task still
    queued or running (or None). NotFoundError when there is none, saying why; a conflict while the first audit
    is still on its way."""
    dataset = get_dataset(session, user, dataset_id)  # another user's dataset: not found
    jobs = _audit_jobs(session, user, dataset.id)
    for job in jobs:
        folder = _written(job) if job.status == JobStatus.SUCCEEDED.value else None
        if folder is not None:
            newer = next((j for j in jobs if j.status in ACTIVE and j.created_at > job.created_at), None)
            return job, folder, newer
    active = next((job for job in jobs if job.status in ACTIVE), None)
    if active is not None:
        progress = active.progress or {}
        where = f" ({progress['phase']}, {progress.get('percent', 0):g}%)" if progress.get("phase") else ""
        raise PlatformError(
            f"{dataset.label} has no finished audit yet: audit task {active.id} is {active.status}{where}; "
            f"follow it with GET /task/{active.id}",
            ErrorCode.CONFLICT,
        )
    if jobs:
        last = jobs[0]
        why = f": {last.error}" if last.error else ""
        raise NotFoundError(
            f"{dataset.label} has no succeeded audit: its last audit task {last.id} is {last.status}{why}; "
            f"retry it (POST /task/{last.id}/retry) or start another (POST /datasets/{dataset.id}/audit)"
        )
    raise NotFoundError(f"{dataset.label} has no audit yet: start one with POST /datasets/{dataset.id}/audit")


def latest_audit(session: Session, user: UserPublic, dataset_id: str) -> DataAuditPublic:
    """The audit.json of the newest succeeded audit of the caller's dataset."""
    job, folder, newer = _latest(session, user, dataset_id)
    document = json.loads((folder / AUDIT_FILE).read_text(encoding="utf-8"))
    return DataAuditPublic(
        **document,
        task_id=job.id,
        dataset_id=job.config["dataset_id"],
        validation_dataset_id=job.config.get("validation_dataset_id"),
        downloads=[name for name in DOWNLOADS if (folder / name).is_file()],
        pending_task_id=newer.id if newer is not None else None,
    )


def audit_download(session: Session, user: UserPublic, dataset_id: str, name: str) -> tuple[Path, str]:
    """(file, media type) of one of DOWNLOADS of the newest succeeded audit. The name is looked up in the fixed
    list before anything else, so it never becomes part of a path."""
    if name not in DOWNLOADS:
        raise NotFoundError(f"no audit file {name[:100]!r}: one of {', '.join(DOWNLOADS)}")
    _job, folder, _newer = _latest(session, user, dataset_id)
    path = folder / name
    if not path.is_file():  # class_overlap.png: single-label audits only
        raise NotFoundError(f"this audit has no {name} (written only where its task has one)")
    return path, DOWNLOADS[name]


# -- the worker's side ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Named:
    label: str  # what datasets_named reads of a dataset


def run_audit(
    output_dir: str | Path, job_id: str, config: dict[str, Any], progress: Callable[[str, float], None]
) -> dict[str, Any]:
    """Audit the job's datasets into its folder; the audit's summary. Errors name the datasets by id and name."""
    datasets = config["datasets"]
    files = {role: Path(entry["file"]) for role, entry in datasets.items()}
    named = {files[role]: _Named(entry["label"]) for role, entry in datasets.items()}
    with datasets_named(named):  # type: ignore[arg-type]
        report = audit_files(
            files["train"],
            ValidationOptions(**config["columns"]),
            files.get("validation"),
            AuditOptions(**config["options"]),
            progress=progress,
        )
    for role, info in report.files.items():  # the server's paths stay on the server
        info["path"], info["dataset_id"] = datasets[role]["label"], datasets[role]["id"]
    report.write(audit_folder(output_dir, config["dataset_id"], job_id))
    return report.summary()


def summary_text(summary: dict[str, Any]) -> str:
    noise = summary["estimated_label_noise"]
    return (
        f"{summary['label_errors']} likely label errors"
        + (f" (estimated noise {noise:.1%})" if noise is not None else "")
        + f", {summary['near_duplicate_groups']} near-duplicate groups ({summary['cross_split_groups']} leaks, "
        f"{summary['conflicting_groups']} with conflicting labels), {summary['overlapping_label_pairs']} "
        f"overlapping label pairs, {summary['outliers']} outliers in {summary['rows_audited']} rows"
    )
