"""Tiny real training runs through the recipe: run folder, retention, labels, families, early stopping."""

from __future__ import annotations

import json

import pytest
import yaml
from safetensors.torch import load_file

from finetune_platform.training.checkpoints import CheckpointInfo, list_checkpoints, select_retained
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import chinese_rows, three_class_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow


def train(settings, raw: dict):
    return run_training(config_from_dict(raw), settings=settings, show_progress=False)


def test_run_folder_is_complete_and_retention_keeps_best_last_fastest(
    settings, tiny_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data
    result = train(
        settings, tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "results", eval_steps=8)
    )
    root = result.run.root
    assert root.parent == tmp_path / "results" / "tiny"
    config = yaml.safe_load((root / "config.yaml").read_text())
    assert config["training"]["eval_steps"] == 8
    assert config["resolved"]["target_modules"] == ["query", "value"]
    assert config["resolved"]["dataset"]["train_rows"] == 96
    assert config["resolved"]["mlflow_run_id"] == result.mlflow_run_id
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 96
    assert set(metrics["eval"]) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix", "loss"}
    assert sum(map(sum, metrics["eval"]["confusion_matrix"]["matrix"])) == 32
    assert json.loads((root / "run.json").read_text())["status"] == "succeeded"
    artifacts = root / "artifacts"
    weights = load_file(artifacts / "adapter_model.safetensors")
    assert any("lora_A" in name for name in weights) and any("classifier" in name for name in weights)
    assert json.loads((artifacts / "adapter_config.json").read_text())["r"] == 4
    assert (artifacts / "tokenizer.json").is_file()
    assert json.loads((artifacts / "label_map.json").read_text())["id2label"] == {"0": "0", "1": "1"}

    # Evaluations every 8 steps made 12 candidates; only best, last and fastest remain on disk.
    history = [
        CheckpointInfo(root, entry["step"], None, entry["eval_accuracy"]) for entry in metrics["history"]
    ]
    assert len(history) == 12
    expected = select_retained(history, greater_is_better=True, tolerance=0.01)
    on_disk = sorted(info.step for info in list_checkpoints(artifacts / "checkpoints"))
    assert on_disk == sorted({info.step for info in expected.values()})
    assert {role: entry["step"] for role, entry in metrics["checkpoints"].items()} == {
        role: info.step for role, info in expected.items()
    }
    assert metrics["final_checkpoint"] == f"checkpoint-{expected['best'].step}"
    assert metrics["eval"]["accuracy"] == pytest.approx(expected["best"].metric)


def test_loss_goes_down_and_logs_have_progress_lines(settings, tiny_bert, sentiment_data, tmp_path):
    train_file, validation_file = sentiment_data
    result = train(settings, tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r"))
    lines = [line for line in result.run.logs_path.read_text().splitlines() if "training.progress:" in line]
    losses = [float(line.split(" loss ")[1].split()[0]) for line in lines]
    assert len(losses) == 48
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert all(" lr " in line and " samples/s " in line and " eta " in line for line in lines)
    assert result.metrics["eval"]["accuracy"] >= 0.9


def test_string_multiclass_labels(settings, tiny_bert, tmp_path):
    train_file = write_csv(tmp_path / "train.csv", three_class_rows(120, seed=1))
    validation_file = write_csv(tmp_path / "val.csv", three_class_rows(30, seed=2))
    result = train(
        settings, tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r", epochs=4)
    )
    label_map = json.loads((result.run.artifacts_dir / "label_map.json").read_text())
    assert label_map["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    evaluation = result.metrics["eval"]
    assert sorted(evaluation["per_class"]) == ["negative", "neutral", "positive"]
    assert [sum(row) for row in evaluation["confusion_matrix"]["matrix"]] == [10, 10, 10]
    assert evaluation["accuracy"] > 0.5


def test_integer_labels_with_names_and_split_ratio(settings, tiny_bert, tmp_path):
    from tests.conftest import sentiment_rows

    train_file = write_csv(tmp_path / "train.csv", sentiment_rows(100, seed=3))
    raw = tiny_config_dict(tiny_bert, train_file, None, tmp_path / "r", max_steps=4)
    raw["data"].update(validation_split=0.2, label_names=["negative", "positive"])
    result = train(settings, raw)
    resolved = yaml.safe_load(result.run.config_path.read_text())["resolved"]
    assert resolved["dataset"]["train_rows"] == 80 and resolved["dataset"]["validation_rows"] == 20
    assert resolved["dataset"]["validation"] == "split:0.2"
    assert resolved["labels"] == ["negative", "positive"]
    assert result.metrics["eval"]["confusion_matrix"]["labels"] == ["negative", "positive"]


@pytest.mark.parametrize(
    ("family", "targets", "language"),
    [
        ("bert", ["query", "value"], "English"),
        ("roberta", ["query", "value"], "English"),
        ("distilbert", ["q_lin", "v_lin"], "English"),
        ("albert", ["query", "value"], "English"),
        ("bert-chinese", ["query", "value"], "Chinese"),
        ("deberta-v2", ["query_proj", "value_proj"], "English"),  # no registry entry: generic fallback
    ],
)
def test_each_model_family_trains(settings, tiny_model_factory, tmp_path, family, targets, language):
    model = tiny_model_factory(family)
    rows_train = chinese_rows(40, 1) if language == "Chinese" else None
    if rows_train:
        train_file = write_csv(tmp_path / "train.csv", rows_train)
        validation_file = write_csv(tmp_path / "val.csv", chinese_rows(10, 2))
    else:
        from tests.conftest import sentiment_rows

        train_file = write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))
        validation_file = write_csv(tmp_path / "val.csv", sentiment_rows(10, 2))
    result = train(
        settings,
        tiny_config_dict(model, train_file, validation_file, tmp_path / "r", max_steps=4, eval_steps=2),
    )
    resolved = yaml.safe_load(result.run.config_path.read_text())["resolved"]
    assert resolved["target_modules"] == targets
    assert resolved["language"] == language
    assert resolved["model_type"] == family.removesuffix("-chinese")
    weights = load_file(result.run.artifacts_dir / "adapter_model.safetensors")
    adapted = {name.split(".lora_A")[0].rsplit(".", 1)[-1] for name in weights if ".lora_A" in name}
    assert adapted == set(targets)


def test_early_stopping_stops_after_patience(settings, tiny_bert, sentiment_data, tmp_path):
    train_file, validation_file = sentiment_data
    raw = tiny_config_dict(
        tiny_bert,
        train_file,
        validation_file,
        tmp_path / "r",
        learning_rate=1e-12,
        eval_steps=2,
        early_stopping_patience=2,
        early_stopping_threshold=0.5,
    )
    result = train(settings, raw)
    # The first evaluation sets the best; two more without a 0.5 improvement stop the run at step 6.
    assert result.metrics["train"]["global_step"] == 6
    assert len(result.metrics["history"]) == 3


def test_bad_data_is_refused_before_the_model_loads(settings, tiny_bert, tmp_path, monkeypatch):
    import transformers

    from finetune_platform.data.validation import DatasetValidationError

    def no_model_loading(*args, **kwargs):
        raise AssertionError("the model must not load for invalid data")

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", no_model_loading)
    train_file = write_csv(tmp_path / "train.csv", [("good text", 1), ("", 0), ("more", 0), ("x", 1)])
    raw = tiny_config_dict(tiny_bert, train_file, None, tmp_path / "r")
    with pytest.raises(DatasetValidationError) as caught:
        train(settings, raw)
    assert str(caught.value).startswith(
        "invalid dataset: column 'text' is empty or whitespace in 1 row(s): rows 2"
    )
    (folder,) = (tmp_path / "r" / "tiny").iterdir()
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "failed" and "rows 2" in state["error"]
    report = json.loads((folder / "validation.json").read_text())
    assert report["ok"] is False and report["files"][0]["issues"][0]["rows"] == [2]


def test_invalid_rows_can_be_dropped_and_lineage_is_recorded(settings, tiny_bert, sentiment_data, tmp_path):
    from mlflow import MlflowClient

    from finetune_platform.data.versioning import VersionIndex
    from tests.conftest import sentiment_rows

    rows = sentiment_rows(96, seed=1)
    train_file = write_csv(tmp_path / "train.csv", [*rows, ("", 1), (rows[0][0], 1 - rows[0][1])])
    _, validation_file = sentiment_data
    raw = tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r", max_steps=4)
    raw["data"]["invalid_rows"] = "drop"
    result = train(settings, raw)
    dataset = result.metrics["dataset"]
    # The empty text, and every row of the text that now appears with two labels, are dropped.
    conflicting = sum(text == rows[0][0] for text, _ in rows) + 1
    assert dataset["train_rows_dropped"] == 1 + conflicting
    assert dataset["train_rows"] == 98 - 1 - conflicting
    resolved = yaml.safe_load(result.run.config_path.read_text())["resolved"]["dataset"]
    assert resolved["train_version"] == dataset["train_version"] and len(dataset["train_version"]) == 12
    assert resolved["validation_version"] == dataset["validation_version"]
    tags = MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_run(result.mlflow_run_id).data.tags
    assert tags["finetune.dataset_version"] == dataset["train_version"]
    recorded = {v.version: v for v in VersionIndex(settings).all()}
    assert recorded[dataset["train_version"]].source == "train"
    assert recorded[dataset["train_version"]].file == str(train_file.resolve())
    assert dataset["validation_version"] in recorded
    assert (
        json.loads((result.run.root / "validation.json").read_text())["files"][0]["rows_dropped"]
        == 1 + conflicting
    )


def test_mlflow_has_params_metric_history_and_artifacts(settings, tiny_bert, sentiment_data, tmp_path):
    from mlflow import MlflowClient

    train_file, validation_file = sentiment_data
    result = train(settings, tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r"))
    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["training.learning_rate"] == "0.01"
    assert run.data.params["resolved.target_modules"] == "['query', 'value']"
    assert (
        run.data.tags["finetune.dataset_sha256"]
        == yaml.safe_load(result.run.config_path.read_text())["resolved"]["dataset"]["train_sha256"]
    )
    loss_history = client.get_metric_history(result.mlflow_run_id, "train_loss")
    assert [m.step for m in loss_history] == list(range(2, 97, 2))
    assert len(client.get_metric_history(result.mlflow_run_id, "eval_accuracy")) == 8
    assert run.data.metrics["final_accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
    # The seed README's names too: params batch_size, learning_rate, epochs; metrics accuracy, loss, runtime.
    config = yaml.safe_load(result.run.config_path.read_text())
    assert {key: run.data.params[key] for key in ("batch_size", "learning_rate", "epochs")} == {
        "batch_size": str(config["training"]["batch_size"]),
        "learning_rate": "0.01",
        "epochs": str(config["training"]["epochs"]),
    }
    assert run.data.metrics["accuracy"] == pytest.approx(result.metrics["eval"]["accuracy"])
    assert run.data.metrics["loss"] == pytest.approx(result.metrics["eval"]["loss"])
    assert run.data.metrics["runtime"] == pytest.approx(result.metrics["train"]["runtime_seconds"])
    assert 0 < result.metrics["tracking_seconds"] < result.wall_seconds
    assert (
        json.loads(result.run.metrics_path.read_text())["tracking_seconds"]
        == result.metrics["tracking_seconds"]
    )
    top = {item.path for item in client.list_artifacts(result.mlflow_run_id)}
    assert {"config.yaml", "metrics.json", "logs.txt", "artifacts"} <= top
    nested = {item.path for item in client.list_artifacts(result.mlflow_run_id, "artifacts")}
    assert {"artifacts/adapter_model.safetensors", "artifacts/label_map.json"} <= nested
