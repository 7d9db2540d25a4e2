"""Hyperparameter sweeps: start one on uploaded datasets, follow its trials (each an ordinary training task), cancel
it, read its best trial and (admins) register that trial's model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from finetune_platform.api.deps import (
    AdminUser,
    CurrentUser,
    DbSession,
    PageLimit,
    PageOffset,
    SettingsDep,
    audit,
)
from finetune_platform.api.schemas import errors
from finetune_platform.services.job_requests import submit_sweep_request
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.sweeps import (
    SweepCreate,
    SweepDetail,
    SweepPromote,
    SweepPromoted,
    SweepPublic,
    TrialPublic,
)
from finetune_platform.services.sweeps import best_trial, cancel_sweep, get_sweep, list_sweeps, promote_best

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
NOT_YOURS = "No sweep with this id among the caller's (an admin's: among all)."
NONE_COMPLETED = "No trial of the sweep has completed yet."


@router.post(
    "",
    response_model=SweepDetail,
    status_code=201,
    summary="Start a sweep",
    description=(
        "Search a training config's hyperparameters: `config` is the base config every trial starts from (no "
        "paths: the server fills in its copies of the datasets and its results folder, as for `POST /train`), "
        "`sweep` the objective, space, sampler, pruner and budget (`finetune sweep schema` prints every field). "
        "Every value the space may try is checked against the config before anything is queued (422 naming "
        "`sweep.space.<field>`); every base model it may try must be on the allow-list. The first trials "
        "(up to `parallelism`) are queued at once as training tasks; each that ends starts the next."
    ),
    responses=errors(
        401,
        403,
        404,
        413,
        422,
        429,
        e403="The model name belongs to another user.",
        e404="No dataset with this id among the caller's.",
        e422="An invalid config or sweep (naming the field), a base model not on the allow-list, or bad data.",
        e429="The account has as many tasks queued as it may (MAX_QUEUED_JOBS_PER_USER or its own limit).",
    ),
)
def create_sweep(
    request: Request, session: DbSession, settings: SettingsDep, user: CurrentUser, body: SweepCreate
) -> SweepDetail:
    sweep = submit_sweep_request(session, settings, user, body)
    audit(
        session,
        request,
        "sweep.submit",
        actor=user,
        target=f"sweep:{sweep.id}",
        dataset=body.dataset_id,
        trials=[trial.task_id for trial in sweep.trial_list],
    )
    session.commit()  # the outbox sends the first trials once the rows are committed
    return sweep


@router.get(
    "",
    response_model=Page[SweepPublic],
    summary="The caller's sweeps (admin: all)",
    description="Sweeps newest first with their trial counts and best value, optionally of one status.",
    responses=errors(401, 422),
)
def list_all_sweeps(
    session: DbSession,
    user: CurrentUser,
    status_filter: Annotated[
        str | None,
        Query(
            alias="status", max_length=16, description="Only sweeps in this state (running, succeeded, ...)."
        ),
    ] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> Page[SweepPublic]:
    return list_sweeps(session, user, status=status_filter, offset=offset, limit=limit)


@router.get(
    "/{sweep_id}",
    response_model=SweepDetail,
    summary="A sweep and its trials",
    description="The sweep's spec, status, trial counts, best value and every trial (values tried, objective "
    "value, evaluations, seconds trained), by trial number.",
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def read_sweep(sweep_id: str, session: DbSession, user: CurrentUser) -> SweepDetail:
    return get_sweep(session, user, sweep_id)


@router.get(
    "/{sweep_id}/best",
    response_model=TrialPublic,
    summary="The best completed trial",
    description="The completed trial with the best objective value (ties: the earlier trial).",
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409=NONE_COMPLETED),
)
def read_best_trial(sweep_id: str, session: DbSession, user: CurrentUser) -> TrialPublic:
    return best_trial(session, user, sweep_id)


@router.post(
    "/{sweep_id}/cancel",
    response_model=SweepDetail,
    summary="Cancel a sweep",
    description=(
        "No trial starts any more: queued trials are cancelled at once, running ones are asked to stop at their "
        "next step. Completed trials stay, and the best of them can still be promoted."
    ),
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409="The sweep has already finished."),
)
def cancel_running_sweep(
    sweep_id: str, request: Request, session: DbSession, user: CurrentUser
) -> SweepDetail:
    sweep = cancel_sweep(session, user, sweep_id)
    audit(session, request, "sweep.cancel", actor=user, target=f"sweep:{sweep_id}", status=sweep.status)
    return sweep


@router.post(
    "/{sweep_id}/promote",
    response_model=SweepPromoted,
    summary="Register the best trial's model",
    description=(
        "Admins only: register the best completed trial's adapter as a new version of `model_name` (default: "
        "the base config's registry.model_name, else its experiment) and move it to `stage`."
    ),
    responses=errors(
        401,
        403,
        404,
        409,
        422,
        e403="The caller is not an admin.",
        e404=NOT_YOURS,
        e409=NONE_COMPLETED,
    ),
)
def promote_best_trial(
    sweep_id: str,
    request: Request,
    session: DbSession,
    settings: SettingsDep,
    admin: AdminUser,
    body: SweepPromote,
) -> SweepPromoted:
    promoted = promote_best(session, settings, admin, sweep_id, model_name=body.model_name, stage=body.stage)
    audit(
        session,
        request,
        "sweep.promote",
        actor=admin,
        target=f"sweep:{sweep_id}",
        task=promoted["task_id"],
        model=f"{promoted['model_name']}@{promoted['version']}",
        stage=promoted["stage"],
    )
    return SweepPromoted(**promoted)
