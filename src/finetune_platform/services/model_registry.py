"""The model registry for API clients: search and recommend model cards, move versions between stages, and the
owners of model names. Cards and stages live in ``tracking``; this shapes them for clients."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finetune_platform.db.models import RegisteredModel, User
from finetune_platform.errors import ConfigError
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.registry import (
    ModelCardPublic,
    ModelOwner,
    Recommendation,
    RecommendRequest,
    StageChangePublic,
)
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings
from finetune_platform.tracking.ownership import owners, transfer_name


@dataclass(frozen=True)
class CardQuery:
    """What a model search asks for: each given field must match, every tag must be on the card, and every
    threshold (``accuracy>=0.9``) must hold."""

    base_model: str | None = None
    language: str | None = None
    task: str | None = None
    stage: str | None = None
    tags: list[str] = field(default_factory=list)
    thresholds: list[str] = field(default_factory=list)


def search_models(settings: Settings, query: CardQuery) -> list[ModelCardPublic]:
    # lazy: numpy (model cards), not loaded at API start
    from finetune_platform.tracking.model_cards import CardStore
    from finetune_platform.tracking.search import CardFilter, Threshold, search

    card_filter = CardFilter(
        base_model=query.base_model,
        language=query.language,
        task=query.task,
        stage=query.stage,
        tags=list(query.tags),
        thresholds=[Threshold.parse(text) for text in query.thresholds],
    )
    return [ModelCardPublic.of(card) for card in search(CardStore(settings.MODEL_REGISTRY_DIR), card_filter)]


def recommend_models(settings: Settings, request: RecommendRequest) -> list[Recommendation]:
    """Model versions ranked by the similarity of their card's embedding to exactly one of ``query`` (words,
    embedded like the cards), ``embedding`` (a vector of the cards' size) or ``like`` (another version's card)."""
    # lazy: numpy (model cards), not loaded at API start
    from finetune_platform.tracking.model_cards import CardStore
    from finetune_platform.tracking.search import CardFilter, recommend, recommend_for_query, recommend_like

    given = [name for name in ("query", "embedding", "like") if getattr(request, name) is not None]
    if len(given) != 1:
        raise ConfigError(
            f"give exactly one of query, embedding or like (got {', '.join(given) if given else 'none'})"
        )
    card_filter = CardFilter(language=request.language, task=request.task, stage=request.stage)
    store = CardStore(settings.MODEL_REGISTRY_DIR)
    if request.query is not None:
        found = recommend_for_query(store, request.query, request.top_k, card_filter)
    elif request.embedding is not None:
        found = recommend(store, request.embedding, request.top_k, card_filter, field_name="embedding")
    else:
        name, _, version = request.like.rpartition("@")
        found = recommend_like(store, name, int(version), request.top_k, card_filter)
    return [Recommendation(card=ModelCardPublic.of(item.card), score=item.score) for item in found]


def move_model(settings: Settings, name: str, version: int, stage: str) -> StageChangePublic:
    """Move a version to a stage; promoting to Production archives the Production version before it."""
    # lazy: numpy (model cards) and mlflow, not loaded at API start
    from finetune_platform.tracking.registry import ModelRegistry, Stage

    moved = ModelRegistry(settings).transition(name, version, Stage.parse(stage))
    return StageChangePublic(
        name=moved.name, version=moved.version, stage=moved.stage.value, archived=list(moved.archived)
    )


def model_owners(session: Session) -> list[ModelOwner]:
    """Every owned model name and its owner's username, by name."""
    return [ModelOwner(name=name, owner=owner) for name, owner in sorted(owners(session).items())]


def page_model_owners(session: Session, *, offset: int = 0, limit: int = 50) -> Page[ModelOwner]:
    """Owned model names by name, one page of them read (and counted) by the database."""
    owned = select(RegisteredModel.name, User.username).join(User, User.id == RegisteredModel.owner_id)
    count = session.scalar(select(func.count()).select_from(owned.subquery())) or 0
    rows = session.execute(owned.order_by(RegisteredModel.name).offset(offset).limit(limit))
    data = [ModelOwner(name=name, owner=username) for name, username in rows]
    return Page[ModelOwner](data=data, count=count, limit=limit, offset=offset)


def transfer_model(session: Session, name: str, new_owner: UserPublic) -> ModelOwner:
    """An admin hands a model name to another user (NotFoundError: no such name)."""
    transfer_name(session, name, new_owner.id)
    return ModelOwner(name=name, owner=new_owner.username)
