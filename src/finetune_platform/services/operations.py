"""What the platform says about itself: whether its database answers, the tracking store's status (for anyone,
without credentials), and the training config's JSON schema."""

from __future__ import annotations

import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import text

from finetune_platform import __version__
from finetune_platform.db.session import engine_for
from finetune_platform.services.schemas.operations import (
    ConfigSchema,
    ExperimentActivity,
    Health,
    MlflowStatus,
    TrackingSummary,
)
from finetune_platform.settings import Settings
from finetune_platform.tracking.client import mlflow_client
from finetune_platform.tracking.summary import public_summary
from finetune_platform.training.config import TrainConfig

PROBE_SECONDS = 3  # one short probe: MLflow's client retries a dead server for minutes


def health(settings: Settings) -> Health:
    try:
        with engine_for(settings.database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # the answer names the kind of failure, never its message (it may hold the URL)
        database = f"{exc.__class__.__name__}"
    return Health(status="ok" if database == "ok" else "degraded", database=database, version=__version__)


def mlflow_status(settings: Settings) -> MlflowStatus:
    """The tracking store's kind, whether it answers, the address of its UI (never with credentials) and, unless
    MLFLOW_PUBLIC_SUMMARY is false, its experiments' names, run counts and newest run times."""
    uri = settings.mlflow_tracking_uri
    server = uri.startswith(("http://", "https://"))
    reachable = _server_answers(uri) if server else _store_answers(settings)
    summary = public_summary(settings) if reachable and settings.MLFLOW_PUBLIC_SUMMARY else None
    return MlflowStatus(
        backend="server" if server else "embedded",
        reachable=reachable,
        ui_url=without_credentials(settings.MLFLOW_UI_URL or (uri if server else None)),
        summary=None if summary is None else _summary(summary),
    )


def _server_answers(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{without_credentials(uri).rstrip('/')}/health", timeout=PROBE_SECONDS):
            return True
    except urllib.error.HTTPError as answer:  # it answered: behind basic auth, 401
        return answer.code < 500
    except (urllib.error.URLError, OSError):
        return False


def _store_answers(settings: Settings) -> bool:
    try:
        mlflow_client(settings).search_experiments(max_results=1)
        return True
    except Exception:
        return False


def _summary(summary) -> TrackingSummary:
    return TrackingSummary(
        experiments=[
            ExperimentActivity(name=item.name, runs=item.runs, last_run=item.last_run)
            for item in summary.experiments
        ],
        experiment_count=summary.experiment_count,
        run_count=summary.run_count,
        complete=summary.complete,
        as_of=summary.as_of,
    )


def without_credentials(url: str | None) -> str | None:
    """An address as users may see it: no user:password@, no query string (tokens travel there too)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def config_schema() -> ConfigSchema:
    """The TrainConfig JSON schema: every field with its type, default, bounds and description."""
    return ConfigSchema.model_validate(TrainConfig.model_json_schema())
