"""The model-family registry: which modules LoRA adapts in each family (bundled models and name resolution:
``catalogue``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from finetune_platform.errors import ConfigError
from finetune_platform.training.config import Precision, Quantization

if TYPE_CHECKING:
    from torch import nn

    from finetune_platform.training.config import TrainConfig


class ModelFamily(StrEnum):
    BERT = "bert"
    ROBERTA = "roberta"
    DISTILBERT = "distilbert"
    ALBERT = "albert"
    LLAMA = "llama"
    QWEN2 = "qwen2"
    MISTRAL = "mistral"
    GEMMA = "gemma"
    GPT2 = "gpt2"
    GENERIC = "generic"


@dataclass(frozen=True)
class FamilySpec:
    family: ModelFamily
    model_types: tuple[str, ...]
    # Query and value projections: the classic LoRA placement, cheapest for its accuracy. The decoder entries are
    # PEFT's own (TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING; tests/unit/test_models.py holds them equal).
    target_modules: tuple[str, ...]
    # The classification head PEFT trains in full and saves with the adapter (its SEQ_CLS modules_to_save).
    head: str = "classifier"
    # A decoder pools its last non-pad token (``*ForSequenceClassification``): it needs config.pad_token_id.
    decoder: bool = False
    # GPT-2 keeps its projections in Conv1D (weights stored transposed).
    fan_in_fan_out: bool = False


FAMILIES: dict[ModelFamily, FamilySpec] = {
    spec.family: spec
    for spec in (
        FamilySpec(ModelFamily.BERT, ("bert", "electra", "ernie", "mpnet"), ("query", "value")),
        FamilySpec(ModelFamily.ROBERTA, ("roberta", "xlm-roberta", "camembert"), ("query", "value")),
        FamilySpec(ModelFamily.DISTILBERT, ("distilbert",), ("q_lin", "v_lin")),
        FamilySpec(ModelFamily.ALBERT, ("albert",), ("query", "value")),
        FamilySpec(ModelFamily.LLAMA, ("llama",), ("q_proj", "v_proj"), head="score", decoder=True),
        FamilySpec(ModelFamily.QWEN2, ("qwen2",), ("q_proj", "v_proj"), head="score", decoder=True),
        FamilySpec(ModelFamily.MISTRAL, ("mistral",), ("q_proj", "v_proj"), head="score", decoder=True),
        FamilySpec(ModelFamily.GEMMA, ("gemma", "gemma2"), ("q_proj", "v_proj"), head="score", decoder=True),
        FamilySpec(ModelFamily.GPT2, ("gpt2",), ("c_attn",), head="score", decoder=True, fan_in_fan_out=True),
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
    """LoRA targets for a model: the family's entry, else PEFT's default for its model type, else
    attention-looking Linear layers."""
    family = family_of(model_type)
    if family is not ModelFamily.GENERIC:
        return list(FAMILIES[family].target_modules)
    # lazy: torch and PEFT load only where a model runs
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    from torch import nn

    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
    if known:
        return list(known)

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


def load_tokenizer(source: str) -> Any:
    """The tokenizer of a model or adapter folder, ready to pad batches the way every path pads them.

    A decoder's tokenizer often has no pad token (GPT-2, Llama 3, Mistral): its end-of-sequence token pads.
    Padding goes on the right, which ``*ForSequenceClassification`` expects: it pools the last token that is not
    padding. Training, ``finetune predict``, the server's runtimes and prediction jobs all load it here."""
    # lazy: transformers loads only where a model runs
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(
                f"model.base_model: the tokenizer of {source!r} has neither a pad nor an end-of-sequence token; "
                "add a pad token to it (tokenizer.add_special_tokens) and save it with the model"
            )
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def match_pad_token(model: Any, pad_token_id: int | None) -> Any:
    """Point ``model.config.pad_token_id`` at the id batches are padded with: a decoder classifier finds each
    text's last token by it (a PEFT model passes the attribute through to its base model's config)."""
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def quantization_config(quantization: Quantization | str, precision: Precision | str = Precision.AUTO) -> Any:
    """bitsandbytes NF4 settings for a frozen 4-bit base (QLoRA: double quantization), computing in the run's
    mixed precision (``auto``/``fp32``: bf16 where the GPU has it, else fp16); None for ``none``.
    ``devices.check_quantization`` has made sure CUDA and bitsandbytes are here."""
    if Quantization(quantization) is Quantization.NONE:
        return None
    # lazy: torch and transformers load only where a model is built
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(precision),
    )


def compute_dtype(precision: Precision | str) -> Any:
    """The dtype a 4-bit base computes in: the run's autocast dtype, or bf16/fp16 by the GPU for auto/fp32."""
    # lazy: torch loads only where a model is built
    import torch

    precision = Precision(precision)
    if precision is Precision.FP16 or (
        precision is not Precision.BF16 and not torch.cuda.is_bf16_supported()
    ):
        return torch.float16
    return torch.bfloat16


def loading_options(config: TrainConfig) -> dict[str, Any]:
    """``from_pretrained`` options for the base model.

    Unquantized, the base loads in fp32 (mixed precision runs under autocast with fp32 master weights). In 4-bit
    the linear layers load as NF4 on this process's GPU and the rest of the frozen base (embeddings, norms) in the
    compute dtype, so activations flow in bf16/fp16 as in an unquantized mixed-precision run: upcasting them to
    fp32 (PEFT's ``prepare_model_for_kbit_training``) made every 4-bit layer return fp32 and measured 1.37x the
    unquantized run's peak GPU memory (bench/gpu_decoder.py). Only a ``precision: fp32`` run keeps that upcast,
    since without autocast an fp32 head cannot read bf16 features."""
    # lazy: torch loads only where a model is built
    import torch

    quantized = quantization_config(config.model.quantization, config.precision)
    if quantized is None:
        return {"torch_dtype": torch.float32}
    dtype = torch.float32 if config.precision is Precision.FP32 else compute_dtype(config.precision)
    return {
        "quantization_config": quantized,
        "device_map": {"": torch.cuda.current_device()},
        "torch_dtype": dtype,
    }


def trainable_in_fp32(model: Any) -> Any:
    """Cast every trainable parameter (LoRA factors, the head PEFT trains in full) to fp32 master weights; the
    frozen base keeps its dtype."""
    # lazy: torch loads only where a model is built
    import torch

    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype is not torch.float32:
            parameter.data = parameter.data.float()
    return model


# Hugging Face's name for each task's head (saved in the model's config.json; our loop computes the loss itself).
PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def build_model(
    config: TrainConfig, state: Any, label_map: Any = None, pad_token_id: int | None = None
) -> Any:
    """The base model with a ``label_map``-sized head (default: the data's labels; one output for regression) of
    the config's task (``PROBLEM_TYPES``) and LoRA attached; its config's pad token is ``pad_token_id`` (the
    tokenizer's), which a decoder's last-token pooling needs.

    ``state`` (a ``recipe.RecipeState``) names the resolved base model and receives what was built: model type,
    target modules, parameter counts."""
    # lazy: torch, transformers and PEFT load only where a model is built (the family registry needs none)
    from peft import LoraConfig, TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForSequenceClassification

    label_map = label_map or state.splits.label_map
    quantized = config.model.quantization is not Quantization.NONE
    loading = loading_options(config)
    with _model_loading(state.model.name):
        model = AutoModelForSequenceClassification.from_pretrained(
            state.model.source,
            num_labels=label_map.num_labels,
            problem_type=PROBLEM_TYPES[config.task.value],
            id2label=dict(enumerate(label_map.names)),
            label2id={name: i for i, name in enumerate(label_map.names)},
            **loading,
        )
    match_pad_token(model, pad_token_id)
    spec = FAMILIES.get(family_of(model.config.model_type))
    if spec is not None and spec.decoder and model.config.pad_token_id is None:
        raise ConfigError(
            f"model.base_model: {state.model.name!r} is a decoder ({model.config.model_type}) and its "
            "classifier needs a pad token id; its tokenizer has none"
        )
    if quantized and config.precision is Precision.FP32:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    state.model_type = model.config.model_type
    if config.lora.target_modules == "auto":
        state.target_modules = default_target_modules(model, state.model_type)
    elif config.lora.target_modules == "all-linear":
        state.target_modules = ["all-linear"]
    else:
        state.target_modules = list(config.lora.target_modules)
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # PEFT trains and saves the head (classifier or score) in full
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules="all-linear" if state.target_modules == ["all-linear"] else state.target_modules,
        fan_in_fan_out=bool(spec and spec.fan_in_fan_out),
    )
    try:
        model = get_peft_model(model, lora)
    except ValueError as exc:
        raise ConfigError(f"lora.target_modules: {exc}") from exc
    if quantized:
        trainable_in_fp32(model)
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
