"""The one place the platform reads its environment: a single pydantic-settings object."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, computed_field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Platform settings; every field is read from the environment variable of the same name."""

    # An empty variable (JWT_SECRET= in a .env or compose file) means unset, never an empty value.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    ENVIRONMENT: Literal["local", "staging", "production"] = Field(
        default="local", description="Deployment environment; 'local' enables embedded defaults."
    )
    FINETUNE_HOME: Path = Field(
        default=Path(".finetune"),
        description="Directory for embedded state: the MLflow SQLite store, artifacts, queue, database.",
    )
    RESULTS_DIR: Path = Field(
        default=Path("results"), description="Default root of run folders (results/<experiment>/<run-id>/)."
    )
    MLFLOW_TRACKING_URI: str | None = Field(
        default=None,
        description="MLflow tracking server or store URI; unset means a SQLite file under FINETUNE_HOME.",
    )
    MODEL_REGISTRY_DIR: Path = Field(
        default=Path("data/model_registry"),
        description="Folder of model cards (one JSON file per model version).",
    )
    DATABASE_URL: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the app database (postgresql+psycopg://…); unset: SQLite under FINETUNE_HOME.",
    )
    MLFLOW_ENABLED: bool = Field(default=True, description="Log every training run to MLflow.")
    LOG_LEVEL: str = Field(default="INFO", description="Log level of the platform's loggers.")
    REDIS_URL: str | None = Field(
        default=None,
        description="Celery broker (redis://host:6379/0); unset: the filesystem transport under FINETUNE_HOME/queue.",
    )
    QUEUE_NAME: str = Field(
        default="finetune-training", description="Celery queue the training jobs go through."
    )
    GPU_QUEUE_NAME: str | None = Field(
        default=None,
        description=(
            "Queue of a GPU worker pool: jobs with device: cuda go there (its workers run with QUEUE_NAME set to "
            "it). Unset: one queue for every job."
        ),
    )
    JOB_LEASE_SECONDS: float = Field(
        default=60.0,
        gt=0,
        description="A running job's lease: a worker silent for this long is presumed dead and its job requeued.",
    )
    JOB_HEARTBEAT_SECONDS: float | None = Field(
        default=None, gt=0, description="Seconds between lease renewals; default: a quarter of the lease."
    )
    RECONCILE_SECONDS: float = Field(
        default=30.0, gt=0, description="Seconds between reconciler sweeps in each worker."
    )
    REQUEUE_AFTER_SECONDS: float = Field(
        default=120.0,
        ge=0,
        description="A queued job whose message the broker lost is sent again once it has waited this long.",
    )
    JWT_SECRET: SecretStr | None = Field(
        default=None,
        description="HS256 signing key, at least 32 bytes; unset in local mode: a random key kept in FINETUNE_HOME.",
    )
    JWT_EXPIRE_MINUTES: int = Field(default=60, ge=1, le=24 * 60, description="Lifetime of an access token.")
    MAX_UPLOAD_BYTES: int = Field(
        default=100 * 1024 * 1024, ge=1, description="Largest dataset upload accepted."
    )
    LOGIN_MAX_FAILURES: int = Field(
        default=5, ge=1, description="Failed logins per account and address before 429 (per window)."
    )
    LOGIN_WINDOW_SECONDS: int = Field(
        default=300, ge=1, description="Window (and longest wait) of login throttling."
    )
    MLFLOW_UI_URL: str | None = Field(
        default=None, description="Address of the MLflow UI shown by GET /mlflow."
    )
    SERVE_MAX_ADAPTERS: int = Field(
        default=20, ge=1, description="Adapters kept attached before the least used go."
    )
    SERVE_BATCH_WAIT_MS: float = Field(
        default=0.0, ge=0, le=100, description="Extra time a batch stays open to gather requests (0: none)."
    )
    SERVE_MAX_BATCH: int = Field(default=64, ge=1, le=4096, description="Largest /predict/batch request.")
    SERVE_RESOLVE_SECONDS: float = Field(
        default=5.0, ge=0, description="How often a stage reference (name@production) is looked up again."
    )
    METRICS_ENABLED: bool = Field(
        default=True,
        description="Serve Prometheus metrics (/metrics) and count requests; off only to measure their cost.",
    )
    WORKER_METRICS_PORT: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="Port of a worker's own /metrics (finetune worker --metrics-port).",
    )
    SERVE_RUNTIME: Literal["onnx", "onnx-int8", "torch"] = Field(
        default="onnx",
        description=(
            "Inference runtime of finetune serve: onnx (ONNX Runtime, identical outputs, ~3x faster on CPU), "
            "onnx-int8 (also int8 base weights: faster, check accuracy) or torch (PyTorch + PEFT)."
        ),
    )
    SERVE_DEVICE: Literal["auto", "cpu", "cuda", "mps"] = Field(
        default="auto",
        description=(
            "Where finetune serve runs models: auto picks CUDA when present, else the CPU. On CUDA the torch "
            "runtime serves bf16 weights (a lone adapter merged into them), batching requests that arrive together."
        ),
    )
    SERVE_CUDA_GRAPHS: bool = Field(
        default=True,
        description=(
            "On CUDA, replay a served model's forward pass from CUDA graphs captured at load (one per batch-shape "
            "bucket: a few seconds of loading); off: eager PyTorch. A model whose replay disagrees with the eager "
            "pass is served eagerly, with a warning."
        ),
    )
    SERVE_API_KEYS: list[SecretStr] = Field(
        default_factory=list,
        description="API keys accepted by `finetune serve` (JSON list) besides platform tokens.",
    )
    BROKER_TRANSPORT_OPTIONS: dict[str, Any] = Field(
        default_factory=dict,
        description='Extra kombu transport options as JSON, e.g. {"visibility_timeout": 3600}.',
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mlflow_tracking_uri(self) -> str:
        if self.MLFLOW_TRACKING_URI:
            return self.MLFLOW_TRACKING_URI
        return f"sqlite:///{(self.FINETUNE_HOME / 'mlflow.db').resolve()}"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def database_url(self) -> str:
        if self.DATABASE_URL:
            return self.DATABASE_URL
        return f"sqlite:///{(self.FINETUNE_HOME / 'finetune.db').resolve()}"

    @property
    def heartbeat_seconds(self) -> float:
        return self.JOB_HEARTBEAT_SECONDS or self.JOB_LEASE_SECONDS / 4

    @property
    def uploads_dir(self) -> Path:
        return self.FINETUNE_HOME / "uploads"

    @property
    def queue_dir(self) -> Path:
        return self.FINETUNE_HOME / "queue"

    @computed_field  # type: ignore[prop-decorator]
    @property
    def mlflow_artifact_root(self) -> str:
        return (self.FINETUNE_HOME / "mlartifacts").resolve().as_uri()


@lru_cache
def get_settings() -> Settings:
    return Settings()
