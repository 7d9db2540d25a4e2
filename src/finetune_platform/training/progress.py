"""Live progress: a terminal bar (loss, learning rate, samples/s, ETA), the same lines in logs.txt and the same
values in the run folder's history.jsonl (what the API's GET /task/{id}/metrics reads)."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from finetune_platform.training.callbacks import Callback, Control, RunState
from finetune_platform.training.run_folder import append_history, truncate_history

logger = logging.getLogger("finetune_platform.training")
# Per-step lines go to logs.txt; on the terminal the bar shows them, so the console handler skips this logger.
step_logger = logging.getLogger("finetune_platform.training.progress")


def _eta(seconds: float) -> str:
    return str(timedelta(seconds=max(0, round(seconds))))


class ProgressCallback(Callback):
    """Owns the progress bar; writes a log line per logging step and per evaluation, and the same values as
    entries of ``history_path`` (history.jsonl) when given."""

    def __init__(
        self, samples_per_step: int, show_bar: bool = True, history_path: Path | None = None
    ) -> None:
        self.samples_per_step = samples_per_step
        self.show_bar = show_bar
        self.history_path = history_path
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
        if self.history_path is not None:
            self._record(truncate_history, self.history_path, state.step)

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
        if self.history_path is not None:
            entry = {
                "step": state.step, "epoch": round(float(state.epoch or 0.0), 4), "loss": logs["loss"],
                "learning_rate": lr, "grad_norm": logs.get("grad_norm"),
                "samples_per_second": round(samples_per_second, 2), "eta_seconds": round(remaining, 1),
            }  # fmt: skip
            self._record(append_history, self.history_path, entry)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{logs['loss']:.4f}",
                lr=f"{lr:.1e}",
                samples_s=f"{samples_per_second:.0f}",
                refresh=False,
            )

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        shown = " ".join(  # eval_loss and the task's metrics (training.metrics.summary_metrics)
            f"{key.removeprefix('eval_')} {value:.4f}"
            for key, value in metrics.items()
            if key.startswith("eval_")
        )
        # Evaluation time is not training time: restart the samples/s interval after it.
        self._last_time, self._last_step = time.perf_counter(), state.step
        message = f"eval at step {state.step} (epoch {state.epoch or 0:.2f}): {shown}"
        logger.info(message)
        if self.history_path is not None:
            entry = {"step": state.step, "epoch": round(float(state.epoch or 0.0), 4),
                     **{key: float(value) for key, value in metrics.items()}}  # fmt: skip
            self._record(append_history, self.history_path, entry)

    @staticmethod
    def _record(write: Any, *args: Any) -> None:
        try:
            write(*args)
        except OSError as exc:  # the history is for watching a run: never worth the run itself
            logger.warning("history.jsonl not written: %s", exc)

    def on_train_end(self, state: RunState) -> None:
        self.close()

    def close(self) -> None:
        """End the bar (also when training did not end: Ctrl-C), so what is printed next starts a line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
