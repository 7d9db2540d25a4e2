"""What a training run tells the rest of the platform, and how the rest of the platform asks it to stop.

The ``Driver`` calls each ``Callback`` at the points of its schedule: training begins, a step ends (every
step of a one-process run; every logging and evaluation step of a data-parallel one), values are logged, an
evaluation finishes, a checkpoint is committed, training ends. A callback reads ``RunState`` and may ask for
something through ``Control``: stop (with the reason as ``stop_error``, raised once the driver has returned),
save a checkpoint now, or skip this step's evaluation and save. Nothing here knows which loop trains or on
which device.

The callbacks every run has live here too: early stopping, the MLflow sink, the non-finite-loss guard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from finetune_platform.training.guards import NonFiniteLoss, TrainingStopped, kept_checkpoint


@dataclass
class RunState:
    """Where a run stands: the step just finished, the planned total, and every logged entry so far (each
    with its ``step``; evaluations carry ``eval_*`` keys). Resumed runs continue the same history."""

    step: int = 0
    max_steps: int = 0
    epoch: float = 0.0
    samples_per_step: int = 0  # rows per optimizer step over all processes
    history: list[dict[str, Any]] = field(default_factory=list)

    def latest(self, key: str, step: int | None = None) -> float | None:
        """The newest logged value of ``key`` (at ``step`` only, when given)."""
        for entry in reversed(self.history):
            if key in entry and (step is None or entry.get("step") == step):
                return float(entry[key])
        return None

    def progress(self) -> dict[str, Any]:
        total = self.max_steps or 0
        return {
            "step": self.step,
            "max_steps": total,
            "epoch": round(float(self.epoch or 0.0), 4),
            "percent": round(100.0 * self.step / total, 1) if total else 0.0,
        }


@dataclass
class Control:
    """What the callbacks ask of the driver at one sync point (reset by the driver before each)."""

    stop: bool = False
    evaluate: bool = False
    save: bool = False

    def halt(self, *, save: bool) -> None:
        """End training here, with (``save``) or without a checkpoint of this step and no evaluation."""
        self.stop = True
        self.save = save
        if not save:
            self.evaluate = False


class Callback:
    """A no-op base: subclasses override the points they care about. ``stop_error`` is the reason a callback
    ended training early; the recipe raises it after the driver returns."""

    stop_error: TrainingStopped | None = None

    def on_train_begin(self, state: RunState) -> None:
        pass

    def on_step(self, state: RunState, control: Control) -> None:
        """A step ended (in a data-parallel run: a logging or evaluation step): the place to ask for a stop."""

    def on_log(self, state: RunState, control: Control, logs: dict[str, float]) -> None:
        pass

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        pass

    def on_save(self, state: RunState, checkpoint: Path) -> None:
        pass

    def on_train_end(self, state: RunState) -> None:
        pass


class EarlyStopping(Callback):
    """Stop after ``patience`` evaluations without an improvement of at least ``threshold``.

    It keeps no state of its own: the count comes from the run's history, so a resumed run stops exactly where
    an uninterrupted one would.
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

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        if self.evaluations_without_improvement(state.history) >= self.patience:
            control.stop = True  # this step's checkpoint is still written: it is the last one


class MetricSink(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def flush(self) -> None: ...


class TrackingCallback(Callback):
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

    def on_log(self, state: RunState, control: Control, logs: dict[str, float]) -> None:
        numeric = {
            self.metric_name(key): float(value)
            for key, value in logs.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        }
        if numeric:
            self.sink.log_metrics(numeric, state.step)

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        self.sink.flush()

    def on_train_end(self, state: RunState) -> None:
        self.sink.flush()


class NonFiniteLossGuard(Callback):
    """Stop at the first logged loss or gradient norm that is NaN or infinite, without saving that state."""

    def __init__(self, checkpoints_dir: Path) -> None:
        self.checkpoints_dir = checkpoints_dir
        self.stop_error: TrainingStopped | None = None

    def on_log(self, state: RunState, control: Control, logs: dict[str, float]) -> None:
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if isinstance(value, int | float) and not math.isfinite(value):
                # This step's weights are already damaged: neither evaluate nor checkpoint them.
                control.halt(save=False)
                self.stop_error = NonFiniteLoss(
                    f"training stopped: {key} is {value} at step {state.step} (diverged; try a lower "
                    f"learning rate or fp32); {kept_checkpoint(self.checkpoints_dir)}"
                )
                return


def stop_error_of(callbacks: list[Any]) -> TrainingStopped | None:
    """The first reason a callback gave for ending training early."""
    return next((c.stop_error for c in callbacks if getattr(c, "stop_error", None) is not None), None)


def training_guards(config: Any, checkpoints_dir: Path) -> list[Any]:
    """The callbacks that run where the model trains (rank 0): early stopping and the non-finite-loss guard."""
    t = config.training
    guards: list[Any] = []
    if t.early_stopping_patience is not None:
        guards.append(
            EarlyStopping(
                f"eval_{t.metric_for_best_model.value}",
                t.metric_for_best_model.greater_is_better,
                t.early_stopping_patience,
                t.early_stopping_threshold,
            )
        )
    guards.append(NonFiniteLossGuard(checkpoints_dir))
    return guards
