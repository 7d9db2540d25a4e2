"""Run one job in a worker: claim its lease, keep it alive, train (resuming where the last attempt
stopped), and write the outcome — each step a compare-and-set on the job row. The claim holds to the owner's
running-jobs limit; the job's clock (over all its attempts) to its time limit."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from finetune_platform.db.models import JobKind, JobStage, JobStatus
from finetune_platform.db.session import session_scope
from finetune_platform.errors import PlatformError
from finetune_platform.inference.batch import check_pair_input, predict_file, read_rows
from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import source_from_registry
from finetune_platform.services import data_audits, job_states, jobs, outbox, quotas
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.guards import TrainingStopped, TrialPruned
from finetune_platform.training.run_folder import RunFolder
from finetune_platform.training.runner import final_scores, run_training, scores_text
from finetune_platform.worker.control import (
    Heartbeat,
    JobCallback,
    JobCancelled,
    JobControl,
    JobPreempted,
    LeaseLost,
    StopKind,
)

logger = logging.getLogger("finetune_platform.worker")

# The job running in this process, so a shutdown signal can ask it to checkpoint and hand itself back.
_current: JobControl | None = None

Body = Callable[["JobContext"], dict[str, Any]]


def current_job() -> JobControl | None:
    return _current


def worker_identity(name: str | None = None) -> str:
    return f"{name or socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobContext:
    """What the job body gets: the claimed job, its stop control, and a way to report progress."""

    def __init__(self, settings: Settings, claim: jobs.Claim, control: JobControl) -> None:
        self.settings, self.claim, self.control = settings, claim, control
        self.job = claim.job

    def report(
        self, *, stage: str | None = None, event: tuple[str, str] | None = None, **fields: Any
    ) -> None:
        if fields.get("progress"):  # the job's clock travels with its progress: a killed worker loses little
            fields["progress"] = {**fields["progress"], "run_seconds": round(self.control.run_seconds(), 1)}
        try:
            with session_scope(self.settings) as session:
                held = jobs.record_progress(
                    session, self.job.id, self.claim.lease_owner, stage=stage, event=event, **fields
                )
        except Exception as exc:  # a progress write is never worth a training
            logger.warning("progress of job %s not recorded: %s", self.job.id, exc)
            return
        if not held:
            self.control.request_stop(StopKind.LEASE_LOST, f"job {self.job.id}: lease lost; stopping")


def execute_job(
    settings: Settings,
    job_id: str,
    *,
    worker_name: str | None = None,
    body: Body | None = None,
    callbacks: Sequence[Any] = (),
) -> str:
    """Claim and run one job; returns what happened: succeeded, failed, cancelled, requeued, skipped, held,
    lost."""
    global _current
    lease_owner = worker_identity(worker_name)
    with session_scope(settings) as session:
        claim = jobs.claim_job(
            session,
            job_id,
            lease_owner,
            settings.JOB_LEASE_SECONDS,
            running_limit=settings.MAX_RUNNING_JOBS_PER_USER,
        )
        limits = (
            quotas.account_limits(session, claim.job.owner_id, settings)
            if isinstance(claim, jobs.Claim)
            else None
        )
    if isinstance(claim, jobs.Held):
        logger.info("job %s stays queued: %s", job_id, claim.reason)
        return "held"
    if claim is None or limits is None:
        logger.info("job %s is not queued (finished, cancelled or running elsewhere): skipped", job_id)
        return "skipped"
    control = JobControl(
        used_seconds=float(claim.job.progress.get("run_seconds") or 0.0),
        limit_seconds=limits.max_job_hours * 3600,
        limit_reason=quotas.time_limit_reason(limits),
    )
    heartbeat = Heartbeat(settings, job_id, lease_owner, control)
    heartbeat.start()
    _current = control
    context = JobContext(settings, claim, control)
    logger.info("job %s: attempt %d of %d", job_id, claim.job.attempts, claim.job.max_attempts)
    try:
        if body is None:
            body = BODIES.get(claim.job.kind) or (lambda c: train_job(c, callbacks))
        result = body(context)
    except LeaseLost as exc:
        logger.error("%s", exc)
        return "lost"
    except TrainingStopped as exc:
        outcome = _stopped(settings, claim, exc, control.run_seconds())
        _after(settings, claim, outcome)
        return outcome
    except Exception as exc:  # another attempt or failed for good: the domain's retry policy decides
        if not isinstance(exc, PlatformError):  # not raised on purpose: the traceback is worth the log
            logger.exception("job %s attempt %d failed", job_id, claim.job.attempts)
        outcome = _failed(settings, claim, exc, control.run_seconds())
        _after(settings, claim, outcome)
        return outcome
    finally:
        _current = None
        heartbeat.stop()
    message = result.pop("message", "finished")
    outcome = _finish(
        settings, claim, JobStatus.SUCCEEDED, message, run_seconds=control.run_seconds(), **result
    )
    _after(settings, claim, outcome)
    return outcome


def _after(settings: Settings, claim: jobs.Claim, outcome: str) -> None:
    """A sweep trial that ended lets its sweep move on now (else the reconciler's next pass does)."""
    if claim.job.sweep_id is not None and outcome in set(JobStatus) - {JobStatus.QUEUED, JobStatus.RUNNING}:
        # lazy: Optuna, only for sweep trials
        from finetune_platform.services.sweeps import trial_ended

        trial_ended(settings, claim.job.id)


def _stopped(settings: Settings, claim: jobs.Claim, exc: TrainingStopped, run_seconds: float) -> str:
    """A training that ended early on purpose; the time limit (JobTimeLimit) is not retryable: it fails."""
    if isinstance(exc, JobCancelled):
        return _finish(settings, claim, JobStatus.CANCELLED, str(exc), run_seconds=run_seconds)
    if isinstance(exc, TrialPruned):
        return _finish(settings, claim, JobStatus.PRUNED, str(exc), run_seconds=run_seconds)
    if isinstance(exc, JobPreempted):
        return _release(settings, claim, str(exc), count_attempt=False, run_seconds=run_seconds)
    return _failed(settings, claim, exc, run_seconds)


def _failed(settings: Settings, claim: jobs.Claim, exc: Exception, run_seconds: float) -> str:
    """A failed attempt: handed back for another one when the retry policy (``services.job_states``) says it
    could succeed (the attempt budget then decides), else failed for good."""
    reason = job_states.failure_reason(exc)
    if job_states.retries(exc):
        return _release(settings, claim, reason, count_attempt=True, run_seconds=run_seconds)
    return _finish(settings, claim, JobStatus.FAILED, reason, run_seconds=run_seconds)


def _finish(
    settings: Settings,
    claim: jobs.Claim,
    status: JobStatus,
    message: str,
    *,
    run_seconds: float | None = None,
    **fields: Any,
) -> str:
    with session_scope(settings) as session:
        done = jobs.finish_job(
            session, claim.job.id, claim.lease_owner, status, message, run_seconds=run_seconds, **fields
        )
    if done is None:
        logger.error(
            "job %s: lease lost before the outcome (%s) could be written", claim.job.id, status.value
        )
        return "lost"
    logger.info("job %s %s: %s", claim.job.id, status.value, message)
    return status.value


def _release(
    settings: Settings,
    claim: jobs.Claim,
    reason: str,
    *,
    count_attempt: bool,
    run_seconds: float | None = None,
) -> str:
    with session_scope(settings) as session:
        job = jobs.release_job(
            session,
            claim.job.id,
            claim.lease_owner,
            reason,
            count_attempt=count_attempt,
            run_seconds=run_seconds,
            backoff=job_states.Backoff.of(settings),
        )
        if job is not None and job.status == JobStatus.QUEUED.value:
            # Its next message, owed in the release's own transaction: sent once it commits, or by the reconciler
            # when its retry backoff ends (and by the reconciler too if this process dies before sending it).
            waits = job.not_before is not None
            outbox.add(session, settings, job.id, send=not waits)
            if not waits:
                jobs.mark_enqueued(session, [job.id])  # a failed send clears it again
    if job is None:
        return "lost"
    if job.status == JobStatus.QUEUED.value:
        logger.info("job %s handed back to the queue: %s", job.id, reason)
        return "requeued"
    logger.info("job %s failed: %s", job.id, job.error)
    return job.status


def train_job(context: JobContext, callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """The training body: resume the job's own run folder when an earlier attempt left one."""
    job, settings, control = context.job, context.settings, context.control
    config = config_from_dict(job.config)
    run = RunFolder(jobs.run_folder_path(config.output_dir, config.experiment, job.id))
    resume = run.config_path.is_file()
    state = run.read_state() if resume else {}
    if state.get("status") == JobStatus.SUCCEEDED and state.get("model"):
        # The last attempt finished and registered, then died before telling the database.
        model = state["model"]
        return {
            "message": f"already finished by an earlier attempt: {model['name']} version {model['version']}",
            "model_name": model["name"],
            "model_version": model["version"],
            "run_id": state.get("mlflow_run_id"),
        }
    refused = (state.get("registry") or {}).get("reason")
    if state.get("status") == JobStatus.SUCCEEDED and refused:  # finished unregistered, then died likewise
        return {
            "message": f"already finished by an earlier attempt; not registered: {refused}",
            "run_id": state.get("mlflow_run_id"),
        }
    if resume:
        checkpoint = run.newest_checkpoint()
        message = (
            f"resuming from {checkpoint.name}" if checkpoint else "no complete checkpoint: starting over"
        )
        context.report(
            event=("resumed", message),
            progress={"resumed_from": checkpoint.name if checkpoint else None},
        )
    context.report(run_folder=str(run.root.resolve()))

    def on_stage(stage: str) -> None:
        # A shutdown after training has ended lets the job finish: evaluating and registering take seconds.
        if control.kind is not StopKind.PREEMPT or stage in {"validating", "training"}:
            control.raise_if_stopped(run.checkpoints_dir)
        context.report(stage=stage, run_id=run.read_state().get("mlflow_run_id"))

    reporter = JobCallback(lambda **fields: context.report(**fields), control, run.checkpoints_dir)
    trial = [_pruning(context)] if job.sweep_id is not None else []
    result = run_training(
        config,
        resume=resume,
        run_id=job.id,
        settings=settings,
        show_progress=False,
        callbacks=[reporter, *trial, *callbacks],
        on_stage=on_stage,
        owner_id=job.owner_id,
    )
    model = result.metrics.get("model") or {}
    registry = result.metrics.get("registry") or {}
    progress = {"metrics": final_scores(config, result.metrics), "percent": 100.0}
    context.report(progress={**progress, **({"registry": registry} if registry else {})})
    outcome = ""
    if model:
        outcome = f"; registered {model['name']} version {model['version']}"
    elif registry.get("reason"):
        outcome = f"; not registered: {registry['reason']}"
    return {
        "message": scores_text(config, result.metrics) + outcome,
        "run_id": result.mlflow_run_id,
        "model_name": model.get("name"),
        "model_version": model.get("version"),
    }


def _pruning(context: JobContext) -> Any:
    """The pruning callback of a sweep trial, reporting to its sweep's study."""
    # lazy: Optuna, only for sweep trials
    from finetune_platform.services.sweep_study import TrialReporter
    from finetune_platform.services.sweeps import trial_spec
    from finetune_platform.worker.trials import PruningCallback

    job = context.job
    with session_scope(context.settings) as session:
        spec = trial_spec(session, job.sweep_id)
    reporter = TrialReporter(context.settings, job.sweep_id, spec, job.trial_number)
    return PruningCallback(reporter, spec, lambda **fields: context.report(**fields))


def predict_job(context: JobContext) -> dict[str, Any]:
    """The prediction body: the pinned model over the input file, progress per chunk, a cancel or shutdown
    honoured between chunks (a preempted job starts over: predictions are cheap next to training)."""
    job, settings, control = context.job, context.settings, context.control
    config = job.config
    folder = jobs.prediction_folder(config["output_dir"], job.id)
    folder.mkdir(parents=True, exist_ok=True)
    log = (folder / "logs.txt").open("a", encoding="utf-8")

    def note(message: str) -> None:
        logger.info("job %s: %s", job.id, message)
        log.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}\n")
        log.flush()

    with log:
        context.report(stage=JobStage.PREDICTING.value, run_folder=str(folder.resolve()))
        source = source_from_registry(settings, config["model"])
        predictor = open_one(settings, source, settings.SERVE_RUNTIME)
        pair_column = config.get("text_pair_column")  # absent from jobs queued before pairs existed
        check_pair_input(predictor, pair_column is not None, "text_pair_column")
        inputs = read_rows(
            Path(config["input_file"]), config["text_column"], config["label_column"], pair_column
        )
        note(
            f"predicting {len(inputs.texts)} rows of {Path(config['input_file']).name} with {config['model']}"
        )

        def progress(done: int, total: int) -> None:
            control.raise_if_stopped()
            percent = round(100 * done / max(total, 1), 1)
            context.report(progress={"done": done, "total": total, "percent": percent})
            note(f"{done}/{total} texts ({percent}%)")

        output = folder / "predictions.csv"
        summary = predict_file(
            predictor, inputs.texts, inputs.labels, output, on_progress=progress, pairs=inputs.pairs
        )
        note(summary.describe(output).replace("\n", "; "))
    result = {
        "rows": summary.rows, "predicted": summary.predicted, "empty": summary.empty,
        "truncated": summary.truncated, "accuracy": summary.accuracy, "output": str(output.resolve()),
        "percent": 100.0, **({"rmse": summary.rmse} if summary.rmse is not None else {}),
    }  # fmt: skip
    context.report(progress=result)
    return {
        "message": f"{summary.predicted} of {summary.rows} rows predicted"
        + (f", accuracy {summary.accuracy:.4f}" if summary.accuracy is not None else "")
        + (f", RMSE {summary.rmse:.4f}" if summary.rmse is not None else ""),
        "model_name": source.info.name,
        "model_version": source.info.version,
    }


def audit_job(context: JobContext) -> dict[str, Any]:
    """The data audit body: the engine of ``data.audit`` over the job's datasets, its phase and percent reported
    as it goes, a cancel or shutdown honoured at each report (a preempted audit starts over: minutes at most)."""
    job, control = context.job, context.control
    config = job.config
    folder = jobs.audit_folder(config["output_dir"], config["dataset_id"], job.id)
    folder.mkdir(parents=True, exist_ok=True)
    shown: dict[str, Any] = {}

    with (folder / "logs.txt").open("a", encoding="utf-8") as log:

        def note(message: str) -> None:
            logger.info("job %s: %s", job.id, message)
            log.write(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}\n")
            log.flush()

        def progress(phase: str, fraction: float) -> None:
            control.raise_if_stopped()
            percent = round(100 * fraction, 1)
            if (
                phase != shown.get("phase") or percent >= shown["percent"] + 5
            ):  # a write per 5%, not per batch
                if phase != shown.get("phase"):
                    note(f"{phase} ({percent:g}%)")
                shown.update(phase=phase, percent=percent)
                context.report(progress={"phase": phase, "percent": percent})

        context.report(stage=JobStage.AUDITING.value, run_folder=str(folder.resolve()))
        labels = " and ".join(entry["label"] for entry in config["datasets"].values())
        note(f"auditing {labels}")
        summary = data_audits.run_audit(config["output_dir"], job.id, config, progress)
        message = data_audits.summary_text(summary)
        note(message)
    context.report(progress={"phase": "done", "percent": 100.0, "summary": summary})
    return {"message": message}


# The body of each kind of job but training (whose body takes the worker's callbacks).
BODIES: dict[str, Body] = {JobKind.PREDICT.value: predict_job, JobKind.AUDIT.value: audit_job}
