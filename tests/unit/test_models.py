from pathlib import Path

import pytest

from finetune_platform.catalogue import infer_language, resolve_base_model
from finetune_platform.errors import ConfigError
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.devices import Accelerators, check_device, check_quantization
from finetune_platform.training.models import (
    FAMILIES,
    ModelFamily,
    default_target_modules,
    family_of,
    load_tokenizer,
)


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("bert", ModelFamily.BERT),
        ("roberta", ModelFamily.ROBERTA),
        ("distilbert", ModelFamily.DISTILBERT),
        ("albert", ModelFamily.ALBERT),
        ("deberta-v2", ModelFamily.GENERIC),
        ("llama", ModelFamily.LLAMA),
        ("qwen2", ModelFamily.QWEN2),
        ("mistral", ModelFamily.MISTRAL),
        ("gemma", ModelFamily.GEMMA),
        ("gpt2", ModelFamily.GPT2),
    ],
)
def test_family_registry(model_type, family):
    assert family_of(model_type) is family


def test_family_defaults_do_not_need_the_model():
    assert default_target_modules(None, "distilbert") == ["q_lin", "v_lin"]
    assert default_target_modules(None, "roberta") == ["query", "value"]


def test_bundled_minilm_resolves_offline():
    resolved = resolve_base_model("minilm")
    assert (Path(resolved.source) / "config.json").is_file()
    assert (Path(resolved.source) / "model.safetensors").is_file()
    assert resolved.language == "English"


def test_hub_ids_pass_through_with_inferred_language():
    assert resolve_base_model("bert-base-chinese").source == "bert-base-chinese"
    assert resolve_base_model("bert-base-chinese").language == "Chinese"
    assert resolve_base_model("roberta-base").language == "English"
    assert resolve_base_model("roberta-base", language="French").language == "French"


@pytest.mark.parametrize(
    ("name", "language"),
    [
        ("distilbert-base-uncased", "English"),
        ("albert-base-v2", "English"),
        ("bert-base-chinese", "Chinese"),
        ("bert-base-multilingual-cased", "Multilingual"),
        ("xlm-roberta-base", "Multilingual"),
    ],
)
def test_language_inference(name, language):
    assert infer_language(name) == language


def test_local_folder_without_config_is_refused(tmp_path):
    with pytest.raises(
        ConfigError, match=r"model.base_model: '.*' is not a model folder \(no config.json there\)"
    ):
        resolve_base_model(str(tmp_path))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral", "gemma", "gemma2", "gpt2"])
def test_decoder_families_target_what_peft_targets_and_train_their_score_head(model_type):
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    assert (
        default_target_modules(None, model_type)
        == TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type]
    )
    spec = FAMILIES[family_of(model_type)]
    assert (spec.decoder, spec.head, spec.fan_in_fan_out) == (True, "score", model_type == "gpt2")


def test_a_model_type_without_a_family_gets_pefts_default_targets():
    assert family_of("qwen3") is ModelFamily.GENERIC
    assert default_target_modules(None, "qwen3") == ["q_proj", "v_proj"]


def _raw(**model):
    return {"data": {"train_file": "train.csv"}, "model": {"base_model": "minilm", **model}}


def test_4bit_is_refused_at_config_time_for_a_device_without_cuda():
    assert config_from_dict(_raw(quantization="4bit")).model.quantization.value == "4bit"
    for device in ("cpu", "mps"):
        refused = rf"model.quantization: 4bit needs CUDA \(bitsandbytes NF4\); device is '{device}'"
        with pytest.raises(ConfigError, match=refused):
            config_from_dict({**_raw(quantization="4bit"), "device": device})
    with pytest.raises(
        ConfigError, match=r"model.quantization: Input should be 'none' or '4bit' \(got '8bit'\)"
    ):
        config_from_dict(_raw(quantization="8bit"))


def test_4bit_on_a_machine_without_cuda_or_bitsandbytes_says_what_it_lacks():
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here: the message names only the missing CUDA")
    config = config_from_dict(_raw(quantization="4bit"))  # device auto: this CPU machine
    with pytest.raises(ConfigError) as refused:
        check_device(config, Accelerators(cuda=False, mps=False))
    assert str(refused.value) == (
        "model.quantization: 4bit needs CUDA and the bitsandbytes package (pip install bitsandbytes); this machine "
        "has no CUDA device (the run would train on cpu) and no bitsandbytes package"
    )
    cuda = config.device.__class__.CUDA
    with pytest.raises(ConfigError, match=r"; this machine has no bitsandbytes package$"):
        check_quantization(config, cuda, bitsandbytes=False)
    check_quantization(config, cuda, bitsandbytes=True)  # CUDA and bitsandbytes: nothing to say
    check_quantization(config_from_dict(_raw()), config.device.__class__.CPU, bitsandbytes=False)  # 'none'


def test_a_tokenizer_without_a_pad_token_pads_with_end_of_text_on_the_right(tmp_path):
    from tests.conftest import padless_tokenizer

    tokenizer = padless_tokenizer(["great film awful book"] * 3)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(tmp_path / "with-eos")
    loaded = load_tokenizer(str(tmp_path / "with-eos"))
    assert (loaded.pad_token, loaded.pad_token_id, loaded.padding_side) == ("<|endoftext|>", 0, "right")
    bare = padless_tokenizer(["great film awful book"] * 3)
    bare.eos_token = bare.bos_token = bare.unk_token = None
    bare.save_pretrained(tmp_path / "bare")
    with pytest.raises(
        ConfigError, match=r"the tokenizer of '.*bare' has neither a pad nor an end-of-sequence token"
    ):
        load_tokenizer(str(tmp_path / "bare"))
