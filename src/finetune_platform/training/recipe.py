"""The LoRA sequence-classification recipe: setup → train → evaluate → save → cleanup.

Each phase is a method built from small builder functions, so the Celery task, the CLI and the tests
run the same lifecycle. Heavy libraries (torch, transformers, peft) are imported here, not at CLI start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune_platform import __version__
from finetune_platform.atomic import file_sha256, write_atomic
from finetune_platform.catalogue import ResolvedModel, resolve_base_model
from finetune_platform.data.splits import DatasetSplits, load_splits
from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.errors import ConfigError
from finetune_platform.training.checkpoints import (
    META_FILE,
    list_checkpoints,
    newest_checkpoint,
    remove_incomplete,
    select_retained,
)
from finetune_platform.training.config import Device, Engine, Precision, TrainConfig, dump_config
from finetune_platform.training.devices import select_device, select_precision
from finetune_platform.training.metrics import classification_report, trainer_compute_metrics
from finetune_platform.training.models import default_target_modules
from finetune_platform.training.run_folder import RunFolder

logger = logging.getLogger("finetune_platform.training")


@dataclass
class RecipeState:
    """What setup resolved; written to config.yaml's `resolved` section and to MLflow params."""

    device: Device
    precision: Precision
    model: ResolvedModel
    splits: DatasetSplits | None  # None only in a data-parallel rank other than 0 (it gets tokenised rows)
    engine: Engine = Engine.TRAINER
    target_modules: list[str] = field(default_factory=list)
    model_type: str = ""
    trainable_parameters: int = 0
    total_parameters: int = 0
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
            "dataset": self.dataset_lineage(config),
        }


@contextlib.contextmanager
def _model_loading(name: str) -> Iterator[None]:
    """Turn a hub or disk failure while loading the base model into an error that names the field."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"model.base_model: cannot load {name!r} ({exc}). Offline, use 'minilm' or a local folder "
            "saved with save_pretrained"
        ) from exc


def select_engine(config: TrainConfig, device: Device, precision: Precision, checkpoints_dir: Path) -> Engine:
    """auto: the engine of the run's checkpoints when resuming, else fast on CUDA (bf16/fp32), else trainer."""
    requested = config.training.engine
    engine = requested
    if requested is Engine.AUTO:
        newest = newest_checkpoint(checkpoints_dir)
        if newest is not None:
            meta = json.loads((newest.path / META_FILE).read_text(encoding="utf-8"))
            engine = Engine(meta.get("engine", "trainer"))
        elif device is Device.CUDA and precision is not Precision.FP16:
            engine = Engine.FAST
        else:
            engine = Engine.TRAINER
    if engine is Engine.TRAINER and config.training.devices > 1:
        why = f" (auto picks trainer on {device.value})" if requested is Engine.AUTO else ""
        fix = "set training.engine: fast"
        if precision is Precision.FP16:
            fix += " and precision: bf16 or fp32 (the fast engine does not train in fp16)"
        raise ConfigError(
            f"training.devices: {config.training.devices} data-parallel processes run on the fast engine; {fix}{why}"
        )
    return engine


def build_datasets(splits: DatasetSplits, tokenizer: Any, max_length: int) -> tuple[Any, Any]:
    """Tokenise once; keep a `length` column so the sampler groups similar lengths without re-reading."""
    from datasets import Dataset

    def encode(frame: Any) -> Any:
        encoded = tokenizer(frame["text"].tolist(), truncation=True, max_length=max_length)
        columns = {**encoded, "labels": frame["label_id"].tolist()}
        columns["length"] = [len(ids) for ids in encoded["input_ids"]]
        return Dataset.from_dict(columns)

    train = encode(splits.train)
    # Evaluation order does not change its metrics; sorted by length it pads (and costs) far less.
    validation = encode(splits.validation).sort("length")
    return train, validation


def build_model(config: TrainConfig, state: RecipeState, label_map: Any = None) -> Any:
    """The base model with a ``label_map``-sized head (default: the data's labels) and LoRA attached."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    label_map = label_map or state.splits.label_map
    with _model_loading(state.model.name):
        model = AutoModelForSequenceClassification.from_pretrained(
            state.model.source,
            num_labels=label_map.num_labels,
            id2label=dict(enumerate(label_map.names)),
            label2id={name: i for i, name in enumerate(label_map.names)},
            torch_dtype=torch.float32,
        )
    state.model_type = model.config.model_type
    if config.lora.target_modules == "auto":
        state.target_modules = default_target_modules(model, state.model_type)
    elif config.lora.target_modules == "all-linear":
        state.target_modules = ["all-linear"]
    else:
        state.target_modules = list(config.lora.target_modules)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules="all-linear" if state.target_modules == ["all-linear"] else state.target_modules,
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {exc}") from exc
    trainable, total = model.get_nb_trainable_parameters()
    state.trainable_parameters, state.total_parameters = int(trainable), int(total)
    return model


def build_training_arguments(config: TrainConfig, run: RunFolder, state: RecipeState) -> Any:
    from transformers import TrainingArguments

    t = config.training
    schedule: dict[str, Any] = {
        "eval_strategy": t.eval_strategy.value,
        "save_strategy": t.eval_strategy.value,
    }
    # transformers 5.x replaced the boolean `group_by_length` with `train_sampling_strategy`.
    if "train_sampling_strategy" in {f.name for f in dataclasses.fields(TrainingArguments)}:
        schedule["train_sampling_strategy"] = "group_by_length" if t.group_by_length else "random"
    else:
        schedule["group_by_length"] = t.group_by_length
    if t.eval_steps is not None:
        schedule.update(eval_steps=t.eval_steps, save_steps=t.eval_steps)
    return TrainingArguments(
        output_dir=str(run.staging_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.scheduler.value,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the total steps
        weight_decay=t.weight_decay,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        length_column_name="length",
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_nan_inf_filter=False,  # a NaN/Inf step loss must reach the NonFiniteLossGuard
        metric_for_best_model=t.metric_for_best_model.value,
        greater_is_better=t.metric_for_best_model.greater_is_better,
        save_total_limit=None,
        load_best_model_at_end=False,
        report_to=[],
        disable_tqdm=True,
        use_cpu=state.device is Device.CPU,
        bf16=state.precision is Precision.BF16,
        fp16=state.precision is Precision.FP16,
        dataloader_num_workers=0,
        **schedule,
    )


class LoraClassificationRecipe:
    """Fine-tune a sequence classifier with LoRA; one instance is one run folder's lifecycle."""

    def __init__(self, config: TrainConfig, run: RunFolder, tracker: Any = None, show_progress: bool = True):
        self.config = config
        self.run = run
        self.tracker = tracker
        self.show_progress = show_progress
        self.state: RecipeState | None = None
        self.trainer: Any = None
        self.tokenizer: Any = None
        self.train_output: Any = None
        self.report: dict[str, Any] = {}
        self.final_checkpoint: str | None = None

    # -- setup -----------------------------------------------------------------------------------
    def setup(self) -> RecipeState:
        """Resolve device and data first (cheap, and where most mistakes are), then load the model."""
        config = self.config
        device = select_device(config.device)
        precision = select_precision(config.precision, device)
        model_ref = resolve_base_model(config.model.base_model, config.model.language)
        quiet_libraries()
        from transformers import AutoTokenizer, set_seed

        with _model_loading(model_ref.name):
            self.tokenizer = AutoTokenizer.from_pretrained(model_ref.source)
        if self.tokenizer.pad_token is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
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
            )
        except DatasetValidationError as exc:
            exc.report.write_json(self.run.root / "validation.json")
            raise
        splits.report.write_json(self.run.root / "validation.json")
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
        set_seed(config.training.seed)
        engine = select_engine(config, device, precision, self.run.checkpoints_dir)
        self.state = state = RecipeState(
            device=device, precision=precision, model=model_ref, splits=splits, engine=engine
        )
        model = build_model(config, state)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        logger.info(
            "model: %s (%s, %s) on %s/%s, LoRA on %s: %d of %d parameters trainable; %s engine%s",
            config.model.base_model,
            state.model_type,
            model_ref.language,
            device.value,
            precision.value,
            ",".join(state.target_modules),
            state.trainable_parameters,
            state.total_parameters,
            engine.value,
            f" on {config.training.devices} processes" if config.training.devices > 1 else "",
        )
        if engine is Engine.FAST:
            from finetune_platform.training.fast_engine import FastEngine

            self.trainer = FastEngine(
                model, self.tokenizer, splits, config, self.run, device, precision, self._callbacks()
            )
        else:
            train_dataset, eval_dataset = build_datasets(splits, self.tokenizer, config.model.max_length)
            self.trainer = self._build_trainer(model, train_dataset, eval_dataset)
        return state

    def _callbacks(self) -> list[Any]:
        """What every engine reports to: the progress bar, early stopping, tracking, the loss guard."""
        from finetune_platform.training.guards import NonFiniteLossGuard
        from finetune_platform.training.progress import ProgressCallback
        from finetune_platform.training.trainer import EarlyStopping, TrackingCallback

        t = self.config.training
        callbacks: list[Any] = [
            ProgressCallback(
                t.batch_size * t.gradient_accumulation_steps * t.devices, show_bar=self.show_progress
            )
        ]
        if t.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(
                    f"eval_{t.metric_for_best_model.value}",
                    t.metric_for_best_model.greater_is_better,
                    t.early_stopping_patience,
                    t.early_stopping_threshold,
                )
            )
        if self.tracker is not None:
            callbacks.append(TrackingCallback(self.tracker))
        callbacks.append(NonFiniteLossGuard(self.run.checkpoints_dir))
        return callbacks

    def _build_trainer(self, model: Any, train_dataset: Any, eval_dataset: Any) -> Any:
        from transformers import DataCollatorWithPadding

        from finetune_platform.training.trainer import PlatformTrainer

        t = self.config.training
        metric_key = f"eval_{t.metric_for_best_model.value}"
        trainer = PlatformTrainer(
            model=model,
            args=build_training_arguments(self.config, self.run, self.state),
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=None),
            compute_metrics=trainer_compute_metrics,
            callbacks=self._callbacks(),
            checkpoint_root=self.run.checkpoints_dir,
            metric_key=metric_key,
            greater_is_better=t.metric_for_best_model.greater_is_better,
            fastest_tolerance=self.config.checkpoints.fastest_tolerance,
        )
        # Our ProgressCallback replaces the Trainer's console printer and bar.
        from transformers.trainer_callback import PrinterCallback
        from transformers.trainer_callback import ProgressCallback as HFProgress

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(HFProgress)
        return trainer

    # -- train -----------------------------------------------------------------------------------
    def train(self, resume_from: Path | None = None) -> Any:
        removed = remove_incomplete(self.run.checkpoints_dir)
        if removed:
            logger.info("removed incomplete checkpoints left by an interrupted save: %s", ", ".join(removed))
        if resume_from is not None:
            logger.info("resuming from %s", resume_from)
        self.train_output = self.trainer.train(
            resume_from_checkpoint=str(resume_from) if resume_from else None
        )
        for callback in self.trainer.callback_handler.callbacks:  # a callback that ended training early
            error = getattr(callback, "stop_error", None)
            if error is not None:
                raise error
        return self.train_output

    # -- evaluate --------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        """Load the chosen final weights (best or last checkpoint) and report on the validation set."""
        self.final_checkpoint = self._load_final_weights()
        prediction = self.trainer.predict(self.trainer.eval_dataset, metric_key_prefix="final")
        self.report = classification_report(
            prediction.predictions, np.asarray(prediction.label_ids), self.state.splits.label_map.names
        )
        self.report["loss"] = float(prediction.metrics.get("final_loss", float("nan")))
        logger.info(
            "final evaluation (%s): accuracy %.4f macro_f1 %.4f",
            self.final_checkpoint or "last step",
            self.report["accuracy"],
            self.report["macro_f1"],
        )
        return self.report

    def _load_final_weights(self) -> str | None:
        checkpoints = list_checkpoints(self.run.checkpoints_dir)
        t = self.config.training
        retained = select_retained(
            checkpoints, t.metric_for_best_model.greater_is_better, self.config.checkpoints.fastest_tolerance
        )
        best = retained.get("best")
        if self.config.checkpoints.final_model != "best" or best is None:
            return None
        if best.step == self.trainer.state.global_step:
            return best.path.name  # the weights in memory are the best ones
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        set_peft_model_state_dict(self.trainer.model, load_peft_weights(str(best.path), device="cpu"))
        return best.path.name

    # -- save ------------------------------------------------------------------------------------
    def save(self, mlflow_run_id: str | None) -> dict[str, Any]:
        artifacts = self.run.artifacts_dir
        self.trainer.model.save_pretrained(str(artifacts), safe_serialization=True)
        self.tokenizer.save_pretrained(str(artifacts))
        label_map = self.state.splits.label_map
        (artifacts / "label_map.json").write_text(json.dumps(label_map.to_json(), indent=2), encoding="utf-8")
        retained = select_retained(
            list_checkpoints(self.run.checkpoints_dir),
            self.config.training.metric_for_best_model.greater_is_better,
            self.config.checkpoints.fastest_tolerance,
        )
        train_metrics = dict(self.train_output.metrics) if self.train_output is not None else {}
        metrics = {
            "run_id": self.run.run_id,
            "experiment": self.run.experiment,
            "final_checkpoint": self.final_checkpoint,
            "dataset": self.state.dataset_lineage(self.config),
            "train": {
                "global_step": self.trainer.state.global_step,
                "epoch": self.trainer.state.epoch,
                "loss": train_metrics.get("train_loss"),
                "runtime_seconds": train_metrics.get("train_runtime"),
                "samples_per_second": train_metrics.get("train_samples_per_second"),
                "steps_per_second": train_metrics.get("train_steps_per_second"),
            },
            "eval": self.report,
            "checkpoints": {
                role: {"checkpoint": info.path.name, "step": info.step, "metric": info.metric}
                for role, info in retained.items()
            },
            "history": [entry for entry in self.trainer.state.log_history if "eval_loss" in entry],
        }
        write_atomic(self.run.metrics_path, json.dumps(metrics, indent=2))
        dump_config(
            self.config, self.run.config_path, self.state.resolved(self.run, self.config, mlflow_run_id)
        )
        return metrics

    # -- cleanup ---------------------------------------------------------------------------------
    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.run.staging_dir, ignore_errors=True)
        self.trainer = None


def quiet_libraries() -> None:
    """Keep library chatter (load reports, map bars) out of the progress display and logs."""
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|pyarrow)\.")
    try:  # only the trainer engine uses it
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
