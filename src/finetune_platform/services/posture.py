"""The deployment's security posture, as `finetune security-check` prints it: secrets, the tracking server's
reachability and authentication, which proxies are believed, quotas and limits, the database role.

Each check says ok, warn or fail and why. In local mode (one person's machine) nothing fails; elsewhere a
fail means a guarantee of the README's security section does not hold for this deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import text

from finetune_platform.db.session import engine_for
from finetune_platform.services.audit import anchor_file
from finetune_platform.settings import Settings, secret_problem

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True)
class Check:
    area: str
    status: Status
    message: str


def posture(settings: Settings, *, probe_mlflow: bool = True) -> list[Check]:
    local = settings.ENVIRONMENT == "local"
    bad: Status = "warn" if local else "fail"
    checks = [Check("environment", "ok" if not local else "warn", _environment(settings))]
    checks += _secrets(settings, bad)
    checks.append(_mlflow(settings, bad, probe_mlflow))
    checks.append(_forwarding(settings, bad))
    checks.append(_anchors(settings))
    checks.append(_metrics(settings, bad))
    checks += _limits(settings)
    checks.append(_database(settings, bad))
    return checks


def _environment(settings: Settings) -> str:
    if settings.ENVIRONMENT == "local":
        return (
            "local: embedded defaults, secrets not enforced (set ENVIRONMENT=production on a shared server)"
        )
    return f"{settings.ENVIRONMENT}: secrets enforced, HSTS {'on' if settings.ENVIRONMENT == 'production' else 'off'}"


def _secrets(settings: Settings, bad: Status) -> list[Check]:
    checks = []
    named = [("JWT_SECRET", settings.JWT_SECRET), ("METRICS_TOKEN", settings.METRICS_TOKEN)]
    named += [(f"SERVE_API_KEYS[{i}]", key) for i, key in enumerate(settings.SERVE_API_KEYS)]
    named += [
        ("AUDIT_ANCHOR_KEY", settings.AUDIT_ANCHOR_KEY),
        ("DATABASE_APP_PASSWORD", settings.DATABASE_APP_PASSWORD),
    ]
    for name, secret in named:
        if secret is None:
            if name == "JWT_SECRET":
                status: Status = "warn" if settings.ENVIRONMENT == "local" else "fail"
                checks.append(
                    Check(f"secret {name}", status, "not set (local mode keeps a random key on disk)")
                )
            continue
        problem = secret_problem(secret.get_secret_value())
        checks.append(
            Check(f"secret {name}", bad if problem else "ok", problem or "set, passes the secret policy")
        )
    return checks


def _mlflow(settings: Settings, bad: Status, probe: bool) -> Check:
    """A tracking server must refuse anonymous requests: whoever reads it reads every run and adapter."""
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return Check(
            "mlflow", "ok", "embedded store (a file beside the platform, not reachable over the network)"
        )
    if not probe:
        return Check("mlflow", "warn", "tracking server not probed")
    parts = urlsplit(uri)
    bare = urlunsplit(
        (parts.scheme, parts.hostname + (f":{parts.port}" if parts.port else ""), parts.path, "", "")
    )
    try:
        answer = httpx.get(
            f"{bare.rstrip('/')}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, timeout=5
        )
    except httpx.HTTPError as exc:
        return Check("mlflow", "warn", f"tracking server {bare} did not answer: {exc.__class__.__name__}")
    if answer.status_code in (401, 403):
        return Check(
            "mlflow", "ok", f"tracking server {bare} refuses anonymous requests ({answer.status_code})"
        )
    return Check(
        "mlflow",
        bad,
        f"tracking server {bare} answers anonymous requests ({answer.status_code}): anyone who reaches it reads "
        "every run and can move the production alias; enable its basic auth and keep it on an internal network",
    )


def _forwarding(settings: Settings, bad: Status) -> Check:
    networks = settings.trusted_proxies
    if not networks:
        return Check("forwarded headers", "ok", "X-Forwarded-For ignored: the client address is the TCP peer")
    wide = [network for network in networks if network.num_addresses >= 2**24 or network.is_loopback]
    if wide:
        return Check(
            "forwarded headers",
            bad,
            f"X-Forwarded-For believed from {settings.FORWARDED_ALLOW_IPS}: {', '.join(map(str, wide))} holds clients "
            "(or every local process), who can then spoof their address to the throttle and the audit log; "
            "list only the ingress controller's addresses",
        )
    return Check("forwarded headers", "ok", f"X-Forwarded-For believed from {settings.FORWARDED_ALLOW_IPS}")


def _anchors(settings: Settings) -> Check:
    """Signed checkpoints are what shows truncation; the API itself must not hold their key."""
    if settings.AUDIT_ANCHOR_KEY is not None:
        return Check(
            "audit anchors",
            "warn",
            "AUDIT_ANCHOR_KEY is set for this process: fine for the checkpoint/verify job, wrong for the API, "
            "workers or UI (whoever holds it can sign a rewritten log)",
        )
    path = anchor_file(settings)
    if settings.ENVIRONMENT != "local" and not (path.is_file() and path.stat().st_size):
        return Check(
            "audit anchors",
            "warn",
            f"no signed checkpoints in {path.name}: run `finetune audit checkpoint` from a job that holds "
            "AUDIT_ANCHOR_KEY (the chart's CronJob does), or truncation of the log goes unseen",
        )
    return Check("audit anchors", "ok", "signed checkpoints present" if path.is_file() else "local mode")


def _metrics(settings: Settings, bad: Status) -> Check:
    if settings.ENVIRONMENT == "local":
        return Check("metrics", "ok", "/metrics open (local mode)")
    if settings.METRICS_TOKEN is None:
        return Check("metrics", "ok", "/metrics answers 404 (no METRICS_TOKEN: the API serves no metrics)")
    return Check("metrics", "ok", "/metrics needs Authorization: Bearer <METRICS_TOKEN>")


def _limits(settings: Settings) -> list[Check]:
    values = {
        "login throttle": f"{settings.LOGIN_MAX_FAILURES} failures per account and address per "
        f"{settings.LOGIN_WINDOW_SECONDS} s, shared through {'Redis' if settings.REDIS_URL else 'the database'}",
        "uploads": f"at most {settings.MAX_UPLOAD_BYTES:,} bytes",
    }
    for name, field in (
        ("JSON bodies", "MAX_JSON_BODY_BYTES"),
        ("queued jobs per user", "MAX_QUEUED_JOBS_PER_USER"),
        ("running jobs per user", "MAX_RUNNING_JOBS_PER_USER"),
        ("hours per job", "JOB_MAX_HOURS"),
    ):
        if hasattr(settings, field):
            values[name] = f"{getattr(settings, field):,} ({field})"
    return [Check(f"limit: {name}", "ok", value) for name, value in values.items()]


def _database(settings: Settings, bad: Status) -> Check:
    """On PostgreSQL the application must not own the audit table (its owner can disable the triggers)."""
    url = settings.database_url
    if not url.startswith("postgresql"):
        return Check(
            "database", "ok" if settings.ENVIRONMENT == "local" else "warn", "SQLite file (one host)"
        )
    try:
        with engine_for(url).connect() as connection:
            row = connection.execute(
                text(
                    "SELECT current_user, t.tableowner, r.rolsuper, pg_has_role(current_user, t.tableowner, 'MEMBER'), "
                    "pg_has_role(current_user, n.nspowner, 'MEMBER') FROM pg_tables t "
                    "JOIN pg_namespace n ON n.nspname = t.schemaname JOIN pg_roles r ON r.rolname = current_user "
                    "WHERE t.tablename = 'audit_events'"
                )
            ).first()
    except Exception as exc:
        return Check("database", "warn", f"could not inspect PostgreSQL: {exc.__class__.__name__}")
    if row is None:
        return Check("database", "warn", "no audit_events table (run `finetune db upgrade`)")
    user, owner, superuser, owner_member, schema_member = row
    if superuser or owner_member or schema_member:
        why = (
            "is a superuser"
            if superuser
            else "owns audit_events, or has its owner's rights"
            if owner_member
            else "owns its schema (a database owner does), so it can drop the table"
        )
        return Check(
            "database",
            bad,
            f"connected as {user!r}, which {why}: it can disable the audit log's triggers or drop it; connect the "
            "application as finetune_app (DATABASE_URL)",
        )
    return Check("database", "ok", f"connected as {user!r}: does not own audit_events (owner {owner!r})")
