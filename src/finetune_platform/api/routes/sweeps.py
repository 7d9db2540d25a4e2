"""Sweeps (hyperparameter searches whose trials are training tasks): POST /sweeps, GET /sweeps, GET /sweeps/{id},
its best trial, cancel, and promoting the best trial's model (admin)."""

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
from finetune_platform.services import sweeps
from finetune_platform.services.job_requests import datasets_named, server_config
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.sweeps import (
    SweepCreate,
    SweepDetail,
    SweepPromote,
    SweepPromoted,
    SweepPublic,
    TrialPublic,
)
from finetune_platform.training.sweep_config import parse_spec

router = APIRouter(tags=["sweeps"])
NOT_YOURS = "No sweep with this id among the caller's (an admin's: among all)."


@router.post(
    "/sweeps",
    response_model=SweepDetail,
    status_code=201,
    summary="Start a sweep",
    description="A base training config, a sweep section and uploaded datasets by id; the first trials are queued.",
    responses=errors(401, 404, 422, 429),
)
def create_sweep(
    request: Request, session: DbSession, settings: SettingsDep, user: CurrentUser, body: SweepCreate
) -> SweepDetail:
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import stored_dataset

    train, train_file = stored_dataset(session, user, body.dataset_id)
    stored = {train_file: train}
    validation_file = None
    if body.validation_dataset_id:
        validation, validation_file = stored_dataset(session, user, body.validation_dataset_id)
        stored[validation_file] = validation
    with datasets_named(stored):
        base = server_config(session, body.config, train_file, validation_file, settings.RESULTS_DIR)
        detail = sweeps.submit_sweep(
            session, user, base, parse_spec(body.sweep), max_attempts=body.max_attempts, settings=settings
        )
    audit(session, request, "sweep.submit", actor=user, target=f"sweep:{detail.id}")
    session.commit()  # the outbox sends the trials' messages once the rows are committed
    return detail


@router.get(
    "/sweeps",
    response_model=Page[SweepPublic],
    summary="The caller's sweeps (admin: all)",
    responses=errors(401, 422),
)
def list_sweeps(
    session: DbSession,
    user: CurrentUser,
    status_filter: Annotated[
        str | None, Query(alias="status", max_length=16, description="Only sweeps in this state.")
    ] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> Page[SweepPublic]:
    return sweeps.list_sweeps(session, user, status=status_filter, offset=offset, limit=limit)


@router.get(
    "/sweeps/{sweep_id}",
    response_model=SweepDetail,
    summary="A sweep and its trials",
    responses=errors(401, 404, 422, e404=NOT_YOURS),
)
def get_sweep(sweep_id: str, session: DbSession, user: CurrentUser) -> SweepDetail:
    return sweeps.get_sweep(session, user, sweep_id)


@router.get(
    "/sweeps/{sweep_id}/best",
    response_model=TrialPublic,
    summary="The best completed trial",
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409="No trial has completed yet."),
)
def get_best_trial(sweep_id: str, session: DbSession, user: CurrentUser) -> TrialPublic:
    return sweeps.best_trial(session, user, sweep_id)


@router.post(
    "/sweeps/{sweep_id}/cancel",
    response_model=SweepDetail,
    summary="Cancel a sweep",
    responses=errors(401, 404, 409, 422, e404=NOT_YOURS, e409="The sweep has already finished."),
)
def cancel_sweep(sweep_id: str, request: Request, session: DbSession, user: CurrentUser) -> SweepDetail:
    detail = sweeps.cancel_sweep(session, user, sweep_id)
    audit(session, request, "sweep.cancel", actor=user, target=f"sweep:{sweep_id}")
    return detail


@router.post(
    "/sweeps/{sweep_id}/promote",
    response_model=SweepPromoted,
    summary="Register the best trial's model (admin)",
    responses=errors(401, 403, 404, 409, 422, e404=NOT_YOURS, e409="No trial has completed yet."),
)
def promote_sweep(
    sweep_id: str,
    request: Request,
    session: DbSession,
    settings: SettingsDep,
    admin: AdminUser,
    body: SweepPromote,
) -> SweepPromoted:
    promoted = sweeps.promote_best(
        session, settings, admin, sweep_id, model_name=body.model_name, stage=body.stage
    )
    audit(session, request, "sweep.promote", actor=admin, target=f"sweep:{sweep_id}")
    return SweepPromoted(**promoted)
