"""Datasets: upload a file (validated once, kept private to its owner), list them, read a report or versions,
audit one (a queued task) and read its latest audit."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from finetune_platform.api.deps import (
    CurrentUser,
    DbSession,
    IdempotencyKey,
    PageLimit,
    PageOffset,
    SettingsDep,
    audit,
)
from finetune_platform.api.routes.jobs import REPEATED, answer_submission
from finetune_platform.api.schemas import errors
from finetune_platform.data.formats import NAME_MIN_LENGTH, NAME_PATTERN, SUFFIXES_TEXT
from finetune_platform.db.session import session_scope
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.datasets import (
    AUDIT_EXAMPLE,
    DataAuditCreate,
    DataAuditPublic,
    DatasetPublic,
    DatasetReport,
    DatasetUploaded,
    DatasetVersionPublic,
)
from finetune_platform.services.schemas.jobs import JobPublic

router = APIRouter(tags=["datasets"])
NOT_YOURS = "No dataset with this id among the caller's (datasets are private, admins' included)."
SAMPLE_UPLOAD = "text,label\nA wonderful film,positive\nA boring book,negative\n"


@router.post(
    "/datasets",
    response_model=DatasetUploaded,
    status_code=201,
    summary="Upload a dataset (the request body is the file)",
    description=(
        f"The body is the file itself (CSV, TSV, JSONL, JSON or Parquet: `name` ends in one of {SUFFIXES_TEXT} "
        "and is a label only; the server chooses where to keep it). It is validated once, in a child process "
        "with capped memory, and kept even when validation finds errors: the answer's `report` says which rows "
        "to fix. A file over a reading limit (rows, decoded size, cell length, JSON depth, memory) is refused "
        "with 422 naming the limit, and nothing is kept."
    ),
    responses=errors(
        401,
        413,
        422,
        429,
        e413="The file is larger than MAX_UPLOAD_BYTES.",
        e422="An invalid name or columns, or a file over a reading limit (the setting is named).",
        e429="The server is validating as many uploads as it may at once (VALIDATION_CONCURRENCY).",
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "example": SAMPLE_UPLOAD,
                }
            },
        }
    },
)
async def create_dataset(
    request: Request,
    user: CurrentUser,
    name: Annotated[
        str,
        Query(
            min_length=NAME_MIN_LENGTH,
            max_length=255,
            pattern=NAME_PATTERN,
            description=f"File name ending in one of {SUFFIXES_TEXT} (a label only).",
        ),
    ],
    text_column: Annotated[str, Query(max_length=128, description="Column with the text.")] = "text",
    label_column: Annotated[str, Query(max_length=128, description="Column with the label.")] = "label",
    task: Annotated[
        Literal["single_label", "multi_label", "regression"],
        Query(
            description="What the label column holds: one label per row (single_label), a JSON list or "
            "label_delimiter-separated labels per row (multi_label), or a finite number (regression)."
        ),
    ] = "single_label",
    text_pair_column: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=128,
            description="Column with a second text per row, for sentence-pair data (NLI, paraphrase, STS; "
            "128 characters); unset: one text per row.",
        ),
    ] = None,
    label_delimiter: Annotated[
        str,
        Query(
            min_length=1,
            max_length=8,
            description="multi_label: what separates a row's labels in its cell ('a,b'); 1-8 characters.",
        ),
    ] = ",",
) -> DatasetUploaded:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import check_name, register_upload

    settings = request.app.state.settings
    limit = settings.MAX_UPLOAD_BYTES
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than the limit of {limit} bytes"
        )
    check_name(name)  # before reading the body
    incoming = settings.uploads_dir / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    received, size = incoming / uuid.uuid4().hex, 0
    try:
        with received.open("wb") as handle:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(
                        status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than the limit of {limit} bytes"
                    )
                handle.write(chunk)

        def register() -> DatasetUploaded:
            with session_scope(settings) as session:
                uploaded = register_upload(
                    session,
                    settings,
                    user,
                    name,
                    received,
                    size,
                    text_column=text_column,
                    label_column=label_column,
                    task=task,
                    text_pair_column=text_pair_column,
                    label_delimiter=label_delimiter,
                )
                audit(
                    session,
                    request,
                    "dataset.upload",
                    actor=user,
                    target=f"dataset:{uploaded.id}",
                    valid=uploaded.valid,
                )
                return uploaded

        return await run_in_threadpool(register)
    finally:
        received.unlink(missing_ok=True)


@router.get(
    "/datasets",
    response_model=Page[DatasetPublic],
    summary="The caller's datasets",
    description="The caller's uploads, newest first (an admin too sees only their own).",
    responses=errors(401, 422),
)
def list_datasets(
    session: DbSession, user: CurrentUser, limit: PageLimit = 50, offset: PageOffset = 0
) -> Page[DatasetPublic]:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import list_datasets as page_datasets

    return page_datasets(session, user, offset=offset, limit=limit)


@router.get(
    "/datasets/{dataset_id}/versions",
    response_model=Page[DatasetVersionPublic],
    summary="A dataset's recorded versions (lineage)",
    description=(
        "Every content version recorded for the dataset's file, oldest first: at upload, and for each job "
        "submitted on it. All of them in one page (`limit` null)."
    ),
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def list_dataset_versions(
    dataset_id: str, session: DbSession, user: CurrentUser
) -> Page[DatasetVersionPublic]:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_versions

    return dataset_versions(session, user, dataset_id)


@router.get(
    "/datasets/{dataset_id}/report",
    response_model=DatasetReport,
    summary="A dataset's validation report",
    description="The report made at upload: the verdict and, per check that failed, the rows and how to fix them.",
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def get_dataset_report(dataset_id: str, session: DbSession, user: CurrentUser) -> DatasetReport:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_report

    return dataset_report(session, user, dataset_id)


@router.post(
    "/datasets/{dataset_id}/audit",
    response_model=JobPublic,
    status_code=202,
    summary="Audit a dataset: likely label errors, near-duplicates and leaks, class overlap, outliers",
    description=(
        "Queues an audit task (kind `audit`) over the dataset, read with the columns and task of its upload, and "
        "optionally a validation dataset uploaded with the same ones. 202 with the task, its URL in `Location`: "
        "follow it with GET /task/{task_id} (`progress.phase` and `progress.percent` while it runs), cancel or "
        "retry it like any task. Once it has succeeded, GET /datasets/{dataset_id}/audit answers its audit.json. "
        "`Idempotency-Key` repeats a submission safely (200: the first task)."
    ),
    responses={
        **REPEATED,
        **errors(
            401,
            404,
            422,
            429,
            e404=NOT_YOURS,
            e422="An option out of its bounds, or a validation dataset uploaded with other columns or task.",
            e429="The account has as many tasks queued as it may.",
        ),
    },
)
def create_dataset_audit(
    dataset_id: str,
    request: Request,
    response: Response,
    session: DbSession,
    settings: SettingsDep,
    user: CurrentUser,
    body: Annotated[
        DataAuditCreate | None,
        Body(examples=[AUDIT_EXAMPLE], description="Optional: every field has a default."),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    # lazy: pandas, numpy and cleanlab (the audit engine), not loaded at API start
    from finetune_platform.services.data_audits import submit_audit

    body = body or DataAuditCreate()
    submission = submit_audit(session, settings, user, dataset_id, body, idempotency_key=idempotency_key)
    response.headers["Location"] = f"/task/{submission.job.id}"
    return answer_submission(
        request, response, session, user, submission, "dataset.audit",
        dataset=dataset_id, validation_dataset=body.validation_dataset_id,
    )  # fmt: skip


@router.get(
    "/datasets/{dataset_id}/audit",
    response_model=DataAuditPublic,
    summary="A dataset's latest audit (audit.json)",
    description=(
        "The audit.json of the newest succeeded audit task of the dataset, with the task's id, the names "
        "GET /datasets/{dataset_id}/audit/{name} serves, and `pending_task_id` when a newer audit is still queued "
        "or running. 409 while the dataset's first audit is queued or running (the message names the task, its "
        "phase and percent); 404 when it has none, or none succeeded (the message says what the last one did)."
    ),
    responses=errors(
        401,
        404,
        409,
        422,
        e404=f"{NOT_YOURS} Or the dataset has no succeeded audit.",
        e409="The dataset's only audits are queued or running: none has finished yet.",
    ),
)
def get_dataset_audit(dataset_id: str, session: DbSession, user: CurrentUser) -> DataAuditPublic:
    # lazy: pandas, numpy and cleanlab (the audit engine), not loaded at API start
    from finetune_platform.services.data_audits import latest_audit

    return latest_audit(session, user, dataset_id)


@router.get(
    "/datasets/{dataset_id}/audits",
    response_model=Page[JobPublic],
    summary="A dataset's audit tasks",
    description=(
        "Every audit task of the dataset, newest first, whatever its state (all of them in one page, `limit` "
        "null): what to poll while an audit runs, without a 409 from GET /datasets/{dataset_id}/audit."
    ),
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def list_dataset_audits(dataset_id: str, session: DbSession, user: CurrentUser) -> Page[JobPublic]:
    # lazy: pandas, numpy and cleanlab (the audit engine), not loaded at API start
    from finetune_platform.services.data_audits import audit_tasks

    return audit_tasks(session, user, dataset_id)


@router.get(
    "/datasets/{dataset_id}/audit/{name}",
    summary="A file of the dataset's latest audit: its readable report or a plot",
    description=(
        "`name` is one of audit.md (the readable report, Markdown), label_quality.png, class_overlap.png "
        "(single-label audits) and outliers.png, of the newest succeeded audit; any other name is 404."
    ),
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
            "description": "The file.",
        },
        **errors(
            401,
            404,
            409,
            422,
            e404=f"{NOT_YOURS} Or no such audit file, or no succeeded audit.",
            e409="The dataset's only audits are queued or running.",
        ),
    },
)
def get_dataset_audit_file(
    dataset_id: str,
    name: Annotated[str, Path(max_length=64, description="audit.md, or a plot's file name.")],
    session: DbSession,
    user: CurrentUser,
) -> FileResponse:
    # lazy: pandas, numpy and cleanlab (the audit engine), not loaded at API start
    from finetune_platform.services.data_audits import audit_download

    path, media_type = audit_download(session, user, dataset_id, name)
    return FileResponse(path, media_type=media_type, filename=name, content_disposition_type="inline")
