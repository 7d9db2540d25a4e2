"""Operations: liveness (GET /health), the tracking store's status (GET /mlflow), both public, and the training
config's JSON schema (GET /config/schema). Prometheus' GET /metrics is mounted with the request metrics
(``observability.mount_metrics``)."""

from __future__ import annotations

from fastapi import APIRouter

from finetune_platform.api.deps import CurrentUser, SettingsDep
from finetune_platform.api.schemas import errors
from finetune_platform.services import operations
from finetune_platform.services.schemas.operations import ConfigSchema, Health, MlflowStatus

router = APIRouter()
# A public route takes no body; one sent without a token is refused unread, like on every route.
BODY_REFUSED = errors(401, e401="A request body sent without a token: refused before it is read.")


@router.get(
    "/health",
    response_model=Health,
    tags=["operations"],
    summary="Liveness and database check",
    description="Public. `ok` when the database answers a query, else `degraded` naming the kind of error.",
    responses=BODY_REFUSED,
)
def get_health(settings: SettingsDep) -> Health:
    return operations.health(settings)


@router.get(
    "/mlflow",
    response_model=MlflowStatus,
    tags=["experiments"],
    summary="Tracking server status",
    description=(
        "Public (no sign-in). The tracking store's kind, whether it answers, the address of its UI (never with "
        "credentials) and, unless MLFLOW_PUBLIC_SUMMARY=false, its experiments' names, run counts and newest run "
        "times: nothing about a run itself."
    ),
    responses=BODY_REFUSED,
)
def get_mlflow_status(settings: SettingsDep) -> MlflowStatus:
    return operations.mlflow_status(settings)


@router.get(
    "/config/schema",
    response_model=ConfigSchema,
    tags=["tasks"],
    summary="JSON schema of a training config (for forms)",
    description=(
        "The TrainConfig JSON schema: every field with its type, default, bounds and description. POST /train "
        "takes such a config without data paths or output_dir."
    ),
    responses=errors(401),
)
def get_config_schema(user: CurrentUser) -> ConfigSchema:
    return operations.config_schema()
