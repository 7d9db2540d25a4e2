"""``training.engine: fast``: the recipe's trainer built on the fast path (``fast_gpu``), with everything the HF
Trainer path gives a run: the same callbacks (progress bar, MLflow, job progress and stop requests, early
stopping, the non-finite-loss guard), evaluations, atomic checkpoints with best/last/fastest retention, resume,
and data-parallel training over ``training.devices`` processes.

Data parallel: this process is rank 0 and does everything a single-process run does; ranks 1..N-1 are child
processes (``python -m finetune_platform.training.fast_engine``) that rebuild the same data and model from the
run folder, train their share of every batch and leave the rest to rank 0. Ranks agree on stopping at
"sync points" (logging and evaluation steps), so a stop request takes effect within ``logging_steps`` steps
and no step waits for the host.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from finetune_platform.atomic import write_atomic
from finetune_platform.errors import ConfigError
from finetune_platform.training.checkpoints import PREFIX, apply_retention, commit_staged
from finetune_platform.training.config import (
    Device,
    EvalStrategy,
    Precision,
    TrainConfig,
    config_from_dict,
)
from finetune_platform.training.fast_gpu import (
    FastSettings,
    FastTrainer,
    RankOutOfMemory,
    load_data,
    predict,
    save_data,
    to_device,
)
from finetune_platform.training.guards import TrainingStopped, staging_checkpoint

logger = logging.getLogger("finetune_platform.training")

OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "trainer_state.json"
LAUNCH_FILE = "launch.json"
RNG_FILE = "rng_state.pth"
DATA_FILE = "train.npz"
RANK_TIMEOUT = timedelta(minutes=5)  # how long a rank waits for the others in one collective


@dataclass(frozen=True)
class EngineArguments:
    """What the callbacks read from ``args`` (the Trainer's TrainingArguments has the same fields)."""

    output_dir: str
    train_batch_size: int  # rows per micro-batch, over all processes
    gradient_accumulation_steps: int
    logging_steps: int


def fast_settings(config: TrainConfig, precision: Precision) -> FastSettings:
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
        bf16=precision is Precision.BF16,
        log_every=t.logging_steps,
        compile=None if t.compile == "none" else t.compile,
    )


def check_rows(config: TrainConfig, rows: int) -> None:
    """Data-parallel and compiled runs train on full batches only: there must be at least one."""
    t = config.training
    global_batch = t.batch_size * t.gradient_accumulation_steps * t.devices
    if (t.devices > 1 or t.compile != "none") and rows < global_batch:
        raise ConfigError(
            f"training.batch_size: {rows} training rows make no full batch of {t.batch_size} rows × "
            f"{t.gradient_accumulation_steps} accumulation steps × {t.devices} devices; lower training.batch_size"
        )


def torch_device(device: Device, rank: int = 0) -> Any:
    import torch

    if device is Device.CUDA:
        torch.cuda.set_device(rank)
        return torch.device("cuda", rank)
    return torch.device(device.value)


def check_devices(config: TrainConfig, device: Device) -> None:
    wanted = config.training.devices
    if wanted == 1:
        return
    if device is Device.MPS:
        raise ConfigError(f"training.devices: {wanted} processes need CUDA GPUs (or the CPU); MPS runs one")
    if device is Device.CUDA:
        import torch

        visible = torch.cuda.device_count()
        if visible < wanted:
            raise ConfigError(
                f"training.devices: {wanted} GPUs requested but {visible} CUDA device(s) visible "
                "(check CUDA_VISIBLE_DEVICES)"
            )


class _Ranks:
    """Ranks 1..N-1 as child processes, and rank 0's membership of their process group."""

    def __init__(self, run_root: Path, launch: dict[str, Any], world_size: int, device: Device) -> None:
        self.folder = run_root / "ranks"
        self.folder.mkdir(exist_ok=True)
        self.world_size, self.device = world_size, device
        with socket.socket() as probe:  # a free port for the rendezvous
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        launch = {**launch, "port": self.port, "world_size": world_size}
        write_atomic(self.folder / LAUNCH_FILE, json.dumps(launch, indent=2))
        self.children: list[tuple[int, subprocess.Popen, Path]] = []
        try:
            for rank in range(1, world_size):
                self.children.append(self._spawn(rank))
            logger.info(
                "data parallel over %d processes (ranks 1..%d: %s)", world_size, world_size - 1, self.folder
            )
            self._rendezvous()
        except BaseException:
            self.close(failed=True)
            raise

    def _spawn(self, rank: int) -> tuple[int, subprocess.Popen, Path]:
        log = self.folder / f"rank{rank}.log"
        with log.open("w", encoding="utf-8") as handle:
            process = subprocess.Popen(
                [sys.executable, "-m", "finetune_platform.training.fast_engine", str(self.folder), str(rank)],
                stdout=handle,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return rank, process, log

    def _rendezvous(self) -> None:
        """Join the group while watching the ranks: one that dies while loading fails the run now, with its log,
        instead of after the rendezvous timeout."""
        joined: list[BaseException | None] = []

        def join() -> None:
            try:
                join_group(0, self.world_size, self.port, self.device)
                joined.append(None)
            except BaseException as exc:  # handed to the main thread
                joined.append(exc)

        thread = threading.Thread(target=join, name="rank0-rendezvous", daemon=True)
        thread.start()
        while thread.is_alive():
            self.check()
            thread.join(timeout=0.5)
        if joined and joined[0] is not None:
            self.check()  # a dead rank explains a failed rendezvous better than the store's timeout
            raise joined[0]

    def check(self) -> None:
        """Raise (with the end of its log) if a rank has died."""
        for rank, process, log in self.children:
            code = process.poll()
            if code not in (None, 0):
                tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
                raise TrainingStopped(f"data-parallel rank {rank} failed (exit {code}): " + " | ".join(tail))

    def close(self, failed: bool) -> None:
        """End the ranks (waiting for them after a successful run), leave the group, remove the shared rows."""
        import torch.distributed as dist

        try:
            if not failed:
                self.check()  # a rank that failed before the end is an error even though rank 0 finished
                for rank, process, _ in self.children:
                    try:
                        process.wait(timeout=60)
                    except subprocess.TimeoutExpired:  # training is over: its exit no longer matters
                        logger.warning(
                            "data-parallel rank %d did not exit 60 s after training; ended it", rank
                        )
        finally:
            for _, process, _ in self.children:  # the others may wait in a collective that will never come
                if process.poll() is None:
                    process.kill()
                process.wait()
            try:
                if dist.is_initialized():
                    dist.destroy_process_group()
            finally:
                (self.folder / DATA_FILE).unlink(missing_ok=True)


def join_group(rank: int, world_size: int, port: int, device: Device) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "nccl" if device is Device.CUDA else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=RANK_TIMEOUT,
    )


def agree_to_stop(stop: bool, device: Any) -> bool:
    """Rank 0's decision, known to every rank (one small broadcast and host read per sync point)."""
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if stop else 0], device=device)
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def is_log_step(step: int, total: int, logging_steps: int) -> bool:
    return step % logging_steps == 0 or step == total


def is_eval_step(step: int, total: int, eval_every: int) -> bool:
    """Evaluate (and checkpoint) here; the last step always."""
    return step % eval_every == 0 or step == total


def is_sync_point(step: int, total: int, logging_steps: int, eval_every: int) -> bool:
    """Where the ranks agree on stopping: every logging and evaluation step."""
    return is_log_step(step, total, logging_steps) or is_eval_step(step, total, eval_every)


def eval_interval(trainer: FastTrainer, training: Any) -> int:
    return trainer.steps_per_epoch if training.eval_strategy is EvalStrategy.EPOCH else training.eval_steps


def load_optimizer(trainer: FastTrainer, checkpoint: Path) -> None:
    import torch

    state = torch.load(checkpoint / OPTIMIZER_FILE, map_location=trainer.device)
    trainer.optimizer.load_state_dict(state)


def mean_over_ranks(value: Any, world_size: int) -> None:
    """In place: the mean of ``value`` over all ranks (every rank calls it at the same steps)."""
    import torch.distributed as dist

    dist.all_reduce(value)
    value /= world_size


class FastEngine:
    """A Trainer-shaped front of ``FastTrainer``: what the recipe and the runner use of the HF Trainer
    (``train``, ``predict``, ``add_callback``, ``state``, ``model``, ``eval_dataset``, ``callback_handler``)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        splits: Any,
        config: TrainConfig,
        run: Any,
        device: Device,
        precision: Precision,
        callbacks: list[Any],
    ) -> None:
        from transformers import TrainerControl, TrainerState
        from transformers.trainer_callback import CallbackHandler

        check_devices(config, device)
        if precision is Precision.FP16:
            raise ConfigError("training.engine 'fast' trains in bf16 or fp32; set precision: bf16 or fp32")
        self.config, self.run, self.device_kind = config, run, device
        self.device = torch_device(device)
        self.settings = fast_settings(config, precision)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        self.label_names = splits.label_map.names
        max_length = config.model.max_length
        self.train_dataset = _encode(tokenizer, splits.train, max_length, self.device)
        check_rows(config, len(self.train_dataset))
        self.eval_dataset = _encode(tokenizer, splits.validation, max_length, self.device)
        t = config.training
        world = t.devices
        self.args = EngineArguments(str(run.staging_dir), t.batch_size * world, t.gradient_accumulation_steps,
                                    t.logging_steps)  # fmt: skip
        self.state = TrainerState()
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler(callbacks, model, tokenizer, None, None)
        self.greater_is_better = t.metric_for_best_model.greater_is_better
        self.metric_key = f"eval_{t.metric_for_best_model.value}"

    # -- the Trainer's surface -----------------------------------------------------------------------
    def add_callback(self, callback: Any) -> None:
        self.callback_handler.add_callback(callback)

    def predict(self, dataset: Any, metric_key_prefix: str = "test") -> Any:
        from transformers.trainer_utils import PredictionOutput

        logits, loss = self._logits_and_loss(dataset)
        labels = dataset.labels.cpu().numpy()
        return PredictionOutput(
            predictions=logits, label_ids=labels, metrics={f"{metric_key_prefix}_loss": loss}
        )

    def train(self, resume_from_checkpoint: str | None = None) -> Any:
        from transformers.trainer_utils import TrainOutput

        t = self.config.training
        start_step = self._load_state(Path(resume_from_checkpoint)) if resume_from_checkpoint else 0
        ranks = None
        threads = cpu_threads(self.device_kind, t.devices)
        failed = True
        try:
            if t.devices > 1:
                ranks = _Ranks(
                    self.run.root, self._launch(resume_from_checkpoint), t.devices, self.device_kind
                )
            try:
                output = self._train(start_step, resume_from_checkpoint, ranks)
            except RankOutOfMemory as exc:
                raise ConfigError(f"training.batch_size: {exc}") from exc
            failed = False
            return TrainOutput(*output)
        finally:
            if ranks is not None:
                ranks.close(failed)
            if threads is not None:
                import torch

                torch.set_num_threads(threads)

    # -- the loop ------------------------------------------------------------------------------------
    def _train(
        self, start_step: int, checkpoint: str | None, ranks: _Ranks | None
    ) -> tuple[int, float, dict]:
        import torch

        t = self.config.training
        world = t.devices
        trainer = FastTrainer(self.model, self.train_dataset, self.settings, device=self.device, rank=0,
                              world_size=world)  # fmt: skip
        if checkpoint:
            load_optimizer(trainer, Path(checkpoint))
        state, control, handler, args = self.state, self.control, self.callback_handler, self.args
        handler.optimizer = trainer.optimizer
        state.max_steps, state.logging_steps = trainer.total_steps, t.logging_steps
        state.num_train_epochs = math.ceil(trainer.total_steps / trainer.steps_per_epoch)
        state.train_batch_size = t.batch_size
        eval_every = eval_interval(trainer, t)
        handler.on_train_begin(args, state, control)
        running = torch.zeros((), device=self.device)
        interval_start, total_loss, samples = state.global_step, 0.0, 0
        started = time.perf_counter()
        for done in trainer.steps(start_step):
            running += done.loss
            samples += done.samples
            state.global_step, state.epoch = done.step, done.epoch
            sync = is_sync_point(done.step, trainer.total_steps, t.logging_steps, eval_every)
            if world > 1 and not sync:
                continue  # decisions wait for the next sync point: no host round trip per step
            control.should_log = is_log_step(done.step, trainer.total_steps, t.logging_steps)
            if ranks is not None and control.should_log:
                mean_over_ranks(running, world)  # the loss of the whole batch, not of rank 0's share
            control.should_evaluate = control.should_save = is_eval_step(
                done.step, trainer.total_steps, eval_every
            )
            control = handler.on_step_end(args, state, control)
            if control.should_log and done.step > interval_start:
                loss = float(running) / (done.step - interval_start)
                total_loss += float(running)
                running.zero_()
                interval_start = done.step
                self._log({"loss": round(loss, 4), "learning_rate": done.learning_rate, "epoch": done.epoch})
            if control.should_evaluate:
                self._evaluate()
            if control.should_save:
                self._save(trainer)
            stop = control.should_training_stop
            if ranks is not None:
                ranks.check()
                stop = agree_to_stop(stop, self.device)
            if stop:
                break
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        total_loss += float(running)
        seconds = time.perf_counter() - started
        steps_run = max(1, state.global_step - start_step)
        metrics = {
            "train_runtime": round(seconds, 4),
            "train_samples_per_second": round(samples / seconds, 3),
            "train_steps_per_second": round(steps_run / seconds, 3),
            "train_loss": total_loss / steps_run,
            "epoch": state.epoch,
        }
        self._log(metrics)
        handler.on_train_end(args, state, control)
        return state.global_step, metrics["train_loss"], metrics

    def _log(self, logs: dict[str, float]) -> None:
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def _logits_and_loss(self, dataset: Any) -> tuple[np.ndarray, float]:
        import torch

        logits = predict(self.model, dataset, self.config.training.eval_batch_size, self.settings.bf16)
        self.model.train()
        labels = dataset.labels.cpu()
        loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), labels))
        return logits, loss

    def _evaluate(self) -> None:
        from finetune_platform.training.metrics import summary_metrics

        logits, loss = self._logits_and_loss(self.eval_dataset)
        scores = summary_metrics(logits, self.eval_dataset.labels.cpu().numpy())
        metrics = {"eval_loss": loss, **{f"eval_{key}": value for key, value in scores.items()}}
        self._log({**metrics, "epoch": self.state.epoch})
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save(self, trainer: FastTrainer) -> None:
        import torch

        step = self.state.global_step
        staged = self.run.staging_dir / f"{PREFIX}{step}"
        metric = next(
            (e[self.metric_key] for e in reversed(self.state.log_history)
             if e.get("step") == step and self.metric_key in e),
            None,
        )  # fmt: skip
        with staging_checkpoint(staged, self.run.checkpoints_dir):
            staged.mkdir(parents=True)
            self.model.save_pretrained(str(staged), safe_serialization=True)
            torch.save(trainer.optimizer.state_dict(), staged / OPTIMIZER_FILE)
            torch.save(rng_state(self.device), staged / RNG_FILE)
            self.state.save_to_json(str(staged / STATE_FILE))
            meta = {"step": step, "epoch": self.state.epoch, "metric": metric, "metric_name": self.metric_key,
                    "engine": "fast"}  # fmt: skip
            commit_staged(staged, self.run.checkpoints_dir, meta)
            apply_retention(
                self.run.checkpoints_dir, self.greater_is_better, self.config.checkpoints.fastest_tolerance
            )
        self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _load_state(self, checkpoint: Path) -> int:
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights
        from transformers import TrainerState

        if not (checkpoint / OPTIMIZER_FILE).is_file() or not (checkpoint / STATE_FILE).is_file():
            raise ConfigError(
                f"{checkpoint.name} is not a checkpoint of the fast engine (no {OPTIMIZER_FILE})"
            )
        set_peft_model_state_dict(self.model, load_peft_weights(str(checkpoint), device=str(self.device)))
        self.state = TrainerState.load_from_json(str(checkpoint / STATE_FILE))
        if (
            checkpoint / RNG_FILE
        ).is_file():  # the same dropout masks from here on as without the interruption
            restore_rng_state(torch_load(checkpoint / RNG_FILE), self.device)
        return self.state.global_step

    def _launch(self, checkpoint: str | None) -> dict[str, Any]:
        """What ranks 1..N-1 start from; the training rows go as tokenised arrays (no second validation)."""
        folder = self.run.root / "ranks"
        folder.mkdir(exist_ok=True)
        save_data(self.train_dataset, folder / DATA_FILE)
        return {
            "config": self.config.to_yaml_dict(),
            "device": self.device_kind.value,
            "precision": "bf16" if self.settings.bf16 else "fp32",
            "checkpoint": checkpoint,
            "labels": list(self.label_names),
            "pad_token_id": self.tokenizer.pad_token_id,
        }


def rng_state(device: Any) -> dict[str, Any]:
    import torch

    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_rng_state(state: dict[str, Any], device: Any) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def cpu_threads(device: Device, world_size: int) -> int | None:
    """Processes sharing the CPU each take their share of its cores (else they fight over them); returns the
    thread count to restore afterwards, or None when nothing changed."""
    import torch

    if device is not Device.CPU or world_size == 1:
        return None
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    return before


def _encode(tokenizer: Any, frame: Any, max_length: int, device: Any) -> Any:
    return to_device(tokenizer, frame["text"].tolist(), frame["label_id"].tolist(), max_length, device)


# -- ranks 1..N-1 ----------------------------------------------------------------------------------------
def run_rank(folder: Path, rank: int) -> None:
    """One data-parallel rank other than 0: the same data, model and steps; rank 0 decides when to stop."""
    import torch

    from finetune_platform.catalogue import resolve_base_model
    from finetune_platform.data.loading import LabelMap
    from finetune_platform.training.recipe import RecipeState, build_model, quiet_libraries

    # Rank 0 owns the run: a Ctrl-C or a worker's SIGTERM is its to handle (it ends the ranks when it stops); a
    # rank that died on its own would leave rank 0 waiting in a collective instead of saving a checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    launch = json.loads((folder / LAUNCH_FILE).read_text(encoding="utf-8"))
    config = config_from_dict(launch["config"])
    device_kind, world = Device(launch["device"]), int(launch["world_size"])
    quiet_libraries()
    from transformers import set_seed

    reference = resolve_base_model(config.model.base_model, config.model.language)
    set_seed(config.training.seed)
    state = RecipeState(
        device=device_kind, precision=Precision(launch["precision"]), model=reference, splits=None
    )
    labels = launch["labels"]
    model = build_model(config, state, LabelMap(tuple(labels), tuple(range(len(labels)))))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = launch["pad_token_id"]
    cpu_threads(device_kind, world)
    device = torch_device(device_kind, rank)
    model = model.to(device)
    train = load_data(folder / DATA_FILE, device)  # rank 0's validated, tokenised rows: the same batches
    settings = fast_settings(config, state.precision)
    join_group(rank, world, int(launch["port"]), device_kind)
    trainer = FastTrainer(model, train, settings, device=device, rank=rank, world_size=world)
    start = 0
    if launch["checkpoint"]:
        from transformers import TrainerState

        checkpoint = Path(launch["checkpoint"])
        load_optimizer(trainer, checkpoint)
        start = TrainerState.load_from_json(str(checkpoint / STATE_FILE)).global_step
    t = config.training
    eval_every = eval_interval(trainer, t)
    running = torch.zeros((), device=device)
    for done in trainer.steps(start):
        running += done.loss
        if not is_sync_point(done.step, trainer.total_steps, t.logging_steps, eval_every):
            continue
        if is_log_step(done.step, trainer.total_steps, t.logging_steps):  # matches rank 0's logging
            mean_over_ranks(running, world)
            running.zero_()
        if agree_to_stop(False, device):
            break
    logging.getLogger().info("rank %d finished at step %d", rank, trainer.total_steps)
    # Nothing is left to save here, and tearing down the process group can deadlock (gloo's destructor holds the GIL
    # while waiting for its own thread, which needs it): leave without running destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank " + sys.argv[2] + " %(message)s")
    run_rank(Path(sys.argv[1]), int(sys.argv[2]))
