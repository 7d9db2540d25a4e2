"""Jobs (tasks, in the API's paths): the training and prediction requests a client sends, and what it sees of a
job, its events and its log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict, Timestamp


class JobPublic(Public):
    """A job as its owner (or an admin) sees it. Its config stays on the server (it holds the server's paths)."""

    id: str = Field(description="Task (job) id.")
    task_id: str = Field(
        description="The same id as `id`, under the name the Finetune-30-days README reads (GET /task/{task_id})."
    )
    owner_id: int = Field(description="Id of the user who submitted it.")
    kind: str = Field(
        description="train (POST /train), predict (POST /predictions) or audit (POST /datasets/{id}/audit)."
    )
    status: str = Field(
        description="queued, running, succeeded, failed, cancelled, or pruned (a sweep trial its pruner stopped)."
    )
    stage: str | None = Field(
        description=(
            "While running: validating, training, evaluating or registering; predicting for predictions; "
            "auditing for data audits. "
            "done once succeeded; a failed or cancelled task keeps the stage it stopped in."
        )
    )
    progress: dict[str, Any] = Field(
        description=(
            "Training: step, max_steps, epoch, percent (from the start of training, within seconds), loss, "
            "learning_rate, samples_per_second (each logging step), metrics (latest evaluation). "
            "Prediction: done, total, percent; when finished rows, predicted, empty, truncated, accuracy (subset "
            "accuracy for a multi-label model, null for regression), and rmse for a regression model. "
            "Data audit: phase (reading, embedding, label errors, near-duplicates, class overlap and outliers, "
            "done) and percent; when finished its summary (the counts of audit.json)."
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
    sweep_id: str | None = Field(
        default=None, description="The sweep this task is a trial of (GET /sweeps/{id})."
    )
    trial_number: int | None = Field(default=None, description="Its trial number in that sweep.")
    # The worker's and the command line's, never a client's: the config names the server's files.
    config: dict[str, Any] = Field(exclude=True, repr=False)
    not_before: datetime | None = Field(
        default=None, exclude=True
    )  # a retry backoff: not claimed before then

    @classmethod
    def of(cls, job: Any) -> JobPublic:
        """From a Job row (or anything with its attributes)."""
        return cls(
            id=job.id,
            task_id=job.id,
            owner_id=job.owner_id,
            kind=job.kind,
            status=job.status,
            stage=job.stage,
            progress=dict(job.progress),
            attempts=job.attempts,
            max_attempts=job.max_attempts,
            error=job.error,
            dataset_version=job.dataset_version,
            run_id=job.run_id,
            model_name=job.model_name,
            model_version=job.model_version,
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            sweep_id=getattr(job, "sweep_id", None),
            trial_number=getattr(job, "trial_number", None),
            config=dict(job.config),
            not_before=getattr(job, "not_before", None),
        )

    def record(self) -> dict[str, Any]:
        """Every field, the config and the retry backoff included: what the command line prints as JSON."""
        return {**self.model_dump(), "config": self.config, "not_before": self.not_before}


class TrainJobCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "config": {"experiment": "reviews", "training": {"epochs": 1}},
                    "dataset_id": "3f0c9a52-8d1e-4b7a-9c55-0f6d2e8b1a47",
                    "max_attempts": 3,
                }
            ]
        }
    )

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


class PredictionJobCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"model": "reviews@production", "dataset_id": "3f0c9a52-8d1e-4b7a-9c55-0f6d2e8b1a47"}
            ]
        }
    )

    model: str = Field(
        min_length=1,
        max_length=200,
        description="Registered model: name, name@version or name@stage; pinned to a version at submission.",
    )
    dataset_id: str = Field(max_length=36, description="Id of an uploaded file of texts (POST /datasets).")
    text_column: str = Field(
        default="text", min_length=1, max_length=128, description="Column with the texts."
    )
    text_pair_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "Column with the second text of each row, for a model trained on text pairs: such a model needs it, "
            "a model of one text refuses it (the task fails saying so). The file must have it (422 otherwise)."
        ),
    )
    label_column: str = Field(
        default="label",
        min_length=1,
        max_length=128,
        description=(
            "If the file has this column, the task scores its predictions against it: accuracy (single-label), "
            "subset accuracy (multi-label: a JSON list or ','-separated labels) or RMSE (regression)."
        ),
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before the task is failed.")


class JobEventPublic(Public):
    at: str = Field(description="ISO time.")
    kind: str = Field(description="submitted, started, stage, resumed, retrying, preempted, succeeded, …")
    message: str = Field(description="What happened.")


class JobLogs(Public):
    events: list[JobEventPublic] = Field(description="The task's events, oldest first.")
    log_lines: list[str] = Field(description="The last lines of the run's logs.txt.")


# -- a training task's curves and final scores (GET /task/{task_id}/metrics) --


class TrainingPoint(Public):
    step: int = Field(description="Optimizer step of this logging step.")
    epoch: float | None = Field(description="Epochs done at this step.")
    loss: float | None = Field(
        description="Mean training loss since the previous logging step (null: not finite)."
    )
    learning_rate: float | None = Field(description="Learning rate at this step.")
    grad_norm: float | None = Field(description="Gradient norm at this step (null when not measured).")
    samples_per_second: float | None = Field(description="Training rows per second since the previous entry.")


class EvaluationPoint(Public):
    step: int = Field(description="Optimizer step the evaluation ran at.")
    epoch: float | None = Field(description="Epochs done at this step.")
    loss: float | None = Field(description="Validation loss.")
    accuracy: float | None = Field(description="Validation accuracy, 0 to 1 (single-label tasks; else null).")
    macro_f1: float | None = Field(description="Validation macro-averaged F1, 0 to 1 (null for regression).")
    scores: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Every validation metric of this evaluation by name: loss and the task's (single_label: accuracy, "
            "macro_f1; multi_label: micro_f1, macro_f1, subset_accuracy; regression: rmse, mae, pearson, spearman)."
        ),
    )


class ClassScores(Public):
    precision: float = Field(description="Of the rows predicted as this class, the share that are.")
    recall: float = Field(description="Of the rows of this class, the share predicted as it.")
    f1: float = Field(description="Harmonic mean of precision and recall.")
    support: int = Field(description="Validation rows of this class.")


class ConfusionMatrix(Public):
    labels: list[str] = Field(description="Class names, in the order of the matrix's rows and columns.")
    matrix: list[list[int]] = Field(
        description="Row counts: rows are the true class, columns the predicted one."
    )


class FinalMetrics(Public):
    task: str = Field(
        default="single_label",
        description="What the model predicts: single_label, multi_label or regression.",
    )
    accuracy: float | None = Field(
        description="Accuracy of the final model on the validation rows, 0 to 1; null but for single_label."
    )
    macro_f1: float | None = Field(
        description="Macro-averaged F1 of the final model, 0 to 1; null for regression."
    )
    scores: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "The task's final validation metrics by name, loss included (single_label: accuracy, macro_f1; "
            "multi_label: micro_f1, macro_f1, subset_accuracy; regression: rmse, mae, pearson, spearman, in the "
            "target's units)."
        ),
    )
    loss: float | None = Field(description="Validation loss of the final model.")
    rows: int | None = Field(description="Validation rows scored.")
    checkpoint: str | None = Field(
        description="The checkpoint the final model is (best), or null: the last step."
    )
    per_class: dict[str, ClassScores] = Field(
        description=(
            "Precision, recall, F1 and support of each class (multi_label: of each label); empty for regression."
        )
    )
    confusion_matrix: ConfusionMatrix | None = Field(
        description="True against predicted class counts; null but for single_label."
    )
    thresholds: dict[str, float] | None = Field(
        default=None, description="multi_label: the probability above which each label is predicted."
    )
    target_scale: dict[str, float] | None = Field(
        default=None, description="regression: mean and std of the training targets."
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Temperature scaling fitted on the validation rows: method, temperature, expected calibration error "
            "(15 bins) and log-loss before and after; null when the run was not calibrated."
        ),
    )


class TrainingMetrics(Public):
    task_id: str = Field(description="Task (job) id.")
    status: str = Field(description="queued, running, succeeded, failed or cancelled.")
    training: list[TrainingPoint] = Field(description="One entry per logging step, oldest first.")
    evaluations: list[EvaluationPoint] = Field(
        description="One entry per evaluation during training, oldest first."
    )
    eta_seconds: float | None = Field(description="While running: seconds left at the speed so far.")
    final: FinalMetrics | None = Field(description="Once the run has evaluated its final model; null before.")
