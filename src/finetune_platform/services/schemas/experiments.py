"""Experiments and runs in the tracking store, as a client sees them (only the runs it may see)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict

RUN_ID_PATTERN = r"^[0-9a-zA-Z]{1,64}$"


class ExperimentPublic(Public):
    name: str = Field(description="Experiment name.")
    id: str = Field(description="MLflow experiment id.")
    runs: int = Field(description="Its runs you may see.")
    last_run: str | None = Field(description="Start of its newest run you may see (ISO, UTC); null: none.")
    best_accuracy: float | None = Field(description="The best final_accuracy among those runs; null: none.")


class RunPublic(Public):
    run_id: str = Field(description="MLflow run id.")
    run_name: str = Field(description="Run name.")
    experiment: str = Field(description="Experiment name.")
    status: str = Field(description="RUNNING, FINISHED, FAILED or KILLED.")
    started: str = Field(description="Start time (ISO, UTC); empty when unknown.")
    metrics: dict[str, float] = Field(description="Latest value of each metric.")
    params: dict[str, str] = Field(description="Logged parameters.")
    dataset_version: str | None = Field(description="Content version of the training data.")

    @classmethod
    def of(cls, run: Any) -> RunPublic:
        """From the tracking store's ``RunSummary``."""
        return cls(
            run_id=run.run_id,
            run_name=run.run_name,
            experiment=run.experiment,
            status=run.status,
            started=run.started,
            metrics=run.metrics,
            params=run.params,
            dataset_version=run.dataset_version,
        )


class RunComparison(Public):
    runs: list[RunPublic] = Field(description="The runs compared, in the order asked.")
    metrics: dict[str, dict[str, float | None]] = Field(
        description="Each final_ and eval_ metric: run id to value (null: the run did not log it)."
    )
    differing_params: dict[str, dict[str, str | None]] = Field(
        description="The parameters whose values differ: run id to value."
    )
    loss_curves: dict[str, list[tuple[int, float]]] = Field(
        description="Per run (`name (id prefix)`): its training loss as [step, value] pairs."
    )


class CompareRequest(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"run_ids": ["5d1c0a7e9b2f", "a08e44c3d9f1"]}]})

    run_ids: list[Annotated[str, Field(pattern=RUN_ID_PATTERN)]] = Field(
        min_length=2, max_length=10, description="Two to ten MLflow run ids."
    )
