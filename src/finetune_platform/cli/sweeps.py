"""`finetune sweep …`: hyperparameter sweeps from the command line, as the local user. A sweep's trials are queued
training jobs: workers (`finetune worker`) run them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from finetune_platform.cli.common import JsonFlag, Overrides, audit, fail, open_database, settings
from finetune_platform.errors import PlatformError

sweep_app = typer.Typer(
    help="Search hyperparameters: a sweep queues trials (training jobs; `finetune worker` runs them) and keeps "
    "the best.",
    no_args_is_help=True,
)
SweepFile = Annotated[
    Path,
    typer.Argument(
        help="Sweep YAML: a training config plus a sweep: section (objective, space, max_trials, ...)."
    ),
]
SweepId = Annotated[
    str, typer.Argument(help="Sweep id (from `finetune sweep submit` or `finetune sweep list`).")
]
FINISHED = {"succeeded", "failed", "cancelled"}


def _as_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _summary(sweep) -> str:
    counts = ", ".join(f"{count} {state}" for state, count in sweep.trials.items() if count)
    best = (
        f"best {sweep.objective} {_value(sweep.best_value)}"
        if sweep.best_value is not None
        else "no best yet"
    )
    line = (
        f"{sweep.id}  {sweep.name}  {sweep.status}  {sum(sweep.trials.values())}/{sweep.max_trials} trials"
        f" ({counts or 'none'})  {best}"
    )
    return line + (f"  - {sweep.error}" if sweep.error else "")


@sweep_app.command("submit")
def sweep_submit(
    sweep_file: SweepFile,
    overrides: Overrides = None,
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, max=20, help="Attempts of each trial before it fails.")
    ] = 3,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the sweep until it finishes.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Validate a sweep (every value it may try, and the data), then queue its first trials."""
    # lazy: sqlalchemy and the training config, kept off the start of every finetune command
    from finetune_platform.services.sweeps import submit_sweep
    from finetune_platform.services.users import local_user
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.sweep_config import load_sweep

    try:
        base, spec = load_sweep(sweep_file, overrides)
        # A trial runs in a worker whose working directory is not this one: its data paths must be absolute.
        base = config_from_dict(base).with_absolute_paths().to_yaml_dict()
        with open_database() as session:
            sweep = submit_sweep(
                session, local_user(session), base, spec, max_attempts=max_attempts, settings=settings()
            )
            audit(
                session,
                "sweep.submit",
                target=f"sweep:{sweep.id}",
                config=str(sweep_file),
                dataset_version=sweep.dataset_version,
                trials=[trial.task_id for trial in sweep.trial_list],
            )
    except PlatformError as error:
        raise fail(error) from None
    if as_json:
        typer.echo(_as_json(sweep.model_dump()))
    else:
        typer.echo(
            f"started sweep {sweep.id} ({sweep.name}): {len(sweep.trial_list)} of {sweep.max_trials} trials queued "
            f"(dataset version {sweep.dataset_version}); follow it with `finetune sweep show {sweep.id}`"
        )
    if wait:
        _follow(sweep.id)


def _read(sweep_id: str):
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.sweeps import get_sweep
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            return get_sweep(session, local_user(session), sweep_id)
    except PlatformError as error:
        raise fail(error) from None


def _follow(sweep_id: str, interval: float = 5.0) -> None:
    last = ""
    while True:
        sweep = _read(sweep_id)
        line = _summary(sweep)
        if line != last:
            typer.echo(line)
            last = line
        if sweep.status in FINISHED:
            raise typer.Exit(code=0 if sweep.status == "succeeded" else 1)
        time.sleep(interval)


@sweep_app.command("list")
def sweep_list(
    status: Annotated[
        str | None,
        typer.Option("--status", help="Only sweeps in this state (running, succeeded, failed, cancelled)."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=500, help="At most this many, newest first.")
    ] = 20,
    as_json: JsonFlag = False,
) -> None:
    """List sweeps, newest first, with their trial counts and best value."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.sweeps import list_sweeps
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            page = list_sweeps(session, local_user(session), status=status, limit=limit)
    except PlatformError as error:
        raise fail(error) from None
    if as_json:
        typer.echo(_as_json({"count": page.count, "data": [sweep.model_dump() for sweep in page.data]}))
        return
    if not page.data:
        typer.echo("no sweeps" + (f" with status {status}" if status else ""))
    for sweep in page.data:
        typer.echo(_summary(sweep))


@sweep_app.command("show")
def sweep_show(sweep_id: SweepId, as_json: JsonFlag = False) -> None:
    """A sweep's status and a table of its trials: number, status, values tried, objective, evaluations, seconds."""
    sweep = _read(sweep_id)
    if as_json:
        typer.echo(_as_json(sweep.model_dump()))
        return
    # lazy: rich, only for the table
    from rich.console import Console
    from rich.table import Table

    typer.echo(_summary(sweep))
    typer.echo(
        f"  {sweep.direction} {sweep.objective}, sampler {sweep.sampler}, pruner {sweep.pruner}, "
        f"parallelism {sweep.parallelism}, {sweep.compute_seconds:.0f} s of training"
    )
    table = Table(title=f"trials of {sweep.name}")
    for column in ("#", "status", "params", sweep.objective, "evaluations", "seconds", "task"):
        table.add_column(column, overflow="fold")
    for trial in sweep.trial_list:
        params = ", ".join(
            f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
            for name, value in trial.params.items()
        )
        marker = " *" if trial.task_id == sweep.best_task_id else ""
        table.add_row(
            f"{trial.number}{marker}",
            trial.status,
            params,
            _value(trial.value),
            str(trial.evaluations),
            "-" if trial.seconds is None else f"{trial.seconds:.1f}",
            trial.task_id,
        )
    Console(width=200).print(table)


@sweep_app.command("cancel")
def sweep_cancel(sweep_id: SweepId) -> None:
    """Stop a sweep: no trial starts any more, queued trials are cancelled, running ones asked to stop."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.sweeps import cancel_sweep
    from finetune_platform.services.users import local_user

    try:
        with open_database() as session:
            sweep = cancel_sweep(session, local_user(session), sweep_id)
            audit(session, "sweep.cancel", target=f"sweep:{sweep_id}", status=sweep.status)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"sweep {sweep_id}: {sweep.status} ({sweep.trials.get('cancelled', 0)} trials cancelled)")


@sweep_app.command("best")
def sweep_best(
    sweep_id: SweepId,
    promote: Annotated[
        bool, typer.Option("--promote", help="Register the best trial's model and move it to --stage.")
    ] = False,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="With --promote: register under this name (default: the config's model name)."
        ),
    ] = None,
    stage: Annotated[
        str,
        typer.Option("--stage", help="With --promote: Staging or Production.", case_sensitive=False),
    ] = "Production",
    as_json: JsonFlag = False,
) -> None:
    """The best completed trial (its values and objective); with --promote, register its model."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.errors import ConfigError
    from finetune_platform.services.sweeps import best_trial, promote_best
    from finetune_platform.services.users import local_user

    stage = stage.capitalize()
    try:
        if stage not in {"Staging", "Production"}:
            raise ConfigError(f"--stage: {stage!r} is not Staging or Production")
        with open_database() as session:
            user = local_user(session)
            trial = best_trial(session, user, sweep_id)
            promoted = None
            if promote:
                promoted = promote_best(session, settings(), user, sweep_id, model_name=name, stage=stage)
                audit(
                    session,
                    "sweep.promote",
                    target=f"sweep:{sweep_id}",
                    task=promoted["task_id"],
                    model=f"{promoted['model_name']}@{promoted['version']}",
                    stage=promoted["stage"],
                )
    except PlatformError as error:
        raise fail(error) from None
    if as_json:
        typer.echo(_as_json({"best": trial.model_dump(), "promoted": promoted}))
        return
    typer.echo(
        f"trial {trial.number} (task {trial.task_id}): value {_value(trial.value)} with {trial.params}"
    )
    if promoted:
        typer.echo(
            f"registered {promoted['model_name']} version {promoted['version']} in {promoted['stage']}"
        )


@sweep_app.command("schema")
def sweep_schema() -> None:
    """Print the JSON Schema of a sweep: section (every field, its default and its help)."""
    # lazy: pydantic models, kept off the start of every finetune command
    from finetune_platform.training.sweep_config import SweepSpec

    typer.echo(json.dumps(SweepSpec.model_json_schema(), indent=2))
