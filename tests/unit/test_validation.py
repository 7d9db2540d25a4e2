"""Validation checks, content hashing, the version index, diffs and analysis."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.analysis import analyze_file
from finetune_platform.data.validation import (
    Check,
    Severity,
    ValidationOptions,
    validate_dataset,
    validate_file,
)
from finetune_platform.data.versioning import VersionIndex, diff_files, resolve_reference, version_file
from finetune_platform.errors import DatasetError, NotFoundError
from tests.conftest import write_csv

ROWS = [
    (f"review number {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg") for i in range(20)
]


def codes(report):
    return [issue.code.value for issue in report.issues]


def test_clean_file_has_no_issues_and_counts_labels(tmp_path):
    report = validate_file(write_csv(tmp_path / "d.csv", ROWS), ValidationOptions())
    assert report.issues == []
    assert (report.rows_read, report.rows_valid) == (20, 20)
    assert report.label_counts == {"neg": 10, "pos": 10}
    assert report.text_length["max"] == 26


def test_duplicates_conflicts_and_overlap(tmp_path):
    train = write_csv(
        tmp_path / "t.csv", [*ROWS, (ROWS[0][0], "neg"), ("  review number 1 was great ", "neg")]
    )
    validation = write_csv(tmp_path / "v.csv", [(ROWS[3][0], "pos"), ("brand new", "neg")])
    report = validate_dataset(train, ValidationOptions(), validation)
    train_report, validation_report = report.files
    assert codes(train_report) == ["duplicate", "conflicting_duplicate"]
    duplicate, conflict = train_report.issues
    assert duplicate.severity is Severity.WARNING and duplicate.rows == [21]
    assert conflict.severity is Severity.ERROR and conflict.rows == [2, 22]  # whitespace does not make it new
    assert conflict.message == "1 text(s) appear with different labels, in 2 rows: rows 2, 22"
    assert codes(validation_report) == ["rare_class", "train_validation_overlap"]
    assert validation_report.issues[1].rows == [1]
    assert not report.ok


def test_declared_labels_unused_and_rare(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", 0), ("b", 1), ("c", 1), ("d", 1), ("e", 1), ("f", 1)])
    report = validate_file(path, ValidationOptions(label_names=["negative", "positive", "neutral"]))
    assert report.label_counts == {"negative": 1, "positive": 5}
    assert codes(report) == ["rare_class", "unused_label", "imbalanced_classes"]
    assert report.issues[0].message == "classes with fewer than 5 rows: negative (1)"
    assert report.issues[1].message == "declared label(s) with no rows: 'neutral'"


def test_token_lengths_against_max_length(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    path = write_csv(tmp_path / "d.csv", [*ROWS, ("word " * 50, "pos")])
    report = validate_file(path, ValidationOptions(tokenizer=tokenizer, max_length=16))
    assert codes(report) == ["truncated"]
    assert report.issues[0].rows == [21]
    assert report.issues[0].message.startswith("1 text(s) (4.8%) are longer than max_length=16 tokens")
    assert report.token_length["max"] == 52


def test_content_hash_ignores_order_surrounding_whitespace_and_label_spelling(tmp_path):
    first = validate_file(
        write_csv(tmp_path / "a.csv", [("good film  ", 1), ("bad", 0)]), ValidationOptions()
    )
    second = validate_file(
        write_csv(tmp_path / "b.csv", [("bad", "0"), (" good film", "1.0")]), ValidationOptions()
    )
    third = validate_file(
        write_csv(tmp_path / "c.csv", [("bad", 1), ("good film", 1), ("x", 0)]), ValidationOptions()
    )
    assert first.content_hash == second.content_hash
    assert third.content_hash != first.content_hash
    assert len(first.version) == 12


def test_report_json_and_summary(tmp_path):
    path = write_csv(tmp_path / "d.csv", [*ROWS, ("", "pos")])
    report = validate_dataset(path, ValidationOptions())
    document = report.to_json()
    assert document["ok"] is False and document["errors"] == 1
    issue = document["files"][0]["issues"][0]
    assert issue == {
        "code": "empty_text",
        "severity": "error",
        "message": "column 'text' is empty or whitespace in 1 row(s): rows 21",
        "fix": "fill in the missing values or remove the rows (or drop these rows with --drop-invalid / "
        "data.invalid_rows: drop)",
        "count": 1,
        "rows": [21],
        "dropped": False,
    }
    assert report.summary().splitlines()[-1] == "result: INVALID (1 error, 0 warnings)"


def test_version_index_records_once_and_resolves(tmp_path):
    from finetune_platform.settings import Settings

    index = VersionIndex(Settings(FINETUNE_HOME=tmp_path / "home"))
    path = write_csv(tmp_path / "d.csv", ROWS)
    version, added, _ = version_file(path, ValidationOptions(), index)
    again, added_again, _ = version_file(path, ValidationOptions(), index)
    assert added and not added_again and again == version
    assert [v.version for v in index.all()] == [version.version]
    assert index.get(version.version[:8]) == version
    assert resolve_reference(version.version, index) == (path.resolve(), version)
    with pytest.raises(NotFoundError, match="no dataset version 'abcdef'"):
        index.get("abcdef")
    write_csv(path, ROWS[:5])  # the file changes after it was recorded
    with pytest.raises(
        DatasetError, match=f"dataset version {version.version}: .* has changed since it was recorded"
    ):
        resolve_reference(version.version, index)


def test_diff_added_removed_relabelled(tmp_path):
    old = write_csv(tmp_path / "old.csv", ROWS[:10])
    new_rows = [*ROWS[2:10], *ROWS[10:13]]
    new_rows[0] = (new_rows[0][0], "pos")  # row 3 of old ("... was awful", neg) relabelled
    new = write_csv(tmp_path / "new.csv", new_rows)
    result = diff_files(old, new)
    assert result.removed == [1, 2]
    assert result.added == [9, 10, 11]
    assert result.relabelled == [
        {"text": ROWS[2][0], "old_label": "neg", "new_label": "pos", "old_row": 3, "new_row": 1}
    ]
    assert result.unchanged == 7
    assert result.to_json()["added"] == 3


def test_analysis_writes_json_and_plots(tmp_path, minilm_path):
    from transformers import AutoTokenizer

    path = write_csv(tmp_path / "d.csv", ROWS)
    analysis = analyze_file(
        path, out_dir=tmp_path / "out", tokenizer=AutoTokenizer.from_pretrained(minilm_path), max_length=6
    )
    assert analysis["labels"] == {"neg": {"rows": 10, "share": 0.5}, "pos": {"rows": 10, "share": 0.5}}
    assert analysis["vocabulary_size"] == 25  # review, number, was, great, awful and the numbers 0..19
    assert analysis["top_tokens"]["pos"][:2] == [["review", 10], ["number", 10]]
    assert analysis["truncated_share"] == 1.0
    assert sorted(analysis["plots"]) == [
        "char_lengths.png",
        "labels.png",
        "token_lengths.png",
        "top_tokens.png",
    ]
    for name in analysis["plots"]:
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "out" / "analysis.json").read_text())["rows"] == 20


def test_data_cli_version_versions_diff(tmp_path, monkeypatch):
    from finetune_platform.settings import get_settings

    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    runner = CliRunner()
    old = write_csv(tmp_path / "old.csv", ROWS[:10])
    new = write_csv(tmp_path / "new.csv", ROWS[:12])
    recorded = runner.invoke(app, ["data", "version", str(old)])
    assert recorded.exit_code == 0 and " recorded: " in recorded.output
    version = recorded.output.split()[0]
    assert " already recorded: " in runner.invoke(app, ["data", "version", str(old)]).output
    listed = runner.invoke(app, ["data", "versions", "--json"])
    assert [entry["version"] for entry in json.loads(listed.output)] == [version]
    diffed = runner.invoke(app, ["data", "diff", version, str(new), "--json"])
    assert diffed.exit_code == 0, diffed.output
    assert json.loads(diffed.output)["added"] == 2
    analysed = runner.invoke(
        app, ["data", "analyze", str(old), "--out", str(tmp_path / "a"), "--model", "minilm"]
    )
    assert analysed.exit_code == 0 and "vocabulary" in analysed.output
    get_settings.cache_clear()


def test_validate_with_a_training_config(tmp_path):
    result = CliRunner().invoke(app, ["data", "validate", "--config", "configs/quickstart.yaml", "--json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert [f["role"] for f in document["files"]] == ["train", "validation"]
    assert document["files"][0]["label_counts"] == {"negative": 160, "positive": 160}
    assert document["files"][0]["token_length"]["max"] <= 64
    assert Check.OVERLAP.value not in {i["code"] for f in document["files"] for i in f["issues"]}
