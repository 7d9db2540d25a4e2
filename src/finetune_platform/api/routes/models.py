"""The model registry: search and recommend model cards, move versions between stages, the owners of model names,
and the base models a training task may start from (/base-models)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi import Path as PathParam

from finetune_platform.api.deps import (
    AdminUser,
    CurrentUser,
    DbSession,
    Paged,
    PageLimit,
    PageOffset,
    SettingsDep,
    audit,
)
from finetune_platform.api.schemas import errors
from finetune_platform.services import base_models, model_registry
from finetune_platform.services import users as accounts
from finetune_platform.services.schemas.common import MAX_PAGE, Page
from finetune_platform.services.schemas.registry import (
    MODEL_NAME_PATTERN,
    THRESHOLD_PATTERN,
    BaseModelCreate,
    BaseModelPublic,
    ModelCardPublic,
    ModelOwner,
    OwnerChange,
    Recommendation,
    RecommendRequest,
    StageChange,
    StageChangePublic,
    StageName,
)

router = APIRouter(tags=["models"])
ADMIN_ONLY = "The caller is not an admin."
PagedLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size with paged=true (at most 100).")]


@router.get(
    "/models/search",
    response_model=list[ModelCardPublic] | Page[ModelCardPublic],
    summary="Search models",
    description=(
        "Model cards matching every filter given: base model, language, task, stage, tags (all required) and "
        "metric thresholds such as `accuracy>=0.9`. The first `limit` as a bare list (the Finetune-30-days "
        "README's shape); `paged=true`: a page (`offset` applies)."
    ),
    responses=errors(401, 422, e422="An invalid filter or metric threshold."),
)
def search_models(
    settings: SettingsDep,
    user: CurrentUser,
    base_model: Annotated[str | None, Query(max_length=200, description="Exact base model.")] = None,
    language: Annotated[str | None, Query(max_length=32, description="Language, e.g. English.")] = None,
    task_name: Annotated[str | None, Query(alias="task", max_length=64, description="Task.")] = None,
    stage: Annotated[StageName | None, Query(description="Stage.")] = None,
    tag: Annotated[list[str] | None, Query(max_length=20, description="Required tags (repeatable).")] = None,
    metric: Annotated[
        list[Annotated[str, Query(pattern=THRESHOLD_PATTERN)]] | None,
        Query(max_length=10, description="Thresholds such as accuracy>=0.9 (repeatable)."),
    ] = None,
    limit: PageLimit = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000, description="Entries to skip (with paged=true).")] = 0,
    paged: Paged = False,
) -> list[ModelCardPublic] | Page[ModelCardPublic]:
    query = model_registry.CardQuery(
        base_model=base_model,
        language=language,
        task=task_name,
        stage=stage,
        tags=list(tag or []),
        thresholds=list(metric or []),
    )
    cards = model_registry.search_models(settings, query)
    return Page[ModelCardPublic].of(cards, limit=limit, offset=offset) if paged else cards[:limit]


@router.post(
    "/models/recommend",
    response_model=list[Recommendation],
    summary="Recommend models",
    description=(
        "Model versions ranked by the similarity of their card's embedding to exactly one of: `query` (words, "
        "embedded like the cards), `embedding` (a vector of the cards' size) or `like` (another version's card, "
        "`name@version`). A ranking of `top_k`, not a list to page through."
    ),
    responses=errors(
        401,
        404,
        413,
        422,
        e404="`like` names a version that has no model card.",
        e422="Not exactly one of query, embedding or like; or an embedding of the wrong size.",
    ),
)
def recommend_models(
    settings: SettingsDep, user: CurrentUser, body: RecommendRequest
) -> list[Recommendation]:
    return model_registry.recommend_models(settings, body)


@router.post(
    "/models/transition",
    response_model=StageChangePublic,
    summary="Move a version to a stage (admin)",
    description=(
        "Staging, Production, Archived or None, in MLflow, its aliases, the stage tag and the model card at once. "
        "Promoting to Production archives the version that held it (exactly one Production per name)."
    ),
    responses=errors(401, 403, 404, 413, 422, e403=ADMIN_ONLY, e404="No such model or version."),
)
def transition_model(
    request: Request, session: DbSession, settings: SettingsDep, admin: AdminUser, body: StageChange
) -> StageChangePublic:
    moved = model_registry.move_model(settings, body.name, body.version, body.stage)
    audit(
        session,
        request,
        "model.transition",
        actor=admin,
        target=f"model:{body.name}@{body.version}",
        stage=moved.stage,
        archived=moved.archived,
    )
    return moved


@router.get(
    "/models/owners",
    response_model=list[ModelOwner] | Page[ModelOwner],
    summary="Owners of model names",
    description=(
        "Every owned model name and its owner: a name listed here is registered only by its owner (or an admin). "
        "A bare list of them all, by name; `paged=true`: a page."
    ),
    responses=errors(401, 422),
)
def list_model_owners(
    session: DbSession,
    user: CurrentUser,
    paged: Paged = False,
    limit: PagedLimit = 50,
    offset: PageOffset = 0,
) -> list[ModelOwner] | Page[ModelOwner]:
    if paged:
        return model_registry.page_model_owners(session, offset=offset, limit=limit)
    return model_registry.model_owners(session)


@router.put(
    "/models/{name}/owner",
    response_model=ModelOwner,
    summary="Transfer a model name (admin)",
    description="Hand a model name to another user: from now on only they (or an admin) register versions under it.",
    responses=errors(401, 403, 404, 413, 422, e403=ADMIN_ONLY, e404="No such model name, or no such user."),
)
def transfer_model(
    name: Annotated[str, PathParam(max_length=128, pattern=MODEL_NAME_PATTERN)],
    request: Request,
    session: DbSession,
    admin: AdminUser,
    body: OwnerChange,
) -> ModelOwner:
    new_owner = accounts.get_user(session, body.owner)
    moved = model_registry.transfer_model(session, name, new_owner)
    audit(session, request, "model.owner", actor=admin, target=f"model:{name}", owner=new_owner.id)
    return moved


@router.get(
    "/base-models",
    response_model=list[BaseModelPublic] | Page[BaseModelPublic],
    summary="Allowed base models",
    description=(
        "What `config.model.base_model` may name in POST /train, by name. A bare list of them all; "
        "`paged=true`: a page."
    ),
    responses=errors(401, 422),
)
def list_base_models(
    session: DbSession,
    user: CurrentUser,
    paged: Paged = False,
    limit: PagedLimit = 50,
    offset: PageOffset = 0,
) -> list[BaseModelPublic] | Page[BaseModelPublic]:
    if paged:
        return base_models.page_base_models(session, offset=offset, limit=limit)
    return base_models.allowed_base_models(session)


@router.post(
    "/base-models",
    response_model=BaseModelPublic,
    status_code=201,
    summary="Allow a base model (admin)",
    description="Add a bundled alias (minilm), a Hugging Face id (org/name) or an absolute folder on the workers.",
    responses=errors(401, 403, 409, 413, 422, e403=ADMIN_ONLY, e409="The base model is already allowed."),
)
def allow_base_model(
    request: Request, session: DbSession, admin: AdminUser, body: BaseModelCreate
) -> BaseModelPublic:
    model = base_models.allow_base_model(session, body.name, admin.id)
    audit(session, request, "base_model.allow", actor=admin, target=f"base_model:{body.name}")
    return model


@router.delete(
    "/base-models/{name:path}",
    status_code=204,
    summary="Disallow a base model (admin)",
    description="New training tasks may no longer name it in `config.model.base_model`.",
    responses=errors(401, 403, 404, 422, e403=ADMIN_ONLY, e404="The base model is not on the allow-list."),
)
def disallow_base_model(
    name: Annotated[str, PathParam(max_length=255)], request: Request, session: DbSession, admin: AdminUser
) -> Response:
    base_models.disallow_base_model(session, name)
    audit(session, request, "base_model.disallow", actor=admin, target=f"base_model:{name}")
    return Response(status_code=204)
