"""The model-family registry: which modules LoRA adapts in each family (bundled models and name resolution:
``catalogue``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from finetune_platform.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from finetune_platform.training.config import TrainConfig


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
    # lazy: torch loads only where a model runs
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


@contextlib.contextmanager
def _model_loading(name: str) -> Iterator[None]:
    """Turn a hub or disk failure while loading the base model into an error that names the field."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(
            f"model.base_model: cannot load {name!r} ({exc}). Offline, use 'minilm' or a local folder "
            "saved with save_pretrained"
        ) from exc


def build_model(config: TrainConfig, state: Any, label_map: Any = None) -> Any:
    """The base model with a ``label_map``-sized head (default: the data's labels) and LoRA attached.

    ``state`` (a ``recipe.RecipeState``) names the resolved base model and receives what was built: model type,
    target modules, parameter counts."""
    # lazy: torch, transformers and PEFT load only where a model is built (the family registry needs none)
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    label_map = label_map or state.splits.label_map
    with _model_loading(state.model.name):
        model = AutoModelForSequenceClassification.from_pretrained(
            state.model.source,
            num_labels=label_map.num_labels,
            id2label=dict(enumerate(label_map.names)),
            label2id={name: i for i, name in enumerate(label_map.names)},
            torch_dtype=torch.float32,
        )
    state.model_type = model.config.model_type
    if config.lora.target_modules == "auto":
        state.target_modules = default_target_modules(model, state.model_type)
    elif config.lora.target_modules == "all-linear":
        state.target_modules = ["all-linear"]
    else:
        state.target_modules = list(config.lora.target_modules)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules="all-linear" if state.target_modules == ["all-linear"] else state.target_modules,
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {exc}") from exc
    trainable, total = model.get_nb_trainable_parameters()
    state.trainable_parameters, state.total_parameters = int(trainable), int(total)
    return model


def quiet_libraries() -> None:
    """Keep library chatter (load reports, map bars) out of the progress display and logs."""
    # lazy: transformers loads only where a model runs
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|pyarrow)\.")
    try:  # tokenizers and PEFT may use it
        # lazy: optional: datasets may be absent
        import datasets
    except ImportError:
        return
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
