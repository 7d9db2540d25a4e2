"""Registering a finished run folder's adapter in the model registry, with its model card. No PyTorch here: the
API registers a sweep's winner (`POST /sweeps/{id}/promote`) from the run folder and its tracked run alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import yaml

from finetune_platform.db.accounts import local_account
from finetune_platform.db.session import ensure_database, session_scope
from finetune_platform.errors import ErrorCode, PlatformError
from finetune_platform.settings import Settings
from finetune_platform.training.config import (
    BASELINE_METRICS,
    TASK_METRICS,
    Task,
    TrainConfig,
    config_from_dict,
)
from finetune_platform.training.run_folder import RunFolder

logger = logging.getLogger("finetune_platform.training")


def registration_refusal(config: TrainConfig, metrics: dict[str, Any]) -> str | None:
    """Why a finished run's final evaluation (metrics.json's eval, beside its baseline) is not registered: not
    better than the majority baseline (registry.require_better_than_baseline), or short of registry.min_metric.
    None: it is registered."""
    reasons = []
    evaluation = metrics["eval"]
    baseline = metrics.get("baseline")
    if config.registry.require_better_than_baseline and baseline is not None:
        metric = BASELINE_METRICS[config.task]
        name = metric.value
        achieved, floor = float(evaluation[name]), float(baseline[name])
        lower = not metric.greater_is_better  # rmse
        if (achieved >= floor) if lower else (achieved <= floor):
            reasons.append(
                f"{name} {achieved:.4f} is not {'lower' if lower else 'better'} than the majority baseline's "
                f"{floor:.4f} ({_baseline_words(config.task, baseline)}, on the same {baseline['num_rows']} "
                "validation rows)"
            )
    bound = config.registry.min_metric
    if bound is not None:
        metric = config.training.metric_for_best_model
        achieved = float(evaluation[metric.value])
        if metric.greater_is_better and achieved < bound:
            reasons.append(f"{metric.value} {achieved:.4f} is below registry.min_metric {bound:g}")
        elif not metric.greater_is_better and achieved > bound:
            reasons.append(
                f"{metric.value} {achieved:.4f} is above registry.min_metric {bound:g} (lower {metric.value} is "
                "better: registry.min_metric is the most a run may have)"
            )
    return "; ".join(reasons) or None


def _baseline_words(task: Task, baseline: dict[str, Any]) -> str:
    predicts = baseline["predicts"]
    if task is Task.SINGLE_LABEL:
        return f"always predicting {predicts!r}, the most frequent training label"
    if task is Task.MULTI_LABEL:
        labels = ", ".join(map(repr, predicts)) if predicts else "no label"
        return f"predicting each label's training majority: {labels}"
    return f"always predicting the training mean {predicts:.4g}"


def register_run(
    settings: Settings, run_folder: Path | str, *, owner_id: int | None, model_name: str | None = None
) -> dict[str, Any]:
    """Register a finished run folder's adapter afterwards (a sweep's winner): as a new version (in Staging) of
    ``model_name`` (default: the run's registry.model_name or experiment), once per run and name."""
    run = RunFolder(Path(run_folder))
    raw = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) or {}
    resolved = raw.pop("resolved", None) or {}
    config = config_from_dict(raw)
    if model_name:
        config = config.model_copy(
            update={"registry": config.registry.model_copy(update={"model_name": model_name})}
        )
    if not run.metrics_path.is_file() or not resolved.get("mlflow_run_id"):
        raise PlatformError(
            f"run {run.run_id} did not finish with a tracked run: nothing to register", ErrorCode.CONFLICT
        )
    metrics = json.loads(run.metrics_path.read_text(encoding="utf-8"))
    return register_adapter(
        settings,
        config,
        run,
        language=resolved.get("language"),
        labels=list(resolved.get("labels") or []),
        metrics=metrics,
        run_id=resolved["mlflow_run_id"],
        owner_id=owner_id,
    )


def register_adapter(
    settings: Settings,
    config: TrainConfig,
    run: RunFolder,
    *,
    language: str | None,
    labels: list[str],
    metrics: dict[str, Any],
    run_id: str,
    owner_id: int | None,
) -> dict[str, Any]:
    # lazy: MLflow loads only for tracked runs
    from finetune_platform.tracking.embeddings import default_embedder
    from finetune_platform.tracking.model_cards import ModelCard, file_checksum
    from finetune_platform.tracking.registry import ADAPTER_FILE, ModelRegistry

    evaluation = metrics["eval"]
    card = ModelCard(
        name=config.model_name,
        version=0,
        base_model=config.model.base_model,
        language=language,
        task=config.registry.task,
        description=config.registry.description,
        metrics={metric.value: float(evaluation[metric.value]) for metric in TASK_METRICS[config.task]},
        tags=list(config.registry.tags),
        dataset_version=metrics["dataset"]["train_version"],
        run_id=run_id,
        run_folder=str(run.root.resolve()),
        stage="None",
        created_at="",
        adapter_checksum=file_checksum(run.artifacts_dir / ADAPTER_FILE),
        artifact_checksums={
            path.name: file_checksum(path) for path in sorted(run.artifacts_dir.iterdir()) if path.is_file()
        },
        labels=labels,
        calibration=metrics.get("calibration"),
        task_type=config.task.value,
        thresholds=metrics.get("thresholds"),
        target_scale=metrics.get("target_scale"),
    )
    if owner_id is None:  # the command line acts as its local admin account
        ensure_database(settings)
        with session_scope(settings) as session:
            owner_id = local_account(session).id
    registry = ModelRegistry(settings)
    existing = registry.version_for_run(card.name, run_id)
    if existing is not None:  # a retried job that registered before it was interrupted: register once
        logger.info("run already registered as %s version %d", existing.name, existing.version)
        return {"name": existing.name, "version": existing.version, "stage": existing.stage.value}
    card.embedding = default_embedder().embed([card.text()])[0].round(6).tolist()
    info = registry.register(
        name=card.name, run_id=run_id, artifact_uri=f"runs:/{run_id}/artifacts", card=card, owner_id=owner_id
    )
    logger.info("registered %s version %d (%s)", info.name, info.version, info.stage.value)
    return {"name": info.name, "version": info.version, "stage": info.stage.value}
