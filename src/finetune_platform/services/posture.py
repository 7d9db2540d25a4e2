"""The deployment's security posture, as `finetune security-check` prints it: secrets, the tracking server's
reachability and authentication, which proxies are believed, quotas and limits, the database role.

Each check says ok, warn or fail and why. In local mode (one person's machine) nothing fails; elsewhere a
fail means a guarantee of the README's security section does not hold for this deployment.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

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
    checks.append(_forwarding(settings))
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
    anchor = getattr(settings, "AUDIT_ANCHOR_KEY", None)
    if anchor is not None:
        named.append(("AUDIT_ANCHOR_KEY", anchor))
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
    import httpx

    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")):
        return Check(
            "mlflow", "ok", "embedded store (a file beside the platform, not reachable over the network)"
        )
    if not probe:
        return Check("mlflow", "warn", "tracking server not probed")
    from urllib.parse import urlsplit, urlunsplit

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


def _forwarding(settings: Settings) -> Check:
    networks = settings.trusted_proxies
    if not networks:
        return Check("forwarded headers", "ok", "X-Forwarded-For ignored: the client address is the TCP peer")
    widest = max(networks, key=lambda network: network.num_addresses)
    everyone = widest.num_addresses >= ipaddress.ip_network("0.0.0.0/8").num_addresses
    return Check(
        "forwarded headers",
        "warn" if everyone else "ok",
        f"X-Forwarded-For believed from {settings.FORWARDED_ALLOW_IPS}"
        + (" (a very wide range: clients there can spoof addresses)" if everyone else ""),
    )


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
    from sqlalchemy import text

    from finetune_platform.db.session import engine_for

    url = settings.database_url
    if not url.startswith("postgresql"):
        return Check(
            "database", "ok" if settings.ENVIRONMENT == "local" else "warn", "SQLite file (one host)"
        )
    try:
        with engine_for(url).connect() as connection:
            row = connection.execute(
                text(
                    "SELECT current_user, t.tableowner, r.rolsuper FROM pg_tables t JOIN pg_roles r "
                    "ON r.rolname = current_user WHERE t.tablename = 'audit_events'"
                )
            ).first()
    except Exception as exc:
        return Check("database", "warn", f"could not inspect PostgreSQL: {exc.__class__.__name__}")
    if row is None:
        return Check("database", "warn", "no audit_events table (run `finetune db upgrade`)")
    user, owner, superuser = row
    if superuser or user == owner:
        return Check(
            "database",
            bad,
            f"connected as {user!r}, which {'is a superuser' if superuser else 'owns audit_events'}: it can disable "
            "the audit log's triggers; connect the application as finetune_app (DATABASE_URL)",
        )
    return Check("database", "ok", f"connected as {user!r}: does not own audit_events (owner {owner!r})")
