"""A sweep's specification: which training config to start from, which of its fields to search over and how,
what to optimise, and how much to spend. It validates itself against ``TrainConfig`` before anything is queued:
every choice and both ends of every range make a valid training config, or the error names the field.

No Optuna here (``services.sweep_study`` turns a spec into a study); a sweep YAML is a training config with a
``sweep:`` section::

    sweep:
      objective: accuracy        # one the task reports: accuracy | macro_f1 | loss (single_label; see TASK_METRICS)
      max_trials: 12
      parallelism: 2
      sampler: tpe               # grid | random | tpe
      pruner: median             # median | successive_halving | none
      space:
        training.learning_rate: {type: loguniform, low: 1.0e-4, high: 5.0e-3}
        lora.r: {type: choice, values: [4, 8, 16]}
"""

from __future__ import annotations

import copy
import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from finetune_platform.errors import ConfigError
from finetune_platform.training.config import (
    TASK_METRICS,
    BestMetric,
    Task,
    TrainConfig,
    check_task_metric,
    config_from_dict,
    format_validation_error,
    read_document,
)

MAX_TRIALS = 1000
MAX_PARALLELISM = 64
MAX_CHOICES = 100
MAX_SPACE_FIELDS = 20
MAX_START_WITH = 100

# Fields a trial may not change: they say where the sweep's runs live and what the trials register (nothing:
# the winner is registered by `finetune sweep best --promote`).
FIXED_FIELDS = ("experiment", "output_dir", "data.train_file", "data.validation_file")
FIXED_SECTIONS = ("registry",)


class Sampler(StrEnum):
    GRID = "grid"  # every combination of the choices, once
    RANDOM = "random"
    TPE = "tpe"  # Tree-structured Parzen Estimator: learns from finished trials


class Pruner(StrEnum):
    MEDIAN = (
        "median"  # stop a trial whose evaluation is worse than the median of earlier trials at that point
    )
    SUCCESSIVE_HALVING = "successive_halving"  # keep the best 1/reduction_factor at each rung
    NONE = "none"


class Direction(StrEnum):
    MAXIMIZE = "maximize"
    MINIMIZE = "minimize"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Choice(_Strict):
    type: Literal["choice"]
    values: list[Any] = Field(
        min_length=1,
        max_length=MAX_CHOICES,
        description="The values to try (numbers, strings, booleans or lists, e.g. target_modules).",
    )


class Uniform(_Strict):
    type: Literal["uniform"]
    low: float = Field(description="Smallest value (included).")
    high: float = Field(description="Largest value.")
    step: float | None = Field(default=None, gt=0, description="Only multiples of step above low (optional).")

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class LogUniform(_Strict):
    type: Literal["loguniform"]
    low: float = Field(gt=0, description="Smallest value (included), above 0.")
    high: float = Field(gt=0, description="Largest value; sampled evenly on a log scale.")

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class IntRange(_Strict):
    type: Literal["int"]
    low: int = Field(description="Smallest value (included).")
    high: int = Field(description="Largest value (included).")
    step: int = Field(default=1, ge=1, description="Only low, low+step, ... (default 1).")
    log: bool = Field(default=False, description="Sample on a log scale (low must be ≥ 1; step must be 1).")

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log needs low ≥ 1 and step 1")
        return self


Distribution = Annotated[Choice | Uniform | LogUniform | IntRange, Field(discriminator="type")]


class Objective(_Strict):
    metric: BestMetric = Field(
        default=BestMetric.ACCURACY,
        description=(
            "The validation metric a trial is judged by: one the config's task reports (single_label: accuracy, "
            "macro_f1, loss; multi_label: micro_f1, macro_f1, subset_accuracy, loss; regression: rmse, mae, "
            "pearson, spearman, loss). Unset: the task's first (accuracy, micro_f1 or rmse)."
        ),
    )
    direction: Direction | None = Field(
        default=None, description="maximize or minimize; by default minimize for loss, else maximize."
    )

    @property
    def resolved_direction(self) -> Direction:
        if self.direction is not None:
            return self.direction
        return Direction.MAXIMIZE if self.metric.greater_is_better else Direction.MINIMIZE


class SweepSpec(_Strict):
    """What `sweep:` holds. `finetune sweep schema` prints it as JSON Schema."""

    name: str | None = Field(
        default=None,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="A label for lists and the UI (default: the experiment name).",
    )
    objective: Objective = Field(
        default_factory=Objective,
        description="The metric to optimise (a bare name such as `macro_f1` works too) and its direction.",
    )
    space: dict[str, Distribution] = Field(
        min_length=1,
        max_length=MAX_SPACE_FIELDS,
        description=(
            "Dotted training-config fields (e.g. training.learning_rate, lora.r) and how to search each: "
            "choice (values), uniform (low, high, step), loguniform (low, high) or int (low, high, step, log)."
        ),
    )
    sampler: Sampler = Field(
        default=Sampler.TPE,
        description="grid (every combination of choices; choice fields only), random, or tpe (learns).",
    )
    pruner: Pruner = Field(
        default=Pruner.MEDIAN,
        description=(
            "Stops hopeless trials at an evaluation: median (below the median of earlier trials at the same "
            "evaluation), successive_halving, or none. Trials are compared at their n-th evaluation, so set "
            "training.eval_strategy: steps with eval_steps for earlier decisions than once an epoch."
        ),
    )
    startup_trials: int = Field(
        default=3,
        ge=0,
        le=MAX_TRIALS,
        description=(
            "Trials that finish before the median pruner may stop any (and before TPE stops sampling at random)."
        ),
    )
    max_trials: int | None = Field(
        default=None,
        ge=1,
        le=MAX_TRIALS,
        description="Trials to run in all (default: the grid's size for grid, else 10).",
    )
    max_hours: float | None = Field(
        default=None,
        gt=0,
        le=24 * 365,
        description="No new trial starts once the sweep is this old; trials already running finish.",
    )
    parallelism: int = Field(
        default=1,
        ge=1,
        le=MAX_PARALLELISM,
        description="Trials queued or running at once, whatever the number of workers.",
    )
    seed: int | None = Field(
        default=None,
        ge=0,
        le=2**32 - 1,
        description="Seed of the sampler: the same seed samples the same trials.",
    )
    start_with: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=MAX_START_WITH,
        description=(
            "Trials to run first with these exact values (a subset of the space's fields; the sampler fills the "
            "rest), e.g. the config you use today."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _bare_objective(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("objective"), str):
            raw = {**raw, "objective": {"metric": raw["objective"]}}
        return raw

    @model_validator(mode="after")
    def _grid_only_choices(self) -> SweepSpec:
        if self.sampler is Sampler.GRID:
            ranges = [field for field, spec in self.space.items() if not isinstance(spec, Choice)]
            if ranges:
                raise ValueError(
                    f"space.{ranges[0]}: the grid sampler takes choice fields only (list the values to try)"
                )
            if self.max_trials is not None and self.max_trials > self.grid_size:
                raise ValueError(
                    f"max_trials: {self.max_trials} is more than the grid has combinations ({self.grid_size})"
                )
        return self

    @property
    def grid_size(self) -> int:
        return math.prod(len(spec.values) for spec in self.space.values() if isinstance(spec, Choice))

    @property
    def trial_budget(self) -> int:
        if self.max_trials is not None:
            return self.max_trials
        return self.grid_size if self.sampler is Sampler.GRID else 10

    @property
    def label(self) -> str:
        return self.name or ""


def with_params(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A trial's training config: the base config with each dotted field set to its value, and nothing
    registered (the sweep's winner is registered on request)."""
    raw = copy.deepcopy(base)
    for dotted, value in params.items():
        node = raw
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    registry = raw.setdefault("registry", {})
    registry["enabled"] = False
    return raw


def _candidates(spec: Choice | Uniform | LogUniform | IntRange) -> list[Any]:
    """The values that must each make a valid config: every choice, both ends of a range."""
    if isinstance(spec, Choice):
        return list(spec.values)
    return [spec.low, spec.high]


def check_space(spec: SweepSpec, base: dict[str, Any]) -> TrainConfig:
    """Every value the sweep may try makes a valid training config (ConfigError naming the field otherwise);
    returns the base config, validated."""
    fields = _known_fields()
    for dotted in spec.space:
        where = f"sweep.space.{dotted}"
        if dotted in FIXED_FIELDS or dotted.split(".")[0] in FIXED_SECTIONS:
            raise ConfigError(
                f"{where}: fixed for every trial of a sweep (it says where runs go or what they register)"
            )
        if dotted not in fields:
            raise ConfigError(
                f"{where}: not a training-config field (check the spelling; `finetune config schema` lists them)"
            )
    for index, fixed in enumerate(spec.start_with):
        unknown = sorted(set(fixed) - set(spec.space))
        if unknown:
            raise ConfigError(f"sweep.start_with[{index}].{unknown[0]}: not a field of sweep.space")
        try:
            config_from_dict(with_params(base, fixed))
        except ConfigError as error:
            raise ConfigError(f"sweep.start_with[{index}]: {_first_problem(error)}") from None
    base_config = config_from_dict(with_params(base, {}))
    _check_objective(spec, base_config.task)
    for dotted, distribution in spec.space.items():
        for value in _candidates(distribution):
            try:
                config_from_dict(with_params(base, {dotted: value}))
            except ConfigError as error:
                raise ConfigError(
                    f"sweep.space.{dotted}: {value!r} is not a valid value: {_first_problem(error)}"
                ) from None
    return base_config


def _check_objective(spec: SweepSpec, task: Task) -> None:
    """The objective is a metric the trials' task reports (ConfigError naming sweep.objective.metric); a spec that
    names none takes the task's first, in place, so the stored spec says what is optimised."""
    tasks = [task]
    if isinstance(spec.space.get("task"), Choice):
        tasks += [Task(value) for value in spec.space["task"].values if value in set(Task)]
    if "metric" not in spec.objective.model_fields_set:
        spec.objective.metric = TASK_METRICS[task][0]
    for each in tasks:
        try:
            check_task_metric(each, spec.objective.metric, "sweep.objective.metric")
        except ValueError as error:
            raise ConfigError(str(error)) from None


def _first_problem(error: ConfigError) -> str:
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return "; ".join(lines) if lines else str(error)


def _known_fields() -> set[str]:
    """Every dotted leaf field of TrainConfig (sections walked through their models)."""
    found: set[str] = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.")
            else:
                found.add(f"{prefix}{name}")

    walk(TrainConfig, "")
    return found


def parse_spec(raw: Any, where: str = "sweep") -> SweepSpec:
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where}: expected a mapping (objective, space, max_trials, ...), got {type(raw).__name__}"
        )
    try:
        return SweepSpec.model_validate(raw)
    except ValidationError as exc:
        message = format_validation_error(exc).replace("invalid training config:", "invalid sweep:")
        lines = message.splitlines()
        # a check of the whole spec names its field at the start of its message
        named = [f"  {where}.{line.strip().removeprefix('(config): ')}" for line in lines[1:]]
        raise ConfigError("\n".join([lines[0], *named])) from None


def split_sweep(raw: dict[str, Any]) -> tuple[dict[str, Any], SweepSpec]:
    """A sweep document (a training config with a ``sweep:`` section) as (base config, spec)."""
    if "sweep" not in raw:
        raise ConfigError(
            "no sweep: section (a sweep file is a training config plus sweep: objective, space, ...)"
        )
    base = {key: value for key, value in raw.items() if key != "sweep"}
    return base, parse_spec(raw["sweep"])


def load_sweep(path: Path | str, overrides: list[str] | None = None) -> tuple[dict[str, Any], SweepSpec]:
    """Read a sweep YAML and apply ``--set`` overrides to it (``sweep.max_trials=4`` works too)."""
    return split_sweep(read_document(path, overrides, kind="sweep"))
