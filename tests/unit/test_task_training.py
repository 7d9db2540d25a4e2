"""Training for each task against hand-computed values: the targets the loss reads, the multi-label and regression
losses, pos_weight, the metrics, threshold tuning, pair tokenisation, and the config and sweep refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from finetune_platform.catalogue import resolve_base_model
from finetune_platform.data.loading import LabelMap
from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.errors import ConfigError
from finetune_platform.tracking.model_cards import ModelCard
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.data_check import check_data
from finetune_platform.training.driver import evaluation_thresholds, loop_settings
from finetune_platform.training.fast_gpu import (
    DeviceData,
    FastSettings,
    FastTrainer,
    load_data,
    save_data,
    to_device,
)
from finetune_platform.training.losses import (
    evaluation_loss,
    named_weights,
    resolve_class_weights,
    task_row_losses,
)
from finetune_platform.training.metrics import (
    THRESHOLD_GRID,
    label_probabilities,
    multi_label_report,
    regression_report,
    summary_metrics,
    tune_thresholds,
)
from finetune_platform.training.models import build_model
from finetune_platform.training.sweep_config import Direction, check_space, parse_spec
from finetune_platform.training.targets import raw_targets, training_targets
from tests.conftest import write_csv

DATA = {"train_file": "train.csv"}


# -- targets ------------------------------------------------------------------------------------------------------
def test_each_task_gets_the_targets_its_loss_reads():
    single = training_targets([1, 0, 2], "single_label", 3, (0.0, 1.0))
    assert single.dtype == np.int64 and single.tolist() == [1, 0, 2]
    multi = training_targets([(0, 2), (), (1,)], "multi_label", 3, (0.0, 1.0))
    assert multi.dtype == np.float32 and multi.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    regression = training_targets([1.0, 3.0, 5.0], "regression", 1, (3.0, 2.0))
    assert regression.dtype == np.float32 and regression.tolist() == [-1.0, 0.0, 1.0]
    assert raw_targets(regression, (3.0, 2.0)).tolist() == [1.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        training_targets([1], "ranking", 1, (0.0, 1.0))


@pytest.mark.parametrize(
    "labels",
    [
        np.array([[1, 0, 1], [0, 0, 0]], dtype=np.float32),
        np.array([-0.5, 1.25], dtype=np.float32),
        np.array([2, 0], dtype=np.int64),
    ],
)
def test_saved_rows_keep_the_label_dtype_and_shape(labels, tmp_path):
    data = DeviceData(
        ids=torch.tensor([[5, 6], [7, 0]]),
        lengths=torch.tensor([2, 1]),
        labels=torch.from_numpy(labels),
        host_lengths=np.array([2, 1]),
    )
    save_data(data, tmp_path / "rows.npz")
    loaded = load_data(tmp_path / "rows.npz", torch.device("cpu"))
    assert loaded.labels.dtype == torch.from_numpy(labels).dtype
    assert loaded.labels.numpy().tolist() == labels.tolist()


@pytest.fixture(scope="module")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_base_model("minilm").source)


def test_pairs_are_tokenised_as_one_sequence_with_the_tokenizers_separator(minilm_tokenizer):
    texts, pairs = (
        ["a man plays guitar", "the cat sleeps"],
        ["someone makes music", "a dog barks loudly today"],
    )
    data = to_device(
        minilm_tokenizer, texts, np.array([0.5, -1.0], dtype=np.float32), 64, torch.device("cpu"), pairs=pairs
    )
    for row, (text, pair) in enumerate(zip(texts, pairs, strict=True)):
        expected = minilm_tokenizer(text, pair, truncation=True, max_length=64)["input_ids"]
        assert data.ids[row, : len(expected)].tolist() == expected
        assert int(data.lengths[row]) == len(expected)
        assert expected.count(minilm_tokenizer.sep_token_id) == 2  # [CLS] text [SEP] pair [SEP]
    assert data.labels.dtype == torch.float32 and data.labels.tolist() == [0.5, -1.0]
    truncated = to_device(minilm_tokenizer, texts, [0, 1], 6, torch.device("cpu"), pairs=pairs)
    assert truncated.host_lengths.tolist() == [6, 6] and truncated.labels.dtype == torch.int64


# -- losses -------------------------------------------------------------------------------------------------------
def test_multi_label_loss_is_binary_cross_entropy_averaged_over_labels():
    logits, targets = torch.tensor([[0.0, 2.0]]), torch.tensor([[1.0, 0.0]])
    # −log σ(0) = log 2 for the positive label, −log(1 − σ(2)) = log(1 + e²) for the negative one
    plain = (math.log(2) + math.log(1 + math.e**2)) / 2
    assert float(task_row_losses("multi_label", logits, targets)[0]) == pytest.approx(plain, abs=1e-6)
    weighted = task_row_losses("multi_label", logits, targets, weights=torch.tensor([3.0, 5.0]))
    assert float(weighted[0]) == pytest.approx((3 * math.log(2) + math.log(1 + math.e**2)) / 2, abs=1e-6)
    assert evaluation_loss("multi_label", logits.numpy(), targets) == pytest.approx(plain, abs=1e-6)


def test_regression_loss_is_the_squared_error_of_the_standardised_target():
    outputs, targets = torch.tensor([[0.5], [-1.0]]), torch.tensor([1.0, -1.0])
    assert task_row_losses("regression", outputs, targets).tolist() == [0.25, 0.0]
    assert evaluation_loss("regression", outputs.numpy(), targets) == 0.125


def test_single_label_evaluation_loss_stays_plain_cross_entropy():
    logits, labels = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert evaluation_loss("single_label", logits.numpy(), labels) == pytest.approx(expected, abs=1e-6)


def test_balanced_pos_weights_are_negatives_over_positives_per_label():
    # 4 rows: a in 2, b in 1, c in every row, d in none
    ids = [(0, 1, 2), (0, 2), (2,), (2,)]
    weights = resolve_class_weights(
        "balanced", ("a", "b", "c", "d"), ("a", "b", "c", "d"), ids, "multi_label"
    )
    assert weights == (1.0, 3.0, 1.0, 1.0)
    mapped = resolve_class_weights({"b": 4}, ("a", "b"), ("a", "b"), [(0,), (1,)], "multi_label")
    assert named_weights(mapped, ("a", "b")) == {"a": 1.0, "b": 4.0}
    with pytest.raises(ConfigError) as caught:
        resolve_class_weights({"z": 2}, ("a", "b"), ("a", "b"), [(0,)], "multi_label")
    assert (
        str(caught.value)
        == "training.class_weights: unknown label 'z'; the training data's labels are 'a', 'b'"
    )


class TinyHead(torch.nn.Module):
    """``outputs`` numbers per first token from a learned table: enough to check what the loop's loss does."""

    def __init__(self, outputs: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(10, outputs)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.table(input_ids[:, 0]))


@pytest.mark.parametrize(
    ("task", "outputs", "labels", "weights"),
    [
        (
            "multi_label",
            3,
            torch.tensor([[i % 2, i % 3 == 0, 0] for i in range(12)], dtype=torch.float32),
            None,
        ),
        (
            "multi_label",
            3,
            torch.tensor([[i % 2, 1, 0] for i in range(12)], dtype=torch.float32),
            (2.0, 1.0, 1.0),
        ),
        ("regression", 1, torch.linspace(-1.5, 1.5, 12), None),
    ],
)
def test_the_loops_loss_for_each_task_is_the_mean_over_rows_whatever_the_micro_batches(
    task, outputs, labels, weights
):
    data = DeviceData(
        ids=torch.tensor([[i % 10, 0] for i in range(12)]),
        lengths=torch.full((12,), 2),
        labels=labels,
        host_lengths=np.full(12, 2),
    )
    index = np.arange(12)
    losses = []
    for micro_batch in (None, 4):
        settings = FastSettings(
            batch_size=12, micro_batch=micro_batch, reference_batch=None, task=task, class_weights=weights
        )
        loop = FastTrainer(
            TinyHead(outputs), data, settings, device=torch.device("cpu"), world_size=1, rank=0
        )
        losses.append(float(loop._forward_backward(index, torch.from_numpy(index))))
    logits = TinyHead(outputs).table(data.ids[:, 0])
    weight = None if weights is None else torch.tensor(weights)
    expected = float(task_row_losses(task, logits, labels, weights=weight).mean())
    assert losses == pytest.approx([expected, expected], abs=1e-6)
    if task == "multi_label":  # by hand: BCE per element, mean over all of them
        p = torch.sigmoid(logits.detach().double())
        y, w = labels.double(), torch.ones(3, dtype=torch.float64) if weight is None else weight.double()
        by_hand = -(w * y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()
        assert expected == pytest.approx(float(by_hand), abs=1e-5)


def test_loop_settings_carry_the_task():
    config = config_from_dict({"data": DATA, "task": "regression"})
    assert loop_settings(config, config.precision).task == "regression"
    assert evaluation_thresholds(config_from_dict({"data": DATA, "task": "multi_label"})) == 0.5
    assert (
        evaluation_thresholds(config_from_dict({"data": DATA, "task": "multi_label", "thresholds": 0.3}))
        == 0.3
    )
    assert (
        evaluation_thresholds(config_from_dict({"data": DATA, "task": "multi_label", "thresholds": "tune"}))
        == 0.5
    )


# -- metrics ------------------------------------------------------------------------------------------------------
# sigmoid: row 0 (0.88, 0.27, 0.62), row 1 (0.12, 0.12, 0.12), row 2 (0.525, 0.95, 0.27)
LOGITS = np.array([[2.0, -1.0, 0.5], [-2.0, -2.0, -2.0], [0.1, 3.0, -1.0]], dtype=np.float32)
TRUTH = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=np.float32)


def test_multi_label_metrics_at_one_threshold():
    # predicted (1,0,1) (0,0,0) (1,1,0): tp 3, fp 1 (a in row 2), fn 0; F1 a 2/3, b 1, c 1; two rows exact
    assert summary_metrics(LOGITS, TRUTH, "multi_label") == pytest.approx(
        {"micro_f1": 6 / 7, "macro_f1": 8 / 9, "subset_accuracy": 2 / 3}
    )


def test_multi_label_report_per_label_with_its_thresholds():
    report = multi_label_report(LOGITS, TRUTH, ("a", "b", "c"), (0.5, 0.5, 0.7))
    # c's 0.62 is below 0.7 now: tp 2, fp 1, fn 1
    assert report["micro_f1"] == pytest.approx(2 / 3)
    assert report["macro_f1"] == pytest.approx(5 / 9)
    assert report["subset_accuracy"] == pytest.approx(1 / 3)
    assert report["per_class"] == {
        "a": {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1, "threshold": 0.5},
        "b": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1, "threshold": 0.5},
        "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "threshold": 0.7},
    }
    assert report["num_rows"] == 3


def test_tuned_thresholds_are_each_labels_f1_best_nearest_one_half():
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.95 and len(THRESHOLD_GRID) == 19
    # a: F1 1 for any t in [0.525, 0.88): 0.55 is nearest 0.5; b and c: 0.5 already separates them
    assert tune_thresholds(label_probabilities(LOGITS), TRUTH) == (0.55, 0.5, 0.5)
    probabilities = np.array([[0.10, 0.9, 0.3], [0.20, 0.8, 0.6], [0.03, 0.7, 0.2]])
    truth = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 0]])
    # the positives are rare and unsure: only 0.05 keeps both; a label with no positive keeps 0.5 (F1 0 everywhere)
    assert tune_thresholds(probabilities, truth) == (0.05, 0.5, 0.5)


def test_regression_metrics_in_the_targets_units():
    # targets 1, 3, 5 (mean 3, std 2); outputs −1, 0.5, 1 → predictions 1, 4, 5
    targets = training_targets([1.0, 3.0, 5.0], "regression", 1, (3.0, 2.0))
    report = regression_report(np.array([[-1.0], [0.5], [1.0]], dtype=np.float32), targets, (3.0, 2.0))
    # Pearson: Σdxdy = 8, Σdx² = 26/3, Σdy² = 8 → 8 / sqrt(208/3) = sqrt(12/13); the ranks agree exactly
    assert report == pytest.approx(
        {
            "rmse": math.sqrt(1 / 3),
            "mae": 1 / 3,
            "pearson": math.sqrt(12 / 13),
            "spearman": 1.0,
            "num_rows": 3,
        }
    )


def test_a_constant_prediction_correlates_zero_not_nan():
    scores = summary_metrics(
        np.zeros((3, 1), np.float32), np.array([-1.0, 0.0, 1.0]), "regression", scale=(3, 2)
    )
    assert scores == pytest.approx({"rmse": math.sqrt(8 / 3), "mae": 4 / 3, "pearson": 0.0, "spearman": 0.0})


def test_single_label_metrics_are_unchanged():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert summary_metrics(logits, np.array([0, 1, 1])) == pytest.approx(
        {"accuracy": 2 / 3, "macro_f1": 2 / 3}
    )


# -- config and sweep refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"task": "multi_label", "training": {"loss": "focal"}},
            "training.loss: focal loss is for single_label runs; multi_label runs train on binary cross entropy: "
            "set training.loss to cross_entropy",
        ),
        (
            {"task": "regression", "training": {"loss": "focal"}},
            "training.loss: focal loss is for single_label runs; regression runs train on mean squared error: "
            "set training.loss to cross_entropy",
        ),
        (
            {"task": "regression", "training": {"class_weights": "balanced"}},
            "training.class_weights: a regression run has no classes to weigh; set it to 'none'",
        ),
    ],
)
def test_a_loss_the_task_cannot_train_on_is_refused_by_field(fields, message):
    with pytest.raises(ConfigError) as caught:
        config_from_dict({"data": DATA, **fields})
    assert str(caught.value) == f"invalid training config:\n  {message}"
    # the same settings are fine where they apply
    config_from_dict({"data": DATA, "task": "multi_label", "training": {"class_weights": "balanced"}})


def test_a_sweep_objective_must_be_a_metric_of_the_task():
    base = {"data": DATA, "task": "regression"}
    space = {"lora.r": {"type": "choice", "values": [4, 8]}}
    with pytest.raises(ConfigError) as caught:
        check_space(parse_spec({"objective": "accuracy", "space": space}), base)
    assert str(caught.value) == (
        "sweep.objective.metric: regression runs report rmse, mae, pearson, spearman, loss, not 'accuracy'"
    )
    unnamed = parse_spec({"space": space})
    check_space(unnamed, base)
    assert (
        unnamed.objective.metric.value == "rmse"
        and unnamed.objective.resolved_direction is Direction.MINIMIZE
    )
    named = parse_spec({"objective": "micro_f1", "space": space})
    check_space(named, {"data": DATA, "task": "multi_label"})
    assert named.objective.metric.value == "micro_f1"
    swept = parse_spec(
        {
            "objective": "micro_f1",
            "space": {"task": {"type": "choice", "values": ["multi_label", "regression"]}},
        }
    )
    with pytest.raises(ConfigError, match=r"^sweep.objective.metric: regression runs report"):
        check_space(swept, {"data": DATA, "task": "multi_label"})


def test_the_data_check_before_a_run_reads_the_file_as_its_task(tmp_path):
    scores = write_csv(
        tmp_path / "scores.csv", [("good", 4.5), ("bad", 1.0), ("fine", 3.0)], ("sentence", "score")
    )
    regression = {"text_column": "sentence", "label_column": "score", "train_file": str(scores)}
    report = check_data(config_from_dict({"data": regression, "task": "regression"}))
    assert report.ok and report.file("train").rows_read == 3
    with pytest.raises(DatasetValidationError, match="column 'score' mixes numbers and words"):
        check_data(
            config_from_dict({"data": regression})
        )  # as single_label labels 4.5, 1.0, 3.0 are no classes
    rows = [("a", "x|y", "p"), ("b", "[]", "q"), ("c", "y", "r")]
    topics = write_csv(tmp_path / "topics.csv", rows, ("text", "label", "other"))
    multi = {"train_file": str(topics), "label_delimiter": "|", "text_pair_column": "other"}
    assert check_data(config_from_dict({"data": multi, "task": "multi_label"})).ok
    missing = {**multi, "text_pair_column": "hypothesis"}
    with pytest.raises(DatasetValidationError, match="hypothesis"):
        check_data(config_from_dict({"data": missing, "task": "multi_label"}))


# -- the model and its card ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("task", "label_map", "problem_type"),
    [
        (
            "multi_label",
            LabelMap(("a", "b", "c"), ("a", "b", "c"), task="multi_label"),
            "multi_label_classification",
        ),
        ("regression", LabelMap(("score",), (), task="regression", scale=(3.0, 2.0)), "regression"),
    ],
)
def test_the_model_head_fits_the_task(tiny_bert, task, label_map, problem_type):
    config = config_from_dict({"data": DATA, "task": task, "model": {"base_model": str(tiny_bert)}})
    state = SimpleNamespace(model=resolve_base_model(str(tiny_bert), None))
    model = build_model(config, state, label_map)
    assert model.config.problem_type == problem_type
    assert model.config.num_labels == label_map.num_labels
    assert model.config.id2label == dict(enumerate(label_map.names))


def card(**fields) -> ModelCard:
    base = dict(
        name="m", version=1, base_model="minilm", language="en", task="text-classification", description="d",
        metrics={}, tags=[], dataset_version=None, run_id=None, run_folder=None, stage="None", created_at="",
        adapter_checksum="sha256:0",
    )  # fmt: skip
    return ModelCard(**{**base, **fields})


def test_a_model_card_says_what_the_head_predicts():
    assert card(labels=["neg", "pos"]).outputs_text() == "Labels: neg, pos."
    assert card(labels=["neg", "pos"]).task_type == "single_label"  # cards written before tasks
    multi = card(labels=["a", "b"], task_type="multi_label", thresholds={"a": 0.35, "b": 0.5})
    assert multi.outputs_text() == "Multi-label: a (threshold 0.35), b (threshold 0.50)."
    assert "Multi-label: a (threshold 0.35)" in multi.text()
    regression = card(labels=["score"], task_type="regression", target_scale={"mean": 2.5, "std": 1.25})
    assert regression.outputs_text() == "Regression of score (training targets: mean 2.5, std 1.25)."


def test_a_jobs_progress_carries_every_metric_of_its_tasks_evaluation():
    from finetune_platform.training.callbacks import Control, RunState
    from finetune_platform.worker.control import JobCallback, JobControl

    reports = []
    job = JobCallback(lambda **fields: reports.append(fields["progress"]), JobControl(), None)
    state = RunState(step=5, max_steps=10, epoch=0.5)
    metrics = {
        "eval_loss": 0.42,
        "eval_rmse": 1.25,
        "eval_mae": 1.0,
        "eval_pearson": 0.5,
        "eval_spearman": 0.25,
    }
    job.on_evaluate(state, Control(evaluate=True), metrics)
    # a regression sweep's objective (rmse, say) reaches the study from here
    assert reports[-1]["metrics"] == {
        "loss": 0.42,
        "rmse": 1.25,
        "mae": 1.0,
        "pearson": 0.5,
        "spearman": 0.25,
    }


def test_a_multi_label_head_starts_at_each_labels_prior(tiny_bert):
    """The trainable head's bias is each label's log-odds in the training rows (clipped where no row holds it);
    the frozen original head PEFT keeps beside it is left alone."""
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from finetune_platform.training.targets import PRIOR_FLOOR, init_head_bias, prior_log_odds

    targets = np.array(
        [[1, 1, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]] * 5, dtype=np.float32
    )  # shares 0.5, 0.25, 0
    expected = [0.0, math.log(0.25 / 0.75), math.log(PRIOR_FLOOR / (1 - PRIOR_FLOOR))]
    np.testing.assert_allclose(prior_log_odds(targets), expected, rtol=1e-12)

    base = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert), num_labels=3)
    model = get_peft_model(
        base, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, target_modules=["query", "value"])
    )
    head = model.base_model.model.classifier
    original = head.original_module.bias.detach().clone()
    assert init_head_bias(model, targets) is True
    np.testing.assert_allclose(head.modules_to_save["default"].bias.detach().numpy(), expected, rtol=1e-6)
    assert torch.equal(head.original_module.bias, original)
    assert init_head_bias(model, np.zeros((4, 5), dtype=np.float32)) is False  # no head with 5 outputs
