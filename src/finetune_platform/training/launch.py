"""Data-parallel runs under torch's elastic launcher (``torch.distributed.run``, what ``torchrun`` runs).

The process that set the run up (``finetune train`` or a worker) validated and tokenised the data and built the
model once. For ``training.devices: N`` it writes what the ranks need into the run's ``ranks/`` folder (the
config, the tokenised rows, the labels) and starts the elastic agent, which starts N rank processes. Every rank
runs the same ``Driver``; rank 0 evaluates, writes checkpoints and reports each scheduled point as a line of
``ranks/events.jsonl``. This process (``RemoteDriver``) replays those lines to its own callbacks (progress bar,
MLflow, the job row) and answers a stop request (cancel, preemption, time limit) by writing
``ranks/control.json``, which rank 0 reads at its next sync point. When the ranks are done it loads the last
checkpoint's weights, so evaluation and registration go on as after a one-process run.

The same rank entry point serves several machines: on each further node,

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:PORT --rdzv-id RUN_ID \\
        -m finetune_platform.training.launch RUN_FOLDER/ranks

with the run folder on storage all nodes share (``finetune train --nnodes 2 --rdzv-endpoint HOST:PORT`` on the
first node prints this command).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from finetune_platform.atomic import write_atomic
from finetune_platform.errors import ConfigError, PlatformError
from finetune_platform.supervisor import die_with_parent
from finetune_platform.training.callbacks import Callback, Control, RunState
from finetune_platform.training.config import Device, Precision, config_from_dict
from finetune_platform.training.guards import CheckpointSaveError, NonFiniteLoss, TrainingStopped

logger = logging.getLogger("finetune_platform.training")

LAUNCH_FILE = "launch.json"
EVENTS_FILE = "events.jsonl"
CONTROL_FILE = "control.json"
TRAIN_DATA, EVAL_DATA = "train.npz", "eval.npz"
AGENT_LOG = "agent.log"
POLL_SECONDS = 0.2
_ERRORS: dict[str, type[PlatformError]] = {
    "NonFiniteLoss": NonFiniteLoss,
    "CheckpointSaveError": CheckpointSaveError,
    "ConfigError": ConfigError,
    "TrainingStopped": TrainingStopped,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def agent_command(folder: Path, processes: int, *, nnodes: int = 1, endpoint: str | None = None,
                  run_id: str = "run") -> list[str]:  # fmt: skip
    """The elastic agent's command line: one node on a private port, or one of ``nnodes`` meeting at
    ``endpoint`` (host:port)."""
    if nnodes == 1 and endpoint is None:
        endpoint = f"127.0.0.1:{free_port()}"
    return [
        sys.executable, "-m", "finetune_platform.training.launch", "agent",  # torch.distributed.run, tied to us
        "--nnodes", str(nnodes), "--nproc-per-node", str(processes),
        "--rdzv-backend", "c10d", "--rdzv-endpoint", str(endpoint), "--rdzv-id", run_id,
        "--max-restarts", "0", "--monitor-interval", "0.5",
        "-m", "finetune_platform.training.launch", str(folder),
    ]  # fmt: skip


def join_command(folder: Path, processes: int, nnodes: int, endpoint: str, run_id: str) -> str:
    """What a further node of a multi-node run runs (torchrun is ``python -m torch.distributed.run``)."""
    return (
        f"torchrun --nnodes {nnodes} --nproc-per-node {processes} --rdzv-backend c10d --rdzv-endpoint {endpoint} "
        f"--rdzv-id {run_id} -m finetune_platform.training.launch {folder.resolve()}"
    )


class RemoteDriver:
    """The driver's face in the process that set a data-parallel run up: ``train`` runs the ranks and replays
    rank 0's reports to ``callbacks``; ``predict`` evaluates here once they are done."""

    def __init__(self, model: Any, train: Any, evaluation: Any, config: Any, run: Any, recipe_state: Any,
                 tokenizer: Any, callbacks: list[Callback]) -> None:  # fmt: skip
        # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
        from finetune_platform.training.driver import loop_settings

        self.model, self.train_data, self.eval_data = model, train, evaluation
        self.config, self.run, self.recipe_state, self.tokenizer = config, run, recipe_state, tokenizer
        self.callbacks: list[Callback] = list(callbacks)
        self.settings = loop_settings(config, recipe_state.precision, recipe_state.class_weights)
        t = config.training
        self.state = RunState(samples_per_step=t.batch_size * t.gradient_accumulation_steps * t.processes)
        self.folder = run.root / "ranks"

    def add_callback(self, callback: Callback) -> None:
        self.callbacks.append(callback)

    def predict(self, data: Any) -> Any:
        # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
        from finetune_platform.training.fast_gpu import predict
        from finetune_platform.training.losses import evaluation_loss

        s = self.settings
        logits = predict(self.model, data, self.config.training.eval_batch_size, s.bf16, fp16=s.fp16)
        return logits, evaluation_loss(s.task, logits, data.labels.cpu())

    # -- the ranks ----------------------------------------------------------------------------------------------
    def _prepare(self, resume_from: Path | None) -> None:
        # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
        from finetune_platform.training.fast_gpu import save_data

        self.folder.mkdir(exist_ok=True)
        for name in (EVENTS_FILE, CONTROL_FILE):
            (self.folder / name).unlink(missing_ok=True)
        save_data(self.train_data, self.folder / TRAIN_DATA)
        save_data(self.eval_data, self.folder / EVAL_DATA)
        launch = {
            "config": self.config.to_yaml_dict(),
            "device": self.recipe_state.device.value,
            "precision": self.recipe_state.precision.value,
            "checkpoint": str(resume_from) if resume_from else None,
            "labels": list(self.recipe_state.splits.label_map.names),
            "label_map": self.recipe_state.splits.label_map.to_json(),  # the task, its outputs and target scale
            "class_weights": self.recipe_state.class_weights,
            "pad_token_id": self.tokenizer.pad_token_id,
            "checkpoints_dir": str(self.run.checkpoints_dir),
            "staging_dir": str(self.run.staging_dir),
        }
        write_atomic(self.folder / LAUNCH_FILE, json.dumps(launch, indent=2))

    def train(self, resume_from: Path | None = None) -> Any:
        # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
        from finetune_platform.training.driver import TrainSummary

        t = self.config.training
        self._prepare(resume_from)
        command = agent_command(
            self.folder, t.devices, nnodes=t.nodes, endpoint=t.rendezvous, run_id=self.run.run_id
        )
        logger.info(
            "data parallel over %d processes under torch's elastic launcher (%s)", t.processes, self.folder
        )
        if t.nodes > 1:
            logger.warning(
                "waiting for %d more node(s) at %s; on each, run: %s",
                t.nodes - 1, t.rendezvous, join_command(self.folder, t.devices, t.nodes, t.rendezvous, self.run.run_id),
            )  # fmt: skip
        log = (self.folder / AGENT_LOG).open("w", encoding="utf-8")
        try:
            # A session of its own: a Ctrl-C in the terminal reaches this process, which ends the ranks itself.
            agent = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
        finally:
            log.close()
        try:
            end = self._relay(agent)
        except BaseException:
            self._stop(agent)
            raise
        finally:
            for name in (TRAIN_DATA, EVAL_DATA):
                (self.folder / name).unlink(missing_ok=True)
        self._load_last_weights()
        return TrainSummary(**end["summary"])

    def _relay(self, agent: subprocess.Popen) -> dict[str, Any]:
        """Replay rank 0's events until the agent exits; returns the end event."""
        events = self.folder / EVENTS_FILE
        offset, end, error = 0, None, None
        while True:
            exited = agent.poll() is not None
            if events.is_file():
                with events.open("rb") as handle:
                    handle.seek(offset)
                    chunk = handle.read()
                complete = chunk[: chunk.rfind(b"\n") + 1]
                offset += len(complete)
                for line in complete.splitlines():
                    event = json.loads(line)
                    if event["event"] == "end":
                        end = event
                    elif event["event"] == "error":
                        error = event
                    else:
                        self._replay(event)
            if exited:
                break
            time.sleep(POLL_SECONDS)
        if error is not None:
            raise _ERRORS.get(error["type"], RuntimeError)(error["message"])
        if agent.returncode != 0 or end is None:
            raise TrainingStopped(
                f"data-parallel training failed (exit {agent.returncode}): {self._log_tail()}"
            )
        self.state.step, self.state.epoch = end["state"]["step"], end["state"]["epoch"]
        for callback in self.callbacks:
            callback.on_train_end(self.state)
        if end.get("stop_error"):  # a guard on rank 0 ended training (diverged loss)
            stop = end["stop_error"]
            raise _ERRORS.get(stop["type"], TrainingStopped)(stop["message"])
        return end

    def _replay(self, event: dict[str, Any]) -> bool:
        """One event to the callbacks; True when they asked to stop (written for rank 0 to read)."""
        state = self.state
        for key in ("step", "max_steps", "epoch"):
            if key in event.get("state", {}):
                setattr(state, key, event["state"][key])
        kind, control = event["event"], Control()
        if kind == "begin":
            state.history = list(event.get("history", []))
            for callback in self.callbacks:
                callback.on_train_begin(state)
        elif kind == "step":
            for callback in self.callbacks:
                callback.on_step(state, control)
        elif kind == "log":
            state.history.append({**event["logs"], "step": state.step})
            for callback in self.callbacks:
                callback.on_log(state, control, event["logs"])
        elif kind == "evaluate":
            for callback in self.callbacks:
                callback.on_evaluate(state, control, event["metrics"])
        elif kind == "save":
            for callback in self.callbacks:
                callback.on_save(state, Path(event["checkpoint"]))
        if control.stop:
            write_atomic(self.folder / CONTROL_FILE, json.dumps({"stop": True, "save": control.save}))
        return control.stop

    def _stop(self, agent: subprocess.Popen) -> None:
        """End the ranks now (this process is failing or was interrupted)."""
        if agent.poll() is None:
            try:
                os.killpg(agent.pid, 15)
                agent.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                os.killpg(agent.pid, 9)
            agent.wait()

    def _log_tail(self) -> str:
        path = self.folder / AGENT_LOG
        lines = (
            path.read_text(encoding="utf-8", errors="replace").strip().splitlines() if path.is_file() else []
        )
        useful = [line for line in lines if "Traceback" not in line][-6:]
        return " | ".join(useful) or "no output"

    def _load_last_weights(self) -> None:
        """The weights rank 0 ended with (its last checkpoint) into this process's model."""
        # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
        from peft import set_peft_model_state_dict
        from peft.utils import load_peft_weights

        from finetune_platform.training.checkpoints import newest_checkpoint

        newest = newest_checkpoint(self.run.checkpoints_dir)
        if newest is not None:
            device = str(next(self.model.parameters()).device)
            set_peft_model_state_dict(self.model, load_peft_weights(str(newest.path), device=device))


class Relay(Callback):
    """Rank 0's reports, one JSON line each, for the process that launched the ranks; and its stop requests."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.events = (folder / EVENTS_FILE).open("a", encoding="utf-8")

    def write(self, kind: str, state: RunState, **fields: Any) -> None:
        where = {"step": state.step, "max_steps": state.max_steps, "epoch": state.epoch}
        self.events.write(json.dumps({"event": kind, "state": where, **fields}) + "\n")
        self.events.flush()

    def on_train_begin(self, state: RunState) -> None:
        self.write("begin", state, history=state.history)  # a resumed run's history so far

    def on_step(self, state: RunState, control: Control) -> None:
        self.write("step", state)
        path = self.folder / CONTROL_FILE
        if path.is_file():
            asked = json.loads(path.read_text(encoding="utf-8"))
            control.halt(save=bool(asked.get("save")))

    def on_log(self, state: RunState, control: Control, logs: dict[str, float]) -> None:
        self.write("log", state, logs=logs)

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        self.write("evaluate", state, metrics=metrics)

    def on_save(self, state: RunState, checkpoint: Path) -> None:
        self.write("save", state, checkpoint=str(checkpoint))


def _error_event(exc: BaseException) -> dict[str, Any]:
    name = type(exc).__name__ if type(exc).__name__ in _ERRORS else "RuntimeError"
    return {"type": name, "message": str(exc) if name != "RuntimeError" else f"{type(exc).__name__}: {exc}"}


def _class_weights(launch: dict[str, Any]) -> tuple[float, ...] | None:
    """The weights the launching process resolved from the whole training split (every rank the same)."""
    weights = launch.get("class_weights")
    return None if weights is None else tuple(float(w) for w in weights)


def run_rank(folder: Path) -> None:
    """One rank under the elastic agent (RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous from its environment)."""
    # lazy: the agent shim execs torchrun without loading torch; ranks load the driver
    import torch
    import torch.distributed as dist

    from finetune_platform.catalogue import resolve_base_model
    from finetune_platform.data.loading import LabelMap
    from finetune_platform.training.callbacks import stop_error_of, training_guards
    from finetune_platform.training.driver import RANK_TIMEOUT, Driver, cpu_threads, torch_device
    from finetune_platform.training.fast_gpu import load_data
    from finetune_platform.training.models import build_model, quiet_libraries

    die_with_parent(
        signal.SIGKILL
    )  # the agent went (killed with its command): nothing of this rank is worth keeping
    if os.getppid() == 1:  # it went before the line above ran
        os._exit(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    launch = json.loads((folder / LAUNCH_FILE).read_text(encoding="utf-8"))
    config = config_from_dict(launch["config"])
    kind, precision = Device(launch["device"]), Precision(launch["precision"])
    relay = Relay(folder) if rank == 0 else None
    try:
        quiet_libraries()
        # lazy: transformers loads only where a model runs
        from transformers import set_seed

        set_seed(config.training.seed)
        reference = resolve_base_model(config.model.base_model, config.model.language)
        state = SimpleNamespace(model=reference)  # what build_model reads; it records what it built there
        label_map = LabelMap.from_json(launch["label_map"])
        device = torch_device(kind, local_rank)  # first: a 4-bit base loads onto this rank's GPU
        model = build_model(config, state, label_map, pad_token_id=launch["pad_token_id"])
        cpu_threads(kind, local_world)
        model = model.to(device)
        train = load_data(folder / TRAIN_DATA, device)
        evaluation = load_data(folder / EVAL_DATA, device) if rank == 0 else None
        dist.init_process_group("nccl" if kind is Device.CUDA else "gloo", timeout=RANK_TIMEOUT)
        checkpoints = Path(launch["checkpoints_dir"])
        callbacks = [*training_guards(config, checkpoints), relay] if relay is not None else []
        driver = Driver(model, train, evaluation, config, checkpoints_dir=checkpoints,
                        staging_dir=Path(launch["staging_dir"]), device=device, precision=precision,
                        callbacks=callbacks, rank=rank, world_size=world,
                        class_weights=_class_weights(launch), scale=label_map.scale)  # fmt: skip
        checkpoint = launch["checkpoint"]
        summary = driver.train(Path(checkpoint) if checkpoint else None)
        if relay is not None:
            stop = stop_error_of(callbacks)
            relay.write("end", driver.state, summary=vars(summary),
                        stop_error=_error_event(stop) if stop is not None else None)  # fmt: skip
    except BaseException as exc:
        if relay is not None:
            relay.write("error", RunState(), **_error_event(exc))
        raise
    logging.getLogger().info("rank %d finished at step %d", rank, driver.state.step)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    # Nothing is left to save, and tearing down the process group can deadlock (gloo's destructor holds the GIL
    # while waiting for its own thread, which needs it): leave without running destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def exec_agent(arguments: list[str]) -> None:
    """Become torch's elastic agent (``python -m torch.distributed.run ARGUMENTS``), first asking the kernel for a
    SIGTERM when the process that started us dies: the agent then ends its ranks."""
    parent = os.getppid()
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above ran
        sys.exit(1)
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *arguments])


if __name__ == "__main__" and sys.argv[1:2] == ["agent"]:
    exec_agent(sys.argv[2:])
elif __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s rank " + os.environ.get("RANK", "?") + " %(message)s"
    )
    run_rank(Path(sys.argv[1]))
