"""The data layer of the three tasks (issue 23): multi-label label lists, regression targets and sentence pairs,
read from every format, validated with row-level errors and split into the frames and label map training takes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.analysis import analyze_file
from finetune_platform.data.loading import DatasetFileError, LabelMap, iter_chunks
from finetune_platform.data.splits import load_splits
from finetune_platform.data.validation import (
    Check,
    LabelListError,
    Severity,
    ValidationOptions,
    parse_label_list,
    parse_target,
    validate_dataset,
    validate_file,
    validate_in_child,
)
from finetune_platform.errors import ConfigError, DatasetError
from tests.conftest import write_csv

DROP_FIX = " (or drop these rows with --drop-invalid / data.invalid_rows: drop)"
LIST_FIX = (
    "write each row's labels as a JSON list of strings or integers ('[\"a\", \"b\"]', '[]' for none) or "
    "separated by ',' ('a,b'), each label once" + DROP_FIX
)
MULTI = ValidationOptions(task="multi_label")
REGRESSION = ValidationOptions(task="regression")


def codes(report):
    return [issue.code.value for issue in report.issues]


def issue(report, check: Check):
    (found,) = [i for i in report.issues if i.code is check]
    return found


def topic_rows(count: int) -> list[tuple[str, str]]:
    """Rows whose label lists cycle through four sets of three labels, each label on half the rows or more."""
    sets = ['["sports", "politics"]', "tech", "sports,tech", '["politics","tech", "sports"]']
    return [(f"story number {i}", sets[i % 4]) for i in range(count)]


# -- multi-label cells -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cell", "labels"),
    [
        ('["a", "b"]', ("a", "b")),
        ("[]", ()),
        ("  [ ]  ", ()),
        ("a,b", ("a", "b")),
        (" a , b ", ("a", "b")),
        ("single", ("single",)),
        ("[0, 2]", (0, 2)),
        ('["1", "x y"]', (1, "x y")),
        ("0,2", (0, 2)),
    ],
)
def test_a_label_cell_is_a_json_list_or_delimited_labels(cell, labels):
    assert parse_label_list(cell) == labels


def test_the_delimiter_is_the_configured_one():
    assert parse_label_list("a, b|c", "|") == ("a, b", "c")
    assert parse_label_list("sci-fi;;drama", ";;") == ("sci-fi", "drama")


@pytest.mark.parametrize(
    ("cell", "reason"),
    [
        ('["a"', "is not a valid JSON list (Expecting ',' delimiter at column 5)"),
        ("[a, b]", "is not a valid JSON list (Expecting value at column 2)"),
        ('[["a"]]', "holds a nested list"),
        ('[{"a": 1}]', "holds an object"),
        ("[1.5]", "holds 1.5, not a string or an integer"),
        ("[true]", "holds true, not a string or an integer"),
        ("[null]", "holds null, not a string or an integer"),
        ('["a", " "]', "holds an empty label"),
        ("a,,b", "has an empty label (labels are separated by ',')"),
        ("a,", "has an empty label (labels are separated by ',')"),
    ],
)
def test_a_malformed_label_cell_says_what_is_wrong(cell, reason):
    with pytest.raises(LabelListError) as caught:
        parse_label_list(cell)
    assert caught.value.reason == reason


def test_malformed_label_lists_are_row_errors_naming_row_and_value(tmp_path):
    rows = [*topic_rows(12), ("x1", '["a"'), ("x2", "a,,b"), ("x3", "tech,tech"), ("x4", '["1", 1]')]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), MULTI)
    assert codes(report) == ["malformed_label"]
    found = report.issues[0]
    assert found.severity is Severity.ERROR
    assert found.message == (
        "4 row(s) have a malformed label list: row 13: label '[\"a\"' is not a valid JSON list (Expecting ',' "
        "delimiter at column 5); row 14: label 'a,,b' has an empty label (labels are separated by ','); "
        "row 15: label 'tech,tech' repeats label 'tech'; and 1 more"
    )
    assert found.fix == LIST_FIX
    assert (found.count, found.rows) == (4, [13, 14, 15, 16])
    assert report.rows_valid == 12


def test_a_long_malformed_cell_is_quoted_cut_short(tmp_path):
    long_cell = "[" + '"word", ' * 20
    report = validate_file(write_csv(tmp_path / "d.csv", [*topic_rows(8), ("x", long_cell)]), MULTI)
    assert issue(report, Check.MALFORMED_LABEL).message == (
        f"1 row(s) have a malformed label list: row 9: label {long_cell[:50] + '…'!r} is not a valid JSON list "
        "(Expecting value at column 161)"
    )


def test_drop_invalid_drops_malformed_label_rows(tmp_path):
    rows = [*topic_rows(12), ("x1", "a,,b")]
    report = validate_file(
        write_csv(tmp_path / "d.csv", rows), ValidationOptions(task="multi_label", drop_invalid=True)
    )
    assert issue(report, Check.MALFORMED_LABEL).dropped
    assert (report.rows_valid, report.rows_dropped) == (12, 1)
    assert report.errors == []


def test_an_empty_cell_stays_an_error_and_no_labels_is_written_as_an_empty_list(tmp_path):
    rows = [*topic_rows(12), ("nothing here", "[]"), ("missing", "")]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), MULTI)
    assert codes(report) == ["null_label"]
    assert report.issues[0].message == "column 'label' is empty in 1 row(s): rows 14"
    assert report.issues[0].fix == (
        "fill in the missing values or remove the rows (a row with no labels holds '[]')" + DROP_FIX
    )
    assert report.rows_valid == 13


def test_labels_are_counted_per_label_with_rare_and_imbalance_warnings(tmp_path):
    rows = [(f"text {i}", "common" if i % 2 else "common,other") for i in range(40)]
    rows += [("lonely", '["common", "rare"]')]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), MULTI)
    assert report.label_counts == {"common": 41, "other": 20, "rare": 1}
    assert codes(report) == ["rare_class", "imbalanced_classes"]
    assert report.issues[0].message == "classes with fewer than 5 rows: rare (1)"
    assert report.issues[1].message == (
        "imbalanced classes: the largest, common (41 rows), has 41.0× the rows of the smallest, rare (1 row)"
    )


def test_declared_label_names_refuse_unknown_labels_per_label(tmp_path):
    rows = [*topic_rows(12), ("odd one", "sports,weather")]
    options = ValidationOptions(task="multi_label", label_names=["politics", "sports", "tech"])
    report = validate_file(write_csv(tmp_path / "d.csv", rows), options)
    assert codes(report) == ["unknown_label"]
    assert report.issues[0].message == (
        "1 row(s) have labels outside the declared set ['politics', 'sports', 'tech'] ('weather'): rows 13"
    )
    assert report.label_counts == {"politics": 6, "sports": 9, "tech": 9}


def test_declared_names_and_their_indices_are_the_same_labels(tmp_path):
    rows = [(f"t{i}", "[0, 1]" if i % 2 else "sports,politics") for i in range(10)]
    options = ValidationOptions(task="multi_label", label_names=["sports", "politics"], collect_rows=True)
    report = validate_file(write_csv(tmp_path / "d.csv", rows), options)
    assert report.issues == []
    assert report.label_counts == {"sports": 10, "politics": 10}
    assert set(report.rows["label"]) == {(0, 1)}


def test_one_label_in_the_whole_file_is_an_error(tmp_path):
    rows = [(f"t{i}", "only" if i % 2 else "[]") for i in range(10)]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), MULTI)
    assert codes(report) == ["single_class"]
    assert (
        report.issues[0].message
        == "only one label ('only') in the data: a multi-label classifier needs at least two"
    )
    empty = validate_file(write_csv(tmp_path / "e.csv", [(f"t{i}", "[]") for i in range(4)]), MULTI)
    assert empty.issues[0].message == "no label in the data: a multi-label classifier needs at least two"


def test_same_text_with_another_label_set_conflicts_and_the_same_set_in_any_spelling_repeats(tmp_path):
    rows = [*topic_rows(8), ("story number 0", "politics,sports"), ("story number 1", "tech,sports")]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), MULTI)
    assert codes(report) == ["duplicate", "conflicting_duplicate"]
    assert report.issues[0].rows == [9]  # '["sports", "politics"]' and 'politics,sports' are one set
    assert report.issues[1].message == "1 text(s) appear with different labels, in 2 rows: rows 2, 10"


def test_mixed_numbers_and_words_across_a_files_label_lists(tmp_path):
    rows = [*topic_rows(8), ("numbers", "[1, 2]")]
    assert codes(validate_file(write_csv(tmp_path / "d.csv", rows), MULTI))[0] == "mixed_label_types"


def test_validation_labels_never_seen_in_training_are_named(tmp_path):
    train = write_csv(tmp_path / "t.csv", topic_rows(8))
    validation = write_csv(tmp_path / "v.csv", [("new story", "tech,weather"), ("old story", "tech")])
    report = validate_dataset(train, MULTI, validation)
    found = issue(report.file("validation"), Check.UNKNOWN_LABEL)
    assert found.message == "1 validation row(s) have labels never seen in training ('weather'): rows 1"


def test_jsonl_and_json_label_cells_may_be_lists(tmp_path):
    records = [{"text": f"t{i}", "label": ["a", "b"] if i % 2 else ["b"]} for i in range(6)]
    records.append({"text": "none", "label": []})
    records.append({"text": "nested", "label": [["a"]]})
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    json_file = tmp_path / "d.json"
    json_file.write_text(json.dumps(records), encoding="utf-8")
    for path in (jsonl, json_file):
        report = validate_file(path, ValidationOptions(task="multi_label", collect_rows=True))
        assert codes(report) == ["malformed_label", "rare_class"]
        assert report.issues[0].message == (
            "1 row(s) have a malformed label list: row 8: label '[[\"a\"]]' holds a nested list"
        )
        assert report.label_counts == {"a": 3, "b": 6}
        assert report.rows["label"].tolist() == [("b",), ("a", "b")] * 3 + [()]
    # a single-label run still refuses a list in a label cell
    assert codes(validate_file(jsonl, ValidationOptions()))[0] == "nested_value"


# -- regression targets ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("3.5", 3.5),
        (" -2 ", -2.0),
        ("1e3", 1000.0),
        (".5", 0.5),
        (7, 7.0),
        (np.float64(0.25), 0.25),
        ("abc", "is not a number"),
        ("1_000", "is not a number"),
        ("3,5", "is not a number"),
        ("nan", "is not a finite number"),
        ("-inf", "is not a finite number"),
        ("1e400", "is not a finite number"),
        (float("inf"), "is not a finite number"),
        (True, "is not a number"),
    ],
)
def test_a_target_is_a_finite_number(value, parsed):
    assert parse_target(value) == parsed


def test_targets_that_are_not_finite_numbers_are_row_errors_naming_row_and_value(tmp_path):
    rows = [(f"t{i}", i / 2) for i in range(6)] + [("x", "abc"), ("y", "NaN"), ("z", "inf"), ("w", "2..5")]
    report = validate_file(write_csv(tmp_path / "d.csv", rows), REGRESSION)
    assert codes(report) == ["not_a_number"]
    found = report.issues[0]
    assert found.message == (
        "4 row(s) have a label that is not a finite number: row 7: label 'abc' is not a number; "
        "row 8: label 'NaN' is not a finite number; row 9: label 'inf' is not a finite number; and 1 more"
    )
    assert found.fix == "write each row's target as a number" + DROP_FIX
    assert (found.count, found.rows) == (4, [7, 8, 9, 10])


def test_regression_reports_the_target_and_checks_no_classes(tmp_path):
    rows = [(f"t{i}", v) for i, v in enumerate([1, 2, 3, 4, 100])]
    report = validate_dataset(write_csv(tmp_path / "d.csv", rows), REGRESSION)
    file_report = report.files[0]
    assert file_report.issues == []  # five values with one row each: no rare or imbalanced "classes"
    assert file_report.label_counts == {}
    document = report.to_json()["files"][0]
    assert document["task"] == "regression"
    assert document["target"] == {
        "min": 1.0,
        "max": 100.0,
        "mean": 22.0,
        "std": pytest.approx(39.0128, abs=1e-4),
    }
    assert "; target: 1 to 100, mean 22, std 39.0128;" in report.summary()


def test_a_constant_training_target_is_an_error(tmp_path):
    rows = [(f"t{i}", "2.5") for i in range(5)]
    report = validate_dataset(
        write_csv(tmp_path / "d.csv", rows), REGRESSION, write_csv(tmp_path / "v.csv", rows)
    )
    (found,) = report.files[0].issues
    assert (found.code, found.severity) == (Check.CONSTANT_TARGET, Severity.ERROR)
    assert found.message == "every row's label is 2.5: a regression needs targets that vary"
    assert report.files[1].issues[0].code is Check.OVERLAP  # a constant validation file is fine
    assert not report.ok


def test_same_text_with_different_targets_is_a_warning_and_never_dropped(tmp_path):
    rows = [("a", 1), ("b", 2), ("a", 1.5), ("c", 3), ("b", "2.0")]
    options = ValidationOptions(task="regression", drop_invalid=True, collect_rows=True)
    report = validate_file(write_csv(tmp_path / "d.csv", rows), options)
    assert codes(report) == ["duplicate", "conflicting_duplicate"]
    duplicate, conflict = report.issues
    assert duplicate.rows == [5]  # 2 and "2.0" are one value
    assert conflict.severity is Severity.WARNING and not conflict.dropped
    assert conflict.message == "1 text(s) appear with different values, in 2 rows: rows 1, 3"
    assert (report.rows_valid, report.rows_dropped) == (5, 0)
    assert report.rows["label"].tolist() == [1.0, 2.0, 1.5, 3.0, 2.0]


def test_a_target_changes_the_content_hash(tmp_path):
    first = validate_file(write_csv(tmp_path / "a.csv", [("x", 1), ("y", 2)]), REGRESSION)
    same = validate_file(write_csv(tmp_path / "b.csv", [("y", "2.0"), ("x", "1")]), REGRESSION)
    other = validate_file(write_csv(tmp_path / "c.csv", [("x", 1), ("y", 2.5)]), REGRESSION)
    assert first.content_hash == same.content_hash != other.content_hash


# -- pair input ------------------------------------------------------------------------------------
PAIRS = [
    {"premise": "A man plays a guitar.", "hypothesis": "Someone makes music.", "label": "entailment"},
    {"premise": "A man plays a guitar.", "hypothesis": "Nobody is there.", "label": "contradiction"},
    {"premise": "Kids run outside", "hypothesis": "Children are outdoors", "label": "entailment"},
]


def write_pairs(path: Path, records: list[dict]) -> Path:
    frame = pd.DataFrame(records)
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        with path.open("w", newline="", encoding="utf-8") as handle:
            delimiter = "," if suffix == ".csv" else "\t"
            quoting = csv.QUOTE_MINIMAL if suffix == ".csv" else csv.QUOTE_NONE
            writer = csv.writer(handle, delimiter=delimiter, quoting=quoting, escapechar=None)
            writer.writerow(frame.columns)
            writer.writerows(frame.itertuples(index=False))
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps({"data": records}), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_every_format_reads_the_pair_column(tmp_path, suffix):
    path = write_pairs(tmp_path / f"nli{suffix}", PAIRS)
    (chunk,) = iter_chunks(path, "premise", "label", text_pair_column="hypothesis")
    assert list(chunk.frame.columns) == ["row", "text", "text_pair", "label"]
    assert chunk.frame["row"].tolist() == [1, 2, 3]
    assert chunk.frame["text"].tolist() == [r["premise"] for r in PAIRS]
    assert chunk.frame["text_pair"].tolist() == [r["hypothesis"] for r in PAIRS]
    assert chunk.frame["label"].tolist() == [r["label"] for r in PAIRS]
    (without,) = iter_chunks(path, "premise", "label")
    assert list(without.frame.columns) == ["row", "text", "label"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".json", ".parquet"])
def test_a_missing_pair_column_is_named_like_a_missing_text_column(tmp_path, suffix):
    path = write_pairs(tmp_path / f"nli{suffix}", PAIRS)
    report = validate_file(path, ValidationOptions(text_column="premise", text_pair_column="second"))
    (found,) = report.issues
    assert found.code is Check.FILE
    assert found.message.startswith(f"{path}: missing column(s) 'second'; available columns: ")
    assert found.fix == (
        "set the column names (data.text_column / data.text_pair_column / data.label_column, or --text-column / "
        "--text-pair-column / --label-column)"
    )


def test_the_pair_cells_count_against_the_cell_limit(tmp_path):
    from finetune_platform.data.loading import DatasetLimitError, DatasetLimits

    records = [{"a": "short", "b": "x" * 50, "label": 1}]
    path = write_pairs(tmp_path / "d.jsonl", records)
    limits = DatasetLimits(max_rows=10, max_decoded_bytes=10_000, max_text_chars=20, max_json_depth=8)
    with pytest.raises(DatasetLimitError) as caught:
        list(iter_chunks(path, "a", "label", limits=limits, text_pair_column="b"))
    assert caught.value.detail == "row 1, column 'b': 50 characters, more than the limit of 20 per cell"


def test_the_pair_column_must_be_a_third_column(tmp_path):
    with pytest.raises(ConfigError) as caught:
        ValidationOptions(text_column="a", label_column="b", text_pair_column="a")
    assert str(caught.value) == "the text pair column and the text column are both 'a': name a third column"
    path = write_csv(tmp_path / "d.csv", [("x", "y")], header=("a", "b"))
    with pytest.raises(DatasetFileError) as file_error:
        list(iter_chunks(path, "a", "b", text_pair_column="b"))
    assert file_error.value.message == "the text pair column and the label column are both 'b'"
    with pytest.raises(ConfigError) as task_error:
        ValidationOptions(task="ranking")
    assert str(task_error.value) == "task 'ranking' is not one of single_label, multi_label, regression"


def test_an_empty_pair_text_is_a_row_error(tmp_path):
    records = [*PAIRS, {"premise": "A cat sleeps.", "hypothesis": "  ", "label": "neutral"}]
    records.append({"premise": "", "hypothesis": "", "label": "neutral"})  # reported once, as an empty text
    path = write_pairs(tmp_path / "nli.csv", records)
    options = ValidationOptions(text_column="premise", text_pair_column="hypothesis")
    report = validate_file(path, options)
    assert codes(report)[:2] == ["empty_text", "empty_text_pair"]
    assert report.issues[0].rows == [5]
    assert report.issues[1].message == "column 'hypothesis' is empty or whitespace in 1 row(s): rows 4"
    assert report.issues[1].fix == "fill in the missing values or remove the rows" + DROP_FIX


def test_duplicates_are_pairs_repeated_not_premises_repeated(tmp_path):
    records = [*PAIRS, {**PAIRS[1], "hypothesis": " Nobody is there. "}, {**PAIRS[0], "label": "neutral"}]
    path = write_pairs(tmp_path / "nli.csv", records)
    report = validate_file(path, ValidationOptions(text_column="premise", text_pair_column="hypothesis"))
    assert codes(report)[:2] == ["duplicate", "conflicting_duplicate"]
    assert report.issues[0].rows == [4]
    assert report.issues[1].rows == [1, 5]  # rows 1 and 2 share the premise only: neither repeats


def test_token_lengths_measure_both_texts(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    path = write_pairs(tmp_path / "nli.csv", PAIRS)
    options = ValidationOptions(
        text_column="premise", text_pair_column="hypothesis", tokenizer=tokenizer, max_length=12
    )
    report = validate_file(path, options)
    lengths = [len(tokenizer(r["premise"], r["hypothesis"])["input_ids"]) for r in PAIRS]
    assert report.token_length["max"] == max(lengths) > 12
    assert issue(report, Check.TRUNCATED).rows == [i + 1 for i, n in enumerate(lengths) if n > 12]


# -- splits and the label map -----------------------------------------------------------------------
def test_single_label_splits_are_as_before(tmp_path):
    rows = [(f"text {i}", "pos" if i % 2 else "neg") for i in range(20)]
    splits = load_splits(write_csv(tmp_path / "d.csv", rows), "text", "label", validation_split=0.2)
    assert list(splits.train.columns) == ["row", "text", "label", "label_id"]
    assert splits.label_map == LabelMap(("neg", "pos"), ("neg", "pos"))
    assert splits.train["label_id"].dtype == np.int64
    assert (len(splits.train), len(splits.validation)) == (16, 4)


def test_multi_label_splits_hold_tuples_of_sorted_label_ids(tmp_path):
    rows = [(f"t{i}", s) for i, s in enumerate(["b,a", "[]", '["c"]', "a"] * 5)]
    splits = load_splits(
        write_csv(tmp_path / "d.csv", rows),
        "text",
        "label",
        task="multi_label",
        validation_file=write_csv(tmp_path / "v.csv", [("v1", "c|a"), ("v2", "[]")]),
        label_delimiter="|",
    )
    # in the validation file 'c|a' is delimited by '|'; training's 'b,a' is then one label 'b,a'
    assert splits.label_map == LabelMap(("a", "b,a", "c"), ("a", "b,a", "c"), task="multi_label")
    assert splits.validation["label_id"].tolist() == [(0, 2), ()]
    assert splits.validation["label"].tolist() == [("a", "c"), ()]


def test_multi_label_label_map_ids_and_stratified_split(tmp_path):
    # rarest label per row: 'a' alone (20 rows), 'b' with 'a' (16), 'c' (4): a split keeps their shares
    rows = [(f"t{i}", "a") for i in range(20)] + [(f"u{i}", "a,b") for i in range(16)]
    rows += [(f"w{i}", '["c", "a"]') for i in range(4)]
    splits = load_splits(
        write_csv(tmp_path / "d.csv", rows), "text", "label", task="multi_label", validation_split=0.25
    )
    assert splits.label_map == LabelMap(("a", "b", "c"), ("a", "b", "c"), task="multi_label")
    assert splits.label_map.num_labels == 3
    assert list(splits.train.columns) == ["row", "text", "label", "label_id"]
    assert set(splits.train["label_id"]) == {(0,), (0, 1), (0, 2)}
    assert splits.validation["label_id"].value_counts().to_dict() == {(0,): 5, (0, 1): 4, (0, 2): 1}
    document = splits.label_map.to_json()
    assert (document["task"], document["thresholds"], document["pair"]) == ("multi_label", [0.5] * 3, False)


def test_multi_label_with_declared_names_maps_names_and_indices(tmp_path):
    rows = [(f"t{i}", ["[1]", "sports,politics", "[]"][i % 3]) for i in range(12)]
    splits = load_splits(
        write_csv(tmp_path / "d.csv", rows),
        "text",
        "label",
        task="multi_label",
        label_names=["sports", "politics"],
        validation_split=0.25,
    )
    assert splits.label_map.names == ("sports", "politics")
    assert splits.label_map.raw_values == (0, 1)
    assert set(splits.train["label_id"]) | set(splits.validation["label_id"]) == {(1,), (0, 1), ()}


def test_multi_label_refuses_training_rows_with_fewer_than_two_labels(tmp_path):
    rows = [(f"t{i}", "a") for i in range(6)] + [(f"u{i}", "b,a") for i in range(6)]
    with pytest.raises(DatasetError) as caught:
        load_splits(
            write_csv(tmp_path / "d.csv", rows), "text", "label", task="multi_label", max_train_rows=6
        )
    assert str(caught.value) == (
        "the first 6 training rows hold only the label 'a'; a multi-label classifier needs two: raise "
        "data.max_train_rows or shuffle the file"
    )


def test_regression_splits_carry_float_targets_and_the_training_scale(tmp_path):
    rows = [(f"t{i}", f"{i * 0.5}") for i in range(100)]
    splits = load_splits(
        write_csv(tmp_path / "d.csv", rows, header=("text", "score")), "text", "score", task="regression"
    )
    assert list(splits.train.columns) == ["row", "text", "label", "label_id"]
    assert splits.train["label_id"].dtype == np.float64
    assert splits.train["label_id"].tolist() == splits.train["label"].tolist()
    targets = splits.train["label_id"].to_numpy()
    assert splits.label_map == LabelMap(
        ("score",), (), task="regression", scale=(targets.mean(), targets.std(ddof=0))
    )
    assert len(splits.validation) == 10
    # stratified on 10 quantile bins: one validation row from each tenth of the target's range
    assert sorted((splits.validation["label_id"] // 5).astype(int)) == list(range(10))
    assert LabelMap.from_json(splits.label_map.to_json()) == splits.label_map


def test_regression_refuses_training_rows_that_do_not_vary(tmp_path):
    rows = [(f"t{i}", 1.0) for i in range(5)] + [(f"u{i}", 2.0) for i in range(5)]
    with pytest.raises(DatasetError) as caught:
        load_splits(
            write_csv(tmp_path / "d.csv", rows),
            "text",
            "label",
            task="regression",
            max_train_rows=5,
            validation_file=write_csv(tmp_path / "v.csv", rows),
        )
    assert str(caught.value) == (
        "the 5 training rows used all have the target 1; a regression needs targets that vary: raise "
        "data.max_train_rows or shuffle the file"
    )


def test_pair_splits_carry_the_second_text_and_the_map_says_pair(tmp_path):
    records = [{"q1": f"question {i}", "q2": f"other {i}", "same": i % 2} for i in range(10)]
    path = write_pairs(tmp_path / "pairs.parquet", records)
    splits = load_splits(path, "q1", "same", text_pair_column="q2", validation_split=0.2)
    assert list(splits.train.columns) == ["row", "text", "text_pair", "label", "label_id"]
    first = splits.train.iloc[0]
    assert first["text_pair"] == f"other {first['text'].split()[-1]}"
    assert splits.label_map == LabelMap(("0", "1"), (0, 1), pair=True)
    assert LabelMap.from_json(splits.label_map.to_json()).pair is True


def test_invalid_multi_label_data_is_refused_with_the_report(tmp_path):
    from finetune_platform.data.validation import DatasetValidationError

    rows = [*topic_rows(8), ("x", "a,,b")]
    with pytest.raises(DatasetValidationError) as caught:
        load_splits(write_csv(tmp_path / "d.csv", rows), "text", "label", task="multi_label")
    assert str(caught.value).splitlines()[0] == (
        "invalid dataset: 1 row(s) have a malformed label list: row 9: label 'a,,b' has an empty label "
        "(labels are separated by ',')"
    )


# -- faces -------------------------------------------------------------------------------------------
def test_data_validate_takes_task_pair_column_and_delimiter(tmp_path):
    path = write_pairs(
        tmp_path / "nli.csv",
        [{"p": f"premise {i}", "h": f"hypothesis {i}", "tags": "x|y" if i % 2 else "y"} for i in range(10)],
    )
    runner = CliRunner()
    arguments = ["data", "validate", str(path), "--text-column", "p", "--label-column", "tags", "--json"]
    result = runner.invoke(
        app, [*arguments, "--task", "multi_label", "--text-pair-column", "h", "--label-delimiter", "|"]
    )
    assert result.exit_code == 0, result.output
    (document,) = json.loads(result.output)["files"]
    assert (document["task"], document["label_counts"]) == ("multi_label", {"x": 5, "y": 10})
    single = runner.invoke(app, arguments)  # without: 'x|y' is one label, and the pairs are not read
    assert json.loads(single.output)["files"][0]["label_counts"] == {"x|y": 5, "y": 5}
    wrong = runner.invoke(app, [*arguments, "--task", "ranking"])
    assert wrong.exit_code != 0
    assert "task 'ranking' is not one of single_label, multi_label, regression" in wrong.output


def test_data_validate_reads_task_and_pair_column_from_a_config(tmp_path):
    path = write_pairs(
        tmp_path / "sts.csv", [{"a": f"s{i}", "b": f"t{i}", "score": "x" if i == 3 else i} for i in range(8)]
    )
    config = tmp_path / "sts.yaml"
    config.write_text(
        "task: regression\n"
        f"data: {{train_file: {path}, text_column: a, text_pair_column: b, label_column: score}}\n"
        "model: {base_model: minilm}\n",
        encoding="utf-8",
    )
    result = CliRunner().invoke(app, ["data", "validate", "--config", str(config), "--json"])
    assert result.exit_code == 1, result.output
    (document,) = json.loads(result.output)["files"]
    assert document["task"] == "regression"
    assert [i["message"] for i in document["issues"]] == [
        "1 row(s) have a label that is not a finite number: row 4: label 'x' is not a number"
    ]


def test_validation_in_a_child_process_takes_the_task_options(tmp_path):
    rows = [{"a": f"s{i}", "b": f"t{i}", "score": v} for i, v in enumerate(["1", "2", "abc", "4"])]
    path = write_pairs(tmp_path / "sts.jsonl", rows)
    options = ValidationOptions(
        text_column="a", label_column="score", task="regression", text_pair_column="b"
    )
    document = validate_in_child(path, options, memory_mb=1024)
    (file_report,) = document["files"]
    assert (file_report["task"], file_report["rows_valid"]) == ("regression", 3)
    assert file_report["target"]["max"] == 4.0
    assert file_report["issues"][0]["message"] == (
        "1 row(s) have a label that is not a finite number: row 3: label 'abc' is not a number"
    )


# -- analysis ----------------------------------------------------------------------------------------
def test_analysis_counts_each_label_of_a_multi_label_row(tmp_path):
    rows = [
        ("goals and rain", "sports,weather"),
        ("a vote", '["politics"]'),
        ("quiet day", "[]"),
        ("x", "a,,b"),
    ]
    analysis = analyze_file(write_csv(tmp_path / "d.csv", rows), task="multi_label", out_dir=tmp_path / "out")
    assert analysis["rows"] == 3  # the malformed row is left out; the row without labels counts
    assert analysis["labels"] == {
        "politics": {"rows": 1, "share": 0.3333},
        "sports": {"rows": 1, "share": 0.3333},
        "weather": {"rows": 1, "share": 0.3333},
    }
    assert analysis["top_tokens"]["weather"] == [["goals", 1], ["rain", 1]]
    assert "labels.png" in analysis["plots"]


def test_analysis_of_regression_pairs_has_a_target_histogram_and_reads_both_texts(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    records = [{"a": "red apple", "b": "green pear", "score": v} for v in ("1", "3", "oops", "5")]
    path = write_pairs(tmp_path / "sts.jsonl", records)
    analysis = analyze_file(
        path,
        "a",
        "score",
        task="regression",
        text_pair_column="b",
        tokenizer=tokenizer,
        out_dir=tmp_path / "out",
    )
    assert analysis["rows"] == 3
    assert analysis["target"]["min"] == 1.0 and analysis["target"]["max"] == 5.0
    assert analysis["target"]["mean"] == 3.0 and sum(analysis["target"]["counts"]) == 3
    assert analysis["top_tokens"]["all"] == [["red", 3], ["apple", 3], ["green", 3], ["pear", 3]]
    assert analysis["char_length"]["max"] == len("red apple") + len("green pear")
    assert analysis["token_length"]["max"] == len(tokenizer("red apple", "green pear")["input_ids"])
    assert sorted(analysis["plots"]) == [
        "char_lengths.png",
        "target.png",
        "token_lengths.png",
        "top_tokens.png",
    ]


def test_data_analyze_takes_the_task_options(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("goals", "sports|weather"), ("votes", "politics")])
    arguments = ["data", "analyze", str(path), "--out", str(tmp_path / "out"), "--model", "none", "--json"]
    result = CliRunner().invoke(app, [*arguments, "--task", "multi_label", "--label-delimiter", "|"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.output)["labels"]) == ["politics", "sports", "weather"]
    wrong = CliRunner().invoke(app, [*arguments, "--task", "ranking"])
    assert wrong.exit_code != 0
    assert "--task 'ranking' is not one of single_label, multi_label, regression" in wrong.output
