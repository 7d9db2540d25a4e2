"""What a running job listens to: a cancel, a worker shutdown, a lost lease, its time limit; and what it
reports back."""

from __future__ import annotations

import logging
import threading
import time
from enum import StrEnum
from typing import Any

from finetune_platform.db.session import session_scope
from finetune_platform.services.jobs import renew_lease
from finetune_platform.settings import Settings
from finetune_platform.training.callbacks import Callback, Control, RunState
from finetune_platform.training.guards import TrainingStopped, kept_checkpoint

logger = logging.getLogger("finetune_platform.worker")


class StopKind(StrEnum):
    CANCEL = "cancel"
    PREEMPT = "preempt"  # the worker is shutting down (SIGTERM): checkpoint, hand the job back
    LEASE_LOST = "lease_lost"  # another worker may own the job now: stop without writing anything
    TIME_LIMIT = "time_limit"  # the job ran its hours (JOB_MAX_HOURS): checkpoint, fail it for good


class JobCancelled(TrainingStopped):
    pass


class JobPreempted(TrainingStopped):
    retryable = True


class LeaseLost(TrainingStopped):
    pass


class JobTimeLimit(TrainingStopped):
    """Not retryable: another attempt would only run longer. A retry (by hand) resumes from the checkpoint
    saved at the stop once an admin has raised the account's max_job_hours."""


class JobControl:
    """Stop requests from other threads (heartbeat, signal handler), read by the training loop; and the job's
    clock: seconds run by earlier attempts plus this one, against ``limit_seconds`` (None: no limit)."""

    def __init__(
        self, *, used_seconds: float = 0.0, limit_seconds: float | None = None, limit_reason: str = ""
    ) -> None:
        self._lock = threading.Lock()
        self.kind: StopKind | None = None
        self.reason = ""
        self._started = time.monotonic()
        self.used_seconds, self.limit_seconds, self.limit_reason = used_seconds, limit_seconds, limit_reason

    def run_seconds(self) -> float:
        """Seconds the job has run, over all its attempts so far."""
        return self.used_seconds + time.monotonic() - self._started

    def check_time(self) -> None:
        """Ask the job to stop once it has run its time (checked at every step and stage)."""
        if self.kind is None and self.limit_seconds is not None and self.run_seconds() >= self.limit_seconds:
            self.request_stop(StopKind.TIME_LIMIT, self.limit_reason)

    def request_stop(self, kind: StopKind, reason: str) -> None:
        with self._lock:
            # A lost lease outranks everything: nothing may be written once another worker may own the job.
            if self.kind is None or kind is StopKind.LEASE_LOST:
                self.kind, self.reason = kind, reason

    def raise_if_stopped(self, checkpoints_dir: Any = None) -> None:
        self.check_time()
        error = self.error(checkpoints_dir)
        if error is not None:
            raise error

    def error(self, checkpoints_dir: Any = None) -> TrainingStopped | None:
        kept = f"; {kept_checkpoint(checkpoints_dir)}" if checkpoints_dir is not None else ""
        if self.kind is StopKind.CANCEL:
            return JobCancelled(f"{self.reason}{kept}")
        if self.kind is StopKind.PREEMPT:
            return JobPreempted(f"{self.reason}{kept}")
        if self.kind is StopKind.LEASE_LOST:
            return LeaseLost(self.reason)
        if self.kind is StopKind.TIME_LIMIT:
            return JobTimeLimit(f"{self.reason}{kept}")
        return None


class Heartbeat(threading.Thread):
    """Renews the job's lease every few seconds and relays a cancel request to the training loop."""

    def __init__(self, settings: Settings, job_id: str, lease_owner: str, control: JobControl) -> None:
        super().__init__(name=f"heartbeat-{job_id[:8]}", daemon=True)
        self.settings, self.job_id, self.lease_owner, self.control = settings, job_id, lease_owner, control
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope(self.settings) as session:
                    cancel = renew_lease(
                        session, self.job_id, self.lease_owner, self.settings.JOB_LEASE_SECONDS
                    )
            except Exception as exc:  # database unreachable: keep trying; the lease decides
                logger.warning("heartbeat of job %s failed: %s", self.job_id, exc)
                continue
            if cancel is None:
                self.control.request_stop(
                    StopKind.LEASE_LOST, f"job {self.job_id}: lease lost (expired or taken over); stopping"
                )
                return
            if cancel:
                self.control.request_stop(StopKind.CANCEL, "cancelled by request")

    def stop(self) -> None:
        self._stopped.set()
        if self.is_alive():
            self.join(timeout=10)


class JobCallback(Callback):
    """Streams progress into the job row and turns stop requests into a clean end of training.

    The step and total are written when training begins, at the first step and then every ``every_seconds``
    (a run whose first logging step is minutes away shows it moving at once); loss, learning rate and speed at
    logging steps, at most every ``every_seconds``; the scores of each evaluation.

    A preemption or the time limit saves a checkpoint at the current step first; a cancel or a lost lease does
    not.
    """

    def __init__(self, reporter: Any, control: JobControl, checkpoints_dir: Any, every_seconds: float = 1.0):
        self.reporter = reporter
        self.control = control
        self.checkpoints_dir = checkpoints_dir
        self.every_seconds = every_seconds
        self.stop_error: TrainingStopped | None = None
        # Never written yet: the first write is due at once (0.0 would wait until the host's monotonic clock, its
        # uptime, passed every_seconds).
        self._last_write = float("-inf")  # any progress write
        self._last_log_write = float("-inf")  # a write of a logging step's values
        self._first_step: int | None = None  # where this attempt's training began
        self._speed_mark: tuple[float, int] | None = None  # (time, step) of the last speed reading
        self.samples_per_step = 0

    def on_train_begin(self, state: RunState) -> None:
        self.samples_per_step = state.samples_per_step
        self._first_step = state.step
        self._write(state.progress())

    def _write(self, progress: dict[str, Any]) -> None:
        self._last_write = time.monotonic()
        self.reporter(progress=progress)

    def on_step(self, state: RunState, control: Control) -> None:
        self.control.check_time()
        first = state.step == (self._first_step or 0) + 1
        if first or time.monotonic() - self._last_write >= self.every_seconds:
            self._write(state.progress())
        if self.control.kind is None or self.stop_error is not None:
            return
        if self.control.kind is StopKind.PREEMPT:
            control.halt(save=True)
            self.stop_error = JobPreempted(
                f"{self.control.reason}; saved checkpoint-{state.step} for the next worker"
            )
        elif self.control.kind is StopKind.TIME_LIMIT:
            control.halt(save=True)
            self.stop_error = JobTimeLimit(f"{self.control.reason}; saved checkpoint-{state.step}")
        else:
            control.halt(save=False)
            self.stop_error = self.control.error(self.checkpoints_dir)

    def on_log(self, state: RunState, control: Control, logs: dict[str, Any]) -> None:
        if "loss" not in logs or time.monotonic() - self._last_log_write < self.every_seconds:
            return
        now = time.monotonic()
        self._last_log_write = self._last_write = now
        progress = state.progress()
        progress.update(loss=logs["loss"], learning_rate=logs.get("learning_rate"))
        if self._speed_mark is not None and now > self._speed_mark[0]:
            samples = (state.step - self._speed_mark[1]) * (self.samples_per_step or state.samples_per_step)
            progress["samples_per_second"] = round(samples / (now - self._speed_mark[0]), 2)
        self._speed_mark = (now, state.step)
        self.reporter(progress=progress)

    def on_evaluate(self, state: RunState, control: Control, metrics: dict[str, float]) -> None:
        shown = {  # eval_loss and the task's metrics (a sweep's objective is one of them)
            key.removeprefix("eval_"): round(float(value), 6)
            for key, value in metrics.items()
            if key.startswith("eval_")
        }
        self._last_log_write = self._last_write = time.monotonic()
        self.reporter(progress={**state.progress(), "metrics": shown})

    def on_train_end(self, state: RunState) -> None:
        # The checkpoint is the one written where training actually stopped: in a data-parallel run rank 0 reads
        # the stop request at its next sync point, a few steps after the step that asked.
        if isinstance(self.stop_error, JobPreempted):
            self.stop_error = JobPreempted(
                f"{self.control.reason}; saved checkpoint-{state.step} for the next worker"
            )
        elif isinstance(self.stop_error, JobTimeLimit):
            self.stop_error = JobTimeLimit(f"{self.control.reason}; saved checkpoint-{state.step}")
        self.reporter(progress=state.progress())
