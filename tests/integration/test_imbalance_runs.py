"""Tiny real runs on 9:1 data: balanced class weights find the minority class that the plain loss never predicts;
weighted focal runs resume to the uninterrupted result and train the same on two processes as on one."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
import yaml

from finetune_platform.errors import ConfigError
from tests.conftest import sentiment_rows, write_csv
from tests.integration.test_driver import (
    adapter_weights,
    assert_same_history,
    fast_config,
    loss_entries,
    preempt_and_resume,
    train,
)

pytestmark = pytest.mark.slow


def labelled(majority: int, minority: int, seed: int) -> list[tuple[str, str]]:
    rows = sentiment_rows(2 * max(majority, minority), seed, labels=("positive", "negative"))
    chosen = [row for row in rows if row[1] == "positive"][:majority]
    chosen += [row for row in rows if row[1] == "negative"][:minority]
    random.Random(seed).shuffle(chosen)
    return chosen


@pytest.fixture
def imbalanced_data(tmp_path):
    """180 positive and 20 negative training rows; a balanced validation set."""
    train_file = write_csv(tmp_path / "data" / "train.csv", labelled(180, 20, seed=1))
    validation_file = write_csv(tmp_path / "data" / "validation.csv", labelled(30, 30, seed=2))
    return train_file, validation_file


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


def test_balanced_weights_raise_the_minority_recall(untracked, tiny_bert, imbalanced_data, tmp_path):
    train_file, validation_file = imbalanced_data
    common = dict(epochs=3, eval_strategy="epoch", eval_steps=None)
    plain = train(
        untracked, fast_config(tiny_bert, train_file, validation_file, tmp_path / "plain", **common)
    )
    weighted = train(
        untracked,
        fast_config(
            tiny_bert, train_file, validation_file, tmp_path / "weighted", class_weights="balanced", **common
        ),
    )
    # Without weights the model learns to say "positive" (nine rows in ten); with them it finds the negatives.
    # (The same holds for seeds 8 and 9; 3 epochs of 25 steps.)
    assert plain.metrics["eval"]["per_class"]["negative"]["recall"] == 0.0
    assert weighted.metrics["eval"]["per_class"]["negative"]["recall"] >= 0.9
    assert weighted.metrics["eval"]["per_class"]["positive"]["recall"] >= 0.9

    # The weights the run used are recorded: 200 / (2 × 180) and 200 / (2 × 20), in class-id order.
    resolved = yaml.safe_load(weighted.run.config_path.read_text())["resolved"]
    assert resolved["class_weights"] == {"negative": 5.0, "positive": 0.555556}
    assert yaml.safe_load(plain.run.config_path.read_text())["resolved"]["class_weights"] is None
    assert "class weights: {'negative': 5.0, 'positive': 0.555556}" in weighted.run.logs_path.read_text()


def test_an_unknown_label_in_class_weights_is_refused_when_the_data_loads(
    untracked, tiny_bert, imbalanced_data, tmp_path
):
    train_file, validation_file = imbalanced_data
    raw = fast_config(tiny_bert, train_file, validation_file, tmp_path / "r", class_weights={"neutral": 2})
    with pytest.raises(ConfigError) as caught:
        train(untracked, raw)
    assert str(caught.value) == (
        "training.class_weights: unknown label 'neutral'; the training data's labels are 'negative', 'positive'"
    )


def test_a_resumed_weighted_focal_run_matches_the_uninterrupted_run(
    untracked, dropout_free_bert, imbalanced_data, tmp_path
):
    train_file, validation_file = imbalanced_data
    raw = fast_config(
        dropout_free_bert, train_file, validation_file, tmp_path / "straight", epochs=2, eval_steps=10,
        class_weights="balanced", loss="focal", focal_gamma=2.0,
    )  # fmt: skip
    straight = train(untracked, raw)
    raw["output_dir"] = str(tmp_path / "preempted")
    _, resumed = preempt_and_resume(untracked, raw, 16)  # a logging step, not an evaluation step
    assert resumed.metrics["train"]["global_step"] == straight.metrics["train"]["global_step"] == 50
    assert_same_history(resumed.metrics["history"], straight.metrics["history"], abs=1e-6)
    ours = loss_entries(resumed.run.checkpoints_dir / "checkpoint-50")
    theirs = loss_entries(straight.run.checkpoints_dir / "checkpoint-50")
    assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in theirs], abs=1e-4)
    for name, tensor in adapter_weights(resumed.run.artifacts_dir).items():
        torch.testing.assert_close(
            tensor, adapter_weights(straight.run.artifacts_dir)[name], atol=1e-5, rtol=1e-4
        )


@pytest.mark.extended  # two gloo processes; the driver's own data-parallel equality test runs by default
def test_weighted_focal_loss_on_two_processes_equals_one_process_with_the_global_batch(
    untracked, dropout_free_bert, imbalanced_data, tmp_path
):
    # 144 + 16 rows: 10 full global batches of 16 an epoch (a data-parallel run drops a partial one)
    train_file = write_csv(tmp_path / "data" / "train160.csv", labelled(144, 16, seed=3))
    validation_file = imbalanced_data[1]
    common = dict(
        epochs=2, eval_strategy="epoch", eval_steps=None, learning_rate_reference_batch=8,
        class_weights={"negative": 4, "positive": 1}, loss="focal", focal_gamma=1.0,
    )  # fmt: skip
    parallel = train(
        untracked,
        fast_config(dropout_free_bert, train_file, validation_file, tmp_path / "dp", devices=2, **common),
    )
    single = train(
        untracked,
        fast_config(
            dropout_free_bert, train_file, validation_file, tmp_path / "one", batch_size=16, **common
        ),
    )
    launch = yaml.safe_load((parallel.run.root / "ranks" / "launch.json").read_text())
    assert launch["class_weights"] == [4.0, 1.0]  # class ids: negative, positive
    # Each rank averages its share's losses over its rows and the gradients are averaged over ranks: exactly
    # the whole batch's mean, so the same updates (and training losses) as one process.
    assert_same_history(parallel.metrics["history"], single.metrics["history"], abs=1e-4)
    ours = loss_entries(
        parallel.run.checkpoints_dir / f"checkpoint-{parallel.metrics['train']['global_step']}"
    )
    theirs = loss_entries(single.run.checkpoints_dir / f"checkpoint-{single.metrics['train']['global_step']}")
    assert [e["loss"] for e in ours] == pytest.approx([e["loss"] for e in theirs], abs=1e-4)
    for name, tensor in adapter_weights(parallel.run.artifacts_dir).items():
        torch.testing.assert_close(
            tensor, adapter_weights(single.run.artifacts_dir)[name], atol=1e-4, rtol=1e-3
        )
