"""Experiments and runs for one user: every run for an admin, only the runs of their own jobs otherwise. Another
user's run answers like one that does not exist."""

from __future__ import annotations

from sqlalchemy.orm import Session

from finetune_platform.errors import NotFoundError
from finetune_platform.services.jobs import visible_runs
from finetune_platform.services.schemas.experiments import ExperimentPublic, RunComparison, RunPublic
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings
from finetune_platform.tracking.experiments import ExperimentStore


def list_experiments(session: Session, settings: Settings, user: UserPublic) -> list[ExperimentPublic]:
    """Each experiment holding runs the user may see: their count, the last start and the best accuracy."""
    listed = ExperimentStore(settings).experiments(visible_runs(session, user))
    return [ExperimentPublic(**experiment) for experiment in listed]


def list_runs(session: Session, settings: Settings, user: UserPublic, experiment: str) -> list[RunPublic]:
    """The experiment's runs the user may see, newest first; NotFoundError when there are none."""
    runs = ExperimentStore(settings).runs(experiment, visible_runs(session, user))
    return [RunPublic.of(run) for run in runs]


def get_run(session: Session, settings: Settings, user: UserPublic, run_id: str) -> RunPublic:
    # lazy: mlflow, not loaded at API start
    from mlflow.exceptions import MlflowException

    if not run_id.isalnum() or len(run_id) > 64:  # no MLflow run has such an id: not asked of the store
        raise NotFoundError(f"no run {run_id!r}")
    try:
        return RunPublic.of(ExperimentStore(settings).run(run_id, visible_runs(session, user)))
    except MlflowException:
        raise NotFoundError(f"no run {run_id!r}") from None


def compare_runs(session: Session, settings: Settings, user: UserPublic, run_ids: list[str]) -> RunComparison:
    """Final metrics side by side, the params that differ, and each run's training-loss curve."""
    # lazy: mlflow, not loaded at API start
    from mlflow.exceptions import MlflowException

    try:
        comparison = ExperimentStore(settings).compare(run_ids, only=visible_runs(session, user))
    except MlflowException:
        raise NotFoundError(f"no run among {', '.join(run_ids)}") from None
    return RunComparison(
        runs=[RunPublic.of(run) for run in comparison.runs],
        metrics=comparison.metrics,
        differing_params=comparison.differing_params,
        loss_curves=comparison.loss_curves,
    )
