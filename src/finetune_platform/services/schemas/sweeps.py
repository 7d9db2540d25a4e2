"""Sweeps: what a client sends to start one, and what it sees of a sweep and its trials."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict, Timestamp


class SweepCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "config": {"experiment": "reviews-sweep", "training": {"epochs": 2}},
                    "sweep": {
                        "objective": "accuracy",
                        "max_trials": 8,
                        "parallelism": 2,
                        "sampler": "tpe",
                        "space": {
                            "training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 5e-3},
                            "lora.r": {"type": "choice", "values": [4, 8, 16]},
                        },
                    },
                    "dataset_id": "3f0c9a52-8d1e-4b7a-9c55-0f6d2e8b1a47",
                }
            ]
        }
    )

    config: dict[str, Any] = Field(
        description=(
            "The base training config (`GET /config/schema`) every trial starts from, without data file paths or "
            "output_dir (the server fills them from the datasets)."
        )
    )
    sweep: dict[str, Any] = Field(
        description=(
            "The sweep: objective, space, sampler (grid, random, tpe), pruner (median, successive_halving, none), "
            "max_trials, max_hours, parallelism, seed, start_with (`finetune sweep schema` prints every field)."
        )
    )
    dataset_id: str = Field(max_length=36, description="Id of an uploaded training dataset (POST /datasets).")
    validation_dataset_id: str | None = Field(
        default=None, max_length=36, description="Id of an uploaded validation dataset (optional)."
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts of each trial before it fails.")


class TrialPublic(Public):
    """One trial: a training task of the sweep with the values it tried."""

    number: int = Field(
        description="The trial's number in the sweep (0, 1, ...), in the order trials started."
    )
    task_id: str = Field(description="The trial's training task (GET /task/{task_id}).")
    status: str = Field(description="queued, running, succeeded, pruned, failed or cancelled.")
    params: dict[str, Any] = Field(description="The values tried: dotted config field -> value.")
    value: float | None = Field(
        description="The objective's value: the final one, or the latest evaluation's."
    )
    evaluations: int = Field(description="Evaluations the trial has reported so far.")
    seconds: float | None = Field(description="Seconds the trial has trained, over all its attempts.")
    attempts: int = Field(description="Attempts started.")
    run_id: str | None = Field(description="MLflow run id, once training started.")
    error: str | None = Field(description="Why it failed or was pruned.")


class SweepPublic(Public):
    """A sweep as its owner (or an admin) sees it in lists."""

    id: str = Field(description="Sweep id.")
    owner_id: int = Field(description="Id of the user who started it.")
    name: str = Field(description="The sweep's label (its spec's name, or the experiment).")
    status: str = Field(
        description="running, succeeded (budget spent, a trial completed), failed or cancelled."
    )
    objective: str = Field(description="The metric optimised.")
    direction: str = Field(description="maximize or minimize.")
    sampler: str = Field(description="grid, random or tpe.")
    pruner: str = Field(description="median, successive_halving or none.")
    max_trials: int = Field(description="The trial budget.")
    parallelism: int = Field(description="Trials queued or running at once, at most.")
    trials: dict[str, int] = Field(
        description="Trials by status (queued, running, succeeded, pruned, failed, cancelled)."
    )
    best_value: float | None = Field(description="The best completed trial's objective value.")
    best_task_id: str | None = Field(description="The best completed trial's task.")
    error: str | None = Field(description="Why the sweep failed.")
    created_at: Timestamp = Field(description="Start time.")
    finished_at: Timestamp | None = Field(description="End time, when finished.")


class SweepDetail(SweepPublic):
    """A sweep with its spec and every trial, best first among the completed."""

    spec: dict[str, Any] = Field(description="The sweep's spec, as validated (defaults filled in).")
    trial_list: list[TrialPublic] = Field(description="Every trial, by number.")
    compute_seconds: float = Field(description="Seconds all trials trained, together.")
    dataset_version: str | None = Field(description="Content version of the training data.")


class SweepPromote(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model_name": "reviews-classifier", "stage": "Production"}]}
    )

    model_name: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Register under this name (default: the base config's registry.model_name or experiment).",
    )
    stage: str = Field(
        default="Production",
        pattern=r"^(Staging|Production)$",
        description="The stage the new version moves to: Staging or Production (the default).",
    )


class SweepPromoted(Public):
    sweep_id: str = Field(description="The sweep.")
    task_id: str = Field(description="The trial whose model was registered.")
    model_name: str = Field(description="Registered model name.")
    version: int = Field(description="The new version.")
    stage: str = Field(description="Its stage.")
    value: float = Field(description="The trial's objective value.")
