from pathlib import Path

import pytest
import yaml

from finetune_platform.errors import ConfigError
from finetune_platform.training.config import (
    BestMetric,
    Device,
    EvalStrategy,
    Precision,
    TrainConfig,
    config_from_dict,
    dump_config,
    load_config,
    read_run_config,
)

ROOT = Path(__file__).resolve().parents[2]


def minimal(**overrides) -> dict:
    raw = {"data": {"train_file": "train.csv"}}
    raw.update(overrides)
    return raw


def write_yaml(path: Path, document: dict) -> Path:
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


def test_defaults_fill_every_section():
    config = config_from_dict(minimal())
    assert config.model.base_model == "minilm"
    assert config.device is Device.AUTO and config.precision is Precision.AUTO
    assert config.lora.target_modules == "auto"
    assert config.training.eval_strategy is EvalStrategy.EPOCH
    assert config.training.metric_for_best_model is BestMetric.ACCURACY
    assert config.checkpoints.fastest_tolerance == 0.01


@pytest.mark.parametrize("name", ["quickstart.yaml", "sst2_minilm.yaml"])
def test_shipped_configs_are_valid(name):
    config = load_config(ROOT / "configs" / name)
    assert config.model.base_model == "minilm"


def test_round_trip_through_yaml(tmp_path):
    config = load_config(ROOT / "configs" / "quickstart.yaml")
    path = tmp_path / "config.yaml"
    dump_config(config, path, extra={"run_id": "x"})
    again = read_run_config(path)
    assert again == config
    assert yaml.safe_load(path.read_text())["resolved"] == {"run_id": "x"}


def test_overrides_are_typed_and_nested(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal())
    config = load_config(
        path,
        [
            "training.learning_rate=1e-3",
            "training.epochs=2",
            "lora.target_modules=[query]",
            "device=cpu",
            "data.max_train_rows=100",
        ],
    )
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert config.training.epochs == 2
    assert config.lora.target_modules == ["query"]
    assert config.device is Device.CPU
    assert config.data.max_train_rows == 100


def test_yaml_scientific_notation_is_a_float(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", minimal())
    path.write_text(path.read_text() + "training:\n  learning_rate: 5e-4\n")
    assert load_config(path).training.learning_rate == pytest.approx(5e-4)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.learning_rate=-1", "training.learning_rate: Input should be greater than 0 (got -1)"),
        ("training.batch_size=0", "training.batch_size: Input should be greater than or equal to 1 (got 0)"),
        ("lora.r=0", "lora.r: Input should be greater than or equal to 1 (got 0)"),
        ("lora.dropout=1.5", "lora.dropout: Input should be less than 1 (got 1.5)"),
        ("device=tpu", "device: Input should be 'auto', 'cpu', 'cuda' or 'mps' (got 'tpu')"),
        ("precision=int4", "precision: Input should be 'auto', 'fp32', 'bf16' or 'fp16' (got 'int4')"),
        ("training.scheduler=sawtooth", "training.scheduler: Input should be"),
        ("data.validation_split=1.5", "data.validation_split: Input should be less than 1 (got 1.5)"),
        ("training.learning_rat=0.1", "training.learning_rat: unknown field"),
        ("lora.target_modules=[]", "lora.target_modules: must name at least one module, or be 'auto'"),
        ("data.label_names=[a,a]", "data.label_names: names must be unique"),
        ("experiment=has space", "experiment: String should match pattern"),
        ("training.eval_strategy=steps", "training: eval_steps must be set when eval_strategy is 'steps'"),
        (
            "training.nodes=2",
            "training: nodes: 2 machines need training.rendezvous (host:port where they meet)",
        ),
        ("training.rendezvous=no-port", "training.rendezvous: String should match pattern"),
        ("training.nodes=65", "training.nodes: Input should be less than or equal to 64 (got 65)"),
        (
            "training.engine=trainer",
            "training.engine: 'trainer' (the Hugging Face Trainer engine) was removed",
        ),
    ],
)
def test_each_invalid_field_is_named(tmp_path, override, message):
    path = write_yaml(tmp_path / "c.yaml", minimal())
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert message in str(caught.value)
    assert str(caught.value).startswith("invalid training config:")


def test_missing_train_file_is_named():
    with pytest.raises(ConfigError, match=r"data\.train_file: field required"):
        config_from_dict({"data": {}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("learning_rate", "--set 'learning_rate': expected KEY=VALUE with a dotted key"),
        ("training..epochs=2", "--set 'training..epochs=2': expected KEY=VALUE"),
        ("experiment.name=x", "--set 'experiment.name=x': 'experiment' is a value, not a section"),
    ],
)
def test_malformed_overrides(tmp_path, override, message):
    path = write_yaml(tmp_path / "c.yaml", minimal(experiment="e"))
    with pytest.raises(ConfigError) as caught:
        load_config(path, [override])
    assert str(caught.value).startswith(message)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections at the top level, got list"):
        load_config(bad)


def test_flat_view_has_dotted_keys():
    flat = config_from_dict(minimal()).flat()
    assert flat["training.learning_rate"] == 1e-3
    assert flat["data.train_file"] == "train.csv"


def test_schema_documents_every_field():
    schema = TrainConfig.model_json_schema()
    sections = schema["$defs"]
    for section in ("ModelSection", "DataSection", "LoraSection", "TrainingSection", "CheckpointSection"):
        for name, field in sections[section]["properties"].items():
            assert field.get("description"), f"{section}.{name} has no help text"


def test_a_multi_node_run_is_not_queued():
    from finetune_platform.services.quotas import check_pool_devices
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict

    config = config_from_dict(
        {"data": {"train_file": "t.csv"}, "training": {"nodes": 2, "rendezvous": "node1:29400"}}
    )
    assert config.training.processes == 2
    with pytest.raises(ConfigError) as caught:
        check_pool_devices(config, Settings())
    assert str(caught.value) == (
        "training.nodes: 2 machines: a queued job runs on one worker; start a multi-node run with `finetune train` "
        "on the first node"
    )
