"""A sweep's Optuna study: sampling, pruning and the record of every trial, in Optuna's RDB storage on the
platform's database (``Settings.sweep_storage_url``), so the API that starts trials and every worker that runs
one share it.

The sampler lives in no database: each process builds it from the sweep's spec. Its seed is the sweep's seed
plus the trial's slot (``Sweep.trials_started`` when it was asked), so two processes never draw the same
values and a sweep with a fixed seed draws the same trials on any worker.

Choice values Optuna cannot store (lists, mappings: ``lora.target_modules``) are stored as their JSON text and
decoded back; a trial's values come back as the training config takes them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from finetune_platform.settings import Settings
from finetune_platform.training.sweep_config import (
    Choice,
    Direction,
    IntRange,
    LogUniform,
    Pruner,
    Sampler,
    SweepSpec,
    Uniform,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
logger = logging.getLogger("finetune_platform.sweeps")

OPTUNA_SCHEMA = "optuna"  # where the migrations put Optuna's tables on PostgreSQL (0010)

_storages: dict[str, optuna.storages.RDBStorage] = {}
_lock = threading.Lock()


def storage(settings: Settings) -> optuna.storages.RDBStorage:
    """One Optuna storage per URL and process (creating one checks Optuna's tables)."""
    url = settings.sweep_storage_url
    with _lock:
        found = _storages.get(url)
        if found is None:
            kwargs: dict[str, Any] = {"pool_pre_ping": True}
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 60}  # workers and the API write one file
            elif not settings.SWEEP_STORAGE_URL and url.startswith("postgresql"):
                kwargs["connect_args"] = {"options": f"-csearch_path={OPTUNA_SCHEMA}"}
            found = _storages[url] = optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        return found


def _encoded(value: Any) -> Any:
    return value if value is None or isinstance(value, bool | int | float | str) else json.dumps(value)


def _choices(spec: Choice) -> list[Any]:
    return [_encoded(value) for value in spec.values]


def distributions(spec: SweepSpec) -> dict[str, Any]:
    """The spec's space as Optuna distributions (names are the dotted config fields)."""
    found: dict[str, Any] = {}
    for name, space in spec.space.items():
        if isinstance(space, Choice):
            found[name] = CategoricalDistribution(_choices(space))
        elif isinstance(space, Uniform):
            found[name] = FloatDistribution(space.low, space.high, step=space.step)
        elif isinstance(space, LogUniform):
            found[name] = FloatDistribution(space.low, space.high, log=True)
        elif isinstance(space, IntRange):
            found[name] = IntDistribution(space.low, space.high, step=space.step, log=space.log)
    return found


def sampler(spec: SweepSpec, slot: int) -> optuna.samplers.BaseSampler:
    seed = None if spec.seed is None else spec.seed + slot
    if spec.sampler is Sampler.GRID:
        # The grid's order is shuffled by its seed and trial n takes its n-th point: one seed for every process,
        # else two processes' shuffles hand two trials the same point.
        return optuna.samplers.GridSampler(
            {name: _choices(space) for name, space in spec.space.items() if isinstance(space, Choice)},
            seed=spec.seed,
        )
    if spec.sampler is Sampler.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials still running count as pessimistic results, so parallel trials spread out
    return optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(spec.startup_trials, 1), constant_liar=True
    )


def pruner(spec: SweepSpec) -> optuna.pruners.BasePruner:
    if spec.pruner is Pruner.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=0)
    if spec.pruner is Pruner.SUCCESSIVE_HALVING:
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _direction(spec: SweepSpec) -> str:
    return "maximize" if spec.objective.resolved_direction is Direction.MAXIMIZE else "minimize"


def study_name(sweep_id: str) -> str:
    return f"sweep-{sweep_id}"


def create(settings: Settings, sweep_id: str, spec: SweepSpec) -> None:
    """The sweep's study, with its ``start_with`` trials queued first (idempotent: an existing study is kept)."""
    study = optuna.create_study(
        study_name=study_name(sweep_id),
        storage=storage(settings),
        direction=_direction(spec),
        load_if_exists=True,
    )
    if study.trials:
        return
    for fixed in spec.start_with:
        study.enqueue_trial({name: _encoded(value) for name, value in fixed.items()})


def _load(settings: Settings, sweep_id: str, spec: SweepSpec, slot: int = 0) -> optuna.Study:
    return optuna.load_study(
        study_name=study_name(sweep_id),
        storage=storage(settings),
        sampler=sampler(spec, slot),
        pruner=pruner(spec),
    )


@dataclass(frozen=True)
class Asked:
    number: int  # the Optuna trial number
    params: dict[str, Any]  # dotted config field -> value, decoded


def ask(settings: Settings, sweep_id: str, spec: SweepSpec, slot: int) -> Asked:
    """A new trial and the values it tries."""
    study = _load(settings, sweep_id, spec, slot)
    trial = study.ask(distributions(spec))
    return Asked(trial.number, decode(spec, trial.params))


def decode(spec: SweepSpec, params: dict[str, Any]) -> dict[str, Any]:
    decoded = {}
    for name, value in params.items():
        space = spec.space.get(name)
        if isinstance(space, Choice) and isinstance(value, str) and value not in space.values:
            value = json.loads(value)
        decoded[name] = value
    return decoded


def _trial_id(settings: Settings, sweep_id: str, number: int) -> int:
    store = storage(settings)
    study_id = store.get_study_id_from_name(study_name(sweep_id))
    return store.get_trial_id_from_study_id_trial_number(study_id, number)


def state(settings: Settings, sweep_id: str, number: int) -> TrialState:
    return storage(settings).get_trial(_trial_id(settings, sweep_id, number)).state


def tell(
    settings: Settings, sweep_id: str, spec: SweepSpec, number: int, *, value: float | None, outcome: str
) -> bool:
    """Record how a trial ended: ``complete`` (with its objective ``value``), ``pruned`` or ``fail``. False when
    the study knew already (a retried tell, or another process told it first)."""
    if state(settings, sweep_id, number) is not TrialState.RUNNING:
        return False
    study = _load(settings, sweep_id, spec)
    states = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}
    # Several processes settle a sweep at once: another may finish the trial between the check above and the
    # tell (Optuna raises ValueError when it sees that, UpdateFinishedTrialError, a RuntimeError, when it is
    # finished between its own check and its write).
    try:
        if outcome == "complete":
            study.tell(number, value, skip_if_finished=True)
        else:
            study.tell(number, state=states[outcome], skip_if_finished=True)
    except RuntimeError:
        return False
    return True


class TrialReporter:
    """A running trial's side: report each evaluation's objective and hear whether to stop (one per attempt)."""

    def __init__(self, settings: Settings, sweep_id: str, spec: SweepSpec, number: int) -> None:
        self.store = storage(settings)
        self.trial_id = _trial_id(settings, sweep_id, number)
        self.trial = optuna.trial.Trial(_load(settings, sweep_id, spec), self.trial_id)

    def should_prune(self, evaluation: int, value: float) -> bool:
        """Report the objective at the trial's ``evaluation``-th evaluation (1, 2, ...) and ask the pruner."""
        if self.store.get_trial(self.trial_id).state is not TrialState.RUNNING:
            return False
        self.trial.report(value, evaluation)
        return self.trial.should_prune()


def trials(settings: Settings, sweep_id: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=study_name(sweep_id), storage=storage(settings)).get_trials(
        deepcopy=False
    )


def delete(settings: Settings, sweep_id: str) -> None:
    with contextlib.suppress(KeyError):
        optuna.delete_study(study_name=study_name(sweep_id), storage=storage(settings))
