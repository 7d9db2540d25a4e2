"""Search model cards by their fields and recommend them by embedding similarity."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from finetune_platform.errors import ConfigError, NotFoundError
from finetune_platform.tracking.embeddings import default_embedder
from finetune_platform.tracking.model_cards import CardStore, ModelCard

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
    "=": operator.eq,
}
_THRESHOLD = re.compile(r"^\s*([A-Za-z_][\w.]*)\s*(>=|<=|==|=|>|<)\s*([-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Threshold:
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        match = _THRESHOLD.match(text)
        if not match:
            raise ConfigError(f"metric threshold {text!r}: expected METRIC OP VALUE, e.g. accuracy>=0.9")
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def holds(self, card: ModelCard) -> bool:
        value = card.metrics.get(self.metric)
        return value is not None and _OPERATORS[self.op](value, self.value)


@dataclass
class CardFilter:
    base_model: str | None = None
    language: str | None = None
    task: str | None = None
    stage: str | None = None
    tags: list[str] = field(default_factory=list)
    thresholds: list[Threshold] = field(default_factory=list)

    def matches(self, card: ModelCard) -> bool:
        same = lambda wanted, actual: wanted is None or wanted.lower() == str(actual).lower()  # noqa: E731
        return (
            same(self.base_model, card.base_model)
            and same(self.language, card.language)
            and same(self.task, card.task)
            and same(self.stage, card.stage)
            and {t.lower() for t in self.tags} <= {t.lower() for t in card.tags}
            and all(threshold.holds(card) for threshold in self.thresholds)
        )


def search(store: CardStore, card_filter: CardFilter) -> list[ModelCard]:
    return [card for card in store.all() if card_filter.matches(card)]


@dataclass(frozen=True)
class Recommendation:
    card: ModelCard
    score: float


def recommend(
    store: CardStore,
    vector: np.ndarray,
    top_k: int = 5,
    card_filter: CardFilter | None = None,
    exclude: str | None = None,
    field_name: str = "vector",
) -> list[Recommendation]:
    """Cards ranked by cosine similarity to ``vector`` (card embeddings are unit vectors); ``field_name`` names
    the vector in errors. The vector is checked even when there are no cards to rank."""
    cards, matrix = store.matrix()
    try:
        query = np.asarray(vector, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{field_name}: expected a list of numbers") from None
    if not np.isfinite(query).all():
        raise ConfigError(f"{field_name}: every number must be finite")
    if query.shape != (matrix.shape[1],):
        raise ConfigError(
            f"{field_name}: expected {matrix.shape[1]} numbers, got {query.size} "
            "(the size of the model cards' embeddings)"
        )
    largest = float(np.abs(query).max())
    if largest == 0:
        raise ConfigError(f"{field_name}: a zero vector has no direction")
    query = query / largest  # scaled first: the norm of huge finite numbers would overflow
    scores = matrix @ (query / np.linalg.norm(query)).astype(np.float32)
    ranked: list[Recommendation] = []
    for index in np.argsort(-scores, kind="stable"):
        card = cards[index]
        if card.key == exclude or (card_filter is not None and not card_filter.matches(card)):
            continue
        ranked.append(Recommendation(card, round(float(scores[index]), 4)))
        if len(ranked) == top_k:
            break
    return ranked


def recommend_for_query(
    store: CardStore, query: str, top_k: int = 5, card_filter: CardFilter | None = None, embedder=None
) -> list[Recommendation]:
    """Natural-language recommendation: the query is embedded with the same model as the cards."""
    if not query.strip():
        raise ConfigError("query: empty")
    if embedder is None:
        embedder = default_embedder()
    return recommend(store, embedder.embed([query])[0], top_k, card_filter)


def recommend_like(
    store: CardStore, name: str, version: int, top_k: int = 5, card_filter: CardFilter | None = None
) -> list[Recommendation]:
    """Cards ranked by similarity to the card of ``name`` version ``version`` (which is left out)."""
    try:
        card = store.get(name, version)
    except NotFoundError:  # its message names the server's card folder
        raise NotFoundError(f"no model card for {name}@{version}") from None
    return recommend(
        store,
        np.asarray(card.embedding),
        top_k,
        card_filter,
        exclude=card.key,
        field_name=f"{card.key} embedding",
    )
