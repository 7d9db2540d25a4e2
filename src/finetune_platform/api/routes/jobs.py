"""Training tasks (jobs) at the Finetune-30-days README's paths: POST /train, GET /task/{task_id}, GET /tasks, and
each task's cancel, retry and logs. Prediction tasks are queued by the predictions router; read, cancel and retry
them here like any task."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from sqlalchemy.orm import Session

from finetune_platform.api.deps import (
    CurrentUser,
    DbSession,
    IdempotencyKey,
    PageLimit,
    PageOffset,
    SettingsDep,
    audit,
)
from finetune_platform.api.schemas import errors
from finetune_platform.db.session import read_scope
from finetune_platform.services.job_requests import submit_training
from finetune_platform.services.jobs import Submission, cancel_job, get_job, job_logs, list_jobs, retry_job
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.jobs import JobLogs, JobPublic, TrainingMetrics, TrainJobCreate
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.services.training_metrics import training_metrics

router = APIRouter(tags=["tasks"])
NOT_YOURS = "No task with this id among the caller's (an admin's: among all)."
REPEATED = {
    200: {"model": JobPublic, "description": "The task submitted earlier with the same Idempotency-Key."}
}


def answer_submission(
    request: Request,
    response: Response,
    session: Session,
    user: UserPublic,
    submission: Submission,
    action: str,
    **details: Any,
) -> JobPublic:
    """A new task is audited and committed, which sends it to the broker (the service's outbox) (201); a repeated
    key returns the first (200)."""
    if not submission.created:
        response.status_code = status.HTTP_200_OK
        return submission.job
    audit(session, request, action, actor=user, target=f"task:{submission.job.id}", **details)
    session.commit()  # the outbox sends the message once the row is committed
    return submission.job


@router.post(
    "/train",
    response_model=JobPublic,
    status_code=201,
    summary="Queue a training task",
    description=(
        "Train on an uploaded dataset (`dataset_id`, optionally `validation_dataset_id`) with a training config "
        "(`GET /config/schema`) that names no paths: the server fills in its copies of the datasets and its "
        "results folder. The config and the data are validated before anything is queued (422 naming the field, "
        "or the dataset by id and name with the validation report). The base model must be on the allow-list "
        "(`GET /base-models`) and the registered model's name the caller's or free. Send `Idempotency-Key` to "
        "repeat a submission safely: the same key answers the first task (200)."
    ),
    responses={
        **REPEATED,
        **errors(
            401,
            403,
            404,
            413,
            422,
            429,
            e403="The model name belongs to another user.",
            e404="No dataset with this id among the caller's.",
            e422="An invalid config, a base model not on the allow-list, or data that fails validation.",
            e429="The account has as many tasks queued as it may (MAX_QUEUED_JOBS_PER_USER or its own limit).",
        ),
    },
)
def create_training_task(
    request: Request,
    response: Response,
    session: DbSession,
    settings: SettingsDep,
    user: CurrentUser,
    body: TrainJobCreate,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    submission = submit_training(session, settings, user, body, idempotency_key=idempotency_key)
    return answer_submission(
        request, response, session, user, submission, "train.submit", dataset=body.dataset_id
    )


@router.get(
    "/task/{task_id}",
    response_model=JobPublic,
    summary="Status and progress",
    description=(
        "A task's kind, status, stage, progress (step, loss, latest metrics), attempts, error and registered "
        "model. Async with one short read inline: the most frequent call (clients poll it) makes no thread hop."
    ),
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
async def get_task(task_id: str, request: Request, user: CurrentUser) -> JobPublic:
    with read_scope(request.app.state.settings) as session:
        return get_job(session, user, task_id)


@router.get(
    "/tasks",
    response_model=Page[JobPublic],
    summary="The caller's tasks (admin: all)",
    description="Tasks newest first, optionally of one status; an admin sees every user's.",
    responses=errors(401, 422),
)
def list_tasks(
    session: DbSession,
    user: CurrentUser,
    status_filter: Annotated[
        str | None, Query(alias="status", max_length=16, description="Only tasks in this state.")
    ] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> Page[JobPublic]:
    return list_jobs(session, user, status=status_filter, offset=offset, limit=limit)


@router.post(
    "/task/{task_id}/cancel",
    response_model=JobPublic,
    summary="Cancel a task",
    description=(
        "A queued task is cancelled at once; a running one is asked to stop (`cancel_requested`) and its worker "
        "stops it at the next step, keeping its last checkpoint."
    ),
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409="The task has already finished."),
)
def cancel_task(task_id: str, request: Request, session: DbSession, user: CurrentUser) -> JobPublic:
    job = cancel_job(session, user, task_id)
    audit(session, request, "task.cancel", actor=user, target=f"task:{task_id}", status=job.status)
    return job


@router.post(
    "/task/{task_id}/retry",
    response_model=JobPublic,
    summary="Queue a failed or cancelled task again",
    description=(
        "What `finetune jobs retry` does: the task is queued again with a fresh attempt budget and resumes from "
        "its last complete checkpoint (the hours it ran still count against JOB_MAX_HOURS). Only a failed or "
        "cancelled task can be retried, within its owner's queued-jobs limit."
    ),
    responses=errors(
        401,
        404,
        409,
        422,
        429,
        e404=NOT_YOURS,
        e409="The task is queued, running or succeeded: only failed or cancelled tasks can be retried.",
        e429="The task's owner has as many tasks queued as the account may.",
    ),
)
def retry_task(
    task_id: str, request: Request, session: DbSession, settings: SettingsDep, user: CurrentUser
) -> JobPublic:
    job = retry_job(session, user, task_id, settings=settings)
    audit(session, request, "task.retry", actor=user, target=f"task:{job.id}", status=job.status)
    session.commit()  # the outbox sends the message once the row is committed
    return job


@router.get(
    "/task/{task_id}/logs",
    response_model=JobLogs,
    summary="Events and log tail",
    description="The task's events (submitted, started, stages, retries, outcome), then the tail of its logs.txt.",
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def get_task_logs(
    task_id: str,
    session: DbSession,
    user: CurrentUser,
    lines: Annotated[int, Query(ge=0, le=1000, description="Last lines of logs.txt to return.")] = 200,
) -> JobLogs:
    return job_logs(session, user, task_id, lines)


@router.get(
    "/task/{task_id}/metrics",
    response_model=TrainingMetrics,
    summary="Training curves and final metrics",
    description=(
        "Loss, learning rate, gradient norm and samples/s per logging step, each evaluation's scores, the ETA while "
        "running, and once evaluated the final accuracy, macro F1, loss, per-class scores and confusion matrix. "
        "Read from the run's records as it writes them (never from log lines); empty lists before training starts."
    ),
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409="A prediction task has no training metrics."),
)
def get_task_metrics(task_id: str, session: DbSession, user: CurrentUser) -> TrainingMetrics:
    return training_metrics(session, user, task_id)
