"""Every number of a training config is bounded and finite, and says its limits: the configs that took a worker
(64 processes, 1e9 epochs, rank 1024, an infinite epoch count, a seed numpy cannot take) are refused by name."""

from __future__ import annotations

import pytest

from finetune_platform.errors import ConfigError
from finetune_platform.training.config import TrainConfig, config_from_dict, load_config


def numeric_fields(schema: dict, node: dict | None = None, prefix: str = "") -> dict[str, dict]:
    """Dotted name -> JSON schema of every integer or number field, nested sections included."""
    node = schema if node is None else node
    found = {}
    for name, prop in node.get("properties", {}).items():
        if "$ref" in prop:
            section = schema["$defs"][prop["$ref"].rsplit("/", 1)[1]]
            found |= numeric_fields(schema, section, f"{prefix}{name}.")
            continue
        variants = prop.get("anyOf", [prop])
        typed = [v for v in variants if v.get("type") in {"integer", "number"}]
        if typed:
            found[f"{prefix}{name}"] = {**typed[0], "description": prop.get("description", "")}
    return found


def test_every_number_has_a_lower_and_an_upper_bound_that_its_description_states():
    fields = numeric_fields(TrainConfig.model_json_schema())
    assert len(fields) >= 20  # the walk found the nested sections
    for name, field in fields.items():
        assert {"minimum", "exclusiveMinimum"} & set(field), f"{name} has no lower bound"
        upper = field.get("maximum", field.get("exclusiveMaximum"))
        assert upper is not None, f"{name} has no upper bound"
        written = {f"{upper:,}", f"{upper:g}", str(upper)}
        if float(upper).is_integer():
            written |= {f"{int(upper):,}", str(int(upper))}
        assert any(text in field["description"] for text in written), (name, upper, field["description"])


BASE = {"data": {"train_file": "train.csv"}}


@pytest.mark.parametrize(
    ("section", "field", "value", "message"),
    [
        (
            "training",
            "epochs",
            1e9,
            "training.epochs: Input should be less than or equal to 1000 (got 1000000000.0)",
        ),
        ("training", "epochs", float("inf"), "training.epochs: Input should be a finite number (got inf)"),
        ("training", "epochs", "inf", "training.epochs: Input should be a finite number (got 'inf')"),
        (
            "training",
            "max_steps",
            1e12,
            "training.max_steps: Input should be less than or equal to 10000000 (got 1000000000000.0)",
        ),
        (
            "training",
            "batch_size",
            1e9,
            "training.batch_size: Input should be less than or equal to 4096 (got 1000000000.0)",
        ),
        (
            "training",
            "gradient_accumulation_steps",
            1e9,
            "training.gradient_accumulation_steps: Input should be less than or equal to 1024 (got 1000000000.0)",
        ),
        ("lora", "r", 1024, "lora.r: Input should be less than or equal to 256 (got 1024)"),
        (
            "training",
            "seed",
            2**70,
            "training.seed: Input should be less than or equal to 4294967295 (got 1180591620717411303424)",
        ),
        (
            "training",
            "learning_rate",
            float("nan"),
            "training.learning_rate: Input should be a finite number (got nan)",
        ),
        ("lora", "alpha", float("inf"), "lora.alpha: Input should be a finite number (got inf)"),
        (
            "training",
            "max_grad_norm",
            float("inf"),
            "training.max_grad_norm: Input should be a finite number (got inf)",
        ),
        (
            "training",
            "warmup_ratio",
            float("nan"),
            "training.warmup_ratio: Input should be a finite number (got nan)",
        ),
        (
            "training",
            "eval_batch_size",
            10**6,
            "training.eval_batch_size: Input should be less than or equal to 8192 (got 1000000)",
        ),
        (
            "training",
            "logging_steps",
            10**12,
            "training.logging_steps: Input should be less than or equal to 10000000 (got 1000000000000)",
        ),
        (
            "data",
            "max_train_rows",
            10**12,
            "data.max_train_rows: Input should be less than or equal to 100000000 (got 1000000000000)",
        ),
    ],
)
def test_a_number_out_of_bounds_is_refused_naming_the_field_and_the_limit(section, field, value, message):
    raw = {**BASE, section: {**BASE.get(section, {}), field: value}}
    with pytest.raises(ConfigError) as caught:
        config_from_dict(raw)
    assert str(caught.value) == f"invalid training config:\n  {message}"


def test_yaml_infinity_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  train_file: train.csv\ntraining:\n  epochs: .inf\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (
        str(caught.value)
        == "invalid training config:\n  training.epochs: Input should be a finite number (got inf)"
    )


LARGEST = {
    "lora": {"r": 256, "alpha": 4096},
    "training": {
        "devices": 64,
        "epochs": 1000,
        "max_steps": 10_000_000,
        "batch_size": 4096,
        "eval_batch_size": 8192,
        "gradient_accumulation_steps": 1024,
        "seed": 2**32 - 1,
        "weight_decay": 10,
    },
}


def test_the_limits_are_inclusive_and_one_past_each_is_refused():
    config = config_from_dict({**BASE, **LARGEST})
    assert (config.training.seed, config.training.max_steps, config.lora.r) == (2**32 - 1, 10_000_000, 256)
    for section, fields in LARGEST.items():
        for field, value in fields.items():
            raw = {**BASE, section: {field: value + 1}}
            with pytest.raises(
                ConfigError, match=rf"^invalid training config:\n  {section}\.{field}: Input should be less"
            ):
                config_from_dict(raw)
