"""A sweep trial's side of pruning: at each evaluation, report the objective to the sweep's study and stop the
training when its pruner says the trial cannot win."""

from __future__ import annotations

from typing import Any

from finetune_platform.training.callbacks import Callback, Control, RunState
from finetune_platform.training.guards import TrainingStopped, TrialPruned
from finetune_platform.training.sweep_config import SweepSpec


class PruningCallback(Callback):
    """Trials are compared at their n-th evaluation (the history's count, so a resumed attempt counts on)."""

    def __init__(self, reporter: Any, spec: SweepSpec, progress: Any) -> None:
        self.reporter = reporter  # sweep_study.TrialReporter
        self.key = f"eval_{spec.objective.metric.value}"
        self.metric = spec.objective.metric.value
        self.progress = progress  # writes to the job's progress
        self.stop_error: TrainingStopped | None = None

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        if self.key not in metrics:
            return
        evaluation = sum(1 for entry in state.history if self.key in entry) or 1
        value = float(metrics[self.key])
        self.progress(progress={"evaluations": evaluation})
        if self.stop_error is None and self.reporter.should_prune(evaluation, value):
            control.halt(save=False)
            self.stop_error = TrialPruned(
                f"pruned at evaluation {evaluation} (step {state.step}): {self.metric} {value:.4f} cannot beat "
                "the sweep's earlier trials at this point"
            )
