"""The registry's quality gate on real tiny runs: a run no better than the majority baseline on its validation
rows, or short of registry.min_metric, succeeds unregistered and says why (CLI, logs.txt, metrics.json, a queued
job's result); a run that learned is registered; a file whose labels cannot be split is refused before a run
folder exists."""

from __future__ import annotations

import json
import random

import pytest
import yaml
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.settings import Settings
from finetune_platform.tracking.registry import ModelRegistry
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.registration import registration_refusal
from finetune_platform.training.run_folder import RunFolder
from finetune_platform.training.runner import run_training
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import queue_env, submit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tracked(platform_home):
    return Settings(FINETUNE_HOME=platform_home, MODEL_REGISTRY_DIR=platform_home / "cards")


def unlearnable_data(root):
    """Labels drawn at random whatever the text: 'pos' the training majority (24 of 40), and 18 of the 20
    validation rows, so predicting 'pos' always scores 0.9 there."""
    rng = random.Random(5)
    texts = [f"{text} number {i}" for i, (text, _) in enumerate(sentiment_rows(60, seed=3))]
    train_labels = ["pos"] * 24 + ["neg"] * 16
    validation_labels = ["pos"] * 18 + ["neg"] * 2
    rng.shuffle(train_labels)
    rng.shuffle(validation_labels)
    train = write_csv(root / "train.csv", list(zip(texts[:40], train_labels, strict=True)))
    validation = write_csv(root / "validation.csv", list(zip(texts[40:], validation_labels, strict=True)))
    return train, validation


def learnable_data(root):
    labels = ("pos", "neg")
    train = write_csv(root / "train.csv", sentiment_rows(96, seed=1, labels=labels))
    validation = write_csv(root / "validation.csv", sentiment_rows(32, seed=2, labels=labels))
    return train, validation


def config(tiny_bert, data, root, name, **training) -> dict:
    raw = tiny_config_dict(tiny_bert, *data, root / "results", **training)
    raw["experiment"] = name
    raw["registry"] = {"model_name": name}
    return raw


def finetune_train(config_file, home) -> tuple[int, str]:
    """`finetune train CONFIG` through the real CLI, tracked in the session's store."""
    from finetune_platform.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            ["train", str(config_file), "--no-progress"],
            env={"FINETUNE_HOME": str(home), "MODEL_REGISTRY_DIR": str(home / "cards")},
        )
    finally:
        get_settings.cache_clear()
    return result.exit_code, result.output


def baseline_reason(metrics: dict) -> str:
    accuracy = metrics["eval"]["accuracy"]
    return (
        f"accuracy {accuracy:.4f} is not better than the majority baseline's 0.9000 (always predicting 'pos', the "
        "most frequent training label, on the same 20 validation rows)"
    )


def test_a_run_no_better_than_the_majority_is_not_registered_and_says_why(
    tiny_bert, tracked, platform_home, tmp_path
):
    raw = config(tiny_bert, unlearnable_data(tmp_path), tmp_path, "gate-unlearnable", max_steps=1)
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    exit_code, output = finetune_train(config_file, platform_home)
    assert exit_code == 0, output
    (run_folder,) = (tmp_path / "results" / "gate-unlearnable").iterdir()
    metrics = json.loads((run_folder / "metrics.json").read_text())
    reason = baseline_reason(metrics)
    assert metrics["registry"] == {"registered": False, "reason": reason}
    assert metrics["baseline"] == {"predicts": "pos", "accuracy": 0.9, "macro_f1": pytest.approx(18 / 19 / 2),
                                   "num_rows": 20}  # fmt: skip
    assert "model" not in metrics
    assert f"  not registered   {reason}" in output
    assert (
        f"WARNING finetune_platform.training: not registered: {reason}"
        in (run_folder / "logs.txt").read_text()
    )
    state = RunFolder(run_folder).read_state()
    assert state["status"] == "succeeded" and state["mlflow_run_id"]
    assert ModelRegistry(tracked).versions("gate-unlearnable") == []


def test_a_run_that_learned_is_registered(tiny_bert, tracked, tmp_path):
    raw = config(tiny_bert, learnable_data(tmp_path), tmp_path, "gate-learned")
    result = run_training(config_from_dict(raw), settings=tracked, show_progress=False)
    assert result.metrics["baseline"]["predicts"] in ("pos", "neg")
    assert result.metrics["eval"]["accuracy"] > result.metrics["baseline"]["accuracy"]
    assert result.metrics["registry"] == {"registered": True}
    assert result.metrics["model"] == {"name": "gate-learned", "version": 1, "stage": "Staging"}
    assert [v.version for v in ModelRegistry(tracked).versions("gate-learned")] == [1]


def test_registry_min_metric_above_the_achieved_metric_refuses(tiny_bert, tracked, tmp_path):
    raw = config(
        tiny_bert,
        learnable_data(tmp_path),
        tmp_path,
        "gate-min-loss",
        metric_for_best_model="loss",
    )
    raw["registry"]["min_metric"] = 0.0001  # loss: lower is better, so the most a run may have
    result = run_training(config_from_dict(raw), settings=tracked, show_progress=False)
    loss = result.metrics["eval"]["loss"]
    assert result.metrics["eval"]["accuracy"] > result.metrics["baseline"]["accuracy"]  # it did learn
    assert result.metrics["registry"] == {
        "registered": False,
        "reason": f"loss {loss:.4f} is above registry.min_metric 0.0001 (lower loss is better: registry.min_metric "
        "is the most a run may have)",
    }
    assert ModelRegistry(tracked).versions("gate-min-loss") == []


def test_the_gate_reads_each_direction_and_can_be_turned_off(tiny_bert, tmp_path):
    raw = config(tiny_bert, learnable_data(tmp_path), tmp_path, "gate-unit")
    metrics = {"eval": {"accuracy": 0.75, "macro_f1": 0.7, "loss": 0.5},
               "baseline": {"predicts": "pos", "accuracy": 0.75, "macro_f1": 0.43, "num_rows": 20}}  # fmt: skip
    tie = (
        "accuracy 0.7500 is not better than the majority baseline's 0.7500 (always predicting 'pos', the most "
        "frequent training label, on the same 20 validation rows)"
    )
    assert registration_refusal(config_from_dict(raw), metrics) == tie
    raw["registry"] = {"require_better_than_baseline": False, "min_metric": 0.8}
    assert (
        registration_refusal(config_from_dict(raw), metrics)
        == "accuracy 0.7500 is below registry.min_metric 0.8"
    )
    raw["registry"] = {"require_better_than_baseline": False, "min_metric": 0.75}
    assert registration_refusal(config_from_dict(raw), metrics) is None
    regression = {"eval": {"rmse": 1.0, "mae": 0.8, "pearson": 0.1, "spearman": 0.1, "loss": 1.0},
                  "baseline": {"predicts": 2.5, "rmse": 1.0, "num_rows": 8}}  # fmt: skip
    raw = {**config(tiny_bert, learnable_data(tmp_path), tmp_path, "gate-unit"), "task": "regression"}
    raw["training"]["class_weights"] = "none"
    assert registration_refusal(config_from_dict(raw), regression) == (
        "rmse 1.0000 is not lower than the majority baseline's 1.0000 (always predicting the training mean 2.5, "
        "on the same 8 validation rows)"
    )


def test_a_three_row_three_class_file_is_refused_before_a_run_folder(tiny_bert, platform_home, tmp_path):
    train = write_csv(
        tmp_path / "three.csv", [("a good film", "a"), ("a bad film", "b"), ("an okay film", "c")]
    )
    raw = config(tiny_bert, (train, None), tmp_path, "gate-three-rows")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    exit_code, output = finetune_train(config_file, platform_home)
    assert exit_code == 1, output
    assert (
        "invalid dataset: label 'a' has 1 row, label 'b' has 1 row, label 'c' has 1 row: a validation split of 10% "
        "needs at least 2 rows of every label (one for training, one for validation)"
    ) in output
    assert not (tmp_path / "results").exists()


def test_a_queued_job_no_better_than_the_majority_says_why_in_its_result(tiny_bert, tmp_path):
    env = queue_env(tmp_path / "q")
    try:
        job_id = submit(env, config(tiny_bert, unlearnable_data(tmp_path), tmp_path, "gate-job", max_steps=1))
        env.start_worker("gate1")
        job = env.wait_status(job_id, {"succeeded", "failed"})
        run_folder = tmp_path / "results" / "gate-job" / job_id
        reason = baseline_reason(json.loads((run_folder / "metrics.json").read_text()))
        assert (job.status, job.model_name, job.model_version) == ("succeeded", None, None)
        assert job.progress["registry"] == {"registered": False, "reason": reason}
        (message,) = [m for kind, m in env.events(job_id) if kind == "succeeded"]
        assert message.endswith(f"; not registered: {reason}")
        assert [m for kind, m in env.events(job_id) if kind == "stage"] == ["training", "evaluating"]
    finally:
        env.stop_all()
