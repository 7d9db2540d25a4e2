"""What the platform says about itself: liveness, the tracking store's status, and the training config's schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Timestamp


class Health(Public):
    status: str = Field(description="`ok` when the database answers, else `degraded`.")
    database: str = Field(description="`ok` or the error.")
    version: str = Field(description="Platform version.")


class ExperimentActivity(Public):
    name: str = Field(description="Experiment name.")
    runs: int = Field(description="Its active runs (a lower bound when the summary is not complete).")
    last_run: Timestamp | None = Field(description="Start of its newest run; null: no runs.")


class TrackingSummary(Public):
    experiments: list[ExperimentActivity] = Field(
        description="At most 50 active experiments, the most recently run first (MLflow's unused Default left out)."
    )
    experiment_count: int = Field(description="Active experiments in all, listed or not.")
    run_count: int = Field(description="Active runs counted over all of them.")
    complete: bool = Field(
        description="false: the store holds more than the 2,000 runs or 1,000 experiments counted."
    )
    as_of: Timestamp = Field(description="When the store was read (summaries are kept 30 s).")


class MlflowStatus(Public):
    backend: str = Field(description="`server` or `embedded` (a SQLite store beside the API).")
    reachable: bool = Field(description="Whether the tracking store answered.")
    ui_url: str | None = Field(description="Where to open the MLflow UI, if known.")
    summary: TrackingSummary | None = Field(
        default=None,
        description=(
            "What a dashboard may show without credentials: experiment names, run counts and newest run "
            "times, never run names, params, metrics, artifacts or owners. null when MLFLOW_PUBLIC_SUMMARY "
            "is false or the store could not be read within 3 s."
        ),
    )


class ConfigSchema(BaseModel):
    """A JSON Schema (draft 2020-12) document, as pydantic writes one."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    title: str = Field(description="`TrainConfig`.")
    type: str = Field(description="`object`.")
    properties: dict[str, Any] = Field(
        description="Each top-level field: type, default, bounds, description."
    )
    defs: dict[str, Any] = Field(
        default_factory=dict,
        alias="$defs",
        description="The sections' schemas, referenced from `properties`.",
    )
