"""The one way the platform makes an MLflow client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finetune_platform.atomic import locked
from finetune_platform.settings import Settings

_initialised: set[str] = set()


def mlflow_client(settings: Settings) -> Any:
    """An MlflowClient for the tracking and registry store of ``settings``.

    A SQLite store is created (and migrated) by MLflow on first use. Two worker processes doing that
    at once race inside MLflow's migrations ("table ... already exists"), so the first use in each
    process happens under a file lock beside the database.
    """
    from mlflow import MlflowClient  # lazy: mlflow, slow to import; only where a store is used

    uri = settings.mlflow_tracking_uri
    if not uri.startswith("sqlite:///") or uri in _initialised:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with locked(database.with_name(database.name + ".lock")):  # the constructor creates the store
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_registered_models(max_results=1)  # and the registry store, on first use
    _initialised.add(uri)
    return client
