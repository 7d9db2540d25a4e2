"""Trained multi-label and sentence-pair regression runs, predicted on every face: the predictions of a run folder
reproduce its own evaluation (subset accuracy with the tuned thresholds, RMSE in the target's units), ONNX gives
PyTorch's answers, and a registered multi-label model answers `finetune serve` and a prediction job."""

from __future__ import annotations

import csv
import json
import random

import pytest
from fastapi.testclient import TestClient

from finetune_platform.inference.batch import predict_file, read_rows
from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import Predictor, source_from_registry, source_from_run
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import NOUNS, UNGATED, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow
# the training of multi_label and regression (branch tasks-train); drop this guard once it is merged
TOPICS = {"sports": ["football", "tennis"], "music": ["guitar", "song"], "food": ["pizza", "bread"]}


def topic_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Texts naming 0 to 2 topics by their words; the label cell lists them (',': several, '[]': none)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topics = sorted(rng.sample(sorted(TOPICS), [1, 2, 1, 0][i % 4]))
        words = [rng.choice(TOPICS[topic]) for topic in topics] + [rng.choice(NOUNS)]
        rng.shuffle(words)
        rows.append((" ".join(words), ",".join(topics) or "[]"))
    return rows


def similarity_rows(count: int, seed: int) -> list[tuple[str, str, float]]:
    """Pairs whose score is the number of words the second text shares with the first."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        first = rng.sample(NOUNS, 3)
        shared = i % 4
        second = first[:shared] + rng.sample([n for n in NOUNS if n not in first], 3 - shared)
        rows.append((" ".join(first), " ".join(second), float(shared)))
    return rows


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert):
    from finetune_platform.db.session import upgrade
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("task-predict")
    settings = Settings(
        FINETUNE_HOME=root / "home", MODEL_REGISTRY_DIR=root / "cards", RESULTS_DIR=root / "predictions"
    )
    upgrade(settings)
    files = {
        "topics": write_csv(root / "topics.csv", topic_rows(48, 1)),
        "topics-validation": write_csv(root / "topics-validation.csv", topic_rows(16, 2)),
        "pairs": write_csv(root / "pairs.csv", similarity_rows(48, 3), ("a", "b", "score")),
        "pairs-validation": write_csv(
            root / "pairs-validation.csv", similarity_rows(16, 4), ("a", "b", "score")
        ),
    }
    topics = tiny_config_dict(
        tiny_bert, files["topics"], files["topics-validation"], root / "runs", max_steps=12, eval_steps=6
    )
    topics.update(task="multi_label", thresholds="tune", registry={"model_name": "topics-predict", **UNGATED})
    pairs = tiny_config_dict(
        tiny_bert, files["pairs"], files["pairs-validation"], root / "runs", max_steps=12, eval_steps=6
    )
    pairs.update(task="regression", registry={"enabled": False})
    pairs["data"].update(text_column="a", text_pair_column="b", label_column="score")
    results = {
        name: run_training(config_from_dict(raw), settings=settings, show_progress=False)
        for name, raw in (("topics", topics), ("pairs", pairs))
    }
    return settings, files, results


def test_a_multi_label_runs_predictions_reproduce_its_evaluation(trained, tmp_path):
    settings, files, results = trained
    run = results["topics"].run
    metrics = json.loads(run.metrics_path.read_text())
    source = source_from_run(run.root)
    assert source.label_map.thresholds == tuple(metrics["thresholds"][n] for n in source.label_map.names)
    inputs = read_rows(files["topics-validation"], "text", "label")
    torch_host = Predictor.from_run(run.root)
    summary = predict_file(torch_host, inputs.texts, inputs.labels, tmp_path / "topics.csv")
    assert summary.accuracy == pytest.approx(metrics["eval"]["subset_accuracy"])
    onnx = open_one(settings, source, "onnx")
    for ours, theirs in zip(onnx.predict(inputs.texts), torch_host.predict(inputs.texts), strict=True):
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=2e-5)
        assert [name for name, _ in ours.labels] == [name for name, _ in theirs.labels]


def test_a_pair_regression_runs_predictions_reproduce_its_rmse(trained, tmp_path):
    settings, files, results = trained
    run = results["pairs"].run
    metrics = json.loads(run.metrics_path.read_text())
    inputs = read_rows(files["pairs-validation"], "a", "score", "b")
    host = open_one(settings, source_from_run(run.root), "onnx")
    assert (host.info.task, host.info.pair) == ("regression", True)
    summary = predict_file(host, inputs.texts, inputs.labels, tmp_path / "pairs.csv", pairs=inputs.pairs)
    assert summary.rmse == pytest.approx(metrics["eval"]["rmse"], rel=1e-3)


def test_a_registered_multi_label_model_is_served_and_predicts_a_file_as_a_job(trained):
    from finetune_platform.db.session import session_scope
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.services.jobs import submit_prediction_job
    from finetune_platform.services.users import local_user
    from finetune_platform.worker.executor import execute_job

    settings, files, _ = trained
    texts = ["guitar and pizza tonight", "a quiet book"]
    want = Predictor.from_registry(settings, "topics-predict").predict(texts)
    client = TestClient(
        create_serve_app(settings.model_copy(update={"METRICS_ENABLED": False}), "topics-predict")
    )
    body = client.post("/predict/batch", json={"texts": texts}).json()
    assert [[item["label"] for item in p["labels"]] for p in body["predictions"]] == [
        [name for name, _ in p.labels] for p in want
    ]
    assert [p["task"] for p in body["predictions"]] == ["multi_label", "multi_label"]
    (loaded,) = client.get("/models").json()["loaded"]
    assert (loaded["task"], loaded["pair"], loaded["labels"]) == (
        "multi_label",
        False,
        ["food", "music", "sports"],
    )

    with session_scope(settings) as session:
        job = submit_prediction_job(
            session,
            settings,
            local_user(session),
            model="topics-predict",
            input_file=files["topics-validation"],
        ).job
        job_id = job.id
    assert execute_job(settings, job_id) == "succeeded"
    output = settings.RESULTS_DIR / "predictions" / job_id / "predictions.csv"
    with output.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["row", "labels", "probabilities", "truncated", "error"]
    expected = Predictor.from_registry(settings, "topics-predict").predict(
        read_rows(files["topics-validation"], "text", "label").texts
    )
    assert [row["labels"] for row in written] == [",".join(n for n, _ in p.labels) for p in expected]
    assert source_from_registry(settings, "topics-predict").label_map.task == "multi_label"
