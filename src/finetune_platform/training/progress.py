"""Live progress: a terminal bar (loss, learning rate, samples/s, ETA) and the same lines in logs.txt."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from tqdm.auto import tqdm

from finetune_platform.training.callbacks import Callback, Control, RunState

logger = logging.getLogger("finetune_platform.training")
# Per-step lines go to logs.txt; on the terminal the bar shows them, so the console handler skips this logger.
step_logger = logging.getLogger("finetune_platform.training.progress")


def _eta(seconds: float) -> str:
    return str(timedelta(seconds=max(0, round(seconds))))


class ProgressCallback(Callback):
    """Owns the progress bar; writes a log line per logging step and per evaluation."""

    def __init__(self, samples_per_step: int, show_bar: bool = True) -> None:
        self.samples_per_step = samples_per_step
        self.show_bar = show_bar
        self.bar: tqdm | None = None
        self._start_time = 0.0
        self._start_step = 0
        self._last_time = 0.0
        self._last_step = 0

    def on_train_begin(self, state: RunState) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = self._last_step = state.step
        if self.show_bar:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )
        logger.info(
            "training: %d steps, %d samples per step, starting at step %d",
            state.max_steps,
            self.samples_per_step,
            state.step,
        )

    def on_step(self, state: RunState, control: Control) -> None:
        if self.bar is not None:
            self.bar.update(state.step - self.bar.n)

    def rates(self, state: RunState) -> tuple[float, float]:
        """(samples/s over the last interval, seconds left at the average rate of this process)."""
        now = time.perf_counter()
        interval_steps = state.step - self._last_step
        samples_per_second = interval_steps * self.samples_per_step / max(now - self._last_time, 1e-9)
        done = state.step - self._start_step
        steps_per_second = done / max(now - self._start_time, 1e-9)
        remaining = (state.max_steps - state.step) / steps_per_second if steps_per_second else 0.0
        self._last_time, self._last_step = now, state.step
        return samples_per_second, remaining

    def on_log(self, state: RunState, control: Control, logs: dict[str, Any]) -> None:
        if "loss" not in logs:
            return
        samples_per_second, remaining = self.rates(state)
        lr = logs.get("learning_rate", 0.0)
        line = (
            f"step {state.step}/{state.max_steps} epoch {state.epoch or 0:.2f} loss {logs['loss']:.4f} "
            f"lr {lr:.2e} samples/s {samples_per_second:.1f} eta {_eta(remaining)}"
        )
        step_logger.info(line)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{logs['loss']:.4f}",
                lr=f"{lr:.1e}",
                samples_s=f"{samples_per_second:.0f}",
                refresh=False,
            )

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        shown = " ".join(
            f"{key.removeprefix('eval_')} {value:.4f}"
            for key, value in metrics.items()
            if key in {"eval_loss", "eval_accuracy", "eval_macro_f1"}
        )
        # Evaluation time is not training time: restart the samples/s interval after it.
        self._last_time, self._last_step = time.perf_counter(), state.step
        message = f"eval at step {state.step} (epoch {state.epoch or 0:.2f}): {shown}"
        logger.info(message)

    def on_train_end(self, state: RunState) -> None:
        self.close()

    def close(self) -> None:
        """End the bar (also when training did not end: Ctrl-C), so what is printed next starts a line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
