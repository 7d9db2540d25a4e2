"""The one training driver: the schedule of logging, evaluation, checkpoints and stopping around one loop.

The loop (``fast_gpu.FastTrainer``) trains on CPU, CUDA and MPS alike: data kept on the device, length-bucketed
batches, fused AdamW, bf16/fp16 autocast (fp16 with a gradient scaler), optional CUDA graphs, data parallel over
``torch.distributed``. The driver owns everything around it, once:

- the schedule: a log every ``logging_steps``, an evaluation and a checkpoint every ``eval_steps`` (or epoch) and
  at the last step; callbacks (``training.callbacks``) hear each and may ask to stop;
- one checkpoint format (``FORMAT``): the adapter, optimizer, gradient scaler, RNG states and the driver's
  state (step, epoch, history), committed atomically and pruned to best/last/fastest (``checkpoints``);
- resume from such a checkpoint, the same batches and dropout masks following; a checkpoint of an earlier
  format is refused with a message that names it (no silent restart);
- the guards: non-finite loss, a failed save (disk full) keeping the previous checkpoint.

In a data-parallel run every process runs this driver; rank 0 evaluates, saves and calls the callbacks, the
others train their share and follow rank 0's decision to stop at each sync point (``launch``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from peft import set_peft_model_state_dict
from peft.utils import load_peft_weights

from finetune_platform.atomic import write_atomic
from finetune_platform.errors import ConfigError
from finetune_platform.training.callbacks import Callback, Control, RunState
from finetune_platform.training.checkpoints import META_FILE, PREFIX, apply_retention, commit_staged
from finetune_platform.training.config import Device, EvalStrategy, Loss, Precision, TrainConfig
from finetune_platform.training.fast_gpu import (
    DeviceData,
    FastSettings,
    FastTrainer,
    RankOutOfMemory,
    predict,
)
from finetune_platform.training.guards import staging_checkpoint
from finetune_platform.training.losses import evaluation_loss
from finetune_platform.training.metrics import summary_metrics
from finetune_platform.training.targets import init_head_bias

logger = logging.getLogger("finetune_platform.training")

FORMAT = 2  # checkpoint format; 1 was the fast engine's and the HF Trainer's (trainer_state.json)
STATE_FILE = "driver_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "scaler.pt"
RNG_FILE = "rng_state.pth"
RANK_TIMEOUT = timedelta(minutes=5)  # how long a rank waits for the others in one collective


@dataclass(frozen=True)
class TrainSummary:
    """What one ``train()`` did (this attempt only, for speed; the loss over the attempt's steps)."""

    step: int
    epoch: float
    loss: float
    runtime_seconds: float
    samples_per_second: float
    steps_per_second: float


def loop_settings(
    config: TrainConfig, precision: Precision, class_weights: tuple[float, ...] | None = None
) -> FastSettings:
    """The loop's settings; ``class_weights`` (one per class id) are resolved from the data by the recipe."""
    t = config.training
    return FastSettings(
        batch_size=t.batch_size * t.gradient_accumulation_steps,
        micro_batch=t.batch_size,
        base_learning_rate=t.learning_rate,
        reference_batch=t.learning_rate_reference_batch,
        epochs=t.epochs,
        max_steps=t.max_steps,
        scheduler=t.scheduler.value,
        warmup_ratio=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        group_by_length=t.group_by_length,
        bf16=precision is Precision.BF16,
        fp16=precision is Precision.FP16,
        log_every=t.logging_steps,
        compile=None if t.compile == "none" else t.compile,
        task=config.task.value,
        class_weights=class_weights,
        focal_gamma=t.focal_gamma if t.loss is Loss.FOCAL else None,
    )


def evaluation_thresholds(config: TrainConfig) -> float:
    """The multi-label threshold of evaluations during training: the configured one, 0.5 while 'tune' waits for
    the end of training."""
    return 0.5 if config.thresholds == "tune" else float(config.thresholds)


def check_rows(config: TrainConfig, rows: int) -> None:
    """Data-parallel and compiled runs train on full batches only: there must be at least one."""
    t = config.training
    global_batch = t.batch_size * t.gradient_accumulation_steps * t.processes
    if (t.processes > 1 or t.compile != "none") and rows < global_batch:
        where = f"{t.devices} devices" + (f" × {t.nodes} nodes" if t.nodes > 1 else "")
        raise ConfigError(
            f"training.batch_size: {rows} training rows make no full batch of {t.batch_size} rows × "
            f"{t.gradient_accumulation_steps} accumulation steps × {where}; lower training.batch_size"
        )


def torch_device(device: Device, local_rank: int = 0) -> Any:

    if device is Device.CUDA:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device.value)


def is_log_step(step: int, total: int, logging_steps: int) -> bool:
    return step % logging_steps == 0 or step == total


def is_eval_step(step: int, total: int, eval_every: int) -> bool:
    """Evaluate (and checkpoint) here; the last step always."""
    return step % eval_every == 0 or step == total


def is_sync_point(step: int, total: int, logging_steps: int, eval_every: int) -> bool:
    """Where the ranks agree on stopping: every logging and evaluation step."""
    return is_log_step(step, total, logging_steps) or is_eval_step(step, total, eval_every)


def agree_to_stop(stop: bool, device: Any) -> bool:
    """Rank 0's decision, known to every rank (one small broadcast and host read per sync point)."""

    flag = torch.tensor([1 if stop else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def mean_over_ranks(value: Any, world_size: int) -> None:
    """In place: the mean of ``value`` over all ranks (every rank calls it at the same steps)."""

    dist.all_reduce(value)
    value /= world_size


# -- checkpoints --------------------------------------------------------------------------------------------------
def rng_state(device: Any) -> dict[str, Any]:

    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict[str, Any], device: Any) -> None:

    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def read_state(checkpoint: Path) -> dict[str, Any]:
    """The driver's state in ``checkpoint``; a checkpoint of an earlier format is refused by name."""
    path = checkpoint / STATE_FILE
    if not path.is_file():
        meta = _meta(checkpoint)
        writer = {"fast": "the fast engine", "trainer": "the Hugging Face Trainer engine"}.get(
            str(meta.get("engine", "trainer")), "an earlier version"
        )
        raise ConfigError(
            f"{checkpoint.name} was written by {writer} (checkpoint format 1, before this version's format "
            f"{FORMAT}); it cannot be resumed: start the run again (finetune train without --resume)"
        )
    state = json.loads(path.read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise ConfigError(
            f"{checkpoint.name} has checkpoint format {state.get('format')!r}; this version reads format {FORMAT}"
        )
    return state


def _meta(checkpoint: Path) -> dict[str, Any]:
    try:
        return json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _torch_load(path: Path, device: Any = "cpu") -> Any:

    return torch.load(path, map_location=device, weights_only=True)


# -- the driver ---------------------------------------------------------------------------------------------------
class Driver:
    """Trains ``model`` on ``train`` with the configured schedule; evaluates on ``evaluation``.

    ``rank``/``world_size`` place it in a data-parallel group that the caller has joined (``launch``); rank 0
    alone evaluates, writes checkpoints and calls ``callbacks``.
    """

    def __init__(
        self,
        model: Any,
        train: DeviceData | None,
        evaluation: DeviceData | None,
        config: TrainConfig,
        *,
        checkpoints_dir: Path,
        staging_dir: Path,
        device: Any,
        precision: Precision,
        callbacks: list[Callback] = (),  # type: ignore[assignment]
        rank: int = 0,
        world_size: int = 1,
        class_weights: tuple[float, ...] | None = None,
        scale: tuple[float, float] = (0.0, 1.0),
    ) -> None:
        self.config, self.model, self.device = config, model, device
        # regression: (mean, std) of the training targets, for metrics in the target's units
        self.scale = scale
        self.train_data, self.eval_data = train, evaluation
        self.checkpoints_dir, self.staging_dir = checkpoints_dir, staging_dir
        self.precision = precision
        self.settings = loop_settings(config, precision, class_weights)
        self.callbacks: list[Callback] = list(callbacks)
        self.rank, self.world_size = rank, world_size
        t = config.training
        self.state = RunState(samples_per_step=t.batch_size * t.gradient_accumulation_steps * world_size)
        self.metric_key = f"eval_{t.metric_for_best_model.value}"
        self.greater_is_better = t.metric_for_best_model.greater_is_better
        self.loop: FastTrainer | None = None
        if config.task.value == "multi_label" and train is not None:
            # every rank holds every training row: each starts its head at the same priors (a resumed run's
            # checkpoint replaces them)
            init_head_bias(model, train.labels.cpu().numpy())

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    # -- training ----------------------------------------------------------------------------------------------
    def train(self, resume_from: Path | None = None) -> TrainSummary:
        start_state = read_state(resume_from) if resume_from is not None else None
        try:
            self.loop = loop = FastTrainer(
                self.model, self.train_data, self.settings, device=self.device, rank=self.rank,
                world_size=self.world_size,
            )  # fmt: skip
        except ValueError as exc:
            raise ConfigError(f"training.batch_size: {exc}") from exc
        start = 0
        if resume_from is not None:
            start = self._restore(resume_from, start_state)
        try:
            return self._train(loop, start)
        except RankOutOfMemory as exc:
            raise ConfigError(f"training.batch_size: {exc}") from exc

    def _train(self, loop: FastTrainer, start: int) -> TrainSummary:

        t = self.config.training
        state, lead = self.state, self.rank == 0
        state.max_steps = loop.total_steps
        eval_every = loop.steps_per_epoch if t.eval_strategy is EvalStrategy.EPOCH else t.eval_steps
        if lead:
            self._each("on_train_begin", state)
        running = torch.zeros((), device=self.device)
        interval_start, total_loss, samples = start, 0.0, 0
        started = time.perf_counter()
        for done in loop.steps(start):
            running += done.loss
            samples += done.samples
            state.step, state.epoch = done.step, done.epoch
            if self.world_size > 1 and not is_sync_point(
                done.step, loop.total_steps, t.logging_steps, eval_every
            ):
                continue  # the ranks decide together at sync points only: no collective per step
            control = Control(evaluate=is_eval_step(done.step, loop.total_steps, eval_every))
            control.save = control.evaluate
            log = is_log_step(done.step, loop.total_steps, t.logging_steps)
            if log and self.world_size > 1:
                mean_over_ranks(running, self.world_size)  # the loss of the whole batch, not this share
            if lead:
                self._each("on_step", state, control)
                if log and done.step > interval_start:
                    interval = float(running)
                    total_loss += interval
                    logs = {"loss": round(interval / (done.step - interval_start), 4),
                            "learning_rate": done.learning_rate, "epoch": done.epoch}  # fmt: skip
                    if loop.grad_norm is not None:
                        logs["grad_norm"] = float(loop.grad_norm)
                    self._log(logs, control)
                if log:
                    running.zero_()
                    interval_start = done.step
                if control.evaluate:
                    self._evaluate(control)
                if control.save:
                    self.save(loop)
            elif log:
                running.zero_()
                interval_start = done.step
            stop = control.stop
            if self.world_size > 1:
                stop = agree_to_stop(stop, self.device)
            if stop:
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total_loss += float(running)
        seconds = max(time.perf_counter() - started, 1e-9)
        steps_run = max(1, state.step - start)
        summary = TrainSummary(
            step=state.step,
            epoch=state.epoch,
            loss=total_loss / steps_run,
            runtime_seconds=round(seconds, 4),
            samples_per_second=round(samples / seconds, 3),
            steps_per_second=round(steps_run / seconds, 3),
        )
        if lead:
            self._log({"train_runtime": summary.runtime_seconds, "train_samples_per_second":
                       summary.samples_per_second, "train_steps_per_second": summary.steps_per_second,
                       "train_loss": summary.loss, "epoch": state.epoch}, Control())  # fmt: skip
            self._each("on_train_end", state)
        return summary

    def _each(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    def _log(self, logs: dict[str, float], control: Control) -> None:
        self.state.history.append({**logs, "step": self.state.step})
        self._each("on_log", self.state, control, logs)

    # -- evaluation --------------------------------------------------------------------------------------------
    def predict(self, data: DeviceData) -> tuple[np.ndarray, float]:
        """Logits for every row (row order) and the task's mean loss (``losses.evaluation_loss``): unweighted and
        never focal, whatever the training loss, so evaluation losses of runs compare."""

        s = self.settings
        logits = predict(self.model, data, self.config.training.eval_batch_size, s.bf16, fp16=s.fp16)
        self.model.train()
        return logits, evaluation_loss(s.task, logits, data.labels.cpu())

    def _evaluate(self, control: Control) -> None:
        logits, loss = self.predict(self.eval_data)
        scores = summary_metrics(
            logits,
            self.eval_data.labels.cpu().numpy(),
            self.settings.task,
            thresholds=evaluation_thresholds(self.config),
            scale=self.scale,
        )
        metrics = {"eval_loss": loss, **{f"eval_{key}": value for key, value in scores.items()}}
        self.state.history.append({**metrics, "epoch": self.state.epoch, "step": self.state.step})
        self._each("on_log", self.state, control, {**metrics, "epoch": self.state.epoch})
        self._each("on_evaluate", self.state, control, metrics)

    # -- checkpoints -------------------------------------------------------------------------------------------
    def save(self, loop: FastTrainer) -> Path:
        """This step as a checkpoint of ``FORMAT``, committed atomically, then retention."""

        step = self.state.step
        staged = self.staging_dir / f"{PREFIX}{step}"
        with staging_checkpoint(staged, self.checkpoints_dir):
            staged.mkdir(parents=True)
            self.model.save_pretrained(str(staged), safe_serialization=True)
            torch.save(loop.optimizer.state_dict(), staged / OPTIMIZER_FILE)
            if loop.scaler is not None:
                torch.save(loop.scaler.state_dict(), staged / SCALER_FILE)
            torch.save(rng_state(self.device), staged / RNG_FILE)
            write_atomic(staged / STATE_FILE, json.dumps({"format": FORMAT, **asdict(self.state)}, indent=1))
            meta = {"step": step, "epoch": self.state.epoch, "metric": self.state.latest(self.metric_key, step),
                    "metric_name": self.metric_key, "format": FORMAT}  # fmt: skip
            final = commit_staged(staged, self.checkpoints_dir, meta)
            apply_retention(
                self.checkpoints_dir, self.greater_is_better, self.config.checkpoints.fastest_tolerance
            )
        self._each("on_save", self.state, final)
        return final

    def _restore(self, checkpoint: Path, saved: dict[str, Any]) -> int:
        """Continue from ``checkpoint``: weights (rank 0; the others receive them), optimizer, scaler, RNG,
        history. Returns its step."""

        loop = self.loop
        set_peft_model_state_dict(self.model, load_peft_weights(str(checkpoint), device=str(self.device)))
        loop.optimizer.load_state_dict(_torch_load(checkpoint / OPTIMIZER_FILE, self.device))
        if loop.scaler is not None and (checkpoint / SCALER_FILE).is_file():
            loop.scaler.load_state_dict(_torch_load(checkpoint / SCALER_FILE))
        if (
            checkpoint / RNG_FILE
        ).is_file():  # the same dropout masks from here on as without the interruption
            restore_rng_state(_torch_load(checkpoint / RNG_FILE), self.device)
        self.state.history = list(saved.get("history", []))
        self.state.epoch = float(saved.get("epoch", 0.0))
        self.state.step = int(saved["step"])
        return self.state.step


def cpu_threads(device: Device, processes: int) -> None:
    """Processes sharing the CPU each take their share of its cores (else they fight over them)."""

    if device is Device.CPU and processes > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // processes))
