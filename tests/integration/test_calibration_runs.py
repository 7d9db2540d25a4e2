"""A run fits temperature scaling on its validation set, stores it with the model, reports ECE before and
after (metrics.json, MLflow, the model card, a reliability diagram), and every runtime divides by it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from finetune_platform.inference.predictor import Predictor, source_from_run
from finetune_platform.inference.runtimes import open_runtime
from finetune_platform.training.calibration import CALIBRATION_FILE
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import UNGATED, sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny_bert):
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("calibrated")
    train = write_csv(root / "train.csv", sentiment_rows(96, seed=1, labels=("pos", "neg")))
    rows = sentiment_rows(32, seed=2, labels=("pos", "neg"))
    # the labels of four texts flipped (every row of each): a model right on every validation row would give
    # temperature scaling nothing to fit
    flipped = list(dict.fromkeys(text for text, _ in rows))[:4]
    swap = {"pos": "neg", "neg": "pos"}
    rows = [(text, swap[label] if text in flipped else label) for text, label in rows]
    validation = write_csv(root / "validation.csv", rows)
    raw = tiny_config_dict(tiny_bert, train, validation, root / "results", max_steps=48, eval_steps=12)
    raw["registry"] = {"model_name": "calibrated-tiny", **UNGATED}  # the card is under test
    settings = Settings(FINETUNE_HOME=root / "home", MODEL_REGISTRY_DIR=root / "cards")
    result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    texts = [line.split(",", 1)[0] for line in validation.read_text(encoding="utf-8").splitlines()[1:]]
    return result, settings, raw, texts


def test_the_temperature_is_reported_everywhere_and_stored_with_the_model(calibrated):
    result, settings, _, _ = calibrated
    metrics = json.loads(result.run.metrics_path.read_text())
    calibration = metrics["calibration"]
    assert set(calibration) == {
        "method",
        "temperature",
        "ece_before",
        "ece_after",
        "nll_before",
        "nll_after",
        "bins",
    }
    assert calibration["method"] == "temperature" and calibration["bins"] == 15
    assert 0.05 <= calibration["temperature"] <= 20 and calibration["temperature"] != 1.0
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    stored = json.loads((result.run.artifacts_dir / CALIBRATION_FILE).read_text())
    assert stored == {"method": "temperature", "temperature": calibration["temperature"]}
    assert (result.run.root / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri)
    logged = client.get_run(result.mlflow_run_id).data.metrics
    assert logged["calibration_temperature"] == pytest.approx(calibration["temperature"])
    assert logged["calibration_ece_before"] == pytest.approx(calibration["ece_before"])
    assert logged["calibration_ece_after"] == pytest.approx(calibration["ece_after"])
    artifacts = {entry.path for entry in client.list_artifacts(result.mlflow_run_id)}
    assert "reliability.png" in artifacts

    from finetune_platform.tracking.registry import ModelRegistry

    model = result.metrics["model"]
    card = ModelRegistry(settings).cards.get(model["name"], model["version"])
    assert card.calibration == calibration
    assert CALIBRATION_FILE in card.artifact_checksums  # served only as registered: a changed T is refused


def test_every_runtime_divides_the_logits_by_the_temperature(calibrated, tmp_path):
    result, _, _, texts = calibrated
    temperature = json.loads(result.run.metrics_path.read_text())["calibration"]["temperature"]
    calibrated_probs = [p.probabilities for p in Predictor.from_run(result.run.root).predict(texts)]
    plain_run = shutil.copytree(result.run.root, tmp_path / "uncalibrated")
    (plain_run / "artifacts" / CALIBRATION_FILE).unlink()
    plain = Predictor.from_run(plain_run).predict(texts)
    for raw, scaled in zip(plain, calibrated_probs, strict=True):
        names = list(raw.probabilities)
        log_p = np.log([raw.probabilities[name] for name in names]) / temperature
        expected = np.exp(log_p - log_p.max()) / np.exp(log_p - log_p.max()).sum()
        assert [scaled[name] for name in names] == pytest.approx(list(expected), abs=2e-5)
        assert max(scaled, key=scaled.get) == raw.label_name  # never a different answer
    onnx = open_runtime(source_from_run(result.run.root), "onnx", merged=True).predict(texts)
    for ours, theirs in zip(onnx, calibrated_probs, strict=True):
        assert ours.probabilities == pytest.approx(theirs, abs=2e-5)


def test_calibration_none_stores_and_reports_nothing(calibrated, tmp_path):
    _, settings, raw, _ = calibrated
    raw = {
        **raw,
        "calibration": "none",
        "output_dir": str(tmp_path / "results"),
        "registry": {"enabled": False},
    }
    result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    assert "calibration" not in json.loads(result.run.metrics_path.read_text())
    assert not (result.run.artifacts_dir / CALIBRATION_FILE).exists()
    assert not (result.run.root / "reliability.png").exists()
