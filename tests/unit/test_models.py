from pathlib import Path

import pytest

from finetune_platform.catalogue import infer_language, resolve_base_model
from finetune_platform.errors import ConfigError
from finetune_platform.training.models import ModelFamily, default_target_modules, family_of


@pytest.mark.parametrize(
    ("model_type", "family"),
    [
        ("bert", ModelFamily.BERT),
        ("roberta", ModelFamily.ROBERTA),
        ("distilbert", ModelFamily.DISTILBERT),
        ("albert", ModelFamily.ALBERT),
        ("deberta-v2", ModelFamily.GENERIC),
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
