"""A training file split for validation (no validation file): every single_label label needs 2 rows and a
validation row, refused at validation with the rule in the message; the split then holds a row of every label."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.splits import _stratified_split, load_splits
from finetune_platform.data.validation import (
    Check,
    DatasetValidationError,
    ValidationOptions,
    validate_dataset,
)
from tests.conftest import write_csv

THREE_ROWS = [("a good film", "a"), ("a bad film", "b"), ("an okay film", "c")]
ONE_ROW_MESSAGE = (
    "label 'a' has 1 row, label 'b' has 1 row, label 'c' has 1 row: a validation split of 10% needs at least "
    "2 rows of every label (one for training, one for validation)"
)


def split_issues(path, **options):
    report = validate_dataset(path, ValidationOptions(**options))
    return [
        (i.code, i.message, i.fix) for i in report.file("train").issues if i.code is Check.SPLIT_TOO_SMALL
    ], report


def test_a_label_of_one_row_is_refused_for_a_split(tmp_path):
    path = write_csv(tmp_path / "three.csv", THREE_ROWS)
    issues, report = split_issues(path, validation_split=0.1)
    assert issues == [
        (
            Check.SPLIT_TOO_SMALL,
            ONE_ROW_MESSAGE,
            "add rows of these labels, or give a validation file (data.validation_file, --validation-file)",
        )
    ]
    assert not report.ok
    # without a split (the run has a validation file) the same file is valid
    assert split_issues(path)[0] == [] and validate_dataset(path, ValidationOptions()).ok


def test_too_few_validation_rows_for_the_labels_are_refused(tmp_path):
    rows = [(f"text {i}", "abc"[i % 3]) for i in range(12)]  # 4 rows a label; 10% of 12 rows is 1 row
    issues, _ = split_issues(write_csv(tmp_path / "twelve.csv", rows), validation_split=0.1)
    assert issues == [
        (
            Check.SPLIT_TOO_SMALL,
            "a validation split of 10% of 12 rows holds 1 row, fewer than the 3 labels: every label needs a "
            "validation row",
            "raise data.validation_split to 0.25 or more, add rows, or give a validation file "
            "(data.validation_file, --validation-file)",
        )
    ]
    assert split_issues(write_csv(tmp_path / "twelve.csv", rows), validation_split=0.25)[0] == []


def test_multi_label_and_regression_files_are_not_split_checked(tmp_path):
    labels = write_csv(tmp_path / "multi.csv", [("one", "a"), ("two", "b,c"), ("three", "[]"), ("four", "b")])
    assert split_issues(labels, validation_split=0.1, task="multi_label")[0] == []
    targets = write_csv(tmp_path / "scores.csv", [("one", 1.0), ("two", 2.5), ("three", 4.0)])
    assert split_issues(targets, validation_split=0.1, task="regression")[0] == []


def test_training_loads_refuse_the_split_too(tmp_path):
    path = write_csv(tmp_path / "three.csv", THREE_ROWS)
    with pytest.raises(DatasetValidationError) as refused:
        load_splits(path, "text", "label", validation_split=0.1)
    assert str(refused.value).startswith(f"invalid dataset: {ONE_ROW_MESSAGE}\n")


def test_data_validate_checks_the_split_it_is_given(tmp_path):
    path = write_csv(tmp_path / "three.csv", THREE_ROWS)
    refused = CliRunner().invoke(app, ["data", "validate", str(path), "--validation-split", "0.1"])
    assert refused.exit_code == 1 and f"error    split_too_small: {ONE_ROW_MESSAGE}" in refused.output
    assert CliRunner().invoke(app, ["data", "validate", str(path)]).exit_code == 0
    wrong = CliRunner().invoke(app, ["data", "validate", str(path), "--validation-split", "1"])
    assert wrong.exit_code != 0 and "--validation-split 1: give a share above 0 and below 1" in wrong.output


def test_a_stratified_split_holds_a_row_of_every_label():
    # proportional allocation gives the 3 validation rows to the large label: both small ones are swapped in
    table = pd.DataFrame({"row": range(104), "label_id": [0] * 100 + [1, 1, 2, 2]})
    train, validation = _stratified_split(table, 0.03, 42, table["label_id"], cover=True)
    assert sorted(validation["label_id"]) == [0, 1, 2]
    assert train["label_id"].value_counts().to_dict() == {0: 99, 1: 1, 2: 1}
    assert sorted([*train["row"], *validation["row"]]) == list(range(104))
    uncovered = _stratified_split(table, 0.03, 42, table["label_id"])[1]
    assert sorted(uncovered["label_id"]) == [0, 0, 0]  # what scikit-learn alone gives
