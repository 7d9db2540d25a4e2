"""Every endpoint. Handlers are thin: access checks here, the work in ``services`` and ``tracking``."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Query,
    Request,
    Response,
    status,
)
from fastapi import (
    Path as PathParam,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy import text

from finetune_platform import __version__
from finetune_platform.api import schemas
from finetune_platform.api.deps import (
    AdminUser,
    CurrentUser,
    DbSession,
    audit,
    audit_apart,
    client_address,
    unauthorized,
)
from finetune_platform.data.formats import NAME_MIN_LENGTH, NAME_PATTERN, SUFFIXES_TEXT
from finetune_platform.db.models import Role
from finetune_platform.db.session import engine_for, read_scope, session_scope
from finetune_platform.errors import ConfigError, NotFoundError
from finetune_platform.services.audit import list_entries
from finetune_platform.services.base_models import allow_base_model as allow_model
from finetune_platform.services.base_models import allowed_base_models, check_allowed
from finetune_platform.services.base_models import disallow_base_model as disallow_model
from finetune_platform.services.jobs import (
    cancel_job,
    get_job,
    job_events,
    job_log_path,
    list_jobs,
    predictions_path,
    submit_job,
    submit_prediction_job,
    visible_runs,
)
from finetune_platform.services.quotas import SETTING, own_limits
from finetune_platform.services.training_metrics import training_metrics
from finetune_platform.services.users import (
    UserPublic,
    WrongPassword,
    authenticate,
    change_password,
    create_user,
    get_user,
    get_user_public,
    list_users,
    revoke_tokens,
    token_subject,
    update_user,
)
from finetune_platform.tracking.client import mlflow_client
from finetune_platform.tracking.experiments import ExperimentStore
from finetune_platform.tracking.ownership import claim_name, owners, transfer_name
from finetune_platform.tracking.summary import public_summary
from finetune_platform.training.config import ModelSection, TrainConfig, config_from_dict

router = APIRouter(responses=schemas.ERRORS)
PageLimit = Annotated[int, Query(ge=1, le=schemas.MAX_PAGE, description="Page size (at most 100).")]
PageOffset = Annotated[int, Query(ge=0, le=1_000_000, description="Entries to skip.")]
BAD_LOGIN = "incorrect username or password"
UserId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="User id.")]


# -- accounts --------------------------------------------------------------------------------------
@router.post("/login", response_model=schemas.Token, tags=["auth"], summary="Log in (OAuth2 password form)")
def login(request: Request, session: DbSession, form: Annotated[OAuth2PasswordRequestForm, Depends()]):
    """A bearer token for a username (any case) and password. Failed logins are throttled per account and
    address (429 with Retry-After) and slowed per address; every failure is audited."""
    address = client_address(request)
    throttle = request.app.state.throttle
    attempt = throttle.attempt(form.username, address)  # counted before the password is checked
    if attempt.wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed logins; try again in {attempt.wait} s",
            headers={"Retry-After": str(attempt.wait)},
        )
    user = authenticate(session, form.username, form.password)
    if user is None:  # the attempt stays counted as a failure
        # Its own transaction: the request's is rolled back with the 401.
        audit_apart(request, "login", target=f"username:{form.username[:64]}", outcome="failed")
        raise unauthorized(BAD_LOGIN)
    throttle.succeeded(form.username, address, attempt)
    token, lifetime = request.app.state.tokens.issue(token_subject(session, user.id))
    audit(session, request, "login", actor=user, target=f"user:{user.id}")
    return schemas.Token(access_token=token, expires_in=lifetime)


@router.post("/logout", status_code=204, tags=["auth"], summary="Revoke every token of the caller")
def logout(request: Request, session: DbSession, user: CurrentUser) -> Response:
    revoke_tokens(session, user.id)
    audit(session, request, "logout", actor=user, target=f"user:{user.id}")
    return Response(status_code=204)


@router.get("/users/me", response_model=schemas.UserOut, tags=["users"], summary="The caller's account")
def me(user: CurrentUser):
    return asdict(user)


@router.post("/users/me/password", status_code=204, tags=["users"], summary="Change the caller's password")
def change_my_password(request: Request, session: DbSession, user: CurrentUser, body: schemas.PasswordChange):
    """Throttled like logins: a stolen token cannot be used to guess the current password."""
    throttle, account, address = (
        request.app.state.throttle,
        f"password-change:{user.id}",
        client_address(request),
    )
    attempt = throttle.attempt(account, address)
    if attempt.wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many wrong current passwords; try again in {attempt.wait} s",
            headers={"Retry-After": str(attempt.wait)},
        )
    try:
        change_password(session, user.id, body.current_password, body.new_password)
    except WrongPassword:
        raise  # counted
    except BaseException:
        throttle.succeeded(account, address, attempt)  # the current password was right
        raise
    throttle.succeeded(account, address, attempt)
    audit(session, request, "user.password", actor=user, target=f"user:{user.id}")
    return Response(status_code=204)


@router.get("/users", response_model=list[schemas.UserOut], tags=["users"], summary="List accounts (admin)")
def users(session: DbSession, admin: AdminUser, limit: PageLimit = 50, offset: PageOffset = 0):
    return [asdict(user) for user in list_users(session)[offset : offset + limit]]


@router.post(
    "/users", response_model=schemas.UserOut, status_code=201, tags=["users"], summary="Create (admin)"
)
def create(request: Request, session: DbSession, admin: AdminUser, body: schemas.UserCreate):
    user = create_user(session, body.username, body.password, body.role)
    audit(session, request, "user.create", actor=admin, target=f"user:{user.id}", role=user.role)
    return asdict(user)


@router.get("/users/{user_id}", response_model=schemas.UserOut, tags=["users"], summary="One account (admin)")
def user_detail(user_id: UserId, session: DbSession, admin: AdminUser):
    return asdict(get_user_public(session, user_id))


@router.patch("/users/{user_id}", response_model=schemas.UserOut, tags=["users"], summary="Change (admin)")
def update(user_id: UserId, request: Request, session: DbSession, admin: AdminUser, body: schemas.UserPatch):
    """A limit sent as null returns the account to the platform default (MAX_QUEUED_JOBS_PER_USER, ...)."""
    limits = {name: getattr(body, name) for name in SETTING if name in body.model_fields_set}
    user = update_user(
        session, user_id, role=body.role, is_active=body.is_active, password=body.password, limits=limits
    )
    changed = sorted(set(body.model_dump(exclude_none=True)) | set(limits))
    audit(session, request, "user.update", actor=admin, target=f"user:{user_id}", fields=changed)
    return {**asdict(user), **own_limits(session, user_id)}


# -- datasets --------------------------------------------------------------------------------------
@router.post(
    "/datasets",
    response_model=schemas.DatasetUploaded,
    status_code=201,
    tags=["datasets"],
    summary="Upload a dataset (the request body is the file)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
async def upload_dataset(
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
):
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

        def register():
            with session_scope(settings) as session:
                dataset, report = register_upload(
                    session,
                    settings,
                    user,
                    name,
                    received,
                    size,
                    text_column=text_column,
                    label_column=label_column,
                )
                audit(
                    session,
                    request,
                    "dataset.upload",
                    actor=user,
                    target=f"dataset:{dataset.id}",
                    valid=dataset.valid,
                )
                return dataset, report

        dataset, report = await run_in_threadpool(register)
    finally:
        received.unlink(missing_ok=True)
    return {**asdict(dataset), "report": report}


@router.get(
    "/datasets", response_model=schemas.DatasetPage, tags=["datasets"], summary="The caller's datasets"
)
def datasets(session: DbSession, user: CurrentUser, limit: PageLimit = 50, offset: PageOffset = 0):
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import list_datasets

    rows, total = list_datasets(session, user, offset=offset, limit=limit)
    return {"data": [asdict(row) for row in rows], "count": total}


@router.get(
    "/datasets/{dataset_id}/versions",
    response_model=schemas.DatasetVersionsPage,
    tags=["datasets"],
    summary="A dataset's recorded versions (lineage)",
)
def dataset_versions(dataset_id: str, session: DbSession, user: CurrentUser):
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_versions as versions

    rows = versions(session, user, dataset_id)
    return {"data": [asdict(row) for row in rows], "count": len(rows)}


@router.get("/datasets/{dataset_id}/report", tags=["datasets"], summary="A dataset's validation report")
def dataset_report(dataset_id: str, session: DbSession, user: CurrentUser) -> dict[str, Any]:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_report as report

    return report(session, user, dataset_id)


# -- training tasks --------------------------------------------------------------------------------
_TASK_FIELDS = tuple(name for name in schemas.TaskOut.model_fields if name != "task_id")


def task_out(job) -> dict[str, Any]:
    """The response fields of a job, shallow (``asdict`` would deep-copy its whole config); ``task_id`` repeats
    ``id`` under the name the Finetune-30-days README's clients read."""
    return {**{name: getattr(job, name) for name in _TASK_FIELDS}, "task_id": job.id}


_SERVER_FIELDS = (("data", "train_file"), ("data", "validation_file"), ("output_dir",))


def _server_config(
    session, raw: dict[str, Any], train: Path, validation: Path | None, results: Path
) -> dict[str, Any]:
    """The client's config with the server's paths and an allowed base model; a client cannot point the
    server at its files."""
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    for section in ("model", "data"):
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(
                f"config.{section}: expected an object of fields, got {type(config[section]).__name__}"
            )
    for path in _SERVER_FIELDS:
        node = config
        for part in path[:-1]:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if path[-1] in node:
            raise ConfigError(
                f"config.{'.'.join(path)}: set by the server (use dataset_id / validation_dataset_id)"
            )
    base_model = (config.get("model") or {}).get(
        "base_model", ModelSection.model_fields["base_model"].default
    )
    if not isinstance(base_model, str):
        raise ConfigError(f"config.model.base_model: expected a name, got {type(base_model).__name__}")
    check_allowed(session, base_model)
    data = dict(config.get("data") or {})
    data["train_file"] = str(train)
    if validation is not None:
        data["validation_file"] = str(validation)
    config["data"] = data
    config["output_dir"] = str(results.resolve())
    return config


def _claim_model_name(session, user, config: dict[str, Any]) -> None:
    """The model name a training job will register under is the caller's, or free (then it becomes
    theirs); another user's name is refused now, not after hours of training."""
    parsed = config_from_dict(config)  # ConfigError names the field
    if parsed.registry.enabled:
        claim_name(session, parsed.model_name, user.id, is_admin=user.role == Role.ADMIN.value)


@router.get("/config/schema", tags=["tasks"], summary="JSON schema of a training config (for forms)")
def config_schema(user: CurrentUser) -> dict[str, Any]:
    """The TrainConfig JSON schema: every field with its type, default, bounds and description. POST /train
    takes such a config without data paths or output_dir."""
    return TrainConfig.model_json_schema()


IdempotencyKey = Annotated[
    str | None,
    Header(max_length=128, description="Repeat a submission safely: the same key returns the same task."),
]


def _queued(request, response, session, user, submission, action: str, **details: Any) -> dict[str, Any]:
    """A new task is audited and committed, which sends it to the broker (the service's outbox) (201); a repeated
    key returns the first (200)."""
    job = submission.job
    if not submission.created:
        response.status_code = status.HTTP_200_OK
        return task_out(job)
    audit(session, request, action, actor=user, target=f"task:{job.id}", **details)
    session.commit()  # the outbox sends the message once the row is committed
    return task_out(job)


@router.post(
    "/train",
    response_model=schemas.TaskOut,
    status_code=201,
    tags=["tasks"],
    summary="Queue a training task",
    responses={200: {"description": "The task submitted earlier with the same Idempotency-Key."}},
)
def train(
    request: Request,
    response: Response,
    session: DbSession,
    user: CurrentUser,
    body: schemas.TrainRequest,
    idempotency_key: IdempotencyKey = None,
):
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_path

    settings = request.app.state.settings
    train_file = dataset_path(session, user, body.dataset_id)
    validation = (
        dataset_path(session, user, body.validation_dataset_id) if body.validation_dataset_id else None
    )
    config = _server_config(session, body.config, train_file, validation, settings.RESULTS_DIR)
    _claim_model_name(session, user, config)
    submission = submit_job(
        session,
        user,
        config,
        idempotency_key=idempotency_key,
        max_attempts=body.max_attempts,
        settings=settings,
    )
    return _queued(request, response, session, user, submission, "train.submit", dataset=body.dataset_id)


@router.post(
    "/predictions",
    response_model=schemas.TaskOut,
    status_code=201,
    tags=["tasks"],
    summary="Queue prediction over an uploaded file",
    responses={200: {"description": "The task submitted earlier with the same Idempotency-Key."}},
)
def predictions(
    request: Request,
    response: Response,
    session: DbSession,
    user: CurrentUser,
    body: schemas.PredictionJobRequest,
    idempotency_key: IdempotencyKey = None,
):
    """A worker classifies every row of the dataset with the model; fetch the CSV from
    GET /task/{id}/predictions once the task has succeeded."""
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import dataset_path

    settings = request.app.state.settings
    submission = submit_prediction_job(
        session,
        settings,
        user,
        model=body.model,
        input_file=dataset_path(session, user, body.dataset_id),
        text_column=body.text_column,
        label_column=body.label_column,
        idempotency_key=idempotency_key,
        max_attempts=body.max_attempts,
    )
    return _queued(
        request, response, session, user, submission, "predict.submit",
        dataset=body.dataset_id, model=submission.job.config["model"],
    )  # fmt: skip


@router.get(
    "/task/{task_id}/predictions",
    tags=["tasks"],
    summary="The predictions CSV of a finished prediction task",
    response_class=FileResponse,
    responses={200: {"content": {"text/csv": {}}, "description": "One row per input row."}},
)
def prediction_file(task_id: str, session: DbSession, user: CurrentUser):
    path = predictions_path(session, user, task_id)
    return FileResponse(path, media_type="text/csv", filename=f"predictions-{task_id}.csv")


@router.get("/task/{task_id}", response_model=schemas.TaskOut, tags=["tasks"], summary="Status and progress")
async def task(task_id: str, request: Request, user: CurrentUser):
    """Async with one short read inline: the most frequent call (clients poll it) makes no thread hop."""
    with read_scope(request.app.state.settings) as session:
        return task_out(get_job(session, user, task_id))


@router.get(
    "/tasks", response_model=schemas.TaskPage, tags=["tasks"], summary="The caller's tasks (admin: all)"
)
def tasks(
    session: DbSession,
    user: CurrentUser,
    status_filter: Annotated[
        str | None, Query(alias="status", max_length=16, description="Only tasks in this state.")
    ] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
):
    page = list_jobs(session, user, status=status_filter, offset=offset, limit=limit)
    return {"data": [task_out(job) for job in page.data], "count": page.count}


@router.post(
    "/task/{task_id}/cancel", response_model=schemas.TaskOut, tags=["tasks"], summary="Cancel a task"
)
def cancel(task_id: str, request: Request, session: DbSession, user: CurrentUser):
    job = cancel_job(session, user, task_id)
    audit(session, request, "task.cancel", actor=user, target=f"task:{task_id}", status=job.status)
    return task_out(job)


@router.get(
    "/task/{task_id}/logs", response_model=schemas.TaskLogs, tags=["tasks"], summary="Events and log tail"
)
def logs(
    task_id: str,
    session: DbSession,
    user: CurrentUser,
    lines: Annotated[int, Query(ge=0, le=1000, description="Last lines of logs.txt to return.")] = 200,
):
    job = get_job(session, user, task_id)
    events = [
        {"at": e["at"], "kind": e["kind"], "message": e["message"]}
        for e in job_events(session, user, task_id)
    ]
    log_path = job_log_path(job)
    tail: list[str] = []
    if lines and log_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return {"events": events, "log_lines": tail}


@router.get(
    "/task/{task_id}/metrics",
    response_model=schemas.TaskMetrics,
    tags=["tasks"],
    summary="Training curves and final metrics",
)
def task_metrics(task_id: str, session: DbSession, user: CurrentUser):
    """Loss, learning rate, gradient norm and samples/s per logging step, each evaluation's scores, the ETA while
    running, and once evaluated the final accuracy, macro F1, loss, per-class scores and confusion matrix. Read
    from the run's records as it writes them; empty lists before training starts. 409 for a prediction task."""
    return asdict(training_metrics(session, user, task_id))


# -- experiments and models ------------------------------------------------------------------------
# Everyone signed in sees experiments; a user sees only the runs of their own jobs (an admin, all runs), and
# another user's run answers like one that does not exist. This widens the Finetune-30-days README's rule
# (GET /experiments: admin) on purpose; EXPERIMENTS_ADMIN_ONLY=true restores it for every route below.
EXPERIMENTS_FOR_ADMINS = (
    "admin role required: experiments are for admins on this server (EXPERIMENTS_ADMIN_ONLY)"
)


async def experiments_reader(request: Request, user: CurrentUser) -> UserPublic:
    if request.app.state.settings.EXPERIMENTS_ADMIN_ONLY and user.role != Role.ADMIN.value:
        raise HTTPException(status.HTTP_403_FORBIDDEN, EXPERIMENTS_FOR_ADMINS)
    return user


ExperimentsReader = Annotated[UserPublic, Depends(experiments_reader)]


@router.get("/experiments", tags=["experiments"], summary="Experiments in the tracking store")
def experiments(request: Request, user: ExperimentsReader, session: DbSession) -> list[dict[str, Any]]:
    """Each experiment with the runs you may see: their count, the last start and the best accuracy. With
    EXPERIMENTS_ADMIN_ONLY=true, admins only (403 for others), here and on every /experiments route."""
    return ExperimentStore(request.app.state.settings).experiments(visible_runs(session, user))


@router.get("/experiments/runs", tags=["experiments"], summary="An experiment's runs")
def experiment_runs(
    request: Request,
    user: ExperimentsReader,
    session: DbSession,
    experiment: Annotated[str, Query(min_length=1, max_length=200, description="Experiment name.")],
) -> list[dict[str, Any]]:
    """Every run of the experiment you may see: id, name, status, start, final metrics, params, dataset version."""
    store = ExperimentStore(request.app.state.settings)
    return [asdict(run) for run in store.runs(experiment, visible_runs(session, user))]


@router.post("/experiments/compare", tags=["experiments"], summary="Compare runs")
def experiments_compare(
    request: Request, user: ExperimentsReader, session: DbSession, body: schemas.CompareRequest
) -> dict[str, Any]:
    """Final metrics side by side, the params that differ, and each run's training-loss curve."""
    # lazy: mlflow, not loaded at API start
    from mlflow.exceptions import MlflowException

    store = ExperimentStore(request.app.state.settings)
    try:
        comparison = store.compare(body.run_ids, only=visible_runs(session, user))
    except MlflowException:
        raise NotFoundError(f"no run among {', '.join(body.run_ids)}") from None
    return {
        "runs": [asdict(run) for run in comparison.runs],
        "metrics": comparison.metrics,
        "differing_params": comparison.differing_params,
        "loss_curves": {
            name: [[step, value] for step, value in curve] for name, curve in comparison.loss_curves.items()
        },
    }


@router.get("/experiments/mlflow/{run_id}", tags=["experiments"], summary="One MLflow run")
def mlflow_run(run_id: str, request: Request, user: ExperimentsReader, session: DbSession) -> dict[str, Any]:
    # lazy: mlflow, not loaded at API start
    from mlflow.exceptions import MlflowException

    if not run_id.isalnum() or len(run_id) > 64:
        raise NotFoundError(f"no run {run_id!r}")
    try:
        return asdict(ExperimentStore(request.app.state.settings).run(run_id, visible_runs(session, user)))
    except MlflowException:
        raise NotFoundError(f"no run {run_id!r}") from None


@router.get(
    "/mlflow", response_model=schemas.MlflowStatus, tags=["experiments"], summary="Tracking server status"
)
def mlflow_status(request: Request):
    """Public (no sign-in). The tracking store's kind, whether it answers, the address of its UI (never with
    credentials) and, unless MLFLOW_PUBLIC_SUMMARY=false, its experiments' names, run counts and newest run
    times: nothing about a run itself."""
    settings = request.app.state.settings
    uri = settings.mlflow_tracking_uri
    server = uri.startswith(("http://", "https://"))
    if server:  # one short probe: MLflow's client retries a dead server for minutes
        try:
            with urllib.request.urlopen(f"{_without_credentials(uri).rstrip('/')}/health", timeout=3):
                reachable = True
        except urllib.error.HTTPError as answer:  # it answered: behind basic auth, 401
            reachable = answer.code < 500
        except (urllib.error.URLError, OSError):
            reachable = False
    else:
        try:
            mlflow_client(settings).search_experiments(max_results=1)
            reachable = True
        except Exception:
            reachable = False
    summary = None
    if reachable and settings.MLFLOW_PUBLIC_SUMMARY:
        summary = public_summary(settings)
    return {
        "backend": "server" if server else "embedded",
        "reachable": reachable,
        "ui_url": _without_credentials(settings.MLFLOW_UI_URL or (uri if server else None)),
        "summary": asdict(summary) if summary is not None else None,
    }


def _without_credentials(url: str | None) -> str | None:
    """An address as users may see it: no user:password@, no query string (tokens travel there too)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _card_out(card) -> dict[str, Any]:
    fields = schemas.ModelCardOut.model_fields
    return {key: value for key, value in asdict(card).items() if key in fields}


@router.get(
    "/models/search", response_model=list[schemas.ModelCardOut], tags=["models"], summary="Search models"
)
def models_search(
    request: Request,
    user: CurrentUser,
    base_model: Annotated[str | None, Query(max_length=200, description="Exact base model.")] = None,
    language: Annotated[str | None, Query(max_length=32, description="Language, e.g. English.")] = None,
    task_name: Annotated[str | None, Query(alias="task", max_length=64, description="Task.")] = None,
    stage: Annotated[schemas.StageName | None, Query(description="Stage.")] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="Required tags (repeatable).")] = None,
    metric: Annotated[
        list[Annotated[str, Query(pattern=schemas.THRESHOLD_PATTERN)]] | None,
        Query(max_length=10, description="Thresholds such as accuracy>=0.9 (repeatable)."),
    ] = None,
    limit: PageLimit = 50,
):
    # lazy: numpy (model cards), not loaded at API start
    from finetune_platform.tracking.model_cards import CardStore
    from finetune_platform.tracking.search import CardFilter, Threshold, search

    card_filter = CardFilter(
        base_model=base_model,
        language=language,
        task=task_name,
        stage=stage,
        tags=list(tag or []),
        thresholds=[Threshold.parse(text) for text in metric or []],
    )
    cards = search(CardStore(request.app.state.settings.MODEL_REGISTRY_DIR), card_filter)
    return [_card_out(card) for card in cards[:limit]]


@router.post(
    "/models/recommend", response_model=list[schemas.Recommended], tags=["models"], summary="Recommend"
)
def models_recommend(request: Request, user: CurrentUser, body: schemas.RecommendRequest):
    """Model versions ranked by the similarity of their card's embedding to exactly one of: `query` (words,
    embedded like the cards), `embedding` (a vector of the cards' size) or `like` (another version's card)."""
    # lazy: numpy (model cards), not loaded at API start
    from finetune_platform.tracking.model_cards import CardStore
    from finetune_platform.tracking.search import CardFilter, recommend, recommend_for_query, recommend_like

    given = [name for name in ("query", "embedding", "like") if getattr(body, name) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of query, embedding or like (got {', '.join(given) if given else 'none'})"
        )
    card_filter = CardFilter(language=body.language, task=body.task, stage=body.stage)
    store = CardStore(request.app.state.settings.MODEL_REGISTRY_DIR)
    if body.query is not None:
        found = recommend_for_query(store, body.query, body.top_k, card_filter)
    elif body.embedding is not None:
        found = recommend(store, body.embedding, body.top_k, card_filter, field_name="embedding")
    else:
        name, _, version = body.like.rpartition("@")
        found = recommend_like(store, name, int(version), body.top_k, card_filter)
    return [{"card": _card_out(item.card), "score": item.score} for item in found]


@router.post(
    "/models/transition", response_model=schemas.TransitionOut, tags=["models"], summary="Move (admin)"
)
def models_transition(
    request: Request, session: DbSession, admin: AdminUser, body: schemas.TransitionRequest
):
    # lazy: numpy (model cards) and mlflow, not loaded at API start
    from finetune_platform.tracking.registry import ModelRegistry, Stage

    stage = Stage.parse(body.stage)
    moved = ModelRegistry(request.app.state.settings).transition(body.name, body.version, stage)
    audit(
        session,
        request,
        "model.transition",
        actor=admin,
        target=f"model:{body.name}@{body.version}",
        stage=stage.value,
        archived=list(moved.archived),
    )
    return {
        "name": moved.name,
        "version": moved.version,
        "stage": moved.stage.value,
        "archived": list(moved.archived),
    }


@router.get("/models/owners", response_model=list[schemas.ModelOwner], tags=["models"], summary="Name owners")
def model_owners(session: DbSession, user: CurrentUser):
    """Every owned model name and its owner: a name listed here is registered only by its owner."""
    return [{"name": name, "owner": owner} for name, owner in sorted(owners(session).items())]


@router.put(
    "/models/{name}/owner", response_model=schemas.ModelOwner, tags=["models"], summary="Transfer (admin)"
)
def transfer_model(
    name: Annotated[str, PathParam(max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")],
    request: Request,
    session: DbSession,
    admin: AdminUser,
    body: schemas.OwnerChange,
):
    new_owner = get_user(session, body.owner)
    transfer_name(session, name, new_owner.id)
    audit(session, request, "model.owner", actor=admin, target=f"model:{name}", owner=new_owner.id)
    return {"name": name, "owner": new_owner.username}


# -- base models -----------------------------------------------------------------------------------
@router.get(
    "/base-models", response_model=list[schemas.BaseModelOut], tags=["models"], summary="Allowed base models"
)
def base_models(session: DbSession, user: CurrentUser):
    """What `config.model.base_model` may name in POST /train."""
    return [asdict(model) for model in allowed_base_models(session)]


@router.post(
    "/base-models",
    response_model=schemas.BaseModelOut,
    status_code=201,
    tags=["models"],
    summary="Allow a base model (admin)",
)
def allow_base_model(request: Request, session: DbSession, admin: AdminUser, body: schemas.BaseModelCreate):
    model = allow_model(session, body.name, admin.id)
    audit(session, request, "base_model.allow", actor=admin, target=f"base_model:{body.name}")
    return asdict(model)


@router.delete(
    "/base-models/{name:path}", status_code=204, tags=["models"], summary="Disallow a base model (admin)"
)
def disallow_base_model(
    name: Annotated[str, PathParam(max_length=255)], request: Request, session: DbSession, admin: AdminUser
) -> Response:
    disallow_model(session, name)
    audit(session, request, "base_model.disallow", actor=admin, target=f"base_model:{name}")
    return Response(status_code=204)


# -- audit and operations --------------------------------------------------------------------------
@router.get("/audit/logs", response_model=schemas.AuditPage, tags=["audit"], summary="Audit log (admin)")
def audit_logs(
    session: DbSession,
    admin: AdminUser,
    actor_id: Annotated[int | None, Query(description="Only this user's entries.")] = None,
    action: Annotated[str | None, Query(max_length=64, description="Only this action.")] = None,
    outcome: Annotated[str | None, Query(max_length=16, description="ok, failed or denied.")] = None,
    target: Annotated[str | None, Query(max_length=255, description="Only this target.")] = None,
    since: Annotated[datetime | None, Query(description="From this time (ISO).")] = None,
    until: Annotated[datetime | None, Query(description="Before this time (ISO).")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
):
    entries, total = list_entries(
        session,
        actor_id=actor_id,
        action=action,
        outcome=outcome,
        target=target,
        since=since,
        until=until,
        offset=offset,
        limit=limit,
    )
    return {"data": [asdict(entry) for entry in entries], "count": total}


@router.get(
    "/health", response_model=schemas.Health, tags=["operations"], summary="Liveness and database check"
)
def health(request: Request):
    try:
        with engine_for(request.app.state.settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:
        database = f"{exc.__class__.__name__}"
    return {"status": "ok" if database == "ok" else "degraded", "database": database, "version": __version__}
