"""Uploaded datasets: stored under a server-chosen path, validated once, recorded as a dataset version, visible
to their owner only."""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePath
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finetune_platform.data.formats import BY_SUFFIX, SUFFIXES_TEXT, suffix_of
from finetune_platform.data.loading import DatasetLimits
from finetune_platform.data.validation import ValidationOptions, validate_in_child
from finetune_platform.data.versioning import DatasetVersion, list_versions, record_version
from finetune_platform.db.models import Dataset, utcnow
from finetune_platform.errors import ConfigError, NotFoundError
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.datasets import (
    DatasetPublic,
    DatasetReport,
    DatasetUploaded,
    DatasetVersionPublic,
)
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings


def check_name(name: str) -> tuple[str, str]:
    """(display label, suffix) of an upload name. The name is a label only: its last path component,
    printable characters only, at most 255; the suffix picks the format."""
    suffix = suffix_of(name)
    if suffix is None:
        raise ConfigError(f"name {name[:100]!r}: unknown format; the name must end in one of {SUFFIXES_TEXT}")
    base = PurePath(name.replace("\\", "/")).name
    label = "".join(ch for ch in base if ch.isprintable()).strip()[-255:]
    if label.lower() in {"", ".", "..", suffix}:
        label = f"dataset{suffix}"
    return label, suffix


def register_upload(
    session: Session,
    settings: Settings,
    user: UserPublic,
    name: str,
    received: Path,
    size: int,
    *,
    text_column: str = "text",
    label_column: str = "label",
    task: str = "single_label",
    text_pair_column: str | None = None,
    label_delimiter: str = ",",
) -> DatasetUploaded:
    """Move a fully received upload to its server-named place, validate it and record it.

    The file is kept and recorded even when validation finds errors: the report says what to fix. A file
    over a reading limit (rows, decoded size, cell length, JSON depth, the validating process's memory) is
    refused instead: DatasetLimitError (422), nothing recorded, the file removed. Validation runs in a
    child process capped at VALIDATION_MEMORY_MB, so an upload that decodes huge never grows this process.
    """
    label, suffix = check_name(name)
    options = ValidationOptions(
        text_column=text_column,
        label_column=label_column,
        task=task,
        text_pair_column=text_pair_column,
        label_delimiter=label_delimiter,
        limits=DatasetLimits.from_settings(settings),
    )
    dataset_id = str(uuid.uuid4())
    folder = settings.uploads_dir / str(user.id)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{dataset_id}{suffix}"
    os.replace(received, path)
    try:
        document = validate_in_child(
            path,
            options,
            settings.VALIDATION_MEMORY_MB,
            concurrency=settings.VALIDATION_CONCURRENCY,
            timeout_seconds=settings.VALIDATION_TIMEOUT_SECONDS,
        )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    # The columns it was read with, for what reads it again later (a data audit).
    document["columns"] = {
        "text_column": text_column,
        "label_column": label_column,
        "task": task,
        "text_pair_column": text_pair_column,
        "label_delimiter": label_delimiter,
    }
    file_report = document["files"][0]
    file_report["path"] = label  # the server path stays private, in the messages too
    for issue in file_report["issues"]:
        issue["message"] = issue["message"].replace(str(path.resolve()), label)
    row = Dataset(
        id=dataset_id,
        owner_id=user.id,
        name=label,
        path=str(path.resolve()),
        format=BY_SUFFIX[suffix].value,
        size_bytes=size,
        rows=file_report["rows_read"],
        version=file_report["version"],
        valid=document["ok"],
        report=document,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    if file_report["content_hash"] is not None:  # lineage: the upload is a version of its stored file
        record_version(
            session,
            DatasetVersion(
                version=file_report["version"],
                content_hash=file_report["content_hash"],
                file=row.path,
                format=row.format,
                rows=row.rows,
                label_counts=file_report["label_counts"],
                text_column=text_column,
                label_column=label_column,
                created_at=row.created_at.isoformat(),
                source="upload",
            ),
            owner_id=user.id,
            dataset_id=dataset_id,
        )
    return DatasetUploaded(**_fields(row), report=DatasetReport.of(document))


def _visible(session: Session, user: UserPublic, dataset_id: str) -> Dataset:
    # An id no dataset can have (too long, a NUL PostgreSQL cannot compare) is simply not found.
    row = session.get(Dataset, dataset_id) if len(dataset_id) <= 36 and "\x00" not in dataset_id else None
    if row is None or row.owner_id != user.id:  # datasets are private, admins' included
        raise NotFoundError(f"no dataset {dataset_id!r}")
    return row


def _fields(row: Dataset) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "format": row.format,
        "size_bytes": row.size_bytes,
        "rows": row.rows,
        "version": row.version,
        "valid": row.valid,
        "created_at": row.created_at,
        "owner_id": row.owner_id,
    }


def _public(row: Dataset) -> DatasetPublic:
    return DatasetPublic(**_fields(row))


def get_dataset(session: Session, user: UserPublic, dataset_id: str) -> DatasetPublic:
    return _public(_visible(session, user, dataset_id))


def dataset_report(session: Session, user: UserPublic, dataset_id: str) -> DatasetReport:
    return DatasetReport.of(_visible(session, user, dataset_id).report)


def dataset_versions(session: Session, user: UserPublic, dataset_id: str) -> Page[DatasetVersionPublic]:
    """The recorded versions of a visible upload (its file's, from the upload and from jobs), oldest first."""
    row = _visible(session, user, dataset_id)
    versions = [
        DatasetVersionPublic.of(version)
        for version in list_versions(session, dataset_id=row.id, file=row.path)
    ]
    return Page[DatasetVersionPublic].of(versions)


def upload_columns(session: Session, user: UserPublic, dataset_id: str) -> dict[str, Any]:
    """The columns a visible upload was read with (``ValidationOptions`` fields). Uploads recorded before these
    were kept: the text and label columns of its upload version and the task its report read."""
    row = _visible(session, user, dataset_id)
    if "columns" in row.report:
        return dict(row.report["columns"])
    first = next(iter(list_versions(session, dataset_id=row.id, file=row.path)), None)
    files = row.report.get("files") or [{}]
    return {
        "text_column": first.text_column if first else "text",
        "label_column": first.label_column if first else "label",
        "task": files[0].get("task", "single_label"),
        "text_pair_column": None,
        "label_delimiter": ",",
    }


def stored_dataset(session: Session, user: UserPublic, dataset_id: str) -> tuple[DatasetPublic, Path]:
    """A visible dataset and where the server keeps it (the path never leaves the server)."""
    row = _visible(session, user, dataset_id)
    return _public(row), Path(row.path)


def list_datasets(
    session: Session, user: UserPublic, *, offset: int = 0, limit: int = 50
) -> Page[DatasetPublic]:
    query = select(Dataset).where(Dataset.owner_id == user.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Dataset.created_at.desc(), Dataset.id).offset(offset).limit(limit))
    return Page[DatasetPublic](data=[_public(row) for row in rows], count=total, limit=limit, offset=offset)
