"""The data audit on datasets the tests write themselves (tests/audit_data.py): planted label flips, near-duplicates,
train/validation leaks, a confusable label pair and outliers are found, and nothing is found that was not planted."""

from __future__ import annotations

import csv
import json
import random

import pytest
from PIL import Image

from finetune_platform.data.audit import (
    AUDIT_FILE,
    REPORT_FILE,
    AuditOptions,
    audit_files,
    parse_drop,
    read_audit,
    rows_to_drop,
)
from finetune_platform.data.validation import DatasetValidationError, ValidationOptions
from finetune_platform.errors import ConfigError, DatasetError
from tests.audit_data import TOPICS, planted_dataset, sentence, write

pytestmark = pytest.mark.slow  # MiniLM embeds every row


def found_groups(document: dict) -> list[set[tuple[str, int]]]:
    return [
        {(row["file"], row["row"]) for row in group["rows"]}
        for group in document["near_duplicates"]["groups"]
    ]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    data = planted_dataset(folder, seed=7)
    report = audit_files(data.train, ValidationOptions(), data.validation)
    return data, report, report.to_json()


@pytest.mark.parametrize("seed", [7, pytest.param(11, marks=pytest.mark.extended)])
def test_flipped_labels_rank_in_the_top_two_k(tmp_path, seed):
    data = planted_dataset(tmp_path, seed=seed, duplicates=0, leaks=0, outliers=False)
    document = audit_files(data.train, ValidationOptions(), data.validation).to_json()
    ranked = [row["row"] for row in document["label_errors"]["rows"] if row["file"] == "train"]
    k = len(data.flipped)
    assert data.flipped <= set(ranked[: 2 * k])
    assert document["model"]["folds"] == 5 and document["model"]["oof_accuracy"] > 0.9
    # cleanlab's estimate: about the planted noise (8 of 200 train rows + 40 validation rows), no more than 2k
    assert 1 <= document["label_errors"]["count"] <= 2 * k
    top = document["label_errors"]["rows"][0]
    assert top["row"] in data.flipped and top["flagged"] is True
    assert top["suggested"] != top["label"] and 0.5 < top["score"] <= 1.0


def test_planted_near_duplicates_and_leaks_are_found_and_nothing_else(planted):
    data, _, document = planted
    assert sorted(map(sorted, found_groups(document))) == sorted(map(sorted, data.groups))
    leaks = [group for group in document["near_duplicates"]["groups"] if group["cross_split"]]
    assert sorted(map(sorted, [{(r["file"], r["row"]) for r in g["rows"]} for g in leaks])) == sorted(
        map(sorted, data.leaks)
    )
    assert document["near_duplicates"]["cross_split_groups"] == len(data.leaks) == 2
    assert [g["id"] for g in document["near_duplicates"]["groups"][:2]] == [1, 2]  # leaks are listed first
    assert all(g["cross_split"] for g in document["near_duplicates"]["groups"][:2])
    assert document["near_duplicates"]["conflicting_groups"] == 0


def test_distinct_texts_form_no_groups(tmp_path):
    data = planted_dataset(tmp_path, duplicates=0, leaks=0, outliers=False, flips=0, per_label=60, seed=3)
    document = audit_files(data.train, ValidationOptions(), data.validation).to_json()
    assert document["near_duplicates"]["groups"] == []
    assert document["summary"]["near_duplicate_groups"] == 0


def test_a_duplicate_with_another_label_is_flagged_as_conflicting(tmp_path):
    rng = random.Random(5)
    rows = [(sentence(rng, words.split()), label) for label, words in TOPICS.items() for _ in range(20)]
    rows.append((rows[0][0] + ".", "finance" if rows[0][1] != "finance" else "sports"))
    train = write(tmp_path / "train.csv", rows)
    document = audit_files(train, ValidationOptions()).to_json()
    (group,) = document["near_duplicates"]["groups"]
    assert {(r["file"], r["row"]) for r in group["rows"]} == {("train", 1), ("train", len(rows))}
    assert group["conflicting"] is True and group["cross_split"] is False
    assert document["summary"]["conflicting_groups"] == 1


def test_long_near_copies_are_matched_by_minhash(tmp_path):
    rng = random.Random(9)
    rows = [(sentence(rng, words.split()), label) for label, words in TOPICS.items() for _ in range(15)]
    long_text = " ".join(sentence(rng, TOPICS["finance"].split(), 14) for _ in range(8))
    assert len(long_text) > 400
    rows += [(long_text, "finance"), (long_text.replace("market", "markets", 1) + " indeed", "finance")]
    train = write(tmp_path / "train.csv", rows)
    document = audit_files(train, ValidationOptions()).to_json()
    (group,) = document["near_duplicates"]["groups"]
    assert {r["row"] for r in group["rows"]} == {len(rows) - 1, len(rows)}
    assert "minhash" in group["method"]
    assert document["near_duplicates"]["minhash_rows"] == 2


def test_a_confusable_label_pair_is_reported_and_no_other(tmp_path):
    data = planted_dataset(tmp_path, confusable=True, flips=0, duplicates=0, leaks=0, outliers=False)
    document = audit_files(data.train, ValidationOptions(), data.validation).to_json()
    (pair,) = document["class_overlap"]
    assert pair["labels"] == ["football", "soccer"]
    assert pair["ratio"] >= 3.0 and pair["confused"] >= 5
    assert pair["suggestion"].startswith(
        f"'football' and 'soccer' are confused {pair['confused']} times out of fold"
    )
    assert "merge them, or make the guideline that separates them clearer" in pair["suggestion"]


def test_outliers_are_the_planted_rows(planted):
    data, _, document = planted
    found = {row["row"]: row["reason"] for row in document["outliers"]["rows"]}
    assert set(found) == data.outliers
    assert found[min(data.outliers)] == "almost no letters or digits"  # "!!! ???"
    assert found[max(data.outliers)].startswith("far from every class (z ")


def test_the_audit_writes_its_json_report_and_plots(planted, tmp_path):
    _, report, document = planted
    written = report.write(tmp_path / "audit")
    assert sorted(path.name for path in written.values()) == sorted(
        [AUDIT_FILE, REPORT_FILE, "label_quality.png", "class_overlap.png", "outliers.png"]
    )
    assert read_audit(tmp_path / "audit" / AUDIT_FILE) == json.loads(json.dumps(document))
    text = (tmp_path / "audit" / REPORT_FILE).read_text()
    assert text.startswith("# Data audit (single_label)\n")
    for heading in ("## Summary", "## Likely label errors (most likely first)", "## Near-duplicate groups"):
        assert heading in text
    assert "- near-duplicate groups: 5 (2 across train and validation, 0 with conflicting labels)" in text
    with Image.open(tmp_path / "audit" / "class_overlap.png") as image:
        assert image.format == "PNG" and image.width > 100
    assert (
        document["files"]["train"]["rows_audited"] == 205
        and document["files"]["validation"]["rows_audited"] == 42
    )


def test_regression_files_get_near_duplicates_but_no_label_errors(tmp_path):
    rng = random.Random(2)
    rows = [
        (sentence(rng, words.split()), f"{rng.uniform(0, 5):.2f}")
        for words in TOPICS.values()
        for _ in range(10)
    ]
    rows.append((rows[3][0].upper(), "1.5"))
    train = write(tmp_path / "train.csv", rows)
    document = audit_files(train, ValidationOptions(task="regression")).to_json()
    assert document["label_errors"]["skipped"] == "regression targets have no classes to mislabel"
    assert document["summary"]["estimated_label_noise"] is None and document["class_overlap"] == []
    assert found_groups(document) == [{("train", 4), ("train", len(rows))}]


def test_multi_label_rows_with_a_wrong_label_set_rank_first(tmp_path):
    rng = random.Random(4)
    rows = []
    for label, words in TOPICS.items():
        rows += [(sentence(rng, words.split()), json.dumps([label])) for _ in range(30)]
    rng.shuffle(rows)
    rows[10] = (rows[10][0], json.dumps(["weather", "cooking"] if "sports" in rows[10][1] else ["sports"]))
    train = write(tmp_path / "train.csv", rows)
    document = audit_files(train, ValidationOptions(task="multi_label")).to_json()
    assert document["task"] == "multi_label"
    assert document["label_errors"]["rows"][0]["row"] == 11
    assert document["label_errors"]["rows"][0]["flagged"] is True


def test_a_file_validation_refuses_is_not_audited(tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood film,1\nbad film,negative\n")
    with pytest.raises(DatasetValidationError, match="mixes numbers and words"):
        audit_files(train, ValidationOptions())
    with pytest.raises(DatasetError, match="dataset file not found"):
        audit_files(tmp_path / "missing.csv", ValidationOptions())


def test_audit_options_are_checked():
    with pytest.raises(ConfigError, match=r"^audit option folds: 1 is not an integer from 2 to 20$"):
        AuditOptions(folds=1)
    with pytest.raises(
        ConfigError, match=r"^audit option near_duplicate_cosine: 0.2 is not a number from 0.5 to 1$"
    ):
        AuditOptions(near_duplicate_cosine=0.2)


# -- what data fix drops -----------------------------------------------------------------------------------------
def test_drop_specs_are_parsed_and_bad_ones_named():
    assert parse_drop("label_errors:0.9,near_duplicates") == {"label_errors": 0.9, "near_duplicates": None}
    assert parse_drop(" leaks , outliers:6 ") == {"leaks": None, "outliers": 6.0}
    for spec, message in [
        ("typos", "--drop: 'typos' is not one of label_errors, near_duplicates, outliers, leaks"),
        ("label_errors:high", "--drop: 'label_errors:high': 'high' is not a number"),
        ("label_errors:1.5", "--drop: 'label_errors:1.5': the score must be from 0 to 1"),
        ("leaks:0.5", "--drop: leaks takes no score ('leaks:0.5'); only label_errors and outliers do"),
        ("", "--drop: name at least one of label_errors, near_duplicates, outliers, leaks"),
    ]:
        with pytest.raises(ConfigError) as refused:
            parse_drop(spec)
        assert str(refused.value) == message


def test_rows_to_drop_names_each_row_and_why(planted):
    data, _, document = planted
    flagged = {r["row"] for r in document["label_errors"]["rows"] if r["flagged"] and r["file"] == "train"}
    dropped = rows_to_drop(document, parse_drop("label_errors"))
    assert set(dropped) == flagged and all(why.startswith("label_error: given ") for why in dropped.values())
    by_score = rows_to_drop(document, parse_drop("label_errors:0.9"))
    assert set(by_score) == {
        r["row"] for r in document["label_errors"]["rows"] if r["score"] >= 0.9 and r["file"] == "train"
    }
    duplicates = rows_to_drop(document, parse_drop("near_duplicates"))
    # one row of each train-only group goes; a leak's train copy goes and its validation row stays
    expected = {max(row for _, row in group) for group in data.groups if group not in data.leaks}
    expected |= {row for group in data.leaks for file, row in group if file == "train"}
    assert set(duplicates) == expected
    leak_rows = rows_to_drop(document, parse_drop("leaks"))
    assert set(leak_rows) == {row for group in data.leaks for file, row in group if file == "train"}
    assert all(
        why.startswith("leak: near-duplicate of a validation row (group ") for why in leak_rows.values()
    )
    assert rows_to_drop(document, parse_drop("leaks"), role="validation") == {}
    assert set(rows_to_drop(document, parse_drop("outliers"))) == data.outliers


def test_a_truncated_ranking_refuses_a_score_below_what_it_lists(planted):
    _, _, document = planted
    document = json.loads(json.dumps(document))
    document["label_errors"].update(listed=2, ranked=50, lowest_listed_score=0.95)
    with pytest.raises(DatasetError) as refused:
        rows_to_drop(document, parse_drop("label_errors:0.5"))
    assert str(refused.value) == (
        "--drop label_errors:0.5: the audit lists the 2 most likely of 50 ranked rows (scores down to 0.950); "
        "give a score of at least 0.950"
    )


def test_read_audit_refuses_what_is_not_an_audit(tmp_path):
    other = tmp_path / "audit.json"
    other.write_text(json.dumps({"files": []}))
    with pytest.raises(DatasetError, match=r"not an audit\.json of version 1"):
        read_audit(other)
    with pytest.raises(DatasetError, match="audit file not found"):
        read_audit(tmp_path / "none.json")


@pytest.mark.extended  # pair rows are read as validation reads them (tested there); this embeds 48 more rows
def test_pair_rows_are_embedded_with_their_second_text(tmp_path):
    rng = random.Random(6)
    with (tmp_path / "pairs.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["premise", "hypothesis", "label"])
        for label, words in TOPICS.items():
            for _ in range(12):
                writer.writerow([sentence(rng, words.split()), sentence(rng, words.split()), label])
    options = ValidationOptions(text_column="premise", text_pair_column="hypothesis")
    document = audit_files(tmp_path / "pairs.csv", options).to_json()
    assert document["files"]["train"]["rows_audited"] == 48
    first = document["outliers"]["rows"] or document["label_errors"]["rows"]
    assert not first or "text_pair" in first[0]


def test_max_rows_is_bounded_and_a_larger_table_is_refused_naming_the_files():
    from finetune_platform.data.audit import check_audit_rows

    for bad in (0, 10_000_001):
        with pytest.raises(
            ConfigError, match=f"audit option max_rows: {bad} is not an integer from 1 to 10,000,000"
        ):
            AuditOptions(max_rows=bad)
    check_audit_rows(5, 5, "a.csv")  # at the limit: audited
    with pytest.raises(DatasetError) as refused:
        check_audit_rows(250_001, 250_000, "a.csv and b.csv")
    assert str(refused.value).startswith(
        "a.csv and b.csv: 250,001 rows to audit, more than the 250,000 one audit takes (AUDIT_MAX_ROWS): "
    )
