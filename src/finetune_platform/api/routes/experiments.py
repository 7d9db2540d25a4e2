"""Experiments and runs in the tracking store. Everyone signed in sees experiments, with the runs of their own
jobs only (an admin: all runs); another user's run answers like one that does not exist. This widens the
Finetune-30-days README's rule (GET /experiments: admin) on purpose; EXPERIMENTS_ADMIN_ONLY=true restores it for
every route here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from finetune_platform.api.deps import DbSession, ExperimentsReader, Paged, PageOffset, SettingsDep
from finetune_platform.api.schemas import errors
from finetune_platform.services import experiments
from finetune_platform.services.schemas.common import MAX_PAGE, Page
from finetune_platform.services.schemas.experiments import (
    CompareRequest,
    ExperimentPublic,
    RunComparison,
    RunPublic,
)

router = APIRouter(tags=["experiments"])
ADMINS_ONLY = "EXPERIMENTS_ADMIN_ONLY=true and the caller is not an admin."
# Lists that answered every entry keep doing so; `limit` applies to the page asked for with paged=true.
PagedLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size with paged=true (at most 100).")]


@router.get(
    "/experiments",
    response_model=list[ExperimentPublic] | Page[ExperimentPublic],
    summary="Experiments in the tracking store",
    description=(
        "Each experiment holding runs you may see: their count, the last start and the best accuracy, by name. "
        "A bare list of them all (the Finetune-30-days README's shape); `paged=true`: a page."
    ),
    responses=errors(401, 403, 422, e403=ADMINS_ONLY),
)
def list_experiments(
    user: ExperimentsReader,
    session: DbSession,
    settings: SettingsDep,
    paged: Paged = False,
    limit: PagedLimit = 50,
    offset: PageOffset = 0,
) -> list[ExperimentPublic] | Page[ExperimentPublic]:
    listed = experiments.list_experiments(session, settings, user)
    return Page[ExperimentPublic].of(listed, limit=limit, offset=offset) if paged else listed


@router.get(
    "/experiments/runs",
    response_model=list[RunPublic] | Page[RunPublic],
    summary="An experiment's runs",
    description=(
        "Every run of the experiment you may see, newest first: id, name, status, start, final metrics, "
        "params and dataset version. A bare list; `paged=true`: a page."
    ),
    responses=errors(
        401, 403, 404, 422, e403=ADMINS_ONLY, e404="No such experiment, or none of its runs are yours."
    ),
)
def list_runs(
    user: ExperimentsReader,
    session: DbSession,
    settings: SettingsDep,
    experiment: Annotated[str, Query(min_length=1, max_length=200, description="Experiment name.")],
    paged: Paged = False,
    limit: PagedLimit = 50,
    offset: PageOffset = 0,
) -> list[RunPublic] | Page[RunPublic]:
    runs = experiments.list_runs(session, settings, user, experiment)
    return Page[RunPublic].of(runs, limit=limit, offset=offset) if paged else runs


@router.post(
    "/experiments/compare",
    response_model=RunComparison,
    summary="Compare runs",
    description="Final metrics side by side, the params that differ, and each run's training-loss curve.",
    responses=errors(
        401, 403, 404, 413, 422, e403=ADMINS_ONLY, e404="One of the runs does not exist or is not yours."
    ),
)
def compare_runs(
    user: ExperimentsReader, session: DbSession, settings: SettingsDep, body: CompareRequest
) -> RunComparison:
    return experiments.compare_runs(session, settings, user, body.run_ids)


@router.get(
    "/experiments/mlflow/{run_id}",
    response_model=RunPublic,
    summary="One MLflow run",
    description="One run: name, experiment, status, start time, params, metrics and dataset version.",
    responses=errors(401, 403, 404, 422, e403=ADMINS_ONLY, e404="No such run, or not yours."),
)
def get_run(run_id: str, user: ExperimentsReader, session: DbSession, settings: SettingsDep) -> RunPublic:
    return experiments.get_run(session, settings, user, run_id)
