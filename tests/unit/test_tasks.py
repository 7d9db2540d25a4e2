"""The task a run learns (single_label, multi_label, regression): its config fields, the label map that carries it
to every runtime, and the one function that turns a head's outputs into what a prediction says."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from finetune_platform.data.loading import LabelMap
from finetune_platform.errors import ConfigError
from finetune_platform.inference.softmax import outputs, sigmoid, softmax
from finetune_platform.training.config import BestMetric, Task, config_from_dict

DATA = {"train_file": "train.csv"}


@pytest.mark.parametrize(
    ("task", "metric"),
    [("single_label", "accuracy"), ("multi_label", "micro_f1"), ("regression", "rmse")],
)
def test_a_run_that_names_no_metric_ranks_by_its_tasks_first(task, metric):
    config = config_from_dict({"data": DATA, "task": task})
    assert config.task is Task(task)
    assert config.training.metric_for_best_model is BestMetric(metric)


@pytest.mark.parametrize(
    ("task", "metric", "known"),
    [
        ("regression", "accuracy", "rmse, mae, pearson, spearman, loss"),
        ("multi_label", "accuracy", "micro_f1, macro_f1, subset_accuracy, loss"),
        ("single_label", "rmse", "accuracy, macro_f1, loss"),
    ],
)
def test_a_metric_the_task_does_not_report_is_refused_by_name(task, metric, known):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": DATA, "task": task, "training": {"metric_for_best_model": metric}})
    assert str(caught.value) == (
        f"invalid training config:\n  training.metric_for_best_model: {task} runs report {known}, not {metric!r}"
    )


def test_lower_is_better_for_losses_and_errors_only():
    lower = {m for m in BestMetric if not m.greater_is_better}
    assert lower == {BestMetric.LOSS, BestMetric.RMSE, BestMetric.MAE}


@pytest.mark.parametrize("value", [0, 1, 1.5, "tuned"])
def test_thresholds_are_a_probability_or_tune(value):
    with pytest.raises(ConfigError, match=r"thresholds"):
        config_from_dict({"data": DATA, "task": "multi_label", "thresholds": value})
    assert config_from_dict({"data": DATA, "thresholds": "tune"}).thresholds == "tune"


def test_pair_column_and_delimiter_are_data_fields():
    config = config_from_dict({"data": {**DATA, "text_pair_column": "hypothesis", "label_delimiter": "|"}})
    assert (config.data.text_pair_column, config.data.label_delimiter) == ("hypothesis", "|")
    with pytest.raises(ConfigError, match=r"data.label_delimiter"):
        config_from_dict({"data": {**DATA, "label_delimiter": ""}})


@pytest.mark.parametrize(
    "label_map",
    [
        LabelMap(("neg", "pos"), ("neg", "pos")),
        LabelMap(("a", "b", "c"), ("a", "b", "c"), task="multi_label", thresholds=(0.5, 0.3, 0.7), pair=True),
        LabelMap(("score",), (), task="regression", scale=(2.5, 1.25), pair=True),
    ],
)
def test_a_label_map_survives_its_json(label_map):
    assert LabelMap.from_json(label_map.to_json()) == label_map


def test_a_label_map_written_before_tasks_is_single_label():
    old = {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}, "raw_values": [0, 1]}
    assert LabelMap.from_json(old) == LabelMap(("neg", "pos"), (0, 1))


def test_a_multi_label_map_without_thresholds_writes_the_default():
    document = LabelMap(("a", "b"), ("a", "b"), task="multi_label").to_json()
    assert document["thresholds"] == [0.5, 0.5]


LOGITS = np.array([[-800.0, -2.0, 0.0, 3.0, 800.0]], dtype=np.float32)


def test_multi_label_outputs_are_a_sigmoid_per_label_in_numpy_and_torch():
    expected = torch.sigmoid(torch.from_numpy(LOGITS)).numpy()
    from_numpy, from_torch = outputs(LOGITS, "multi_label"), outputs(torch.from_numpy(LOGITS), "multi_label")
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6, atol=1e-30)
    np.testing.assert_array_equal(from_torch.numpy(), expected)
    assert from_numpy.dtype == np.float32 and np.isfinite(from_numpy).all()
    assert from_numpy[0, 0] == 0.0 and from_numpy[0, -1] == 1.0
    np.testing.assert_array_equal(sigmoid(LOGITS), from_numpy)


def test_regression_outputs_undo_the_standardisation():
    standardised = np.array([[-1.0], [0.0], [2.0]], dtype=np.float32)
    np.testing.assert_allclose(outputs(standardised, "regression", scale=(3.0, 0.5)), [[2.5], [3.0], [4.0]])
    tensor = outputs(torch.from_numpy(standardised), "regression", scale=(3.0, 0.5))
    np.testing.assert_allclose(tensor.numpy(), [[2.5], [3.0], [4.0]])


def test_single_label_outputs_are_the_calibrated_softmax():
    logits = np.array([[1.0, 2.0, -1.0]], dtype=np.float32)
    np.testing.assert_array_equal(outputs(logits, temperature=2.0), softmax(logits, 2.0))


def test_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        outputs(LOGITS, "ranking")
