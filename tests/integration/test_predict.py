"""Prediction with a trained adapter: the same answers as the training run's own evaluation, truncation
reported, empty texts refused, and `finetune predict` over a file (every row kept)."""

from __future__ import annotations

import csv
import json
import subprocess

import pytest

from finetune_platform.errors import ConfigError
from finetune_platform.inference.onnx_host import AdapterTensors, OnnxHost, UnsupportedAdapter
from finetune_platform.inference.predictor import Predictor, source_from_run
from finetune_platform.inference.runtimes import open_runtime
from finetune_platform.inference.torch_host import TorchHost
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import finetune_bin, sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    """One tiny run with string labels (three classes would do too), MLflow off."""
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("predict")
    train = write_csv(root / "train.csv", sentiment_rows(96, seed=1, labels=("pos", "neg")))
    validation = write_csv(root / "validation.csv", sentiment_rows(32, seed=2, labels=("pos", "neg")))
    raw = tiny_config_dict(tiny_bert, train, validation, root / "results", max_steps=48, eval_steps=12)
    settings = Settings(FINETUNE_HOME=root / "home", MLFLOW_ENABLED=False)
    result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    return result, validation


def test_predictions_reproduce_the_runs_evaluation(trained):
    result, validation = trained
    with validation.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for merge in (True, False):  # merged LoRA weights and the adapter kept separate agree
        predictor = Predictor.from_run(result.run.root, merge=merge)
        predictions = predictor.predict([row["text"] for row in rows], batch_size=5)
        correct = sum(p.label_name == row["label"] for p, row in zip(predictions, rows, strict=True))
        assert correct / len(rows) == pytest.approx(result.metrics["eval"]["accuracy"])
        assert all(abs(sum(p.probabilities.values()) - 1) < 1e-4 for p in predictions)
        assert {p.label_name for p in predictions} <= {"neg", "pos"}
        assert all(predictor.info.labels[p.label] == p.label_name for p in predictions)  # label: the class id
    assert predictor.info.labels == ("neg", "pos") and predictor.info.max_length == 32


def test_every_runtime_reproduces_the_runs_evaluation(trained):
    """ONNX Runtime (adapter as graph inputs) gives torch's probabilities; int8 stays close."""
    result, validation = trained
    with validation.open(encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    source = source_from_run(result.run.root)
    reference = Predictor.from_run(result.run.root).predict(texts)
    onnx = open_runtime(source, "onnx", merged=True)
    assert isinstance(onnx, OnnxHost) and onnx.runtime == "onnx"
    exact = onnx.predict(texts, batch_size=7)
    assert [p.label for p in exact] == [p.label for p in reference]
    for ours, theirs in zip(exact, reference, strict=True):
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=2e-5)
    quantized = open_runtime(source, "onnx-int8", merged=True)
    assert quantized.runtime == "onnx-int8"
    agree = sum(a.label == b.label for a, b in zip(quantized.predict(texts), reference, strict=True))
    assert agree / len(texts) >= 0.9
    with pytest.raises(ConfigError, match="SERVE_RUNTIME 'tensorrt': choose one of onnx, onnx-int8, torch"):
        open_runtime(source, "tensorrt")


def test_an_adapter_onnx_cannot_express_is_served_by_pytorch(trained, tmp_path, caplog):
    import shutil

    result, _ = trained
    folder = shutil.copytree(result.run.root, tmp_path / "dora-run")
    config_file = folder / "artifacts" / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["use_dora"] = True  # not in the exported graph
    config_file.write_text(json.dumps(config))
    source = source_from_run(folder)
    with pytest.raises(UnsupportedAdapter, match="use_dora=True"):
        AdapterTensors.read(source.adapter_dir)
    with caplog.at_level("WARNING", logger="finetune_platform.inference"):
        host = open_runtime(source, "onnx")
    assert isinstance(host, TorchHost) and host.runtime == "torch" and not host.merged
    assert f"{source.key}: served with PyTorch, not ONNX Runtime (use_dora=True)" in caplog.text


def test_long_texts_are_truncated_and_say_so_and_empty_texts_are_refused(trained):
    predictor = Predictor.from_run(trained[0].run.root)
    short, long = predictor.predict(["great film", "great " * 100])
    assert (short.truncated, long.truncated) == (False, True)
    with pytest.raises(ConfigError, match="text 1: empty; give the text to classify"):
        predictor.predict(["fine", "   "])


def test_predict_command_writes_a_row_for_every_input_row(trained, tmp_path):
    result, _ = trained
    rows = [("great film", "pos"), ("", "neg"), ("awful book " * 40, "neg")]
    source = write_csv(tmp_path / "in.csv", rows)
    output = tmp_path / "out" / "predictions.csv"
    done = subprocess.run(
        [
            finetune_bin(),
            "predict",
            "--run",
            str(result.run.root),
            "--input",
            str(source),
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote 3 rows to {output} (2 predicted, 1 empty, 1 truncated at 32 tokens)" in done.stdout
    assert "accuracy against the 2 labelled rows: " in done.stdout
    assert "predicting" in done.stderr  # the progress bar
    with output.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [row["row"] for row in written] == ["1", "2", "3"]
    assert list(written[0])[:5] == ["row", "label", "label_name", "probability", "truncated"]
    assert written[1]["error"] == "empty text" and written[1]["label"] == written[1]["label_name"] == ""
    assert written[2]["truncated"] == "True"
    labels = ["neg", "pos"]  # the model's labels (id2label): a CSV's label is the class id of label_name
    for row in (written[0], written[2]):
        assert row["label_name"] in labels and row["label"] == str(labels.index(row["label_name"]))
    one = subprocess.run(
        [finetune_bin(), "predict", "--run", str(result.run.root), "--text", "wonderful concert"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    (answer,) = json.loads(one.stdout)
    # the seed README's answer first (label: the class id), then ours, as POST /predict answers
    assert list(answer) == [
        "label", "probability", "latency_ms", "base_model", "language",
        "label_name", "probabilities", "truncated", "model", "version",
    ]  # fmt: skip
    assert type(answer["label"]) is int and labels[answer["label"]] == answer["label_name"]
    info = source_from_run(result.run.root).info
    assert (answer["base_model"], answer["language"], answer["model"], answer["version"]) == (
        info.base_model,
        "English",
        info.name,
        None,
    )
    assert answer["probability"] == max(answer["probabilities"].values())
    assert isinstance(answer["latency_ms"], float) and answer["latency_ms"] > 0
    bad = subprocess.run(
        [finetune_bin(), "predict", "--run", str(result.run.root), "--input", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "--input needs --output" in bad.stderr
