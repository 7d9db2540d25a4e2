"""The model-family registry: which modules LoRA adapts in each family (bundled models and name resolution:
``catalogue``)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from finetune_platform.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


class ModelFamily(StrEnum):
    BERT = "bert"
    ROBERTA = "roberta"
    DISTILBERT = "distilbert"
    ALBERT = "albert"
    GENERIC = "generic"


@dataclass(frozen=True)
class FamilySpec:
    family: ModelFamily
    model_types: tuple[str, ...]
    # Query and value projections: the classic LoRA placement, cheapest for its accuracy.
    target_modules: tuple[str, ...]


FAMILIES: dict[ModelFamily, FamilySpec] = {
    spec.family: spec
    for spec in (
        FamilySpec(ModelFamily.BERT, ("bert", "electra", "ernie", "mpnet"), ("query", "value")),
        FamilySpec(ModelFamily.ROBERTA, ("roberta", "xlm-roberta", "camembert"), ("query", "value")),
        FamilySpec(ModelFamily.DISTILBERT, ("distilbert",), ("q_lin", "v_lin")),
        FamilySpec(ModelFamily.ALBERT, ("albert",), ("query", "value")),
    )
}

# Names that usually are attention query/value projections in architectures we have no entry for.
_GENERIC_ATTENTION_NAMES = (
    "query",
    "value",
    "query_proj",
    "value_proj",
    "q_proj",
    "v_proj",
    "q_lin",
    "v_lin",
    "q",
    "v",
    "qkv",
    "Wqkv",
)
_HEAD_NAMES = ("classifier", "score", "pooler", "pre_classifier", "lm_head")


def family_of(model_type: str) -> ModelFamily:
    for spec in FAMILIES.values():
        if model_type in spec.model_types:
            return spec.family
    return ModelFamily.GENERIC


def default_target_modules(model: nn.Module, model_type: str) -> list[str]:
    """LoRA targets for a model: the family's entry, or attention-looking Linear layers for others."""
    family = family_of(model_type)
    if family is not ModelFamily.GENERIC:
        return list(FAMILIES[family].target_modules)
    from torch import nn

    linear_names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(part in _HEAD_NAMES for part in name.split("."))
    }
    attention = sorted(linear_names & set(_GENERIC_ATTENTION_NAMES))
    if attention:
        return attention
    if linear_names:
        return sorted(linear_names)
    raise ConfigError(
        f"lora.target_modules: cannot pick defaults for model type {model_type!r} (no Linear layers found); "
        "list the module names to adapt"
    )
