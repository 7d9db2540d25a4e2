"""Request and response bodies. Requests forbid unknown fields: server-owned ones cannot be smuggled in."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# SQLite hands back naive datetimes (stored as UTC): responses always carry the zone (RFC 3339).
Timestamp = Annotated[
    datetime, AfterValidator(lambda moment: moment if moment.tzinfo else moment.replace(tzinfo=UTC))
]

MAX_PAGE = 100
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$"
THRESHOLD_PATTERN = (
    r"^\s*[A-Za-z_][A-Za-z0-9_.]*\s*(>=|<=|==|=|>|<)\s*[-+]?[0-9]*[.]?[0-9]+([eE][-+]?[0-9]+)?\s*$"
)
RoleName = Literal["admin", "user"]
StageName = Literal["None", "Staging", "Production", "Archived"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Token(BaseModel):
    access_token: str = Field(description="JWT (HS256) to send as `Authorization: Bearer <token>`.")
    token_type: str = Field(default="bearer", description="Always `bearer`.")
    expires_in: int = Field(description="Seconds until the token expires.")


class UserOut(BaseModel):
    id: int = Field(description="User id.")
    username: str = Field(description="Login name.")
    role: str = Field(description="`admin` or `user`.")
    is_active: bool = Field(description="Disabled users cannot log in; their tokens are refused.")
    created_at: Timestamp = Field(description="When the account was created.")
    max_queued_jobs: int | None = Field(
        default=None, description="The account's own queued-jobs limit; null: MAX_QUEUED_JOBS_PER_USER."
    )
    max_running_jobs: int | None = Field(
        default=None, description="The account's own running-jobs limit; null: MAX_RUNNING_JOBS_PER_USER."
    )
    max_job_hours: float | None = Field(
        default=None, description="The account's own hours-per-job limit; null: JOB_MAX_HOURS."
    )


class UserCreate(Strict):
    username: str = Field(
        min_length=2,
        max_length=64,
        pattern=USERNAME_PATTERN,
        description="Login name: letters, digits, . _ @ -.",
    )
    password: str = Field(
        min_length=10,
        max_length=256,
        description="At least 10 characters, not a common password and not containing the username.",
    )
    role: RoleName = Field(default="user", description="`admin` or `user`.")


class UserPatch(Strict):
    role: RoleName | None = Field(default=None, description="New role: `admin` or `user`.")
    is_active: bool | None = Field(
        default=None, description="false disables the account and revokes its tokens."
    )
    password: str | None = Field(
        default=None,
        min_length=10,
        max_length=256,
        description="New password (revokes the user's tokens): at least 10 characters, not a common one.",
    )
    max_queued_jobs: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Jobs the account may have queued (0-100,000; 0 stops it submitting); null: the default.",
    )
    max_running_jobs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Jobs of the account that run at once (1-10,000); null: the default.",
    )
    max_job_hours: float | None = Field(
        default=None,
        ge=0.001,
        le=8760,
        allow_inf_nan=False,
        description="Hours one job of the account may run (0.001-8760); null: the default (JOB_MAX_HOURS).",
    )


class PasswordChange(Strict):
    current_password: str = Field(max_length=256, description="The password in use now.")
    new_password: str = Field(
        min_length=10,
        max_length=256,
        description="At least 10 characters, not a common password and not containing the username.",
    )


class TrainRequest(Strict):
    config: dict[str, Any] = Field(
        description=(
            "A training config (`finetune config schema`) without data file paths or output_dir: the "
            "server fills them from the datasets named below."
        )
    )
    dataset_id: str = Field(max_length=36, description="Id of an uploaded training dataset (POST /datasets).")
    validation_dataset_id: str | None = Field(
        default=None, max_length=36, description="Id of an uploaded validation dataset (optional)."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before the job is failed.")


class PredictionJobRequest(Strict):
    model: str = Field(
        min_length=1,
        max_length=200,
        description="Registered model: name, name@version or name@stage; pinned to a version at submission.",
    )
    dataset_id: str = Field(max_length=36, description="Id of an uploaded file of texts (POST /datasets).")
    text_column: str = Field(
        default="text", min_length=1, max_length=128, description="Column with the texts."
    )
    label_column: str = Field(
        default="label",
        min_length=1,
        max_length=128,
        description="If the file has this column, the task reports accuracy against it.",
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before the task is failed.")


class TaskOut(BaseModel):
    id: str = Field(description="Task (job) id.")
    task_id: str = Field(
        description="The same id as `id`, under the name the Finetune-30-days README reads (GET /task/{task_id})."
    )
    owner_id: int = Field(description="Id of the user who submitted it.")
    kind: str = Field(description="train (POST /train) or predict (POST /predictions).")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    stage: str | None = Field(
        description=(
            "While running: validating, training, evaluating or registering; predicting for predictions. "
            "done once succeeded; a failed or cancelled task keeps the stage it stopped in."
        )
    )
    progress: dict[str, Any] = Field(
        description=(
            "Training: step, max_steps, epoch, percent (from the start of training, within seconds), loss, "
            "learning_rate, samples_per_second (each logging step), metrics (latest evaluation). "
            "Prediction: done, total, percent; when finished rows, predicted, empty, truncated, accuracy."
        )
    )
    attempts: int = Field(description="Attempts started so far.")
    max_attempts: int = Field(description="Attempts allowed before the task fails.")
    error: str | None = Field(description="Why the last attempt failed, or why the task failed.")
    dataset_version: str | None = Field(description="Content version of the training data.")
    run_id: str | None = Field(description="MLflow run id.")
    model_name: str | None = Field(description="Registered model name, once registered.")
    model_version: int | None = Field(description="Registered model version, once registered.")
    cancel_requested: bool = Field(description="A cancel was asked while running.")
    created_at: Timestamp = Field(description="Submission time.")
    started_at: Timestamp | None = Field(description="First start.")
    finished_at: Timestamp | None = Field(description="End time, when finished.")


class TaskPage(BaseModel):
    data: list[TaskOut] = Field(description="Tasks, newest first.")
    count: int = Field(description="Tasks matching the filter, in all pages.")


class TaskEvent(BaseModel):
    at: str = Field(description="ISO time.")
    kind: str = Field(description="submitted, started, stage, resumed, retrying, preempted, succeeded, …")
    message: str = Field(description="What happened.")


class TaskLogs(BaseModel):
    events: list[TaskEvent] = Field(description="The task's events, oldest first.")
    log_lines: list[str] = Field(description="The last lines of the run's logs.txt.")


class TrainingPoint(BaseModel):
    step: int = Field(description="Optimizer step of this logging step.")
    epoch: float | None = Field(description="Epochs done at this step.")
    loss: float | None = Field(
        description="Mean training loss since the previous logging step (null: not finite)."
    )
    learning_rate: float | None = Field(description="Learning rate at this step.")
    grad_norm: float | None = Field(description="Gradient norm at this step (null when not measured).")
    samples_per_second: float | None = Field(description="Training rows per second since the previous entry.")


class EvaluationPoint(BaseModel):
    step: int = Field(description="Optimizer step the evaluation ran at.")
    epoch: float | None = Field(description="Epochs done at this step.")
    loss: float | None = Field(description="Validation loss.")
    accuracy: float | None = Field(description="Validation accuracy, 0 to 1.")
    macro_f1: float | None = Field(description="Validation macro-averaged F1, 0 to 1.")


class ClassScores(BaseModel):
    precision: float = Field(description="Of the rows predicted as this class, the share that are.")
    recall: float = Field(description="Of the rows of this class, the share predicted as it.")
    f1: float = Field(description="Harmonic mean of precision and recall.")
    support: int = Field(description="Validation rows of this class.")


class ConfusionMatrix(BaseModel):
    labels: list[str] = Field(description="Class names, in the order of the matrix's rows and columns.")
    matrix: list[list[int]] = Field(
        description="Row counts: rows are the true class, columns the predicted one."
    )


class FinalMetrics(BaseModel):
    accuracy: float = Field(description="Accuracy of the final model on the validation rows, 0 to 1.")
    macro_f1: float = Field(description="Macro-averaged F1 of the final model, 0 to 1.")
    loss: float | None = Field(description="Validation loss of the final model.")
    rows: int | None = Field(description="Validation rows scored.")
    checkpoint: str | None = Field(
        description="The checkpoint the final model is (best), or null: the last step."
    )
    per_class: dict[str, ClassScores] = Field(description="Precision, recall, F1 and support of each class.")
    confusion_matrix: ConfusionMatrix = Field(description="True against predicted class counts.")


class TaskMetrics(BaseModel):
    task_id: str = Field(description="Task (job) id.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    training: list[TrainingPoint] = Field(description="One entry per logging step, oldest first.")
    evaluations: list[EvaluationPoint] = Field(
        description="One entry per evaluation during training, oldest first."
    )
    eta_seconds: float | None = Field(description="While running: seconds left at the speed so far.")
    final: FinalMetrics | None = Field(description="Once the run has evaluated its final model; null before.")


class DatasetOut(BaseModel):
    id: str = Field(description="Dataset id, for POST /train.")
    name: str = Field(description="The file name given at upload (a label only).")
    format: str = Field(description="csv, tsv, jsonl, json or parquet.")
    size_bytes: int = Field(description="Size of the stored file.")
    rows: int = Field(description="Rows read.")
    version: str | None = Field(description="Content version (first 12 hex digits of its hash).")
    valid: bool = Field(description="False when validation found errors; the report says which rows.")
    created_at: Timestamp = Field(description="Upload time.")


class DatasetUploaded(DatasetOut):
    report: dict[str, Any] = Field(description="The validation report (checks, issues with rows and fixes).")


class DatasetPage(BaseModel):
    data: list[DatasetOut] = Field(description="Datasets, newest first.")
    count: int = Field(description="Datasets in all pages.")


class DatasetVersionOut(BaseModel):
    version: str = Field(description="Content version (first 12 hex digits of its hash).")
    content_hash: str = Field(description="SHA-256 over the sorted hashes of the normalised rows.")
    format: str | None = Field(description="csv, tsv, jsonl, json or parquet.")
    rows: int = Field(description="Rows read.")
    label_counts: dict[str, int] = Field(description="Rows per label.")
    text_column: str = Field(description="Column with the text.")
    label_column: str = Field(description="Column with the label.")
    source: str = Field(description="Who recorded it: upload, api (a submitted job), train (a run) or cli.")
    created_at: Timestamp = Field(description="When it was recorded.")


class DatasetVersionsPage(BaseModel):
    data: list[DatasetVersionOut] = Field(description="The dataset's recorded versions, oldest first.")
    count: int = Field(description="Versions listed.")


class ModelCardOut(BaseModel):
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Version number.")
    stage: str = Field(description="None, Staging, Production or Archived.")
    base_model: str = Field(description="Base model the adapter was trained from.")
    language: str = Field(description="Language of the training data.")
    task: str = Field(description="Task, e.g. text-classification.")
    description: str = Field(description="What the model is for.")
    metrics: dict[str, float] = Field(description="Final evaluation metrics.")
    tags: list[str] = Field(description="Free-form tags.")
    labels: list[str] = Field(description="Class labels.")
    dataset_version: str | None = Field(description="Version of the training data.")
    created_at: str = Field(description="Registration time.")
    owner: str | None = Field(
        default=None, description="Username owning the model name (None: registered before names were owned)."
    )


class Recommended(BaseModel):
    card: ModelCardOut = Field(description="The model version.")
    score: float = Field(description="Cosine similarity to the query, -1 to 1.")


MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}@[0-9]{1,9}$"


class RecommendRequest(Strict):
    """Exactly one of `query`, `embedding` or `like` (422 naming them otherwise)."""

    query: str | None = Field(
        default=None, min_length=1, max_length=2000, description="What the model should do, in words."
    )
    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "A vector of finite numbers the size of the model cards' embeddings (384, all-MiniLM-L6-v2 mean "
            "pooled); another size answers 422 naming the expected one. Need not be normalised."
        ),
    )
    like: str | None = Field(
        default=None,
        max_length=140,
        pattern=MODEL_VERSION_PATTERN,
        description="Models similar to this registered version, as name@version (itself left out).",
    )
    top_k: int = Field(default=5, ge=1, le=50, description="How many to return.")
    language: str | None = Field(default=None, max_length=32, description="Only models for this language.")
    task: str | None = Field(default=None, max_length=64, description="Only models for this task.")
    stage: StageName | None = Field(default=None, description="Only models in this stage.")


class CompareRequest(Strict):
    run_ids: list[Annotated[str, Field(pattern=r"^[0-9a-zA-Z]{1,64}$")]] = Field(
        min_length=2, max_length=10, description="Two to ten MLflow run ids."
    )


class TransitionRequest(Strict):
    name: str = Field(max_length=128, description="Registered model name.")
    version: int = Field(ge=1, description="Version to move.")
    stage: StageName = Field(description="None, Staging, Production or Archived.")


class TransitionOut(BaseModel):
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Version moved.")
    stage: str = Field(description="Its new stage.")
    archived: list[int] = Field(description="Versions moved out of Production by this transition.")


class AuditOut(BaseModel):
    id: int = Field(description="Entry id (chain order).")
    at: Timestamp = Field(description="When.")
    actor_id: int | None = Field(description="Who (user id), if known.")
    action: str = Field(description="What, e.g. train.submit, login, denied.")
    target: str | None = Field(description="On what, e.g. task:<id>.")
    outcome: str = Field(description="ok, failed or denied.")
    address: str | None = Field(description="Client address.")
    detail: dict[str, Any] = Field(description="More about it.")


class AuditPage(BaseModel):
    data: list[AuditOut] = Field(description="Entries, newest first.")
    count: int = Field(description="Entries matching the filters, in all pages.")


class BaseModelOut(BaseModel):
    name: str = Field(description="What `config.model.base_model` may name in POST /train.")
    added_by: int | None = Field(description="Admin who allowed it (None: allowed by the platform itself).")
    created_at: Timestamp = Field(description="When it was allowed.")


class BaseModelCreate(Strict):
    name: str = Field(
        min_length=1,
        max_length=201,
        pattern=r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?|/[A-Za-z0-9_./-]{1,200})$",
        description="A bundled alias (minilm), a Hugging Face id (org/name) or an absolute folder on the workers.",
    )


class ModelOwner(BaseModel):
    name: str = Field(description="Registered model name.")
    owner: str = Field(description="Username owning it: only they (or an admin) register versions under it.")


class OwnerChange(Strict):
    owner: str = Field(
        min_length=2, max_length=64, pattern=USERNAME_PATTERN, description="The new owner's username."
    )


class ExperimentActivity(BaseModel):
    name: str = Field(description="Experiment name.")
    runs: int = Field(description="Its active runs (a lower bound when the summary is not complete).")
    last_run: Timestamp | None = Field(description="Start of its newest run; null: no runs.")


class TrackingSummary(BaseModel):
    experiments: list[ExperimentActivity] = Field(
        description="At most 50 active experiments, the most recently run first (MLflow's unused Default left out)."
    )
    experiment_count: int = Field(description="Active experiments in all, listed or not.")
    run_count: int = Field(description="Active runs counted over all of them.")
    complete: bool = Field(
        description="false: the store holds more than the 2,000 runs or 1,000 experiments counted."
    )
    as_of: Timestamp = Field(description="When the store was read (summaries are kept 30 s).")


class MlflowStatus(BaseModel):
    backend: str = Field(description="`server` or `embedded` (a SQLite store beside the API).")
    reachable: bool = Field(description="Whether the tracking store answered.")
    ui_url: str | None = Field(description="Where to open the MLflow UI, if known.")
    summary: TrackingSummary | None = Field(
        default=None,
        description=(
            "What a dashboard may show without credentials: experiment names, run counts and newest run "
            "times, never run names, params, metrics, artifacts or owners. null when MLFLOW_PUBLIC_SUMMARY "
            "is false or the store could not be read within 3 s."
        ),
    )


class Health(BaseModel):
    status: str = Field(description="`ok` when the database answers, else `degraded`.")
    database: str = Field(description="`ok` or the error.")
    version: str = Field(description="Platform version.")


class Problem(BaseModel):
    field: str = Field(description="Where: body.<field>, query.<name>, path.<name> or header.<name>.")
    message: str = Field(description="What is wrong with it.")


class ErrorOut(BaseModel):
    detail: str = Field(description="What went wrong, safe to show.")
    code: str | None = Field(
        default=None, description="Machine-readable error code, when the platform raised it."
    )
    problems: list[Problem] | None = Field(default=None, description="Each invalid field (422).")
    report: dict[str, Any] | None = Field(default=None, description="The dataset validation report (422).")


ERRORS = {
    status: {"model": ErrorOut, "description": description}
    for status, description in (
        (401, "Not authenticated, or the token is invalid, expired or revoked."),
        (403, "Authenticated, but the role does not allow it."),
        (404, "No such object, or it belongs to someone else."),
        (409, "Conflicts with the current state (e.g. the task already finished)."),
        (413, "The upload is larger than the limit."),
        (422, "Invalid request: the fields named in `problems`, or an invalid config or dataset."),
        (429, "Too many failed logins (or password checks); retry after `Retry-After` seconds."),
    )
}
