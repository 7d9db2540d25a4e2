"""The one place the platform reads its environment: a single pydantic-settings object."""

from __future__ import annotations

import ipaddress
import itertools
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from finetune_platform.errors import ConfigError

MIN_SECRET_BYTES = 32
MIN_SECRET_BITS = (
    80  # estimated from the characters' frequencies (Shannon): `openssl rand -hex 16` gives ~110
)
# Words of 5+ letters: a random 43-character token contains one by chance about once in a million.
PLACEHOLDERS = (
    "change",
    "placeholder",
    "example",
    "secret",
    "default",
    "xxxxx",
    "dummy",
    "password",
    "letmein",
    "qwerty",
    "insecure",
)


def secret_problem(value: str) -> str | None:
    """Why ``value`` is not a usable secret, or None: the one policy every process applies.

    At least 32 bytes; no placeholder word; enough variety (about 80 bits by a per-character entropy
    estimate, at least 8 distinct characters); not a run such as ``abcdef…`` and not a repeated pattern.
    `openssl rand -hex 32` and `python -c "import secrets; print(secrets.token_urlsafe(32))"` pass.
    """
    size = len(value.encode("utf-8"))
    if size < MIN_SECRET_BYTES:
        return f"at least {MIN_SECRET_BYTES} bytes outside local mode (got {size})"
    lowered = value.lower()
    if any(word in lowered for word in PLACEHOLDERS):
        return "looks like a placeholder"
    counts = Counter(value)
    bits = -sum(n * math.log2(n / len(value)) for n in counts.values())
    if len(counts) < 8 or bits < MIN_SECRET_BITS:
        return (
            f"looks like a placeholder (too little variety: about {bits:.0f} bits, needs {MIN_SECRET_BITS})"
        )
    steps = sum(1 for a, b in itertools.pairwise(value) if abs(ord(b) - ord(a)) == 1)
    if steps * 2 > len(value):
        return "looks like a placeholder (a run of neighbouring characters)"
    for period in range(1, len(value) // 2 + 1):
        same = sum(1 for i in range(len(value) - period) if value[i] == value[i + period])
        if same * 2 > len(value) - period:
            return "looks like a placeholder (a repeated pattern)"
    return None


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
    SWEEP_STORAGE_URL: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy URL of the sweeps' Optuna studies. Unset: on PostgreSQL the app database itself (schema "
            "`optuna`, created by the migrations); on SQLite a file beside it (`<name>-optuna.db`), since Optuna's "
            "tables include an `alembic_version` of their own."
        ),
    )
    MLFLOW_ENABLED: bool = Field(
        default=True, description="Log every training run to MLflow (the model registry needs it)."
    )
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
    RETRY_BACKOFF_SECONDS: float = Field(
        default=5.0,
        ge=0,
        description=(
            "A job released after a retryable failure may be claimed again only after this many seconds, doubled "
            "for each further failed attempt (attempt n waits RETRY_BACKOFF_SECONDS * 2**(n-1)); 0: at once."
        ),
    )
    RETRY_BACKOFF_MAX_SECONDS: float = Field(
        default=300.0, ge=0, description="The longest retry backoff, however many attempts have failed."
    )
    OUTBOX_RETENTION_SECONDS: float = Field(
        default=86400.0,
        gt=0,
        description="The reconciler deletes dispatch outbox rows sent longer ago than this (unsent rows stay).",
    )
    JWT_SECRET: SecretStr | None = Field(
        default=None,
        description=(
            "HS256 signing key; outside local mode required and checked by the secret policy (>= 32 bytes, no "
            "placeholder, ~80 bits of variety: `openssl rand -hex 32`). Unset in local mode: a random key kept "
            "in FINETUNE_HOME."
        ),
    )
    JWT_EXPIRE_MINUTES: int = Field(default=60, ge=1, le=24 * 60, description="Lifetime of an access token.")
    MAX_UPLOAD_BYTES: int = Field(
        default=100 * 1024 * 1024, ge=1, description="Largest dataset upload accepted."
    )
    LOGIN_MAX_FAILURES: int = Field(
        default=5,
        ge=1,
        description=(
            "Failed logins per account and address before 429 (per window). An address with 4x as many failures "
            "over any accounts is slowed to one try per window/(4 x this), never locked."
        ),
    )
    LOGIN_WINDOW_SECONDS: int = Field(
        default=300, ge=1, description="Window (and longest wait) of login throttling."
    )
    FORWARDED_ALLOW_IPS: str = Field(
        default="",
        max_length=4096,
        description=(
            "Comma-separated proxy addresses or CIDR ranges whose X-Forwarded-For is believed (the ingress "
            "controller's range); empty: the client address is the TCP peer and forwarding headers are ignored."
        ),
    )
    METRICS_TOKEN: SecretStr | None = Field(
        default=None,
        description=(
            "Bearer token Prometheus sends for /metrics; outside local mode /metrics answers 401 without it "
            "(unset: 404). Checked by the secret policy."
        ),
    )
    MLFLOW_UI_URL: str | None = Field(
        default=None, description="Address of the MLflow UI shown by GET /mlflow."
    )
    SERVE_MAX_ADAPTERS: int = Field(
        default=20,
        ge=1,
        description="Adapters resident in finetune serve before the least recently used is unloaded.",
    )
    SERVE_BATCH_WAIT_MS: float = Field(
        default=0.0, ge=0, le=100, description="Extra time a batch stays open to gather requests (0: none)."
    )
    SERVE_MAX_BATCH: int = Field(
        default=64,
        ge=1,
        le=4096,
        description="Largest /predict/batch request (413 above) and the most texts in one forward pass.",
    )
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
        description=(
            "API keys (JSON list) that `finetune serve` accepts as X-API-Key besides platform tokens outside local "
            "mode; each is checked by the secret policy."
        ),
    )
    BROKER_TRANSPORT_OPTIONS: dict[str, Any] = Field(
        default_factory=dict,
        description='Extra kombu transport options as JSON, e.g. {"visibility_timeout": 3600}.',
    )

    VALIDATION_CONCURRENCY: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Uploads validated at once per API process, each in its own child of up to VALIDATION_MEMORY_MB; a "
            "further upload waits up to 30 s for a slot, then answers 429."
        ),
    )
    VALIDATION_TIMEOUT_SECONDS: float = Field(
        default=600.0,
        gt=0,
        le=86_400,
        description="Seconds the validation of one upload may take; past it the child is killed and 422 answered.",
    )
    AUDIT_ANCHOR_FILE: Path | None = Field(
        default=None,
        description=(
            "Append-only JSONL of signed audit checkpoints (`finetune audit checkpoint`); unset: "
            "FINETUNE_HOME/audit-anchors.jsonl. Put it where the API cannot write, and copy it off the host."
        ),
    )
    AUDIT_ANCHOR_KEY: SecretStr | None = Field(
        default=None,
        description=(
            "HMAC-SHA256 key of the audit checkpoints (secret policy; `openssl rand -hex 32`). Give it only to the "
            "job that runs `finetune audit checkpoint` and `verify`, never to the API; unset: verify checks the "
            "hash chain only."
        ),
    )
    DATABASE_APP_PASSWORD: SecretStr | None = Field(
        default=None,
        description=(
            "PostgreSQL: `finetune db upgrade`, run as the tables' owner, sets this password on the role "
            "finetune_app (which owns no table and may only append to the audit log); the platform's "
            "DATABASE_URL then uses that role. Checked by the secret policy outside local mode."
        ),
    )

    @field_validator("FORWARDED_ALLOW_IPS")
    @classmethod
    def _networks(cls, value: str) -> str:
        for part in filter(None, (p.strip() for p in value.split(","))):
            try:
                ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise ValueError(f"FORWARDED_ALLOW_IPS: {part!r} is not an address or CIDR range") from None
        return value

    @property
    def trusted_proxies(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [
            ipaddress.ip_network(part, strict=False)
            for part in filter(None, (p.strip() for p in self.FORWARDED_ALLOW_IPS.split(",")))
        ]

    def proxy_options(self) -> dict[str, Any]:
        """uvicorn's forwarding-header options: believed only from FORWARDED_ALLOW_IPS (uvicorn itself would
        trust any local client, and read its own environment variable)."""
        return {
            "proxy_headers": bool(self.trusted_proxies),
            "forwarded_allow_ips": self.FORWARDED_ALLOW_IPS or "",
        }

    def secret_problems(self, *, require_jwt: bool = True) -> list[str]:
        """Every configured secret that breaks the policy (``secret_problem``), by variable name. Outside
        local mode JWT_SECRET is also required (``require_jwt``: the API; `finetune serve` may run on API keys
        alone). Local mode checks nothing: it is one person's machine."""
        if self.ENVIRONMENT == "local":
            return []
        problems = []
        if require_jwt and self.JWT_SECRET is None:
            problems.append(
                "JWT_SECRET is required outside local mode; generate one with `openssl rand -hex 32`"
            )
        named = [("JWT_SECRET", self.JWT_SECRET), ("METRICS_TOKEN", self.METRICS_TOKEN)]
        named += [
            ("AUDIT_ANCHOR_KEY", self.AUDIT_ANCHOR_KEY),
            ("DATABASE_APP_PASSWORD", self.DATABASE_APP_PASSWORD),
        ]
        named += [(f"SERVE_API_KEYS[{i}]", key) for i, key in enumerate(self.SERVE_API_KEYS)]
        for name, secret in named:
            if secret is not None and (problem := secret_problem(secret.get_secret_value())):
                problems.append(f"{name}: {problem}; generate one with `openssl rand -hex 32`")
        return problems

    @model_validator(mode="after")
    def _secret_policy(self, info: ValidationInfo) -> Settings:
        """The secret policy as a validator: a process that runs on these settings validates them with
        ``context={"secrets": "enforce", "require_jwt": ...}`` and gets no settings while a secret breaks it.

        Plain construction (``Settings()``, ``get_settings()``) is not refused: `finetune security-check`
        must build the settings it reports on, and processes that hold no secret (`finetune db upgrade`, the
        CLI) start whatever the secrets are. ``check_secrets`` is the enforcing entry point."""
        context = info.context or {}
        if context.get("secrets") == "enforce":
            problems = self.secret_problems(require_jwt=context.get("require_jwt", True))
            if problems:
                raise ValueError("; ".join(problems))
        return self

    def check_secrets(self, *, require_jwt: bool = True) -> None:
        """Refuse to start (ConfigError naming each variable) when a secret breaks the policy; every process
        (API, `finetune serve`, workers) calls it at start. It validates these settings again through the
        ``_secret_policy`` validator, in enforcing mode."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        try:
            type(self).model_validate(values, context={"secrets": "enforce", "require_jwt": require_jwt})
        except ValidationError as refused:
            raise ConfigError(
                "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in refused.errors())
            ) from None

    MAX_JSON_BODY_BYTES: int = Field(
        default=1024 * 1024,
        ge=1024,
        description=(
            "Largest request body in bytes of a JSON route (API and finetune serve); a larger one is answered "
            "413 before it is read, an anonymous one 401 unread. Dataset uploads have MAX_UPLOAD_BYTES, "
            "/predict/batch SERVE_MAX_BODY_BYTES."
        ),
    )
    SERVE_MAX_BODY_BYTES: int = Field(
        default=8 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest /predict/batch body in bytes (413 before it is read): room for SERVE_MAX_REQUEST_CHARS "
            "characters written as JSON \\u escapes."
        ),
    )
    SERVE_MAX_TEXT_CHARS: int = Field(
        default=20_000,
        ge=1,
        description=(
            "Longest text in characters that finetune serve accepts (422 naming the text). Models read at most "
            "max_length tokens: a text is cut to 16 characters a token before it is tokenised."
        ),
    )
    SERVE_MAX_REQUEST_CHARS: int = Field(
        default=1_000_000,
        ge=1,
        description="Characters of all texts of one /predict/batch request (413 above).",
    )
    SERVE_MAX_BATCH_TOKENS: int = Field(
        default=2048,
        ge=1,
        description=(
            "Tokens finetune serve runs through a model in one go: larger work (a big batch, many requests) is "
            "split into pieces of this size, and requests that arrive meanwhile are served between the pieces."
        ),
    )

    POOL_MAX_DEVICES: int = Field(
        default=2,
        ge=1,
        le=64,
        description=(
            "Most training.devices (data-parallel processes) a job sent to QUEUE_NAME may ask for: what one worker "
            "of that queue runs (its GPUs, or processes over gloo on the CPU: keep it at or below its cores). A "
            "submit asking for more is refused with 422 naming training.devices."
        ),
    )
    GPU_POOL_MAX_DEVICES: int = Field(
        default=8,
        ge=1,
        le=64,
        description=(
            "Most training.devices a device: cuda job may ask for when GPU_QUEUE_NAME is set: the GPUs of one GPU "
            "worker (Helm: workers.gpu.gpusPerPod). A submit asking for more is refused with 422."
        ),
    )
    MAX_QUEUED_JOBS_PER_USER: int = Field(
        default=20,
        ge=1,
        le=100_000,
        description=(
            "Jobs one account may have waiting to start (status queued); a further submit or retry is refused "
            "with 429 naming the limit. An admin may set an account's own (max_queued_jobs: PATCH /users/{id}, "
            "`finetune users set-quota --queued`)."
        ),
    )
    MAX_RUNNING_JOBS_PER_USER: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description=(
            "Jobs of one account that run at once; a worker leaves a further one queued (event 'waiting', no "
            "attempt counted) and it starts after one of them ends. Per account: max_running_jobs."
        ),
    )
    JOB_MAX_HOURS: float = Field(
        default=24.0,
        gt=0,
        le=8760,
        allow_inf_nan=False,
        description=(
            "Hours a job may run, summed over its attempts (at most 8760). Past it the worker stops the job at "
            "its next step, saving a checkpoint, and fails it for good: 'stopped: exceeded the job time limit "
            "of N h (JOB_MAX_HOURS)'. Per account: max_job_hours."
        ),
    )
    MAX_DATASET_ROWS: int = Field(
        default=10_000_000,
        ge=1,
        description=(
            "Data rows a dataset file may hold, counted while it is read (and, for Parquet, from its metadata "
            "before anything is decoded). A file with more is refused with 422 naming the limit and the row; "
            "an upload is then not recorded."
        ),
    )
    AUDIT_MAX_ROWS: int = Field(
        default=250_000,
        ge=1,
        le=10_000_000,
        description=(
            "Rows (training and validation together) one data audit takes, from 1 to 10,000,000: its memory "
            "(about 32 KB a row) and time (about 7 ms a row on 2 CPU cores) grow with them. A larger audit is "
            "refused before anything is embedded: POST /datasets/{id}/audit with 422 and no task queued, finetune "
            "data audit with exit code 1, data.audit before training."
        ),
    )
    MAX_DATASET_DECODED_BYTES: int = Field(
        default=512 << 20,
        ge=1,
        description=(
            "Bytes the text and label cells of a dataset file may decode to (strings as UTF-8, a number as 8), "
            "512 MiB by default: counted while reading, and for Parquet first from the uncompressed sizes in its "
            "metadata, then through dictionary pages before they are expanded, so a small compressed file that "
            "decodes huge is refused with 422 naming the limit and the row."
        ),
    )
    MAX_TEXT_CHARS: int = Field(
        default=2_000_000,
        ge=1,
        description=(
            "Characters one text or label cell may hold (texts are cut to model.max_length tokens for training "
            "anyway). A longer cell refuses the file with 422 naming the row, the column and its length."
        ),
    )
    MAX_JSON_DEPTH: int = Field(
        default=64,
        ge=3,
        le=500,
        description=(
            "Levels of arrays and objects a JSON dataset, or one JSONL line, may nest (a record in a JSON array "
            "is level 2); measured before parsing. Deeper: 422 naming the line. At most 500, well inside what "
            "the parser manages."
        ),
    )
    VALIDATION_MEMORY_MB: int = Field(
        default=2048,
        ge=128,
        description=(
            "Memory, in MiB, that validating one uploaded dataset may take: validation runs in a child process "
            "whose address space (RLIMIT_AS) may grow this much past what Python, pandas and pyarrow map at its "
            "start, so the API process never decodes an upload itself. An upload that needs more is refused with "
            "422 'validation needed more memory than its limit of N MiB (VALIDATION_MEMORY_MB)'."
        ),
    )

    MLFLOW_PUBLIC_SUMMARY: bool = Field(
        default=True,
        description=(
            "GET /mlflow (public, no sign-in) also lists experiment names with their run counts and newest run "
            "time (at most 50 experiments; never params, metrics, artifacts, run names or owners). false: "
            "status only, for servers where experiment names are private."
        ),
    )
    EXPERIMENTS_ADMIN_ONLY: bool = Field(
        default=False,
        description=(
            "true: GET /experiments and its sub-routes (runs, compare, mlflow/{run_id}) answer 403 to non-admins, "
            "the Finetune-30-days README's rule. false: every user sees the runs of their own jobs, admins all."
        ),
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
    def sweep_storage_url(self) -> str:
        if self.SWEEP_STORAGE_URL:
            return self.SWEEP_STORAGE_URL
        url = self.database_url
        if url.startswith("sqlite:///"):
            database = Path(url.removeprefix("sqlite:///"))
            return f"sqlite:///{database.with_name(f'{database.stem}-optuna.db')}"
        return url

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
