"""Shared pieces of the command line: option types, console logging, error exits."""

from __future__ import annotations

import getpass
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any

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
    """Per-step lines (the bar shows them) and a run's outcome line (the command prints the error itself) stay
    in logs.txt only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_outcome", False):
            return False
        return not record.name.startswith("finetune_platform.training.progress")


class _TqdmSafeHandler(logging.Handler):
    """Writes log lines above a live progress bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        # lazy: tqdm, kept off the start of every finetune command
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def configure_console_logging() -> None:
    root = logging.getLogger("finetune_platform")
    if any(getattr(h, "_finetune_console", False) for h in root.handlers):
        return
    handler = _TqdmSafeHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_ConsoleFilter())
    handler._finetune_console = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings().LOG_LEVEL.upper())


def fail(error: PlatformError) -> typer.Exit:
    typer.secho(f"error: {error.message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2 if isinstance(error, ConfigError) else 1)


def load(config_path: Path, overrides: list[str] | None):
    # lazy: pydantic and yaml, kept off the start of every finetune command
    from finetune_platform.training.config import load_config

    try:
        return load_config(config_path, overrides or [])
    except ConfigError:
        if _has_sweep_section(config_path):
            raise ConfigError(
                f"{config_path} has a sweep: section: it is a sweep, not a training config; run it with "
                f"`finetune sweep submit {config_path}` (or remove the sweep: section to train once)"
            ) from None
        raise


def _has_sweep_section(config_path: Path) -> bool:
    # lazy: yaml, kept off the start of every finetune command
    import yaml

    try:
        raw = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "sweep" in raw


JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of the readable summary.")]


def settings():
    """The platform's settings; a bad value in the environment or .env is a clear error naming the variable."""
    # lazy: pydantic-settings, kept off the start of every finetune command
    from pydantic import ValidationError

    from finetune_platform.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']} (got {error.get('input')!r})"
            for error in exc.errors()
        )
        raise fail(ConfigError(f"invalid setting: {problems}")) from None


def fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def migrate_database(config=None):
    """The app database brought to the current schema before a command uses it: a fresh local install is
    created here, as `finetune db upgrade` would; elsewhere a stale schema is a ConfigError naming the fix. An
    unreachable database is a ConfigError too, never a traceback. Returns the settings it used (``config``, else
    the environment's)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from sqlalchemy.exc import SQLAlchemyError

    from finetune_platform.db.session import ensure_database

    config = config or settings()
    try:
        ensure_database(config)
    except SQLAlchemyError as error:
        # lazy: sqlalchemy, kept off the start of every finetune command
        from sqlalchemy.engine import make_url

        url = make_url(config.database_url).render_as_string(hide_password=True)
        reason = str(getattr(error, "orig", None) or error).splitlines()[0]
        raise ConfigError(f"cannot open the app database {url}: {reason}") from None
    return config


def open_database(config=None):
    """A transaction on the app database (``session_scope``: commit, or roll back on error), migrated first."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.db.session import session_scope

    return session_scope(migrate_database(config))


def cli_actor() -> str:
    """Who acts from this command line, as the audit log names them: ``cli:<login name>``."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError, ImportError):  # no LOGNAME/USER and no passwd entry (some containers)
        name = f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return f"cli:{name}"


CLI_ADDRESS = "local"  # the audit log's address of every command-line entry


def audit(session, action: str, *, target: str, **detail: Any) -> None:
    """Append one audit entry for a change made from the command line, in the caller's transaction, on the
    same hash chain as the API's: the actor is the local account (actor_id) and ``detail.actor`` names the
    login (``cli:<login name>``), the address is ``local``."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.audit import record
    from finetune_platform.services.users import local_user

    record(
        session,
        action,
        actor_id=local_user(session).id,
        target=target,
        address=CLI_ADDRESS,
        detail={"actor": cli_actor(), **detail},
    )
