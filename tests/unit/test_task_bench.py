"""bench/tasks.py without training: the one scorer both sides are judged by, the platform's config (valid against
the TrainConfig contract, the same recipe as the baseline), the medians, and the docs table of its result."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bench.render_tables import RENDER
from bench.task_data import MULTILABEL_NAMES
from bench.tasks import Recipe, Split, platform_config, score, summarise

from finetune_platform.training.config import config_from_dict

RECIPE = Recipe(
    epochs=3, batch_size=32, learning_rate=1e-3, warmup_ratio=0.06, weight_decay=0.01, max_length=128,
    lora_r=8, lora_alpha=16, lora_dropout=0.1,
)  # fmt: skip
PROBABILITIES = [[0.9, 0.2], [0.6, 0.7], [0.1, 0.4]]
LABELS = [[1, 0], [1, 1], [0, 1]]


def test_multilabel_scores_predict_a_label_above_its_threshold():
    # predicted [[1, 0], [1, 1], [0, 0]]: 3 right, 1 missed; label 0 perfect, label 1 F1 2/3; rows 1-2 exact
    assert score("multilabel", PROBABILITIES, LABELS) == {
        "micro_f1": pytest.approx(6 / 7),
        "macro_f1": pytest.approx(5 / 6),
        "subset_accuracy": pytest.approx(2 / 3),
    }
    assert score("multilabel", PROBABILITIES, LABELS, np.array([0.5, 0.3])) == {
        "micro_f1": 1.0, "macro_f1": 1.0, "subset_accuracy": 1.0,
    }  # fmt: skip
    # exactly at the threshold is not above it
    assert score("multilabel", [[0.5, 0.5]], [[1, 1]])["micro_f1"] == 0.0


def test_sts_scores_are_in_the_score_units():
    result = score("sts", [1.0, 2.0, 3.0, 4.0], np.array([1.0, 2.0, 3.0, 5.0]))

    assert result == {
        "rmse": pytest.approx(0.5),
        "mae": pytest.approx(0.25),
        "pearson": pytest.approx(6.5 / math.sqrt(43.75)),
        "spearman": pytest.approx(1.0),
    }


def test_a_prediction_count_that_is_not_the_row_count_is_refused():
    with pytest.raises(ValueError) as error:
        score("sts", [1.0, 2.0, 3.0], np.array([1.0, 2.0, 3.0, 5.0]))

    assert str(error.value) == "3 predictions for 4 rows"


def split(name: str) -> Split:
    return Split(Path(f"/data/{name}.csv"), [], None, None)


def test_the_platform_multilabel_config_is_the_baseline_recipe(tmp_path):
    raw = platform_config(
        "multilabel", split("train"), split("dev"), RECIPE, 7, "cpu", "auto", "minilm", 0.5, tmp_path
    )
    config = config_from_dict(raw)

    assert config.task.value == "multi_label"
    assert config.thresholds == 0.5
    assert config.data.label_names == list(MULTILABEL_NAMES)
    assert config.data.label_column == "labels"
    assert config.data.text_pair_column is None
    assert (config.lora.r, config.lora.alpha, config.lora.dropout, config.lora.target_modules) == (
        8, 16.0, 0.1, ["query", "value"],
    )  # fmt: skip
    training = config.training
    assert (training.epochs, training.batch_size, training.learning_rate, training.seed) == (3, 32, 1e-3, 7)
    assert (training.warmup_ratio, training.weight_decay) == (0.06, 0.01)
    assert training.metric_for_best_model.value == "micro_f1"
    assert config.model.max_length == 128
    assert config.checkpoints.final_model == "last"
    assert config.calibration == "none"
    assert config.registry.enabled is False


def test_the_platform_sts_config_reads_pairs_and_regresses_the_score(tmp_path):
    raw = platform_config(
        "sts", split("train"), split("dev"), RECIPE, 1, "cpu", "auto", "minilm", 0.5, tmp_path
    )
    config = config_from_dict(raw)

    assert config.task.value == "regression"
    assert config.data.text_pair_column == "text_pair"
    assert config.data.label_column == "score"
    assert config.data.label_names is None
    assert config.thresholds == 0.5  # the default: multi-label only, unused here
    assert config.training.metric_for_best_model.value == "rmse"


def run(seed: int, rmse: float, seconds: float, reported_rmse: float | None = None) -> dict:
    metrics = {"rmse": rmse, "mae": rmse / 2, "pearson": 1 - rmse / 10, "spearman": 1 - rmse / 5}
    outcome = {"seed": seed, "metrics": metrics, "train_seconds": seconds}
    if reported_rmse is not None:  # the platform's run: its own metrics.json beside the bench's scoring
        outcome["reported"] = {**metrics, "rmse": reported_rmse}
    return outcome


def test_summaries_are_medians_over_the_seeds_with_the_platform_difference():
    summary = summarise(
        "sts",
        {
            "baseline": [run(1, 1.0, 30.0), run(2, 1.2, 20.0), run(3, 0.8, 40.0)],
            "platform": [run(1, 0.6, 10.0, 0.6), run(2, 0.4, 12.0, 0.375), run(3, 0.9, 11.0, 0.9)],
        },
    )

    assert summary["baseline"]["metrics"] == {"rmse": 1.0, "mae": 0.5, "pearson": 0.9, "spearman": 0.8}
    assert summary["platform"]["metrics"] == {
        "rmse": 0.6, "mae": 0.3, "pearson": pytest.approx(0.94), "spearman": pytest.approx(0.88),
    }  # fmt: skip
    assert summary["difference"] == {
        "rmse": pytest.approx(-0.4), "mae": pytest.approx(-0.2), "pearson": pytest.approx(0.04),
        "spearman": pytest.approx(0.08), "train_seconds_ratio": pytest.approx(11 / 30),
    }  # fmt: skip
    assert len(summary["platform"]["runs"]) == 3
    assert summary["platform"]["reported_max_difference"] == pytest.approx(0.025)
    assert "difference" not in summarise("sts", {"baseline": [run(1, 1.0, 30.0)]})


def record(dataset: str, results: dict, counts: dict, thresholds: dict | None) -> dict:
    return {
        "benchmark": f"tasks_{dataset}",
        "when": "2026-12-07T20:00:00+00:00",
        "machine": {"cpu": "Test CPU", "cores": 2, "cuda": None, "torch": "2.13.0"},
        "setup": {
            "dataset": dataset, "train_rows": 4000, "eval_rows": 2000, "seeds": [1, 2, 3],
            "recipe": {**RECIPE.__dict__, "target_modules": ["query", "value"]}, "thresholds": thresholds,
            "train_counts": counts, "eval_counts": {key: value // 2 for key, value in counts.items()},
        },
        "results": results,
    }  # fmt: skip


def side(metrics: dict, seconds: float, precision: str | None = None) -> dict:
    return {
        "metrics": metrics,
        "train_seconds": seconds,
        "runs": [{"precision": precision}] if precision else [],
    }


def test_the_multilabel_table_shows_both_sides_and_the_difference():
    metrics = {"micro_f1": 0.8, "macro_f1": 0.6, "subset_accuracy": 0.5}
    results = {
        "baseline": side(metrics, 150.0),
        "platform": {
            **side({"micro_f1": 0.82, "macro_f1": 0.55, "subset_accuracy": 0.5}, 60.0, "bf16"),
            "reported_max_difference": 0.00012,
        },
        "difference": {
            "micro_f1": 0.02,
            "macro_f1": -0.05,
            "subset_accuracy": 0.0,
            "train_seconds_ratio": 0.4,
        },
    }
    counts = {"acting": 158, "positive": 2270, "(none)": 1448}

    text = RENDER["tasks_multilabel"](
        record("multilabel", results, counts, {"baseline": 0.5, "platform": "tune"})
    )

    assert text.splitlines() == [
        "*Test CPU, 2 cores, torch 2.13.0, 2026-12-07; MiniLM, LoRA r 8 on query/value, 4,000 training rows "
        "(train.tsv), 2,000 evaluation rows (dev.tsv), 3 epochs, batch 32, learning rate 0.001, max length 128; "
        "medians over seeds 1, 2, 3; platform precision bf16*",
        "",
        "| side | micro-F1 | macro-F1 | subset accuracy | train s |",
        "|---|---|---|---|---|",
        "| HF Trainer + PEFT | 0.8000 | 0.6000 | 0.5000 | 150.0 |",
        "| **platform** | 0.8200 | 0.5500 | 0.5000 | 60.0 |",
        "| platform − baseline | +0.0200 | −0.0500 | +0.0000 | 0.40× |",
        "",
        "Both sides are scored by the same code on the same rows; the platform's own evaluation (its metrics.json) "
        "differs from that scoring of its saved adapter by at most 0.0001.",
        "",
        "Rows carrying each label (training / evaluation): acting 158 / 79, positive 2,270 / 1,135, (none) 1,448 / "
        "724. A label is predicted above 0.5 (the platform: `thresholds: tune`).",
    ]


def test_the_sts_table_of_a_baseline_only_run_has_no_difference_row():
    metrics = {"rmse": 0.9, "mae": 0.7, "pearson": 0.81, "spearman": 0.8}
    counts = {"0-1": 800, "1-2": 800, "2-3": 800, "3-4": 800, "4-5": 800}

    text = RENDER["tasks_sts"](record("sts", {"baseline": side(metrics, 120.0)}, counts, None))

    lines = text.splitlines()
    assert lines[2:] == [
        "| side | RMSE | MAE | Pearson | Spearman | train s |",
        "|---|---|---|---|---|---|",
        "| HF Trainer + PEFT | 0.9000 | 0.7000 | 0.8100 | 0.8000 | 120.0 |",
        "",
        "Pairs per score band (training / evaluation): 0-1 800 / 400, 1-2 800 / 400, 2-3 800 / 400, 3-4 800 / 400, "
        "4-5 800 / 400.",
    ]
    assert lines[0].endswith("medians over seeds 1, 2, 3*")
    one_seed = record("sts", {"baseline": side(metrics, 120.0)}, counts, None)
    one_seed["setup"]["seeds"] = [42]
    assert RENDER["tasks_sts"](one_seed).splitlines()[0].endswith("max length 128; seed 42*")
