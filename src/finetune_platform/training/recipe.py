"""The LoRA sequence-classification recipe: setup → train → evaluate → save → cleanup.

Each phase is a method built from small builder functions, so the Celery task, the CLI and the tests
run the same lifecycle. Heavy libraries (torch, transformers, peft) are imported here, not at CLI start.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from peft import set_peft_model_state_dict
from peft.utils import load_peft_weights
from transformers import set_seed

from finetune_platform import __version__
from finetune_platform.atomic import file_sha256, write_atomic
from finetune_platform.catalogue import ResolvedModel, resolve_base_model
from finetune_platform.data.audit import EVAL_PREDICTIONS
from finetune_platform.data.loading import LabelMap
from finetune_platform.data.splits import DatasetSplits, load_splits
from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.training.calibration import Calibration, calibrate, reliability_png, write_calibration
from finetune_platform.training.callbacks import stop_error_of, training_guards
from finetune_platform.training.checkpoints import list_checkpoints, remove_incomplete, select_retained
from finetune_platform.training.config import Device, Engine, Precision, Task, TrainConfig, dump_config
from finetune_platform.training.devices import select_device, select_precision
from finetune_platform.training.driver import Driver, check_rows, evaluation_thresholds, torch_device
from finetune_platform.training.fast_gpu import to_device
from finetune_platform.training.launch import RemoteDriver
from finetune_platform.training.losses import named_weights, resolve_class_weights
from finetune_platform.training.metrics import (
    classification_report,
    label_probabilities,
    majority_baseline,
    multi_label_report,
    regression_report,
    tune_thresholds,
)
from finetune_platform.training.models import _model_loading, build_model, load_tokenizer, quiet_libraries
from finetune_platform.training.progress import ProgressCallback
from finetune_platform.training.run_folder import RunFolder
from finetune_platform.training.targets import training_targets

logger = logging.getLogger("finetune_platform.training")


@dataclass
class RecipeState:
    """What setup resolved; written to config.yaml's `resolved` section and to MLflow params."""

    device: Device
    precision: Precision
    model: ResolvedModel
    splits: DatasetSplits | None  # None only in a data-parallel rank (it gets tokenised rows)
    engine: Engine = Engine.FAST
    target_modules: list[str] = field(default_factory=list)
    model_type: str = ""
    trainable_parameters: int = 0
    total_parameters: int = 0
    # one per class id (multi_label: each label's pos_weight), from training.class_weights and the training split
    # (None: unweighted)
    class_weights: tuple[float, ...] | None = None
    _lineage: dict[str, Any] | None = None  # hashing the data files once per run is enough

    def dataset_lineage(self, config: TrainConfig) -> dict[str, Any]:
        """Which data this run saw: dataset versions (content hashes), files, rows used and dropped."""
        if self._lineage is None:
            self._lineage = self._compute_lineage(config)
        return self._lineage

    def _compute_lineage(self, config: TrainConfig) -> dict[str, Any]:
        report = self.splits.report
        train = report.file("train")
        validation = report.file("validation") if config.data.validation_file else None
        return {
            "train_file": str(config.data.train_file),
            "train_version": train.version,
            "train_content_hash": train.content_hash,
            "train_sha256": file_sha256(config.data.train_file),
            "train_rows": len(self.splits.train),
            "train_rows_dropped": train.rows_dropped,
            "validation": self.splits.validation_source,
            "validation_version": validation.version if validation else None,
            "validation_content_hash": validation.content_hash if validation else None,
            "validation_sha256": file_sha256(config.data.validation_file) if validation else None,
            "validation_rows": len(self.splits.validation),
            "validation_rows_dropped": validation.rows_dropped if validation else 0,
        }

    def resolved(self, run: RunFolder, config: TrainConfig, mlflow_run_id: str | None) -> dict[str, Any]:
        return {
            "run_id": run.run_id,
            "platform_version": __version__,
            "mlflow_run_id": mlflow_run_id,
            "device": self.device.value,
            "precision": self.precision.value,
            "engine": self.engine.value,
            "base_model_source": self.model.source,
            "model_type": self.model_type,
            "language": self.model.language,
            "target_modules": self.target_modules,
            "trainable_parameters": self.trainable_parameters,
            "total_parameters": self.total_parameters,
            "labels": list(self.splits.label_map.names),
            "class_weights": named_weights(self.class_weights, self.splits.label_map.names),
            "dataset": self.dataset_lineage(config),
        }


class LoraClassificationRecipe:
    """Fine-tune a sequence classifier with LoRA; one instance is one run folder's lifecycle."""

    def __init__(self, config: TrainConfig, run: RunFolder, tracker: Any = None, show_progress: bool = True):
        self.config = config
        self.run = run
        self.tracker = tracker
        self.show_progress = show_progress
        self.state: RecipeState | None = None
        self.driver: Any = None
        self.tokenizer: Any = None
        self.train_output: Any = None
        self.report: dict[str, Any] = {}
        self.final_checkpoint: str | None = None
        self.progress: ProgressCallback | None = None
        self.calibration: Calibration | None = None  # temperature scaling fitted on the validation set
        self.calibration_inputs: tuple[Any, Any] = (None, None)  # its validation logits and labels
        self.eval_logits: np.ndarray | None = None  # the final weights' logits on the validation rows

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> RecipeState:
        """Resolve device and data first (cheap, and where most mistakes are), then load the model."""
        config = self.config
        device = select_device(config.device)
        precision = select_precision(config.precision, device)
        model_ref = resolve_base_model(config.model.base_model, config.model.language)
        quiet_libraries()

        with _model_loading(model_ref.name):
            self.tokenizer = load_tokenizer(
                model_ref.source
            )  # a decoder's: eos pads where it has no pad token
        data = config.data
        # Validation runs before any model weights load: bad data is refused in seconds.
        try:
            splits = load_splits(
                data.train_file,
                data.text_column,
                data.label_column,
                validation_file=data.validation_file,
                validation_split=data.validation_split,
                label_names=data.label_names,
                max_train_rows=data.max_train_rows,
                max_validation_rows=data.max_validation_rows,
                seed=config.training.seed,
                tokenizer=self.tokenizer,
                max_length=config.model.max_length,
                drop_invalid=data.invalid_rows == "drop",
                task=config.task.value,
                text_pair_column=data.text_pair_column,
                label_delimiter=data.label_delimiter,
            )
        except DatasetValidationError as exc:
            exc.report.write_json(self.run.root / "validation.json")
            raise
        splits.report.write_json(self.run.root / "validation.json")
        if config.task is Task.MULTI_LABEL:
            # evaluations and an interrupted run's checkpoints predict with these until 'tune' replaces them
            thresholds = (evaluation_thresholds(config),) * splits.label_map.num_labels
            splits = replace(splits, label_map=replace(splits.label_map, thresholds=thresholds))
        # There before the first checkpoint: an interrupted run's checkpoints predict with them (finetune predict).
        self._save_prediction_files(splits.label_map)
        for file_report in splits.report.files:
            for issue in file_report.issues:
                state = "dropped" if issue.dropped else issue.severity.value
                logger.info("data %s %s: %s", file_report.role, state, issue.message)
        logger.info(
            "data: %d training rows, %d validation rows (%s), labels %s",
            len(splits.train),
            len(splits.validation),
            splits.validation_source,
            list(splits.label_map.names),
        )
        class_weights = resolve_class_weights(
            config.training.class_weights,
            splits.label_map.names,
            splits.label_map.raw_values,
            splits.train["label_id"].tolist(),
            task=config.task.value,
        )
        if class_weights is not None:
            logger.info("class weights: %s", named_weights(class_weights, splits.label_map.names))
        set_seed(config.training.seed)
        self.state = state = RecipeState(
            device=device, precision=precision, model=model_ref, splits=splits, class_weights=class_weights
        )
        model = build_model(config, state, pad_token_id=self.tokenizer.pad_token_id)
        processes = config.training.processes
        logger.info(
            "model: %s (%s, %s) on %s/%s, LoRA on %s: %d of %d parameters trainable%s",
            config.model.base_model,
            state.model_type,
            model_ref.language,
            device.value,
            precision.value,
            ",".join(state.target_modules),
            state.trainable_parameters,
            state.total_parameters,
            f"; data parallel over {processes} processes" if processes > 1 else "",
        )
        self.driver = self._build_driver(model, splits)
        return state

    def _build_driver(self, model: Any, splits: DatasetSplits) -> Any:
        """One process: the driver here. Several: the same driver in each rank under torch's elastic launcher,
        this process relaying what rank 0 reports to the callbacks (``launch``)."""

        config, state = self.config, self.state
        device = torch_device(state.device)
        max_length = config.model.max_length

        label_map = splits.label_map
        pairs = config.data.text_pair_column is not None

        def encode(frame: Any) -> Any:
            targets = training_targets(
                frame["label_id"].tolist(), label_map.task, label_map.num_labels, label_map.scale
            )
            return to_device(
                self.tokenizer,
                frame["text"].tolist(),
                targets,
                max_length,
                device,
                pairs=frame["text_pair"].tolist() if pairs else None,
            )

        train, evaluation = encode(splits.train), encode(splits.validation)
        check_rows(config, len(train))
        if config.training.processes > 1:
            return RemoteDriver(
                model.to(device),
                train,
                evaluation,
                config,
                self.run,
                state,
                self.tokenizer,
                self._callbacks(),
            )
        return Driver(
            model.to(device),
            train,
            evaluation,
            config,
            checkpoints_dir=self.run.checkpoints_dir,
            staging_dir=self.run.staging_dir,
            device=device,
            precision=state.precision,
            callbacks=[*self._callbacks(), *training_guards(config, self.run.checkpoints_dir)],
            class_weights=state.class_weights,
            scale=splits.label_map.scale,
        )

    def _callbacks(self) -> list[Any]:
        """What observes a run from this process: the progress bar, log lines and history.jsonl (tracking and
        the job's callbacks are added by the runner)."""

        t = self.config.training
        self.progress = ProgressCallback(
            t.batch_size * t.gradient_accumulation_steps * t.processes,
            show_bar=self.show_progress,
            history_path=self.run.history_path,
        )
        return [self.progress]

    # -- train -----------------------------------------------------------------------------------
    def train(self, resume_from: Path | None = None) -> Any:

        removed = remove_incomplete(self.run.checkpoints_dir)
        if removed:
            logger.info("removed incomplete checkpoints left by an interrupted save: %s", ", ".join(removed))
        if resume_from is not None:
            logger.info("resuming from %s", resume_from)
        self.train_output = self.driver.train(resume_from)
        error = stop_error_of(self.driver.callbacks)  # a callback that ended training early
        if error is not None:
            raise error
        return self.train_output

    # -- evaluate --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Load the chosen final weights (best or last checkpoint) and report on the validation set."""
        self.final_checkpoint = self._load_final_weights()
        logits, loss = self.driver.predict(self.driver.eval_data)
        labels = self.driver.eval_data.labels.cpu().numpy()
        self.eval_logits = np.asarray(logits)
        self.calibration = None
        task = self.config.task
        if task is Task.MULTI_LABEL:
            return self._evaluate_multi_label(logits, labels, loss)
        if task is Task.REGRESSION:
            label_map = self.state.splits.label_map
            self.report = {**regression_report(logits, labels, label_map.scale), "loss": loss}
            logger.info(
                "final evaluation (%s): rmse %.4f mae %.4f pearson %.4f spearman %.4f",
                self.final_checkpoint or "last step",
                *(self.report[key] for key in ("rmse", "mae", "pearson", "spearman")),
            )
            self._skip_calibration()
            return self.report
        self.report = classification_report(logits, labels, self.state.splits.label_map.names)
        self.report["loss"] = loss
        if self.config.calibration == "temperature":
            self.calibration = calibrate(np.asarray(logits), np.asarray(labels))
            self.calibration_inputs = (np.asarray(logits), np.asarray(labels))
            logger.info(
                "calibration: temperature %.4f, expected calibration error %.4f -> %.4f",
                self.calibration.temperature,
                self.calibration.ece_before,
                self.calibration.ece_after,
            )
        logger.info(
            "final evaluation (%s): accuracy %.4f macro_f1 %.4f",
            self.final_checkpoint or "last step",
            self.report["accuracy"],
            self.report["macro_f1"],
        )
        return self.report

    def _evaluate_multi_label(self, logits: Any, labels: Any, loss: float) -> dict[str, Any]:
        """The report at the configured thresholds, or ('tune') at each label's F1-best one on these rows, which
        the label map then carries to every runtime."""
        label_map = self.state.splits.label_map
        thresholds = label_map.thresholds
        if self.config.thresholds == "tune":
            thresholds = tune_thresholds(label_probabilities(logits), labels)
            self.state.splits = replace(
                self.state.splits, label_map=replace(label_map, thresholds=thresholds)
            )
            logger.info("thresholds tuned on the validation set: %s", self.thresholds())
        self.report = {**multi_label_report(logits, labels, label_map.names, thresholds), "loss": loss}
        logger.info(
            "final evaluation (%s): micro_f1 %.4f macro_f1 %.4f subset_accuracy %.4f",
            self.final_checkpoint or "last step",
            *(self.report[key] for key in ("micro_f1", "macro_f1", "subset_accuracy")),
        )
        self._skip_calibration()
        return self.report

    def _skip_calibration(self) -> None:
        if self.config.calibration == "temperature":
            logger.info("calibration: skipped, temperature scaling is for single_label runs (task: %s)",
                        self.config.task.value)  # fmt: skip

    def thresholds(self) -> dict[str, float] | None:
        """multi_label: {label: threshold} the final model predicts with."""
        label_map = self.state.splits.label_map
        if label_map.thresholds is None:
            return None
        return dict(zip(label_map.names, label_map.thresholds, strict=True))

    def _load_final_weights(self) -> str | None:
        checkpoints = list_checkpoints(self.run.checkpoints_dir)
        t = self.config.training
        retained = select_retained(
            checkpoints, t.metric_for_best_model.greater_is_better, self.config.checkpoints.fastest_tolerance
        )
        best = retained.get("best")
        if self.config.checkpoints.final_model != "best" or best is None:
            return None
        if best.step == self.driver.state.step:
            return best.path.name  # the weights in memory are the best ones

        set_peft_model_state_dict(self.driver.model, load_peft_weights(str(best.path), device="cpu"))
        return best.path.name

    # -- save ------------------------------------------------------------------------------------
    def save(self, mlflow_run_id: str | None) -> dict[str, Any]:
        self.driver.model.save_pretrained(str(self.run.artifacts_dir), safe_serialization=True)
        self._save_prediction_files(self.state.splits.label_map)
        retained = select_retained(
            list_checkpoints(self.run.checkpoints_dir),
            self.config.training.metric_for_best_model.greater_is_better,
            self.config.checkpoints.fastest_tolerance,
        )
        summary = self.train_output
        metrics = {
            "run_id": self.run.run_id,
            "experiment": self.run.experiment,
            "task": self.config.task.value,
            "final_checkpoint": self.final_checkpoint,
            "dataset": self.state.dataset_lineage(self.config),
            "train": {
                "global_step": self.driver.state.step,
                "epoch": self.driver.state.epoch,
                "loss": summary.loss if summary else None,
                "runtime_seconds": summary.runtime_seconds if summary else None,
                "samples_per_second": summary.samples_per_second if summary else None,
                "steps_per_second": summary.steps_per_second if summary else None,
            },
            "eval": self.report,
            "baseline": self.baseline(),
            "checkpoints": {
                role: {"checkpoint": info.path.name, "step": info.step, "metric": info.metric}
                for role, info in retained.items()
            },
            "history": [entry for entry in self.driver.state.history if "eval_loss" in entry],
        }
        label_map = self.state.splits.label_map
        if self.config.task is Task.MULTI_LABEL:
            metrics["thresholds"] = self.thresholds()
        if self.config.task is Task.REGRESSION:
            metrics["target_scale"] = {"mean": label_map.scale[0], "std": label_map.scale[1]}
        if self.calibration is not None:
            metrics["calibration"] = self.calibration.to_json()
            write_calibration(self.run.artifacts_dir, self.calibration)
            reliability_png(*self.calibration_inputs, self.calibration, self.run.root / "reliability.png")
        self._save_eval_predictions()
        write_atomic(self.run.metrics_path, json.dumps(metrics, indent=2))
        dump_config(
            self.config, self.run.config_path, self.state.resolved(self.run, self.config, mlflow_run_id)
        )
        return metrics

    def _save_eval_predictions(self) -> None:
        """The final weights' logits on each validation row, by its file row (EVAL_PREDICTIONS): rows no training
        step saw, which `finetune data audit --from-run` ranks for label errors (as probabilities, by the runtimes'
        ``inference.softmax.outputs``, which training does not import)."""
        if self.eval_logits is None or self.config.task is Task.REGRESSION:
            return
        splits = self.state.splits
        labels = splits.validation["label_id"].tolist()
        if self.config.task is Task.MULTI_LABEL:
            given = np.zeros((len(labels), splits.label_map.num_labels), dtype=np.int8)
            for i, ids in enumerate(labels):
                given[i, list(ids)] = 1
        else:
            given = np.asarray(labels, dtype=np.int64)
        source = splits.validation_source
        file = (
            source.removeprefix("file:") if source.startswith("file:") else str(self.config.data.train_file)
        )
        with (self.run.root / EVAL_PREDICTIONS).open("wb") as handle:
            np.savez_compressed(
                handle,
                rows=splits.validation["row"].to_numpy(dtype=np.int64),
                logits=self.eval_logits.astype(np.float32),
                given=given,
                names=np.asarray(splits.label_map.names, dtype=str),
                task=np.asarray(self.config.task.value),
                source_file=np.asarray(str(Path(file).resolve())),
            )

    def baseline(self) -> dict[str, Any]:
        """What predicting the training rows' majority scores on the same validation rows (the registry's
        gate: ``registration.registration_refusal``)."""
        splits = self.state.splits
        return majority_baseline(
            self.config.task.value,
            splits.train["label_id"].tolist(),
            splits.validation["label_id"].tolist(),
            splits.label_map.names,
            splits.label_map.scale if self.config.task is Task.REGRESSION else (0.0, 1.0),
        )

    def _save_prediction_files(self, label_map: LabelMap) -> None:
        """What predicting needs beside the adapter weights: the tokenizer and the label map, in artifacts/."""
        artifacts = self.run.artifacts_dir
        self.tokenizer.save_pretrained(str(artifacts))
        (artifacts / "label_map.json").write_text(json.dumps(label_map.to_json(), indent=2), encoding="utf-8")

    # -- cleanup ---------------------------------------------------------------------------------
    def cleanup(self) -> None:

        if self.progress is not None:
            self.progress.close()
        shutil.rmtree(self.run.staging_dir, ignore_errors=True)
        self.driver = None
