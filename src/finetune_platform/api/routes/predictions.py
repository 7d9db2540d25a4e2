"""Prediction tasks: classify every row of an uploaded file with a registered model (POST /predictions), then
fetch the CSV (GET /task/{task_id}/predictions). A separate resource from training: its own request, and a file
for its result. The task itself is read, cancelled and retried with the other tasks (the jobs router)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse

from finetune_platform.api.deps import CurrentUser, DbSession, IdempotencyKey, SettingsDep
from finetune_platform.api.routes.jobs import REPEATED, answer_submission
from finetune_platform.api.schemas import errors
from finetune_platform.services.job_requests import submit_prediction
from finetune_platform.services.jobs import predictions_path
from finetune_platform.services.schemas.jobs import JobPublic, PredictionJobCreate

router = APIRouter(tags=["tasks"])


@router.post(
    "/predictions",
    response_model=JobPublic,
    status_code=201,
    summary="Queue prediction over an uploaded file",
    description=(
        "A worker classifies every row of the dataset with the model (name, name@version or name@stage, pinned "
        "to a version now, so a promotion while the task waits changes nothing); fetch the CSV from "
        "GET /task/{task_id}/predictions once the task has succeeded. With `label_column` present, the task "
        "also reports accuracy (RMSE for a regression model). A model trained on text pairs reads each row's "
        "second text from `text_pair_column`. `Idempotency-Key` repeats a submission safely (200: the first task)."
    ),
    responses={
        **REPEATED,
        **errors(
            401,
            404,
            413,
            422,
            429,
            e404="No such registered model, or no dataset with this id among the caller's.",
            e422="The dataset has no such text column or text pair column (named by the dataset's id and name).",
            e429="The account has as many tasks queued as it may.",
        ),
    },
)
def create_prediction_task(
    request: Request,
    response: Response,
    session: DbSession,
    settings: SettingsDep,
    user: CurrentUser,
    body: PredictionJobCreate,
    idempotency_key: IdempotencyKey = None,
) -> JobPublic:
    submission = submit_prediction(session, settings, user, body, idempotency_key=idempotency_key)
    return answer_submission(
        request, response, session, user, submission, "predict.submit",
        dataset=body.dataset_id, model=submission.job.config["model"],
    )  # fmt: skip


@router.get(
    "/task/{task_id}/predictions",
    summary="The predictions CSV of a finished prediction task",
    description=(
        "One row per input row: `row`, the predicted `label` (class id), `label_name`, `probability`, "
        "`truncated`, a `p_<label>` column per class and `error` (an empty text or text pair). A multi-label "
        "model's rows hold `labels` (those above their thresholds, most probable first, joined by ','), "
        "`probabilities` (JSON) and `truncated` instead; a regression model's `value` and `truncated`. Ready when "
        "the prediction task has succeeded."
    ),
    response_class=FileResponse,
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string", "format": "binary"}}},
            "description": "One row per input row.",
        },
        **errors(
            401,
            404,
            409,
            422,
            e404="No task with this id among the caller's, or its CSV is no longer on the server.",
            e409="A training task, or a prediction task that has not succeeded (yet).",
        ),
    },
)
def get_task_predictions(task_id: str, session: DbSession, user: CurrentUser) -> FileResponse:
    path = predictions_path(session, user, task_id)
    return FileResponse(path, media_type="text/csv", filename=f"predictions-{task_id}.csv")
