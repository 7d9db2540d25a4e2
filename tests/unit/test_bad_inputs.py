"""The malformed-input corpus (tests/data/bad/, made by tests/data/make_bad_corpus.py).

Every file gets its own specific message through the library and through the CLI, and none ends in a
traceback.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.loading import DatasetFileError, resolve_dataset_path
from finetune_platform.data.validation import Check, ValidationOptions, validate_dataset

BAD = Path(__file__).resolve().parents[1] / "data" / "bad"

# file -> (is the file valid?, the issue codes found, a fragment of the first issue's message)
CASES = {
    "not_utf8.csv": (False, ["file"], "not UTF-8: invalid byte 0xe9 at byte offset 14 (line 2)"),
    "truncated_utf8.csv": (
        False,
        ["file"],
        "not UTF-8: the file ends inside a multi-byte character (byte offset 26)",
    ),
    "empty.csv": (False, ["file"], "empty.csv: the file is empty"),
    "header_only.csv": (False, ["file"], "header_only.csv: only a header, no data rows"),
    "blank_first_line.csv": (False, ["file"], "no header row (the first line is blank)"),
    "missing_column.csv": (False, ["file"], "missing column(s) 'label'; available columns: text, labels"),
    "missing_column.parquet": (False, ["file"], "missing column(s) 'label'; available columns: text, stars"),
    "missing_key.jsonl": (False, ["file"], "missing column(s) 'label'; available columns: text"),
    "duplicate_header.csv": (False, ["file"], "duplicate column name(s) in the header: 'label'"),
    "ragged_rows.csv": (False, ["malformed_line"], "line 14: expected 2 fields, saw 3"),
    "unclosed_quote.csv": (False, ["file"], "a quote opened on line 3 never closes"),
    "unclosed_quote_first_row.csv": (False, ["file"], "a quote opened on line 2 never closes"),
    "broken_line.jsonl": (False, ["malformed_line"], "line 2: not valid JSON (Expecting value at column 1)"),
    "not_an_object.jsonl": (False, ["malformed_line", "rare_class"], "line 2: not a JSON object (list)"),
    "blank_lines_only.jsonl": (False, ["file"], "no records (only blank lines)"),
    "null_labels.csv": (False, ["null_label"], "column 'label' is empty in 1 row(s): rows 13"),
    "null_labels.jsonl": (False, ["null_label", "rare_class"], "column 'label' is empty in 1 row(s): rows 2"),
    "empty_text.csv": (False, ["empty_text"], "column 'text' is empty or whitespace in 1 row(s): rows 13"),
    "labels_outside_set.csv": (
        False,
        ["unknown_label"],
        "labels outside the declared set ['0', '1'] ('7'): rows 13",
    ),
    "mixed_label_types.csv": (False, ["mixed_label_types", "rare_class"], "mixes numbers and words"),
    "one_class.csv": (False, ["single_class"], "only one label ('pos') in the data"),
    "conflicting_duplicates.csv": (
        False,
        ["conflicting_duplicate"],
        "1 text(s) appear with different labels, in 2 rows: rows 2, 13",
    ),
    "all_labels_empty.csv": (
        False,
        ["null_label", "no_valid_rows"],
        "column 'label' is empty in 2 row(s): rows 1, 2",
    ),
    "bad_syntax.json": (False, ["file"], "not valid JSON (Expecting ',' delimiter at line 2, column 17)"),
    "not_an_array.json": (False, ["file"], "expected a JSON array of objects"),
    "empty_array.json": (False, ["file"], "the array holds no records"),
    "corrupt.parquet": (False, ["file"], "not a readable Parquet file"),
    "unknown_format.xlsx": (False, ["file"], "unknown dataset format '.xlsx'"),
    "huge_record.csv": (True, ["long_text"], "1 text(s) are longer than 10,000 characters: rows 13"),
    "rare_class.csv": (True, ["rare_class", "imbalanced_classes"], "classes with fewer than 5 rows: b (2)"),
    "duplicates.csv": (True, ["duplicate"], "1 row(s) repeat an earlier row exactly: rows 13"),
    "bom.csv": (True, [], ""),
}


def options_for(name: str) -> ValidationOptions:
    return ValidationOptions(label_names=["0", "1"] if name == "labels_outside_set.csv" else None)


def test_the_corpus_is_complete():
    assert sorted(p.name for p in BAD.iterdir()) == sorted(CASES)
    assert len(CASES) >= 25


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_bad_file_gets_its_specific_issue(name):
    ok, codes, fragment = CASES[name]
    report = validate_dataset(BAD / name, options_for(name))
    issues = report.files[0].issues
    assert report.ok is ok
    assert [issue.code.value for issue in issues] == codes
    if fragment:
        assert fragment in issues[0].message
        assert issues[0].fix


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_cli_reports_without_a_traceback(name):
    ok, _, fragment = CASES[name]
    args = ["data", "validate", str(BAD / name)]
    if name == "labels_outside_set.csv":
        args += ["--label-names", "0,1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == (0 if ok else 1), result.output
    assert isinstance(result.exception, SystemExit) or result.exception is None
    assert "Traceback" not in result.output
    assert ("result: VALID" if ok else "result: INVALID") in result.output
    if fragment:
        assert fragment in result.output.replace("\n           ", " ")


def test_missing_and_directory_paths(tmp_path):
    report = validate_dataset(tmp_path / "nope.csv", ValidationOptions())
    assert report.files[0].issues[0].message == f"dataset file not found: {tmp_path / 'nope.csv'}"
    report = validate_dataset(tmp_path, ValidationOptions())
    assert (
        report.files[0].issues[0].message
        == f"{tmp_path}: unknown dataset format '(no extension)'; supported: "
        ".csv, .json, .jsonl, .ndjson, .parquet, .pq, .tab, .tsv"
    )


def test_paths_may_not_escape_a_dataset_root(tmp_path):
    root = tmp_path / "datasets"
    root.mkdir()
    assert resolve_dataset_path("team/train.csv", root) == root / "team" / "train.csv"
    for escaping in ("../secrets.csv", "team/../../secrets.csv", "/etc/passwd"):
        with pytest.raises(DatasetFileError) as caught:
            resolve_dataset_path(escaping, root)
        assert str(caught.value) == f"dataset path {escaping!r} escapes the dataset directory {root}"
    result = CliRunner().invoke(app, ["data", "validate", "../secrets.csv", "--root", str(root)])
    assert result.exit_code == 1
    assert f"error: dataset path '../secrets.csv' escapes the dataset directory {root}" in result.output


def test_dropping_invalid_rows_keeps_the_rest(tmp_path):
    report = validate_dataset(
        BAD / "ragged_rows.csv", ValidationOptions(drop_invalid=True, collect_rows=True)
    )
    file_report = report.files[0]
    assert report.ok
    assert (file_report.rows_read, file_report.rows_valid, file_report.rows_dropped) == (12, 12, 1)
    assert file_report.issues[0].code is Check.MALFORMED_LINE and file_report.issues[0].dropped
    assert len(file_report.rows) == 12


def test_dropping_cannot_rescue_a_file_without_valid_rows():
    report = validate_dataset(BAD / "all_labels_empty.csv", ValidationOptions(drop_invalid=True))
    assert not report.ok
    assert [i.code.value for i in report.files[0].errors] == ["no_valid_rows"]
