"""The `finetune` command line. Heavy libraries load only inside the commands that need them."""

from __future__ import annotations

import typer

from finetune_platform import __version__
from finetune_platform.cli.data import data_app
from finetune_platform.cli.inference import predict, serve
from finetune_platform.cli.jobs import jobs_app, worker
from finetune_platform.cli.registry import experiments_app, models_app
from finetune_platform.cli.security import security_check
from finetune_platform.cli.sweeps import sweep_app
from finetune_platform.cli.system import api, audit_app, db_app, ui, users_app
from finetune_platform.cli.training import config_app, runs_app, train
from finetune_platform.cli.up import down, status, up

app = typer.Typer(
    name="finetune",
    help="LoRA fine-tuning platform: validate data, train, track, register, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command()(train)
app.command()(predict)
app.command()(serve)
app.add_typer(config_app, name="config")
app.add_typer(runs_app, name="runs")
app.add_typer(data_app, name="data")
app.add_typer(experiments_app, name="experiments")
app.add_typer(models_app, name="models")
app.add_typer(jobs_app, name="jobs")
app.add_typer(sweep_app, name="sweep")
app.command()(worker)
app.add_typer(db_app, name="db")
app.add_typer(users_app, name="users")
app.add_typer(audit_app, name="audit")
app.command()(api)
app.command()(ui)
app.command("security-check")(security_check)
app.command()(up)
app.command()(status)
app.command()(down)


@app.command()
def version() -> None:
    """Print the platform version."""
    typer.echo(f"finetune-platform {__version__}")


if __name__ == "__main__":  # pragma: no cover
    app()
