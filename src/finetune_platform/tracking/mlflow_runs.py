"""MLflow tracking of training runs: params once, metrics in batches, the run folder as artifacts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from finetune_platform.settings import Settings
from finetune_platform.tracking.client import mlflow_client

logger = logging.getLogger("finetune_platform.tracking")

MAX_PARAM_LENGTH = 6000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000


class _TimedClient:
    """Forwards to an MlflowClient and adds up the seconds its calls take."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if not callable(method):
            return method

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


class MlflowRunTracker:
    """One MLflow run per training run; buffered so logging costs one call per flush, not per value."""

    def __init__(self, settings: Settings, experiment: str, flush_every: int = 200) -> None:
        self.tracking_uri = settings.mlflow_tracking_uri
        # No mlflow.set_tracking_uri(): it writes MLFLOW_TRACKING_URI into the process environment,
        # which would leak into every Settings object created afterwards.
        self.client = _TimedClient(mlflow_client(settings))
        self.artifact_root = settings.mlflow_artifact_root
        self.experiment = experiment
        self.flush_every = flush_every
        self.run_id: str | None = None
        self._buffer: list[Any] = []

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        # Artifacts go under FINETUNE_HOME (or the server's root), never into the working directory.
        location = (
            None
            if self.tracking_uri.startswith(("http://", "https://"))
            else (f"{self.artifact_root}/{self.experiment}")
        )
        return self.client.create_experiment(self.experiment, artifact_location=location)

    def start(self, run_name: str, tags: dict[str, str], existing_run_id: str | None = None) -> str:
        if existing_run_id:
            self.run_id = existing_run_id
            self.client.update_run(existing_run_id, status="RUNNING")
        else:
            run = self.client.create_run(self._experiment_id(), run_name=run_name, tags=tags)
            self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: mlflow, only when a run is logged

        items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(items), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + PARAMS_PER_BATCH])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag  # lazy: mlflow, only when a run is logged

        self.client.log_batch(self.run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric  # lazy: mlflow, only when a run is logged

        timestamp = int(time.time() * 1000)
        self._buffer.extend(Metric(key, value, timestamp, step) for key, value in metrics.items())
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer or self.run_id is None:
            return
        pending, self._buffer = self._buffer, []
        for start in range(0, len(pending), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=pending[start : start + METRICS_PER_BATCH])

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @property
    def seconds(self) -> float:
        """Time spent in MLflow calls so far: the run's tracking overhead."""
        return self.client.seconds

    def end(self, status: str) -> None:
        if self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=status)
