"""`finetune jobs …` and `finetune worker`: the training queue from the command line, as the local user."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from finetune_platform.cli.common import (
    ConfigPath,
    JsonFlag,
    Overrides,
    audit,
    fail,
    load,
    migrate_database,
    open_database,
    settings,
)
from finetune_platform.data.formats import SUFFIXES_TEXT
from finetune_platform.errors import PlatformError
from finetune_platform.services.job_states import FINISHED, JobKind, JobStatus

jobs_app = typer.Typer(
    help="Queue training and prediction jobs and follow them (workers run them: `finetune worker`).",
    no_args_is_help=True,
)
JobId = Annotated[str, typer.Argument(help="Job id (from `finetune jobs submit` or `finetune jobs list`).")]


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _summary(job) -> str:
    progress = job.progress or {}
    parts = [f"{job.id}  {job.kind}  {job.status}"]
    if job.stage and job.status == JobStatus.RUNNING:
        parts.append(f"({job.stage})")
    if job.kind == JobKind.PREDICT and "total" in progress and job.status == JobStatus.RUNNING:
        parts.append(f"{progress.get('done', 0)}/{progress['total']} texts ({progress.get('percent', 0)}%)")
    if job.kind == JobKind.PREDICT and job.status == JobStatus.SUCCEEDED and progress.get("output"):
        parts.append(f"-> {progress['output']}")
    if job.kind == JobKind.AUDIT and progress.get("phase") and job.status == JobStatus.RUNNING:
        parts.append(f"{progress['phase']} ({progress.get('percent', 0)}%)")
    if job.kind == JobKind.AUDIT and job.status == JobStatus.SUCCEEDED:
        # lazy: sqlalchemy, loaded already by whoever read the job
        from finetune_platform.services.jobs import audit_folder

        parts.append(f"-> {audit_folder(job.config['output_dir'], job.config['dataset_id'], job.id)}")
    if "step" in progress:
        parts.append(
            f"step {progress['step']}/{progress.get('max_steps', '?')} ({progress.get('percent', 0)}%)"
        )
    if progress.get("loss") is not None and job.status == JobStatus.RUNNING:
        parts.append(f"loss {progress['loss']:.4f}")
    parts.append(f"attempt {job.attempts}/{job.max_attempts}")
    if job.model_name:
        parts.append(f"model {job.model_name} v{job.model_version}")
    if job.error and job.status != JobStatus.SUCCEEDED:
        parts.append(f"- {job.error}")
    return "  ".join(parts)


@jobs_app.command("submit")
def jobs_submit(
    config_path: ConfigPath,
    overrides: Overrides = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Submitting again with the same key returns the first job."),
    ] = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=20, help="Attempts before the job is failed.")
    ] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it finishes.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Validate a config and its data, then queue it as a training job."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import submit_job
    from finetune_platform.services.users import local_user

    try:
        config = load(config_path, overrides).with_absolute_paths()
        with open_database() as session:
            submission = submit_job(
                session,
                local_user(session),
                config.to_yaml_dict(),
                idempotency_key=idempotency_key,
                max_attempts=max_attempts,
            )
            if submission.created:  # a repeated idempotency key changes nothing: no entry
                audit(
                    session,
                    "train.submit",
                    target=f"task:{submission.job.id}",
                    config=str(config_path),
                    dataset_version=submission.job.dataset_version,
                )
    except PlatformError as error:
        raise fail(error) from None
    _queued(submission, session, f"(dataset version {submission.job.dataset_version})", as_json, wait)


@jobs_app.command("predict")
def jobs_predict(
    model: Annotated[
        str, typer.Option("--model", "-m", help="Registered model: name, name@3 or name@production.")
    ],
    input_file: Annotated[Path, typer.Option("--input", "-i", help=f"File of texts: {SUFFIXES_TEXT}.")],
    text_column: Annotated[str, typer.Option("--text-column", help="Column holding the text.")] = "text",
    text_pair_column: Annotated[
        str | None,
        typer.Option(
            "--text-pair-column",
            help="Column holding the second text of each row, for a model trained on text pairs.",
        ),
    ] = None,
    label_column: Annotated[
        str, typer.Option("--label-column", help="If present, accuracy against this column is reported.")
    ] = "label",
    idempotency_key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Submitting again with the same key returns the first job."),
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it finishes.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Queue prediction over a file as a job; a worker writes results/predictions/<job-id>/predictions.csv."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import submit_prediction_job
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            submission = submit_prediction_job(
                session,
                settings(),
                local_user(session),
                model=model,
                input_file=input_file,
                text_column=text_column,
                label_column=label_column,
                idempotency_key=idempotency_key,
                text_pair_column=text_pair_column,
            )
            if submission.created:
                audit(
                    session,
                    "predict.submit",
                    target=f"task:{submission.job.id}",
                    input=str(input_file),
                    model=submission.job.config["model"],
                )
    except PlatformError as error:
        raise fail(error) from None
    _queued(submission, session, f"(prediction with {submission.job.config['model']})", as_json, wait)


def _queued(submission, session, about: str, as_json: bool, wait: bool) -> None:
    """Say what happened to a job the committed ``session`` queued (and sent), and follow it if asked."""
    # lazy: celery and sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services import outbox

    job = submission.job
    if submission.created:
        note = (
            " (broker unreachable: a worker's reconciler will send it)"
            if job.id in outbox.unsent(session)
            else ""
        )
        message = f"queued job {job.id} {about}{note}"
    else:
        message = f"job {job.id} was already submitted with this idempotency key ({job.status})"
    typer.echo(_as_json({"created": submission.created, **job.record()}) if as_json else message)
    if wait:
        _follow(job.id)


def _follow(job_id: str, interval: float = 2.0) -> None:
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import get_job
    from finetune_platform.services.users import local_user

    last = ""
    while True:
        with open_database() as session:
            job = get_job(session, local_user(session), job_id)
        line = _summary(job)
        if line != last:
            typer.echo(line)
            last = line
        if job.status in FINISHED:
            raise typer.Exit(code=0 if job.status == JobStatus.SUCCEEDED else 1)
        time.sleep(interval)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only jobs in this state (queued, running, succeeded, …).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=500, help="At most this many, newest first.")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import list_jobs
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            page = list_jobs(session, local_user(session), status=status, limit=limit)
    except PlatformError as error:
        raise fail(error) from None
    if as_json:
        typer.echo(_as_json({"count": page.count, "data": [job.record() for job in page.data]}))
        return
    if not page.data:
        typer.echo("no jobs" + (f" with status {status}" if status else ""))
    for job in page.data:
        typer.echo(_summary(job))


@jobs_app.command("show")
def jobs_show(job_id: JobId, as_json: JsonFlag = False) -> None:
    """Status, stage, progress, attempts, error, run and model of one job."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import get_job
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            job = get_job(session, local_user(session), job_id)
    except PlatformError as error:
        raise fail(error) from None
    if as_json:
        typer.echo(_as_json(job.record()))
        return
    typer.echo(_summary(job))
    for key in ("created_at", "started_at", "finished_at", "dataset_version", "run_id"):
        value = getattr(job, key)
        if value is not None:
            typer.echo(f"  {key}: {value}")
    for key, value in (job.progress or {}).items():
        typer.echo(f"  progress.{key}: {value}")


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobId) -> None:
    """Cancel a queued job at once, or ask a running one to stop at its next step."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import cancel_job
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            job = cancel_job(session, local_user(session), job_id)
            audit(session, "task.cancel", target=f"task:{job.id}", status=job.status)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"job {job.id}: " + ("cancelled" if job.status == JobStatus.CANCELLED else "cancel requested"))


@jobs_app.command("retry")
def jobs_retry(job_id: JobId) -> None:
    """Queue a failed or cancelled job again with a fresh attempt budget (it resumes its checkpoints)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import retry_job
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            job = retry_job(session, local_user(session), job_id)
            audit(session, "task.retry", target=f"task:{job.id}", status=job.status)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"job {job.id} queued again")  # committed: the outbox sent it


@jobs_app.command("logs")
def jobs_logs(
    job_id: JobId,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job finishes.")
    ] = False,
) -> None:
    """The job's events (attempts, stages, outcome), then its run's logs.txt."""

    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.jobs import get_job, job_events, job_log_path
    from finetune_platform.services.users import local_user

    seen_events, seen_bytes = 0, 0
    while True:
        try:
            with open_database() as session:
                user = local_user(session)
                job = get_job(session, user, job_id)
                events = job_events(session, user, job_id)
        except PlatformError as error:
            raise fail(error) from None
        for event in events[seen_events:]:
            typer.echo(f"{event['at']} [{event['kind']}] {event['message']}")
        seen_events = len(events)
        logs = job_log_path(job)
        if logs.is_file():
            with logs.open("rb") as handle:
                handle.seek(seen_bytes)
                chunk = handle.read()
            seen_bytes += len(chunk)
            if chunk:
                typer.echo(chunk.decode("utf-8", errors="replace"), nl=False)
        if not follow or job.status in FINISHED:
            return
        time.sleep(1.0)


@jobs_app.command("reconcile")
def jobs_reconcile() -> None:
    """One reconciler pass now: requeue jobs of dead workers, re-send messages the broker lost."""
    # lazy: celery, kept off the start of every finetune command
    from finetune_platform.worker.reconciler import reconcile_once

    try:
        migrate_database()
    except PlatformError as error:
        raise fail(error) from None
    sweep = reconcile_once(settings())
    typer.echo(
        f"{len(sweep.expired)} requeued from silent workers, {len(sweep.abandoned)} given up or cancelled, "
        f"{len(sweep.to_enqueue)} sent to the broker, {sweep.queued_total} queued"
    )


def worker(
    name: Annotated[
        str | None, typer.Option("--name", help="Worker name (default worker-<pid>); shown in job events.")
    ] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", help="Celery log level.")] = "INFO",
    reconciler: Annotated[
        bool, typer.Option("--reconciler/--no-reconciler", help="Sweep for lost jobs in this worker.")
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            help="Serve this worker's Prometheus metrics on this port (default: WORKER_METRICS_PORT, else none).",
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            help="Address of the metrics port: loopback unless Prometheus scrapes it over a network (the images "
            "pass 0.0.0.0; the chart lets only Prometheus reach it).",
        ),
    ] = "127.0.0.1",
) -> None:
    """Run queued training jobs, one at a time (start one worker per GPU or per core group).

    SIGTERM checkpoints the running job and hands it back to the queue before exiting.
    """
    # lazy: celery, kept off the start of every finetune command
    from finetune_platform.broker import broker_url
    from finetune_platform.worker.app import create_app
    from finetune_platform.worker.reconciler import ReconcilerThread

    current = settings()
    try:
        current.check_secrets(require_jwt=False)  # the platform's secret policy, in every process
        migrate_database()
    except PlatformError as error:
        raise fail(error) from None
    # lazy: the training stack, loaded now rather than in the first task: a message is then claimed at once
    import peft  # noqa: F401

    import finetune_platform.training.recipe
    import finetune_platform.worker.executor  # noqa: F401

    app = create_app(current)  # Celery's logging (--loglevel) prints the platform's log lines
    hostname = name or f"worker-{os.getpid()}"
    port = metrics_port or current.WORKER_METRICS_PORT
    if port and current.METRICS_ENABLED:
        # lazy: prometheus-client and fastapi, kept off the start of every finetune command
        from finetune_platform.observability import WorkerMetrics, install_worker_metrics

        exporter = WorkerMetrics(current, hostname)
        exporter.serve(port, metrics_host)
        install_worker_metrics(exporter)
    sweeper = ReconcilerThread(current)
    if reconciler:
        sweeper.start()
    typer.echo(f"worker on {broker_url(current)} queue {current.QUEUE_NAME}", err=True)
    try:
        app.worker_main(
            [
                "worker",
                "--pool=solo",  # one training per process, in the main thread: signals reach it
                "--concurrency=1",  # with prefetch multiplier 1: this worker reserves exactly one message
                f"--queues={current.QUEUE_NAME}",
                f"--hostname={hostname}@%h",
                f"--loglevel={loglevel}",
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        sweeper.stop()
