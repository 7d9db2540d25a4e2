"""`finetune db …`, `finetune users …` and `finetune audit …`: the app database, its accounts and audit log."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

import finetune_platform.ui
from finetune_platform.cli.common import audit, fail, migrate_database, open_database, settings
from finetune_platform.errors import ConfigError, PlatformError
from finetune_platform.ui.uploads import upload_megabytes

db_app = typer.Typer(
    help="The app database (SQLite by default, PostgreSQL with DATABASE_URL).", no_args_is_help=True
)
users_app = typer.Typer(help="Accounts of the platform (roles admin and user).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Option("--revision", help="Target migration revision.")] = "head",
) -> None:
    """Create or migrate the app database to the latest schema (safe to run again). On PostgreSQL with
    DATABASE_APP_PASSWORD, also set the password of the application role finetune_app."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.db.session import upgrade

    try:
        current = upgrade(settings(), revision)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"database {_safe_url(settings().database_url)} at revision {current}")


@db_app.command("current")
def db_current() -> None:
    """Print the migration revision the database is at ('base' when empty)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.db.session import current_revision

    typer.echo(current_revision(settings()))


def _safe_url(url: str) -> str:
    """The URL without its password."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[str, typer.Option("--role", help="admin or user.")] = "user",
    password: Annotated[
        str | None,
        typer.Option(
            "--password", help="Password (prefer the prompt or --password-stdin: arguments show in ps)."
        ),
    ] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from stdin.")
    ] = False,
) -> None:
    """Create an account (a fresh local install's database is created first)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.users import create_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        with open_database() as session:
            user = create_user(session, username, password, role)
            audit(session, "user.create", target=f"user:{user.id}", role=user.role)
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"created {user.role} {user.username} (id {user.id})")


@users_app.command("set-password")
def users_set_password(
    username: Annotated[str, typer.Argument(help="Login name.")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the new password from stdin (else: a prompt).")
    ] = False,
) -> None:
    """Set an account's password, e.g. a forgotten admin password (`finetune up` shows it only once). Every
    token of the account stops working: it logs in again."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.db.accounts import LOCAL_USER
    from finetune_platform.services.users import get_user, update_user

    if username.lower() == LOCAL_USER:
        raise fail(ConfigError(f"{username!r} is the command line's own account: it has no password to set"))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)
    try:
        with open_database() as session:
            user = update_user(session, get_user(session, username).id, password=password)
            audit(session, "user.update", target=f"user:{user.id}", fields=["password"])
    except PlatformError as error:
        raise fail(error) from None
    typer.echo(f"new password set for {user.username}; its sessions are signed out")


@users_app.command("list")
def users_list() -> None:
    """List accounts with their roles (a fresh local install's database is created first)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.users import list_users

    try:
        with open_database() as session:
            users = list_users(session)
    except PlatformError as error:
        raise fail(error) from None
    if not users:
        typer.echo("no accounts yet (finetune users create NAME --role admin)")
    for user in users:
        state = "" if user.is_active else " (disabled)"
        typer.echo(f"{user.id:>4} {user.username:<24} {user.role}{state}")


@users_app.command("set-quota")
def users_set_quota(
    username: Annotated[str, typer.Argument(help="Login name.")],
    queued: Annotated[
        int | None, typer.Option("--queued", help="Jobs the account may have queued (0 stops it submitting).")
    ] = None,
    running: Annotated[
        int | None, typer.Option("--running", help="Jobs of the account that run at once.")
    ] = None,
    hours: Annotated[
        float | None, typer.Option("--hours", help="Hours one job of the account may run.")
    ] = None,
    reset: Annotated[
        bool, typer.Option("--reset", help="First return every limit to the platform default.")
    ] = False,
) -> None:
    """Set an account's own limits (the platform defaults: MAX_QUEUED_JOBS_PER_USER, MAX_RUNNING_JOBS_PER_USER,
    JOB_MAX_HOURS) and print the limits it has now."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.quotas import SETTING, account_limits
    from finetune_platform.services.users import get_user, update_user

    limits: dict[str, int | float | None] = dict.fromkeys(SETTING) if reset else {}
    given = {"max_queued_jobs": queued, "max_running_jobs": running, "max_job_hours": hours}
    limits.update({name: value for name, value in given.items() if value is not None})
    if not limits:
        raise fail(ConfigError("give --queued, --running, --hours or --reset"))
    try:
        with open_database() as session:
            user = update_user(session, get_user(session, username).id, limits=limits)
            audit(session, "user.update", target=f"user:{user.id}", fields=sorted(limits))
            now = account_limits(session, user.id, settings())
    except PlatformError as error:
        raise fail(error) from None
    shown = [
        f"{label} {getattr(now, name):g}" + ("" if name in now.own else " (default)")
        for label, name in (
            ("queued", "max_queued_jobs"),
            ("running", "max_running_jobs"),
            ("hours", "max_job_hours"),
        )
    ]
    typer.echo(f"{user.username}: " + ", ".join(shown))


audit_app = typer.Typer(help="The hash-chained audit log and its signed checkpoints.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit chain and, with AUDIT_ANCHOR_KEY, every signed checkpoint in AUDIT_ANCHOR_FILE: name
    the altered or deleted entry, a truncated log or a forged checkpoint (exit 1)."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.services.audit import anchor_file, anchor_key, read_checkpoints, verify_log

    config = settings()
    try:
        key = anchor_key(config)
        database = open_database()
    except PlatformError as error:
        raise fail(error) from None
    path = anchor_file(config)
    checkpoints, problems = read_checkpoints(path, key) if key else (None, [])
    with database as session:
        report = verify_log(session, checkpoints)
    problems = report.problems + problems
    typer.echo(f"audit log {'intact' if not problems else 'NOT intact'}: {report.entries} entries")
    if key is None:
        typer.echo(
            "anchors not checked: AUDIT_ANCHOR_KEY is not set (the chain alone shows neither deleted newest "
            "entries nor a recomputed chain)"
        )
    elif report.newest is not None:
        typer.echo(
            f"anchored: {report.anchored} entries, up to entry {report.newest.id}, by {report.checkpoints} "
            f"signed checkpoints in {path} (newest holding: {report.newest.at}); {report.newer} entries "
            "newer than the newest checkpoint"
        )
    else:
        why = "none still holds" if report.checkpoints else "none yet: run `finetune audit checkpoint`"
        typer.echo(f"anchored: none of the {report.entries} entries (checkpoints in {path}: {why})")
    for problem in problems:
        typer.secho(problem, fg=typer.colors.RED, err=True)
    if problems:
        raise typer.Exit(code=1)


@audit_app.command("checkpoint")
def audit_checkpoint(
    every: Annotated[
        float | None,
        typer.Option(
            "--every",
            min=1.0,
            help="Repeat every SECONDS (a sidecar or long-running job); stops at the first problem found.",
        ),
    ] = None,
) -> None:
    """Check the entries since the newest checkpoint (the whole log the first time), then append a signed
    checkpoint of the newest entry to AUDIT_ANCHOR_FILE (needs AUDIT_ANCHOR_KEY). A log that fails gets no
    checkpoint (exit 1); nothing new, nothing written. `finetune audit verify` checks everything."""
    # lazy: sqlalchemy, kept off the start of every finetune command
    from sqlalchemy.exc import OperationalError

    from finetune_platform.services.audit import anchor_key

    config = settings()
    try:
        key = anchor_key(config)
        if key is None:
            raise ConfigError(
                "AUDIT_ANCHOR_KEY is not set: checkpoints are signed with it (`openssl rand -hex 32`; give it "
                "to the checkpoint job only, never to the API)"
            )
        migrate_database()
    except PlatformError as error:
        raise fail(error) from None
    while True:
        try:
            _checkpoint_once(config, key)
        except OperationalError as error:  # the database is away for a moment: try again next round
            if every is None:
                raise
            typer.secho(f"checkpoint skipped: {error.__class__.__name__}: {error}", err=True)
        if every is None:
            return
        time.sleep(every)


def _checkpoint_once(config, key: bytes) -> None:
    # lazy: sqlalchemy, kept off the start of every finetune command
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import (
        anchor_file,
        append_checkpoint,
        next_checkpoint,
        read_checkpoints,
    )

    path = anchor_file(config)
    checkpoints, problems = read_checkpoints(path, key)
    with session_scope(config) as session:
        report, checkpoint = next_checkpoint(session, checkpoints)
    problems = report.problems + problems
    if problems:
        for problem in problems:
            typer.secho(problem, fg=typer.colors.RED, err=True)
        typer.secho("no checkpoint written: the audit log fails verification", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    if checkpoint is None:
        state = f"nothing new after entry {report.last_id}" if report.entries else "the log is empty"
        typer.echo(f"no checkpoint needed: {state}")
        return
    append_checkpoint(path, checkpoint, key)
    typer.echo(
        f"checkpoint: entry {checkpoint.id} (hash {checkpoint.hash}), {checkpoint.entries} entries, "
        f"appended to {path}"
    )


def api(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Server processes.")] = 1,
) -> None:
    """Serve the REST API (OpenAPI docs at /docs). Outside local mode JWT_SECRET must be set."""
    # lazy: uvicorn, fastapi, kept off the start of every finetune command
    import uvicorn

    from finetune_platform.api.app import create_app

    try:
        create_app(settings())  # fail here, with the reason, when the secret or database is not usable
    except PlatformError as error:
        raise fail(error) from None
    uvicorn.run(
        "finetune_platform.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        **settings().proxy_options(),
    )


def ui(
    api_url: Annotated[
        str,
        typer.Option("--api-url", envvar="FINETUNE_API_URL", help="The platform's REST API the UI talks to."),
    ] = "http://127.0.0.1:8000",
    serve_url: Annotated[
        str,
        typer.Option(
            "--serve-url",
            envvar="FINETUNE_SERVE_URL",
            help="The inference server (`finetune serve`) the Playground page asks.",
        ),
    ] = "http://127.0.0.1:8080",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 8501,
) -> None:
    """Serve the web UI (Streamlit): log in, follow and cancel jobs, administer users and read the audit log."""
    # Become Streamlit (no child process): a stop signal reaches it directly and leaves nothing orphaned.
    os.execve(
        sys.executable,
        streamlit_command(host, port, settings().MAX_UPLOAD_BYTES),
        {**os.environ, "FINETUNE_API_URL": api_url, "FINETUNE_SERVE_URL": serve_url},
    )


def streamlit_command(host: str, port: int, upload_bytes: int) -> list[str]:
    """How `finetune ui` starts Streamlit: the ASGI wrapper of ui/app.py (Streamlit's server with the platform's
    security headers in front), for users rather than app developers: no Deploy button, no developer menu
    (toolbar mode minimal), and the uploader's limit is the API's (MAX_UPLOAD_BYTES, in Streamlit's whole MB)."""
    script = Path(finetune_platform.ui.__file__).parent / "asgi.py"
    return [
        sys.executable, "-m", "streamlit", "run", str(script), "--server.address", host, "--server.port", str(port),
        "--server.headless", "true", "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
        "--server.maxUploadSize", str(upload_megabytes(upload_bytes)),
    ]  # fmt: skip
