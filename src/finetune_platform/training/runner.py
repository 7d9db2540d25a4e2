"""Run a training config end to end: run folder, logging, MLflow run, and the recipe lifecycle."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_platform.atomic import write_atomic
from finetune_platform.db.job_vocabulary import JobStatus
from finetune_platform.settings import Settings, get_settings
from finetune_platform.training.callbacks import TrackingCallback
from finetune_platform.training.checkpoints import CheckpointInfo, newest_checkpoint
from finetune_platform.training.config import TASK_METRICS, TrainConfig, dump_config, read_run_config
from finetune_platform.training.devices import check_device
from finetune_platform.training.guards import TrialPruned
from finetune_platform.training.registration import register_adapter, registration_refusal
from finetune_platform.training.run_folder import RunFolder

logger = logging.getLogger("finetune_platform.training")

# MLflow gets the run folder's small files; checkpoints (optimizer state) stay on disk only.
_ARTIFACT_FILES = (
    "config.yaml", "metrics.json", "logs.txt", "validation.json", "confusion_matrix.png", "reliability.png",
)  # fmt: skip


@dataclass(frozen=True)
class RunResult:
    run: RunFolder
    metrics: dict[str, Any]
    mlflow_run_id: str | None
    wall_seconds: float


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run: where it stood and the newest complete checkpoint it keeps (``saved``), which
    ``--resume`` continues from."""

    def __init__(
        self, run: RunFolder, step: int | None, max_steps: int, saved: CheckpointInfo | None
    ) -> None:
        self.run, self.step, self.max_steps, self.saved = run, step, max_steps, saved
        where = (
            f"stopped at step {step} of {max_steps}"
            if step is not None
            else "stopped before training started"
        )
        kept = f"{saved.path.name} (step {saved.step}) is saved" if saved else "no checkpoint was saved yet"
        super().__init__(f"{where}; {kept}")


# The run's outcome line: logs.txt keeps it; a face that reports the error itself (the CLI) skips it on its console.
OUTCOME = {"run_outcome": True}


class _RunLog:
    """Attach logs.txt (appending, so a resumed run keeps its history) to the platform's loggers."""

    def __init__(self, path: Path) -> None:
        self.handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.logger = logging.getLogger("finetune_platform")

    def __enter__(self) -> _RunLog:
        self.logger.addHandler(self.handler)
        if self.logger.level == logging.NOTSET or self.logger.level > logging.INFO:
            self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.handler)
        self.handler.close()


def prepare_run(
    config: TrainConfig,
    *,
    resume: bool = False,
    run_id: str | None = None,
    check_data_first: bool = False,
    settings: Settings | None = None,
) -> tuple[TrainConfig, RunFolder, Path | None, dict[str, Any] | None]:
    """Pick the run folder (new, or the one to resume) and the checkpoint to resume from. A device or
    precision this machine cannot give fails here, before a run folder is created (or an attempt counted); so
    does invalid data with ``check_data_first`` (a quick pass that loads no model library), and data that
    ``data.audit: block`` refuses. The last item is the data audit's summary (None with ``data.audit: off``)."""
    # lazy: pandas and pyarrow (data.validation), for the runs that check their data here
    from finetune_platform.training.data_check import check_audit, check_data

    settings = settings or get_settings()
    if not resume:
        if check_data_first:
            check_data(config)
        data_audit = check_audit(config, settings)
        check_device(config)
        run = RunFolder.create(config.output_dir, config.experiment, run_id)
        dump_config(config, run.config_path)
        return config, run, None, data_audit
    run = RunFolder.find_resumable(config.output_dir, config.experiment, run_id)
    # The run's own config wins: resuming with different settings would not continue the same run.
    saved = read_run_config(run.config_path)
    if check_data_first:
        check_data(saved)
    data_audit = check_audit(saved, settings)
    check_device(saved)
    return saved, run, run.newest_checkpoint(), data_audit


def run_training(
    config: TrainConfig,
    *,
    resume: bool = False,
    run_id: str | None = None,
    settings: Settings | None = None,
    show_progress: bool = True,
    callbacks: Sequence[Any] = (),
    on_stage: Callable[[str], None] | None = None,
    owner_id: int | None = None,
    check_data_first: bool = False,
) -> RunResult:
    """Train, evaluate, save, track and register one run (a run no better than its majority baseline, or short
    of registry.min_metric, succeeds unregistered: metrics.json's registry says why).

    ``callbacks`` are extra ``training.callbacks.Callback``s (the job worker's progress and stop control); ``on_stage``
    hears "validating", "training", "evaluating" and "registering" as the run reaches them; ``owner_id`` is
    the account the model version is registered for (None: the command line's local account).
    ``check_data_first`` (the command line): invalid data raises DatasetValidationError before a run folder is
    created; without it (a job) the run folder records the failure and its validation.json. Ctrl-C raises
    ``RunInterrupted``.
    """
    settings = settings or get_settings()
    stage = on_stage or (lambda name: None)
    started = time.perf_counter()
    config, run, checkpoint, data_audit = prepare_run(
        config, resume=resume, run_id=run_id, check_data_first=check_data_first, settings=settings
    )
    # lazy: torch loads only when a run starts
    from finetune_platform.training.recipe import LoraClassificationRecipe

    previous = run.read_state()
    run.update_state(
        status=JobStatus.RUNNING,
        started_at=previous.get("started_at") or datetime.now(UTC).isoformat(),
        attempts=int(previous.get("attempts", 0)) + 1,
    )
    tracker = None
    with _RunLog(run.logs_path):
        logger.info(
            "run %s of experiment %s%s",
            run.run_id,
            run.experiment,
            f", resuming from {checkpoint.name}"
            if checkpoint
            else (" (resume: no complete checkpoint, starting over)" if resume else ""),
        )
        if data_audit is not None:
            noise = data_audit["estimated_label_noise"]
            logger.info(
                "data audit (%s): estimated label noise %s; %s",
                data_audit["mode"],
                "not estimated" if noise is None else f"{noise:.1%}",
                data_audit["audit"],
            )
        recipe = LoraClassificationRecipe(config, run, show_progress=show_progress)
        try:
            stage("validating")
            recipe.setup()
            for callback in callbacks:
                recipe.driver.add_callback(callback)
            _record_dataset_versions(settings, config, recipe)
            if settings.MLFLOW_ENABLED:
                tracker = _start_tracker(settings, config, run, recipe, previous.get("mlflow_run_id"))
                recipe.tracker = tracker
                recipe.driver.add_callback(TrackingCallback(tracker))
            stage("training")
            recipe.train(resume_from=checkpoint)
            stage("evaluating")
            recipe.evaluate()
            metrics = recipe.save(tracker.run_id if tracker else None)
            if data_audit is not None:
                metrics["data_audit"] = data_audit
                write_atomic(run.metrics_path, json.dumps(metrics, indent=2))
            refusal = registration_refusal(config, metrics) if config.registry.enabled else None
            if (
                refusal is not None
            ):  # the run succeeds, unregistered, and says why (MLflow's metrics.json too)
                metrics["registry"] = {"registered": False, "reason": refusal}
                logger.warning("not registered: %s", refusal)
                write_atomic(run.metrics_path, json.dumps(metrics, indent=2))
                run.update_state(registry=metrics["registry"])
            if tracker is not None:
                # lazy: MLflow loads only for tracked runs
                from finetune_platform.tracking.plots import confusion_matrix_png

                if "confusion_matrix" in metrics["eval"]:  # single_label only
                    confusion_matrix_png(
                        metrics["eval"]["confusion_matrix"], run.root / "confusion_matrix.png"
                    )
                _finish_tracker(tracker, config, run, metrics)
                metrics["tracking_seconds"] = round(tracker.seconds, 3)
                logger.info("MLflow calls took %.2fs in this run", tracker.seconds)
                if config.registry.enabled and refusal is None:
                    stage("registering")
                    metrics["model"] = _register(
                        settings, config, run, recipe, metrics, tracker.run_id, owner_id
                    )
                    metrics["registry"] = {"registered": True}
                    run.update_state(model=metrics["model"])
                # metrics.json as logged to MLflow, plus what only exists after tracking and registration.
                write_atomic(run.metrics_path, json.dumps(metrics, indent=2))
        except BaseException as exc:
            # Ctrl-C is its user stopping the run: cancelled, in the job row's words.
            status = JobStatus.CANCELLED if isinstance(exc, KeyboardInterrupt) else JobStatus.FAILED
            if isinstance(exc, TrialPruned):  # a sweep's pruner stopped it: ended on purpose
                status = JobStatus.PRUNED
            if isinstance(exc, KeyboardInterrupt):
                exc = _interrupted(run, recipe)
            logger.error("run %s %s: %s", run.run_id, status, exc, extra=OUTCOME)
            try:  # the disk may be the reason we are here: recording the failure must not hide it
                run.update_state(status=status, error=str(exc))
            except OSError as state_error:
                logger.error("could not record the failure in %s: %s", run.state_path, state_error)
            if tracker is not None:
                tracker.end("FAILED" if status is JobStatus.FAILED else "KILLED")
            if isinstance(exc, RunInterrupted):
                raise exc from None
            raise
        finally:
            recipe.cleanup()
        wall = time.perf_counter() - started
        run.update_state(status=JobStatus.SUCCEEDED, finished_at=datetime.now(UTC).isoformat(), error=None)
        logger.info(
            "run %s succeeded in %.1fs: %s -> %s", run.run_id, wall, scores_text(config, metrics), run.root
        )
    return RunResult(
        run=run, metrics=metrics, mlflow_run_id=tracker.run_id if tracker else None, wall_seconds=wall
    )


def _interrupted(run: RunFolder, recipe: Any) -> RunInterrupted:
    driver = recipe.driver
    trained = driver is not None and driver.state.max_steps > 0
    return RunInterrupted(
        run,
        driver.state.step if trained else None,
        driver.state.max_steps if trained else 0,
        newest_checkpoint(run.checkpoints_dir),
    )


def _register(
    settings: Settings,
    config: TrainConfig,
    run: RunFolder,
    recipe: Any,
    metrics: dict[str, Any],
    run_id: str,
    owner_id: int | None,
) -> dict[str, Any]:
    """The run's adapter becomes a new version (in Staging) of the registered model, with its card."""
    return register_adapter(
        settings,
        config,
        run,
        language=recipe.state.model.language,
        labels=list(recipe.state.splits.label_map.names),
        metrics=metrics,
        run_id=run_id,
        owner_id=owner_id,
    )


def _record_dataset_versions(settings: Settings, config: TrainConfig, recipe: Any) -> None:
    """Lineage: the versions this run trains on go into the app database's dataset versions."""
    # lazy: pandas loads only when a run starts
    from finetune_platform.data.validation import ValidationOptions
    from finetune_platform.data.versioning import DatasetVersion, VersionIndex

    index = VersionIndex(settings)
    options = ValidationOptions(text_column=config.data.text_column, label_column=config.data.label_column)
    for report in recipe.state.splits.report.files:
        version, added = index.record(DatasetVersion.from_report(report, options, source="train"))
        logger.info("dataset %s: version %s%s", report.role, version.version, " (new)" if added else "")


def _start_tracker(
    settings: Settings, config: TrainConfig, run: RunFolder, recipe: Any, existing_run_id: str | None
) -> Any:
    # lazy: MLflow loads only for tracked runs
    from finetune_platform.tracking.mlflow_runs import MlflowRunTracker

    tracker = MlflowRunTracker(settings, config.experiment)
    resolved = recipe.state.resolved(run, config, None)
    tags = {
        "finetune.run_folder": str(run.root.resolve()),
        "finetune.base_model": config.model.base_model,
        "finetune.language": resolved["language"],
        "finetune.dataset_sha256": resolved["dataset"]["train_sha256"],
        "finetune.dataset_version": resolved["dataset"]["train_version"],
        "finetune.validation_dataset_version": str(resolved["dataset"]["validation_version"]),
    }
    tracker.start(run.run_id, tags, existing_run_id=existing_run_id)
    run.update_state(mlflow_run_id=tracker.run_id)
    if existing_run_id is None:
        params = config.flat()
        params.update(
            {
                f"resolved.{key}": value
                for key, value in resolved.items()
                if key not in {"dataset", "mlflow_run_id", "run_id"}
            }
        )
        params.update({f"resolved.dataset.{key}": value for key, value in resolved["dataset"].items()})
        params.update(seed_readme_params(config))
        tracker.log_params(params)
    return tracker


def seed_readme_params(config: Any) -> dict[str, Any]:
    """The seed README's short parameter names, logged beside the config's field paths."""
    return {
        "batch_size": config.training.batch_size,
        "learning_rate": config.training.learning_rate,
        "epochs": config.training.epochs,
    }


def final_metric_names(config: TrainConfig) -> list[str]:
    """The final evaluation's scalar metrics of the run's task, its ranking default first, loss last."""
    return [metric.value for metric in TASK_METRICS[config.task]]


def final_scores(config: TrainConfig, metrics: dict[str, Any]) -> dict[str, float]:
    """{metric: value} of the final evaluation in metrics.json, the task's metrics in TASK_METRICS order."""
    return {key: float(metrics["eval"][key]) for key in final_metric_names(config)}


def scores_text(config: TrainConfig, metrics: dict[str, Any]) -> str:
    """The task's first two final metrics in words: 'accuracy 0.9000, macro_f1 0.8800'."""
    return ", ".join(f"{key} {value:.4f}" for key, value in list(final_scores(config, metrics).items())[:2])


def _finish_tracker(tracker: Any, config: TrainConfig, run: RunFolder, metrics: dict[str, Any]) -> None:
    evaluation = metrics["eval"]
    final = {f"final_{key}": value for key, value in final_scores(config, metrics).items()}
    # The seed README's names, beside ours: accuracy (single_label) and loss of the final evaluation, training
    # wall time.
    if "accuracy" in evaluation:
        final["accuracy"] = float(evaluation["accuracy"])
    final.update(loss=float(evaluation["loss"]), runtime=float(metrics["train"]["runtime_seconds"]))
    for name, threshold in (metrics.get("thresholds") or {}).items():
        final[f"final_threshold.{_metric_safe(name)}"] = float(threshold)
    if "target_scale" in metrics:
        final.update(
            target_mean=float(metrics["target_scale"]["mean"]),
            target_std=float(metrics["target_scale"]["std"]),
        )
    calibration = metrics.get("calibration")
    if calibration:
        final.update(
            calibration_temperature=float(calibration["temperature"]),
            calibration_ece_before=float(calibration["ece_before"]),
            calibration_ece_after=float(calibration["ece_after"]),
        )
    for name, scores in evaluation.get("per_class", {}).items():
        safe = _metric_safe(name)
        final[f"final_precision.{safe}"] = scores["precision"]
        final[f"final_recall.{safe}"] = scores["recall"]
    tracker.log_metrics(final, metrics["train"]["global_step"])
    tracker.flush()
    for name in _ARTIFACT_FILES:
        path = run.root / name
        if path.is_file():
            tracker.log_artifact(path)
    for path in sorted(run.artifacts_dir.iterdir()):
        if path.is_file():
            tracker.log_artifact(path, "artifacts")
    tracker.end("FINISHED")


def _metric_safe(name: str) -> str:
    """A label as part of an MLflow metric name (letters, digits, - _ . only)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
