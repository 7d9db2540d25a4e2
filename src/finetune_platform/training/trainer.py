"""The Hugging Face Trainer, with atomic checkpoints, retention, early stopping and tracking hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from transformers import Trainer, TrainerCallback

from finetune_platform.training.checkpoints import PREFIX, apply_retention, commit_staged
from finetune_platform.training.guards import staging_checkpoint


class MetricSink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...


class PlatformTrainer(Trainer):
    """Trainer whose checkpoints land atomically in ``checkpoint_root`` and are pruned to best/last/fastest.

    ``args.output_dir`` is the staging folder: the base class writes a complete checkpoint there,
    then this class moves it into place, marks it complete and applies retention.
    """

    def __init__(
        self,
        *args: Any,
        checkpoint_root: Path,
        metric_key: str,
        greater_is_better: bool,
        fastest_tolerance: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint_root = checkpoint_root
        self.metric_key = metric_key
        self.greater_is_better = greater_is_better
        self.fastest_tolerance = fastest_tolerance

    def _latest_metric(self) -> float | None:
        for entry in reversed(self.state.log_history):
            if entry.get("step") == self.state.global_step and self.metric_key in entry:
                return float(entry[self.metric_key])
        return None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        staged = Path(self.args.output_dir) / f"{PREFIX}{self.state.global_step}"
        with staging_checkpoint(staged, self.checkpoint_root):
            self._write_checkpoint(model, trial, staged)

    def _write_checkpoint(self, model: Any, trial: Any, staged: Path) -> None:
        super()._save_checkpoint(model, trial)
        best_step = self.state.best_global_step
        if best_step:
            best = self.checkpoint_root / f"{PREFIX}{best_step}"
            if best_step == self.state.global_step or best.exists():
                self.state.best_model_checkpoint = str(best)
        # The base class recorded the staging path; store the final one before committing.
        self.state.save_to_json(str(staged / "trainer_state.json"))
        meta = {
            "step": self.state.global_step,
            "epoch": self.state.epoch,
            "metric": self._latest_metric(),
            "metric_name": self.metric_key,
        }
        commit_staged(staged, self.checkpoint_root, meta)
        apply_retention(self.checkpoint_root, self.greater_is_better, self.fastest_tolerance)


class EarlyStopping(TrainerCallback):
    """Stop after ``patience`` evaluations without an improvement of at least ``threshold``.

    It keeps no state of its own: the count comes from the trainer's log history, so a resumed run
    stops exactly where an uninterrupted one would.
    """

    def __init__(self, metric_key: str, greater_is_better: bool, patience: int, threshold: float) -> None:
        self.metric_key = metric_key
        self.sign = 1.0 if greater_is_better else -1.0
        self.patience = patience
        self.threshold = threshold

    def evaluations_without_improvement(self, history: list[dict[str, Any]]) -> int:
        best: float | None = None
        waited = 0
        for entry in history:
            if self.metric_key not in entry:
                continue
            value = self.sign * float(entry[self.metric_key])
            if best is None or value > best + self.threshold:
                best, waited = value, 0
            else:
                waited += 1
        return waited

    def on_evaluate(self, args, state, control, **kwargs):
        if self.evaluations_without_improvement(state.log_history) >= self.patience:
            control.should_training_stop = True


class TrackingCallback(TrainerCallback):
    """Forward every logged value to a metric sink (MLflow), which batches them."""

    def __init__(self, sink: MetricSink) -> None:
        self.sink = sink

    @staticmethod
    def metric_name(key: str) -> str:
        if key.startswith("eval_"):
            return key
        if key.startswith("train_"):  # the end-of-training summary (train_runtime, train_loss, ...)
            return f"final_{key}"
        return f"train_{key}"

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        numeric = {
            self.metric_name(key): float(value)
            for key, value in (logs or {}).items()
            if isinstance(value, int | float) and not isinstance(value, bool) and key != "total_flos"
        }
        if numeric:
            self.sink.log_metrics(numeric, state.global_step)

    def on_evaluate(self, args, state, control, **kwargs):
        self.sink.flush()

    def on_train_end(self, args, state, control, **kwargs):
        self.sink.flush()
