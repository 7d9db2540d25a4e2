"""Shared pieces of the command line: option types, console logging, error exits."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from finetune_platform.errors import ConfigError, PlatformError

ConfigPath = Annotated[Path, typer.Argument(help="Training config YAML, e.g. configs/quickstart.yaml.")]
Overrides = Annotated[
    list[str] | None,
    typer.Option(
        "--set", "-s", help="Override a config field: --set training.learning_rate=1e-3 (repeatable)."
    ),
]
OutputDir = Annotated[Path, typer.Option("--output-dir", help="Root of the run folders.")]


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("finetune_platform.training.progress")


class _TqdmSafeHandler(logging.Handler):
    """Writes log lines above a live progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_console_logging() -> None:
    from finetune_platform.settings import get_settings

    root = logging.getLogger("finetune_platform")
    if any(getattr(h, "_finetune_console", False) for h in root.handlers):
        return
    handler = _TqdmSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ConsoleFilter())
    handler._finetune_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(get_settings().LOG_LEVEL.upper())


def fail(error: PlatformError) -> typer.Exit:
    typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def load(config_path: Path, overrides: list[str] | None):
    from finetune_platform.training.config import load_config

    return load_config(config_path, overrides or [])


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of the readable summary.")]


def settings():
    from finetune_platform.settings import get_settings

    return get_settings()


def fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"
