"""A sweep's spec checks itself and the space against TrainConfig before anything is queued, naming the field."""

from __future__ import annotations

import pytest

from finetune_platform.errors import ConfigError
from finetune_platform.training.sweep_config import (
    Direction,
    Sampler,
    check_space,
    load_sweep,
    parse_spec,
    split_sweep,
    with_params,
)
from tests.conftest import ROOT

BASE = {"data": {"train_file": str(ROOT / "data/sample/train.csv")}, "registry": {"model_name": "reviews"}}
LR = {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}


def refusal(raw: dict, base: dict | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        spec = parse_spec(raw)
        check_space(spec, base or BASE)
    return str(caught.value)


def test_defaults_and_a_bare_objective():
    spec = parse_spec({"objective": "loss", "space": LR})
    assert spec.objective.metric.value == "loss" and spec.objective.resolved_direction is Direction.MINIMIZE
    assert spec.sampler is Sampler.TPE and spec.pruner.value == "median" and spec.parallelism == 1
    assert spec.trial_budget == 10
    grid = parse_spec(
        {
            "sampler": "grid",
            "space": {
                "lora.r": {"type": "choice", "values": [4, 8]},
                "lora.dropout": {"type": "choice", "values": [0.0, 0.1, 0.2]},
            },
        }
    )
    assert (
        grid.trial_budget == 6
        and parse_spec({"space": LR}).objective.resolved_direction is Direction.MAXIMIZE
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"space": {"training.learning_rate": {"type": "loguniform", "low": 1e-2, "high": 1e-4}}},
         "sweep.space.training.learning_rate.loguniform: low (0.01) must be below high (0.0001)"),
        ({"space": {"training.learning_rate": {"type": "loguniform", "low": 0, "high": 1e-4}}},
         "sweep.space.training.learning_rate.loguniform.low: Input should be greater than 0 (got 0)"),
        ({"space": {"lora.r": {"type": "normal", "values": [1]}}},
         "sweep.space.lora.r: Input tag 'normal' found using 'type' does not match any of the expected tags"),
        ({"space": {}}, "sweep.space: Dictionary should have at least 1 item after validation, not 0"),
        ({"sampler": "grid", "space": LR},
         "sweep.space.training.learning_rate: the grid sampler takes choice fields only (list the values to try)"),
        ({"sampler": "grid", "max_trials": 5, "space": {"lora.r": {"type": "choice", "values": [4, 8]}}},
         "sweep.max_trials: 5 is more than the grid has combinations (2)"),
        ({"parallelism": 0, "space": LR}, "sweep.parallelism: Input should be greater than or equal to 1 (got 0)"),
        ({"max_trials": 1001, "space": LR}, "sweep.max_trials: Input should be less than or equal to 1000"),
        ({"space": LR, "surprise": 1}, "sweep.surprise: unknown field"),
        ({"space": {"training.learnin_rate": {"type": "choice", "values": [1e-3]}}},
         "sweep.space.training.learnin_rate: not a training-config field (check the spelling; "
         "`finetune config schema` lists them)"),
        ({"space": {"output_dir": {"type": "choice", "values": ["/tmp"]}}},
         "sweep.space.output_dir: fixed for every trial of a sweep"),
        ({"space": {"data.train_file": {"type": "choice", "values": ["/etc/passwd"]}}},
         "sweep.space.data.train_file: fixed for every trial of a sweep"),
        ({"space": {"registry.enabled": {"type": "choice", "values": [True]}}},
         "sweep.space.registry.enabled: fixed for every trial of a sweep"),
        ({"space": {"lora.r": {"type": "choice", "values": [4, 0]}}},
         "sweep.space.lora.r: 0 is not a valid value: lora.r: Input should be greater than or equal to 1 (got 0)"),
        ({"space": {"training.learning_rate": {"type": "uniform", "low": -1.0, "high": 1e-2}}},
         "sweep.space.training.learning_rate: -1.0 is not a valid value: training.learning_rate:"),
        ({"space": {"lora.r": {"type": "choice", "values": [4]}}, "start_with": [{"lora.alpha": 3}]},
         "sweep.start_with[0].lora.alpha: not a field of sweep.space"),
        ({"space": {"lora.r": {"type": "choice", "values": [4]}}, "start_with": [{"lora.r": -2}]},
         "sweep.start_with[0]: lora.r: Input should be greater than or equal to 1 (got -2)"),
    ],
)  # fmt: skip
def test_a_bad_spec_or_space_is_refused_naming_the_field(raw, message):
    assert message in refusal(raw)


def test_with_params_sets_dotted_fields_and_registers_nothing():
    config = with_params(
        BASE, {"lora.r": 16, "training.learning_rate": 3e-3, "lora.target_modules": ["query"]}
    )
    assert config["lora"] == {"r": 16, "target_modules": ["query"]}
    assert config["training"] == {"learning_rate": 3e-3}
    assert config["registry"] == {"model_name": "reviews", "enabled": False}
    assert BASE["registry"] == {"model_name": "reviews"}  # the base is not changed
    checked = check_space(parse_spec({"space": LR}), BASE)
    assert checked.registry.enabled is False and checked.registry.model_name == "reviews"


def test_a_sweep_file_is_a_config_with_a_sweep_section(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"data:\n  train_file: {BASE['data']['train_file']}\n"
        "sweep:\n  objective: macro_f1\n  space:\n    lora.r: {type: choice, values: [4, 8]}\n",
        encoding="utf-8",
    )
    base, spec = load_sweep(path, ["sweep.max_trials=2", "training.epochs=1"])
    assert spec.objective.metric.value == "macro_f1" and spec.max_trials == 2
    assert base == {"data": {"train_file": BASE["data"]["train_file"]}, "training": {"epochs": 1}}
    with pytest.raises(ConfigError, match=r"^no sweep: section"):
        split_sweep({"data": {}})
    with pytest.raises(ConfigError, match="sweep file not found"):
        load_sweep(tmp_path / "missing.yaml")
