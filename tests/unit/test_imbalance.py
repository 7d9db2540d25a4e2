"""Class weights and focal loss against hand-computed values; the config fields; the data report's advice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.validation import ValidationOptions, validate_dataset, validate_in_child
from finetune_platform.errors import ConfigError
from finetune_platform.training.config import Loss, config_from_dict
from finetune_platform.training.driver import loop_settings
from finetune_platform.training.fast_gpu import DeviceData, FastSettings, FastTrainer
from finetune_platform.training.losses import named_weights, resolve_class_weights, row_losses
from tests.conftest import write_csv


# -- class weights ------------------------------------------------------------------------------------------------
def test_balanced_weights_for_90_and_10_rows():
    weights = resolve_class_weights(
        "balanced", ("majority", "minority"), ("majority", "minority"), [0] * 90 + [1] * 10
    )
    # rows / (classes × rows of the class): 100 / (2 × 90) and 100 / (2 × 10)
    assert weights == (100 / 180, 5.0)
    assert named_weights(weights, ("majority", "minority")) == {"majority": 0.555556, "minority": 5.0}


def test_balanced_weights_of_three_classes_and_a_declared_class_without_rows():
    weights = resolve_class_weights(
        "balanced", ("a", "b", "c", "d"), (0, 1, 2, 3), [0] * 60 + [1] * 30 + [2] * 10
    )
    assert weights == pytest.approx((100 / 180, 100 / 90, 100 / 30, 1.0))


def test_no_weights_for_none():
    assert resolve_class_weights("none", ("a", "b"), ("a", "b"), [0, 1]) is None
    assert named_weights(None, ("a", "b")) is None


def test_a_mapping_names_labels_as_the_data_does_and_the_rest_weigh_one():
    names, raw = ("negative", "neutral", "positive"), (0, 1, 2)  # integer labels named by data.label_names
    assert resolve_class_weights({"positive": 3.0}, names, raw, []) == (1.0, 1.0, 3.0)
    assert resolve_class_weights({"0": 2.5, "neutral": 0.5}, names, raw, []) == (2.5, 0.5, 1.0)


def test_an_unknown_label_in_the_mapping_is_refused_naming_it_and_the_known_ones():
    with pytest.raises(ConfigError) as caught:
        resolve_class_weights({"positve": 3.0}, ("negative", "positive"), ("negative", "positive"), [0, 1])
    assert str(caught.value) == (
        "training.class_weights: unknown label 'positve'; the training data's labels are 'negative', 'positive'"
    )


# -- the config fields --------------------------------------------------------------------------------------------
def training(**fields):
    return config_from_dict({"data": {"train_file": "t.csv"}, "training": fields}).training


def test_config_defaults_and_yaml_integer_labels():
    t = training()
    assert t.class_weights == "none" and t.loss is Loss.CROSS_ENTROPY and t.focal_gamma == 2.0
    assert training(class_weights={0: 1, 1: 9}).class_weights == {"0": 1.0, "1": 9.0}
    assert training(class_weights="balanced", loss="focal", focal_gamma=0).focal_gamma == 0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"class_weights": {"a": 0}},
            "training.class_weights: label 'a': the weight must be above 0 and at most 1,000,000 (got 0)",
        ),
        (
            {"class_weights": {"a": -1.5}},
            "training.class_weights: label 'a': the weight must be above 0 and at most 1,000,000 (got -1.5)",
        ),
        (
            {"class_weights": {"a": "heavy"}},
            "training.class_weights: label 'a': the weight must be a number (got 'heavy')",
        ),
        (
            {"class_weights": {}},
            "training.class_weights: an empty mapping weighs nothing: name at least one label, or use 'none'",
        ),
        (
            {"class_weights": "balance"},
            "training.class_weights: 'balance': use 'none', 'balanced' or a mapping {label: weight}",
        ),
        ({"focal_gamma": -0.5}, "training.focal_gamma: Input should be greater than or equal to 0"),
        ({"loss": "hinge"}, "training.loss: Input should be 'cross_entropy' or 'focal'"),
    ],
)
def test_bad_imbalance_settings_are_refused_by_field(fields, message):
    with pytest.raises(ConfigError) as caught:
        training(**fields)
    assert message in str(caught.value)


def test_loop_settings_carry_the_loss():
    config = config_from_dict(
        {"data": {"train_file": "t.csv"}, "training": {"loss": "focal", "focal_gamma": 1.5}}
    )
    settings = loop_settings(config, config.precision, (0.5, 5.0))
    assert settings.focal_gamma == 1.5 and settings.class_weights == (0.5, 5.0)
    plain = config_from_dict({"data": {"train_file": "t.csv"}, "training": {"focal_gamma": 1.5}})
    assert loop_settings(plain, plain.precision).focal_gamma is None  # gamma matters only with loss: focal


# -- the loss -----------------------------------------------------------------------------------------------------
LOGITS = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-3.0, 4.0, 1.0], [0.0, 0.0, 0.0]])
LABELS = torch.tensor([0, 2, 0, 1])


def test_focal_loss_with_gamma_0_is_cross_entropy_exactly():
    expected = torch.nn.functional.cross_entropy(LOGITS, LABELS, reduction="none")
    assert torch.equal(row_losses(LOGITS, LABELS, gamma=0.0), expected)
    assert torch.equal(row_losses(LOGITS, LABELS), expected)


def test_focal_and_weighted_losses_against_hand_computed_values():
    logits, labels = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]]), torch.tensor([0, 0])
    # row 0: p_t = 1/2, CE = ln 2; row 1: p_t = 3/4, CE = ln(4/3)
    ce = [math.log(2.0), math.log(4 / 3)]
    assert row_losses(logits, labels).tolist() == pytest.approx(ce)
    focal = [0.5**2 * ce[0], 0.25**2 * ce[1]]
    assert row_losses(logits, labels, gamma=2.0).tolist() == pytest.approx(focal)
    weights = torch.tensor([3.0, 1.0])
    assert row_losses(logits, labels, weights=weights).tolist() == pytest.approx([3 * ce[0], 3 * ce[1]])
    both = row_losses(logits, labels, weights=weights, gamma=2.0)
    assert both.tolist() == pytest.approx([3 * focal[0], 3 * focal[1]])
    # the class weight follows each row's label
    mixed = row_losses(logits, torch.tensor([1, 0]), weights=weights)
    assert mixed.tolist() == pytest.approx([1 * math.log(2.0), 3 * ce[1]])


def test_a_gamma_below_1_keeps_a_finite_gradient_where_the_model_is_certain():
    logits = torch.tensor([[60.0, -60.0]], requires_grad=True)  # p_t rounds to 1 in fp32
    row_losses(logits, torch.tensor([0]), gamma=0.5).sum().backward()
    assert torch.isfinite(logits.grad).all()


class TinyClassifier(torch.nn.Module):
    """Logits from a learned table per first token: enough to check what the loop's loss does."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.nn.Embedding(10, 2)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.table(input_ids[:, 0])})


def tiny_data() -> DeviceData:
    ids = torch.tensor([[i % 10, 0] for i in range(12)])
    labels = torch.tensor([0] * 9 + [1] * 3)
    lengths = torch.full((12,), 2)
    return DeviceData(ids=ids, lengths=lengths, labels=labels, host_lengths=np.full(12, 2))


@pytest.mark.parametrize("weights", [None, (0.5, 2.0)])
@pytest.mark.parametrize("gamma", [None, 2.0])
def test_the_loops_loss_is_the_mean_over_rows_whatever_the_micro_batches(weights, gamma):
    data = tiny_data()
    index = np.arange(12)
    settings = FastSettings(batch_size=12, reference_batch=None, class_weights=weights, focal_gamma=gamma)
    whole = FastTrainer(TinyClassifier(), data, settings, device=torch.device("cpu"), world_size=1, rank=0)
    loss = whole._forward_backward(index, torch.from_numpy(index))
    split = FastSettings(
        batch_size=12, micro_batch=4, reference_batch=None, class_weights=weights, focal_gamma=gamma
    )
    pieces = FastTrainer(TinyClassifier(), data, split, device=torch.device("cpu"), world_size=1, rank=0)
    assert float(pieces._forward_backward(index, torch.from_numpy(index))) == pytest.approx(
        float(loss), abs=1e-6
    )
    logits = TinyClassifier().table(data.ids[:, 0])
    expected = row_losses(
        logits, data.labels, weights=None if weights is None else torch.tensor(weights), gamma=gamma
    ).mean()
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)
    if weights is not None:  # the weights change the loss: a loop that ignored them would not get here
        unweighted = row_losses(logits, data.labels, gamma=gamma).mean()
        assert float(loss) != pytest.approx(float(unweighted), abs=1e-3)


# -- the data report ----------------------------------------------------------------------------------------------
ADVICE = (
    "set training.class_weights: balanced (the loss then weighs each class by its rarity), or add rows of the "
    "smaller classes"
)


def imbalanced(tmp_path, majority: int, minority: int):
    rows = [(f"good text {i}", "common") for i in range(majority)] + [
        (f"bad text {i}", "rare") for i in range(minority)
    ]
    return write_csv(tmp_path / "train.csv", rows)


def test_five_to_one_recommends_balanced_class_weights(tmp_path):
    report = validate_dataset(imbalanced(tmp_path, 50, 10), ValidationOptions()).files[0]
    [issue] = [issue for issue in report.issues if issue.code.value == "imbalanced_classes"]
    assert issue.severity.value == "warning"
    assert issue.message == (
        "imbalanced classes: the largest, common (50 rows), has 5.0× the rows of the smallest, rare (10 rows)"
    )
    assert issue.fix == ADVICE


def test_four_to_one_gives_no_advice(tmp_path):
    report = validate_dataset(imbalanced(tmp_path, 40, 10), ValidationOptions())
    assert [issue.code.value for issue in report.files[0].issues] == []


def test_the_validation_file_gets_no_advice(tmp_path):
    balanced = write_csv(tmp_path / "b.csv", [(f"t {i}", "common" if i % 2 else "rare") for i in range(20)])
    report = validate_dataset(balanced, ValidationOptions(), imbalanced(tmp_path, 50, 5))
    assert report.file("validation").label_counts == {"common": 50, "rare": 5}
    assert [issue.code.value for issue in report.file("validation").issues] == []


def test_the_cli_and_the_apis_report_carry_the_advice(tmp_path):
    path = imbalanced(tmp_path, 90, 10)
    result = CliRunner().invoke(app, ["data", "validate", str(path)])
    assert result.exit_code == 0, result.output
    output = result.output.replace("\n           ", " ")
    assert (
        "warning  imbalanced_classes: imbalanced classes: the largest, common (90 rows), has 9.0× the rows of "
        "the smallest, rare (10 rows)" in output
    )
    assert f"fix: {ADVICE}" in output
    # what the API's upload validation returns (the same validation, in a capped child process)
    document = validate_in_child(path, ValidationOptions(), 2048, concurrency=1)
    [issue] = document["files"][0]["issues"]
    assert issue["code"] == "imbalanced_classes" and issue["fix"] == ADVICE
    assert document["ok"] is True and document["warnings"] == 1
