"""`finetune train`, `finetune config …` and `finetune runs …`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform.cli.common import (
    ConfigPath,
    OutputDir,
    Overrides,
    configure_console_logging,
    fail,
    load,
)
from finetune_platform.errors import PlatformError

config_app = typer.Typer(help="Inspect and validate training configs.", no_args_is_help=True)
runs_app = typer.Typer(help="List run folders and read their logs.", no_args_is_help=True)

# How a run's summary names each final metric (metrics.json's eval keys)
METRIC_WORDS = {"accuracy": "accuracy", "macro_f1": "macro F1", "micro_f1": "micro F1",
                "subset_accuracy": "subset accuracy", "rmse": "RMSE", "mae": "MAE", "pearson": "Pearson",
                "spearman": "Spearman"}  # fmt: skip

# The --set overrides that still apply with --resume: they say where the run to continue is.
RUN_LOCATION = ("output_dir", "experiment")
INTERRUPTED_EXIT = 130  # a shell's status for a command ended by SIGINT (Ctrl-C)


def train(
    config_path: ConfigPath,
    overrides: Overrides = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the newest unfinished run of this experiment from its newest complete checkpoint.",
        ),
    ] = False,
    run_id: Annotated[
        str | None,
        typer.Option("--run-id", help="With --resume: the run to continue. Without: the new run's id."),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Show the live progress bar.")
    ] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the final metrics as JSON.")] = False,
) -> None:
    """Train a LoRA adapter from a config: validate, train, evaluate, save the run folder, log to MLflow.

    Invalid data is refused before a run folder is created. Ctrl-C stops the run and prints the command that
    continues it from its last complete checkpoint."""
    configure_console_logging()
    overrides = overrides or []
    if resume:
        ignored = [item for item in overrides if _override_key(item) not in RUN_LOCATION]
        if ignored:
            typer.secho(
                "warning: --set is ignored with --resume: a run continues with its own config.yaml "
                f"(only output_dir and experiment apply: they find the run); ignored: {' '.join(ignored)}",
                fg=typer.colors.YELLOW,
                err=True,
            )
        overrides = [item for item in overrides if item not in ignored]
    try:
        config = load(config_path, overrides)
    except PlatformError as error:
        raise fail(error) from None
    # lazy: the training stack, kept off the start of every finetune command
    from finetune_platform.training.runner import RunInterrupted, run_training

    try:
        result = run_training(
            config, resume=resume, run_id=run_id, show_progress=progress, check_data_first=True
        )
    except PlatformError as error:
        raise fail(error) from None
    except RunInterrupted as interrupted:
        located = [item for item in overrides if _override_key(item) in RUN_LOCATION]
        command = ["finetune", "train", str(config_path), *_with_set(located), "--resume"]
        command += ["--run-id", interrupted.run.run_id]
        typer.secho(
            f"interrupted: run {interrupted.run.run_id} {interrupted}", fg=typer.colors.YELLOW, err=True
        )
        next_step = (
            "continue it" if interrupted.saved else "start it again (from step 0) in the same run folder"
        )
        typer.echo(f"{next_step} with: {shlex.join(command)}", err=True)
        raise typer.Exit(code=INTERRUPTED_EXIT) from None
    if json_output:
        typer.echo(
            json.dumps(
                {"run_folder": str(result.run.root), "mlflow_run_id": result.mlflow_run_id, **result.metrics},
                indent=2,
            )
        )
        return
    train_metrics = result.metrics["train"]
    typer.echo("")
    typer.secho(f"run {result.run.run_id} succeeded in {result.wall_seconds:.1f}s", fg=typer.colors.GREEN)
    for key, value in result.metrics["eval"].items():  # the task's metrics, in the order it reports them
        if key in METRIC_WORDS:
            typer.echo(f"  {METRIC_WORDS[key]:<17}{value:.4f}")
    if result.metrics.get("thresholds"):
        shown = ", ".join(f"{label} {value:.2f}" for label, value in result.metrics["thresholds"].items())
        typer.echo(f"  thresholds       {shown}")
    if result.metrics.get("target_scale"):
        scale = result.metrics["target_scale"]
        typer.echo(f"  target           mean {scale['mean']:.4g}, std {scale['std']:.4g}")
    typer.echo(f"  samples/s        {train_metrics['samples_per_second'] or 0:.1f}")
    typer.echo(f"  final adapter    {result.metrics['final_checkpoint'] or 'last step'}")
    typer.echo(f"  run folder       {result.run.root}")
    if result.mlflow_run_id:
        typer.echo(f"  mlflow run       {result.mlflow_run_id}")
    model, registry = result.metrics.get("model"), result.metrics.get("registry") or {}
    if model:
        typer.echo(f"  registered       {model['name']} version {model['version']} ({model['stage']})")
    elif registry.get("reason"):
        typer.secho(f"  not registered   {registry['reason']}", fg=typer.colors.YELLOW)


def _override_key(assignment: str) -> str:
    return assignment.partition("=")[0].strip()


def _with_set(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


@config_app.command("validate")
def config_validate(config_path: ConfigPath, overrides: Overrides = None) -> None:
    """Check a config (fields, types, ranges, cross-field rules) without loading data or models."""
    try:
        load(config_path, overrides)
    except PlatformError as error:
        raise fail(error) from None
    typer.secho(f"{config_path}: valid", fg=typer.colors.GREEN)


@config_app.command("show")
def config_show(config_path: ConfigPath, overrides: Overrides = None) -> None:
    """Print the fully resolved config (defaults filled in, overrides applied) as YAML."""
    # lazy: yaml, kept off the start of every finetune command
    import yaml

    try:
        config = load(config_path, overrides)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(yaml.safe_dump(config.to_yaml_dict(), sort_keys=False, allow_unicode=True), nl=False)


@config_app.command("schema")
def config_schema() -> None:
    """Print the JSON Schema of training configs: every field, its default, constraints and help."""
    # lazy: pydantic and yaml, kept off the start of every finetune command
    from finetune_platform.training.config import TrainConfig

    typer.echo(json.dumps(TrainConfig.model_json_schema(), indent=2))


@runs_app.command("list")
def runs_list(
    experiment: Annotated[str | None, typer.Option(help="Only this experiment.")] = None,
    output_dir: OutputDir = Path("results"),
) -> None:
    """List run folders, newest last, with status and final accuracy."""
    # lazy: secrets, tempfile and hashlib (run folders), kept off the start of every finetune command
    from finetune_platform.training.run_folder import RunFolder

    pattern = f"{experiment}/*/config.yaml" if experiment else "*/*/config.yaml"
    rows = []
    for config_file in sorted(output_dir.glob(pattern), key=lambda p: p.stat().st_mtime):
        folder = config_file.parent
        status = RunFolder(folder).status  # an older folder's words ("interrupted") read as today's
        accuracy = ""
        if (folder / "metrics.json").is_file():
            evaluation = json.loads((folder / "metrics.json").read_text())["eval"]
            score = evaluation.get("accuracy")  # single_label runs only
            accuracy = "" if score is None else f"{score:.4f}"
        rows.append((folder.parent.name, folder.name, status.value if status else "?", accuracy, str(folder)))
    if not rows:
        typer.echo(f"no runs under {output_dir}")
        return
    typer.echo(f"{'experiment':<20} {'run':<24} {'status':<12} {'accuracy':<9} folder")
    for row in rows:
        typer.echo(f"{row[0]:<20} {row[1]:<24} {row[2]:<12} {row[3]:<9} {row[4]}")


@runs_app.command("logs")
def runs_logs(
    run_id: Annotated[str | None, typer.Argument(help="Run id; default: the newest run.")] = None,
    experiment: Annotated[str | None, typer.Option(help="Experiment of the run.")] = None,
    output_dir: OutputDir = Path("results"),
    lines: Annotated[int, typer.Option("--lines", "-n", help="Show the last N lines (0 = all).")] = 0,
) -> None:
    """Print a run's logs.txt (the newest run's by default)."""
    # lazy: secrets, tempfile and hashlib (run folders), kept off the start of every finetune command
    from finetune_platform.training.run_folder import RunFolder, latest_run

    if run_id:
        matches = list(output_dir.glob(f"{experiment or '*'}/{run_id}/logs.txt"))
        folder = RunFolder(matches[0].parent) if matches else None
    else:
        folder = latest_run(output_dir, experiment)
    if folder is None or not folder.logs_path.is_file():
        raise fail(PlatformError(f"no run logs found under {output_dir}"))
    text = folder.logs_path.read_text(encoding="utf-8").splitlines()
    typer.echo("\n".join(text[-lines:] if lines else text))
