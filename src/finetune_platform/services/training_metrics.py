"""A training job's metrics for people watching it: the curves while it trains and the final scores once it has
evaluated, read from its run folder's structured records (``history.jsonl`` as the run writes it,
``metrics.json`` once evaluated), never from log lines. Owner or admin only, like the job itself."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from finetune_platform.errors import ErrorCode, PlatformError
from finetune_platform.services.job_states import JobKind, JobStatus
from finetune_platform.services.jobs import get_job, run_folder_path
from finetune_platform.services.schemas.jobs import (
    EvaluationPoint,
    FinalMetrics,
    TrainingMetrics,
    TrainingPoint,
)
from finetune_platform.services.users import UserPublic
from finetune_platform.training.config import TASK_METRICS, Task
from finetune_platform.training.run_folder import RunFolder, read_history


def training_metrics(session: Session, user: UserPublic, job_id: str) -> TrainingMetrics:
    """The job's curves and final scores; another user's job is not found, a prediction job has none."""
    job = get_job(session, user, job_id)
    if job.kind != JobKind.TRAIN.value:
        raise PlatformError(
            f"task {job_id} is a {job.kind} task: only training tasks have training metrics",
            ErrorCode.CONFLICT,
        )
    run = RunFolder(run_folder_path(job.config["output_dir"], job.config["experiment"], job.id))
    entries = read_history(run.history_path)
    logged = [entry for entry in entries if "loss" in entry]
    training = [
        TrainingPoint(**{field: e.get(field) for field in TrainingPoint.model_fields}) for e in logged
    ]
    evaluations = [
        EvaluationPoint(
            step=e["step"],
            epoch=e.get("epoch"),
            loss=e.get("eval_loss"),
            accuracy=e.get("eval_accuracy"),
            macro_f1=e.get("eval_macro_f1"),
            scores={key.removeprefix("eval_"): float(v) for key, v in e.items() if key.startswith("eval_")},
        )
        for e in entries
        if "eval_loss" in e
    ]
    eta = logged[-1].get("eta_seconds") if logged and job.status == JobStatus.RUNNING.value else None
    return TrainingMetrics(
        task_id=job.id,
        status=job.status,
        training=training,
        evaluations=evaluations,
        eta_seconds=eta,
        final=_final(run, Task(job.config.get("task", Task.SINGLE_LABEL))),
    )


def _final(run: RunFolder, task: Task) -> FinalMetrics | None:
    """From metrics.json, written once the run has evaluated its final weights; None before."""
    try:
        metrics = json.loads(run.metrics_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    evaluation = metrics["eval"]
    task = Task(metrics.get("task", task))  # the run's own record; older runs: the job's config
    return FinalMetrics(
        task=task.value,
        accuracy=evaluation.get("accuracy"),
        macro_f1=evaluation.get("macro_f1"),
        scores={m.value: float(evaluation[m.value]) for m in TASK_METRICS[task] if m.value in evaluation},
        loss=float(evaluation["loss"]) if evaluation.get("loss") is not None else None,
        rows=evaluation.get("num_rows"),
        checkpoint=metrics.get("final_checkpoint"),
        per_class=evaluation.get("per_class") or {},
        confusion_matrix=evaluation.get("confusion_matrix"),
        calibration=metrics.get("calibration"),
        thresholds=metrics.get("thresholds"),
        target_scale=metrics.get("target_scale"),
    )
