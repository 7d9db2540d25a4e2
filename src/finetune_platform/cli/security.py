"""`finetune security-check`: the deployment's security posture in one table."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer


def security_check(
    json_output: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    probe_mlflow: Annotated[
        bool,
        typer.Option("--probe-mlflow/--no-probe-mlflow", help="Ask the tracking server without credentials."),
    ] = True,
) -> None:
    """Print the posture: secret strength, MLflow reachability and auth, forwarded-header trust, metrics,
    quotas and limits, the database role. Exit 1 when a check fails (never in local mode)."""
    # lazy: pydantic, httpx and sqlalchemy, pydantic-settings, kept off the start of every finetune command
    from pydantic import ValidationError

    from finetune_platform.services.posture import posture
    from finetune_platform.settings import Settings

    try:
        settings = Settings()
    except ValidationError as error:
        typer.secho(f"error: the settings do not load: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from None
    checks = posture(settings, probe_mlflow=probe_mlflow)
    if json_output:
        typer.echo(json.dumps([asdict(check) for check in checks], indent=2))
    else:
        width = max(len(check.area) for check in checks)
        colours = {"ok": typer.colors.GREEN, "warn": typer.colors.YELLOW, "fail": typer.colors.RED}
        for check in checks:
            typer.echo(
                f"{check.area:<{width}}  "
                + typer.style(f"{check.status:<4}", fg=colours[check.status])
                + f"  {check.message}"
            )
    if any(check.status == "fail" for check in checks):
        raise typer.Exit(code=1)
