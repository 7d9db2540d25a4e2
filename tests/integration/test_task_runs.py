"""Tiny real runs of each new task, end to end: a multi-label run tunes its thresholds and carries them in
label_map.json, metrics.json, MLflow and the model card; a regression run reports its errors in the target's units
with the target's scale beside them; a sentence-pair run reads two texts a row. Neither multi-label nor regression
is calibrated."""

from __future__ import annotations

import json
import math
import random
import shutil

import pytest
import torch
import yaml

from finetune_platform.errors import ConfigError
from finetune_platform.training.checkpoints import list_checkpoints
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.metrics import THRESHOLD_GRID
from finetune_platform.training.recipe import LoraClassificationRecipe
from finetune_platform.training.run_folder import RunFolder
from finetune_platform.training.runner import run_training
from tests.conftest import NOUNS, UNGATED, sentiment_rows, write_csv
from tests.integration.test_driver import assert_same_history, fast_config, train

pytestmark = pytest.mark.slow

TOPICS = {"sports": ["football", "tennis", "goal"], "politics": ["election", "senate", "vote"],
          "music": ["guitar", "piano", "song"]}  # fmt: skip


def topic_rows(count: int, seed: int) -> list[tuple[str, str]]:
    """Texts naming 0 to 2 topics by their words; the label cell lists them, comma-separated ('[]': none)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        topics = sorted(rng.sample(sorted(TOPICS), [1, 2, 1, 0][i % 4]))
        words = [rng.choice(TOPICS[topic]) for topic in topics] + [rng.choice(NOUNS)]
        rng.shuffle(words)
        rows.append((" ".join(words), ",".join(topics) or "[]"))
    return rows


def score_rows(count: int, seed: int) -> list[tuple[str, float]]:
    """Texts whose target is 1.5 × the number of 'great' in them, minus 2."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        greats = i % 4
        words = ["great"] * greats + [rng.choice(NOUNS) for _ in range(3 - greats)]
        rng.shuffle(words)
        rows.append((" ".join(words), 1.5 * greats - 2))
    return rows


def tiny_run(model, train_file, validation_file, output_dir, task: str, **top) -> dict:
    raw = fast_config(model, train_file, validation_file, output_dir, max_steps=10, eval_steps=5)
    raw.update(task=task, **top)
    return raw


@pytest.fixture(scope="module")
def tracked(platform_home):
    """The session's MLflow store (creating one costs seconds) and model cards."""
    from finetune_platform.settings import Settings

    return Settings(FINETUNE_HOME=platform_home, MODEL_REGISTRY_DIR=platform_home / "cards")


@pytest.fixture(scope="module")
def multi_label_run(tmp_path_factory, tiny_bert, tracked):
    root = tmp_path_factory.mktemp("multi-label")
    train_file = write_csv(root / "train.csv", topic_rows(40, seed=1))
    validation_file = write_csv(root / "validation.csv", topic_rows(16, seed=2))
    raw = tiny_run(tiny_bert, train_file, validation_file, root / "results", "multi_label", thresholds="tune")
    raw["training"]["class_weights"] = "balanced"
    raw["registry"] = {"model_name": "topics-tiny", **UNGATED}  # about the card, not learning
    return run_training(config_from_dict(raw), settings=tracked, show_progress=False)


def test_a_multi_label_run_tunes_and_stores_its_thresholds(multi_label_run, tracked):
    result = multi_label_run
    metrics = json.loads(result.run.metrics_path.read_text())
    evaluation = metrics["eval"]
    assert set(evaluation) == {"micro_f1", "macro_f1", "subset_accuracy", "loss", "per_class", "num_rows"}
    assert evaluation["num_rows"] == 16
    assert all(0.0 <= evaluation[key] <= 1.0 for key in ("micro_f1", "macro_f1", "subset_accuracy"))
    assert evaluation["loss"] > 0
    names = ["music", "politics", "sports"]
    thresholds = metrics["thresholds"]
    assert list(thresholds) == names and all(value in THRESHOLD_GRID for value in thresholds.values())
    assert {name: scores["threshold"] for name, scores in evaluation["per_class"].items()} == thresholds
    label_map = json.loads((result.run.artifacts_dir / "label_map.json").read_text())
    assert label_map == {
        "id2label": {"0": "music", "1": "politics", "2": "sports"},
        "label2id": {"music": 0, "politics": 1, "sports": 2},
        "raw_values": names,
        "task": "multi_label",
        "pair": False,
        "thresholds": [thresholds[name] for name in names],
    }
    # evaluations while training report the task's metrics at 0.5; the ranking metric is micro_f1
    evaluations = metrics["history"]
    assert [entry["step"] for entry in evaluations] == [5, 10]
    assert {"eval_loss", "eval_micro_f1", "eval_macro_f1", "eval_subset_accuracy"} <= set(evaluations[0])
    assert "eval_accuracy" not in evaluations[0]
    assert {info.metric_name for info in list_checkpoints(result.run.checkpoints_dir)} == {"eval_micro_f1"}
    # not calibrated: no temperature anywhere, and the log says why
    assert "calibration" not in metrics
    assert not (result.run.artifacts_dir / "calibration.json").exists()
    assert not (result.run.root / "reliability.png").exists()
    log = result.run.logs_path.read_text()
    assert "calibration: skipped, temperature scaling is for single_label runs (task: multi_label)" in log
    assert "thresholds tuned on the validation set: " in log
    # pos_weight per label: negatives / positives in the 40 training rows
    rows = [labels.split(",") for _, labels in topic_rows(40, seed=1)]
    expected = {
        name: round((40 - sum(name in r for r in rows)) / sum(name in r for r in rows), 6) for name in names
    }
    assert yaml.safe_load(result.run.config_path.read_text())["resolved"]["class_weights"] == expected


def test_a_multi_label_run_logs_and_registers_its_task(multi_label_run, tracked):
    from mlflow.tracking import MlflowClient

    from finetune_platform.tracking.registry import ModelRegistry

    result = multi_label_run
    metrics = json.loads(result.run.metrics_path.read_text())
    logged = MlflowClient(tracked.mlflow_tracking_uri).get_run(result.mlflow_run_id).data.metrics
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "loss"):
        assert logged[f"final_{key}"] == pytest.approx(metrics["eval"][key])
    for name, threshold in metrics["thresholds"].items():
        assert logged[f"final_threshold.{name}"] == pytest.approx(threshold)
    assert "final_accuracy" not in logged and "eval_micro_f1" in logged
    model = metrics["model"]
    card = ModelRegistry(tracked).cards.get(model["name"], model["version"])
    assert card.task_type == "multi_label"
    assert card.thresholds == metrics["thresholds"]
    assert card.metrics == {
        key: metrics["eval"][key] for key in ("micro_f1", "macro_f1", "subset_accuracy", "loss")
    }
    assert card.calibration is None and card.target_scale is None


def finetune_train(config_file, home) -> dict:
    """`finetune train CONFIG` through the real CLI, untracked: its printed summary and the new run's id."""
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            ["train", str(config_file), "--no-progress"],
            env={"FINETUNE_HOME": str(home), "MLFLOW_ENABLED": "false"},
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    run_id = next(line.split()[1] for line in result.output.splitlines() if line.startswith("run "))
    return {"output": result.output, "run_id": run_id}


def test_a_regression_run_reports_errors_in_the_targets_units(tiny_bert, tmp_path):
    train_rows = score_rows(40, seed=1)
    train_file = write_csv(tmp_path / "train.csv", train_rows, header=("text", "score"))
    validation_file = write_csv(tmp_path / "validation.csv", score_rows(16, seed=2), header=("text", "score"))
    raw = tiny_run(tiny_bert, train_file, validation_file, tmp_path / "results", "regression")
    raw["data"]["label_column"] = "score"
    config_file = tmp_path / "regression.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    printed = finetune_train(config_file, tmp_path / "home")
    run_root = tmp_path / "results" / "tiny" / printed["run_id"]
    metrics = json.loads((run_root / "metrics.json").read_text())
    evaluation = metrics["eval"]
    assert set(evaluation) == {"rmse", "mae", "pearson", "spearman", "loss", "num_rows"}
    targets = [target for _, target in train_rows]
    mean = sum(targets) / 40
    std = math.sqrt(sum((t - mean) ** 2 for t in targets) / 40)
    assert metrics["target_scale"] == pytest.approx({"mean": mean, "std": std})
    # the loss is the mean squared error of the standardised target; rmse is the same error in the target's units
    assert evaluation["rmse"] == pytest.approx(math.sqrt(evaluation["loss"]) * std, rel=1e-4)
    assert 0 < evaluation["mae"] <= evaluation["rmse"]
    assert -1 <= evaluation["pearson"] <= 1 and -1 <= evaluation["spearman"] <= 1
    label_map = json.loads((run_root / "artifacts" / "label_map.json").read_text())
    assert label_map == {
        "id2label": {"0": "score"},
        "label2id": {"score": 0},
        "raw_values": [],
        "task": "regression",
        "pair": False,
        "scale": metrics["target_scale"],
    }
    assert {"eval_rmse", "eval_mae", "eval_pearson", "eval_spearman", "eval_loss"} <= set(
        metrics["history"][0]
    )
    assert "calibration" not in metrics and not (run_root / "reliability.png").exists()
    # the summary names the task's metrics and the target's scale
    summary = printed["output"]
    for words, key in (("RMSE", "rmse"), ("MAE", "mae"), ("Pearson", "pearson"), ("Spearman", "spearman")):
        assert f"  {words:<17}{evaluation[key]:.4f}\n" in summary
    assert f"  target           mean {mean:.4g}, std {std:.4g}\n" in summary
    assert "accuracy" not in summary


def test_a_pair_run_reads_two_texts_a_row(tiny_bert, untracked, tmp_path):
    def pairs(count, seed):
        rows = sentiment_rows(count, seed, labels=("same", "different"))
        rng = random.Random(seed)
        return [(text, rng.choice(NOUNS), label) for text, label in rows]

    header = ("premise", "hypothesis", "label")
    train_file = write_csv(tmp_path / "train.csv", pairs(40, 1), header=header)
    validation_file = write_csv(tmp_path / "validation.csv", pairs(16, 2), header=header)
    raw = tiny_run(tiny_bert, train_file, validation_file, tmp_path / "results", "single_label")
    raw["data"].update(text_column="premise", text_pair_column="hypothesis")
    result = train(untracked, raw)
    label_map = json.loads((result.run.artifacts_dir / "label_map.json").read_text())
    assert label_map["pair"] is True and label_map["task"] == "single_label"
    assert label_map["id2label"] == {"0": "different", "1": "same"}
    metrics = json.loads(result.run.metrics_path.read_text())
    assert {"accuracy", "macro_f1", "loss", "per_class", "confusion_matrix"} <= set(metrics["eval"])
    assert "calibration" in metrics  # single_label pairs are calibrated as before


def test_the_recipe_tokenises_pairs_and_standardises_targets(tiny_bert, tmp_path):
    from transformers import AutoTokenizer

    rows = [
        (text, f"{noun} again", target)
        for (text, target), noun in zip(score_rows(12, 1), NOUNS[:12] + NOUNS[:2], strict=True)
    ]
    header = ("sentence1", "sentence2", "score")
    train_file = write_csv(tmp_path / "train.csv", rows, header=header)
    validation_file = write_csv(tmp_path / "validation.csv", rows[:4], header=header)
    raw = tiny_run(tiny_bert, train_file, validation_file, tmp_path / "results", "regression")
    raw["data"].update(text_column="sentence1", text_pair_column="sentence2", label_column="score")
    config = config_from_dict(raw)
    recipe = LoraClassificationRecipe(
        config, RunFolder.create(config.output_dir, config.experiment), show_progress=False
    )
    recipe.setup()
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    data = recipe.driver.train_data
    frame = recipe.state.splits.train
    mean, std = recipe.state.splits.label_map.scale
    for row in range(len(frame)):
        expected = tokenizer(frame["text"][row], frame["text_pair"][row], truncation=True, max_length=32)[
            "input_ids"
        ]
        assert data.ids[row, : len(expected)].tolist() == expected and int(data.lengths[row]) == len(expected)
        assert float(data.labels[row]) == pytest.approx((frame["label_id"][row] - mean) / std, abs=1e-6)
    assert data.labels.dtype == torch.float32 and tuple(data.labels.shape) == (12,)
    assert (
        recipe.driver.model.config.problem_type == "regression" and recipe.driver.model.config.num_labels == 1
    )
    stored = json.loads((recipe.run.artifacts_dir / "label_map.json").read_text())
    assert stored["pair"] is True and stored["scale"] == {"mean": mean, "std": std}
    recipe.cleanup()


def test_an_unknown_label_in_multi_label_class_weights_is_refused_when_the_data_loads(
    tiny_bert, untracked, tmp_path
):
    train_file = write_csv(tmp_path / "train.csv", topic_rows(40, seed=1))
    raw = tiny_run(tiny_bert, train_file, None, tmp_path / "results", "multi_label")
    raw["training"]["class_weights"] = {"weather": 3}
    with pytest.raises(ConfigError) as caught:
        train(untracked, raw)
    assert str(caught.value) == (
        "training.class_weights: unknown label 'weather'; the training data's labels are 'music', 'politics', "
        "'sports'"
    )


@pytest.fixture
def untracked(settings):
    return settings.model_copy(update={"MLFLOW_ENABLED": False})


@pytest.fixture(scope="module")
def dropout_free_bert(tiny_bert, tmp_path_factory):
    """tiny_bert without dropout: runs that take the same steps end with the same weights."""
    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout") / "model"
    shutil.copytree(tiny_bert, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.extended  # two gloo processes; the driver's own data-parallel equality test runs by default
def test_a_multi_label_run_on_two_processes_equals_one_process_with_the_global_batch(
    untracked, dropout_free_bert, tmp_path
):
    train_file = write_csv(tmp_path / "train.csv", topic_rows(48, seed=1))  # 3 full global batches of 16
    validation_file = write_csv(tmp_path / "validation.csv", topic_rows(16, seed=2))
    common = dict(max_steps=6, eval_steps=3, learning_rate_reference_batch=8, class_weights="balanced")
    runs = []
    for folder, shape in (("dp", {"devices": 2}), ("one", {"batch_size": 16})):
        raw = fast_config(
            dropout_free_bert, train_file, validation_file, tmp_path / folder, **common, **shape
        )
        runs.append(train(untracked, {**raw, "task": "multi_label"}))
    parallel, single = runs
    # the ranks build the head from the whole label map (task, names) and evaluate with the task's metrics
    launch = json.loads((parallel.run.root / "ranks" / "launch.json").read_text())
    assert launch["label_map"]["task"] == "multi_label" and launch["label_map"]["thresholds"] == [0.5] * 3
    assert_same_history(parallel.metrics["history"], single.metrics["history"], abs=1e-4)
    assert "eval_micro_f1" in parallel.metrics["history"][-1]
    for key in ("micro_f1", "macro_f1", "subset_accuracy", "loss"):
        assert parallel.metrics["eval"][key] == pytest.approx(single.metrics["eval"][key], abs=1e-4)
    assert parallel.metrics["eval"]["per_class"] == single.metrics["eval"]["per_class"]
