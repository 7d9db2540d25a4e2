"""Edge cases found in review: label parsing, headers, numeric-looking texts, row limits, retention, races."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from finetune_platform.data.loading import normalise_label
from finetune_platform.data.splits import load_splits
from finetune_platform.data.validation import ValidationOptions, validate_dataset, validate_file
from finetune_platform.data.versioning import DatasetVersion, VersionIndex
from finetune_platform.errors import ConfigError, DatasetError
from finetune_platform.training.checkpoints import CheckpointInfo, select_retained
from tests.conftest import write_csv


@pytest.mark.parametrize(("raw", "expected"), [("--1", "--1"), ("²", "²"), ("①", "①"), ("+4", 4), ("-3", -3)])
def test_only_ascii_integers_become_integers(raw, expected):
    assert normalise_label(raw) == expected


def test_spaces_after_header_commas(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text, label\ngood,1\nbad,0\n")
    report = validate_file(path, ValidationOptions())
    assert report.rows_valid == 2 and report.label_counts == {"0": 1, "1": 1}


def test_numeric_looking_texts_stay_as_written(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("007", 1), ("7", 0), ("1.50", 1), ("1.5", 0)])
    report = validate_file(path, ValidationOptions(collect_rows=True))
    assert [issue.code.value for issue in report.issues] == ["rare_class"]
    assert report.rows["text"].tolist() == ["007", "7", "1.50", "1.5"]


def test_row_limits_that_lose_a_class_are_refused(tmp_path):
    train = write_csv(tmp_path / "t.csv", [("a", "pos")] * 3 + [("b", "neg")] * 3)
    validation = write_csv(tmp_path / "v.csv", [("c", "pos"), ("d", "neg")])
    with pytest.raises(DatasetError, match=r"the first 2 training rows hold only one label \('pos'\)"):
        load_splits(train, "text", "label", validation_file=validation, max_train_rows=2)


def test_names_and_indices_are_the_same_declared_label(tmp_path):
    train = write_csv(tmp_path / "t.csv", [(f"t{i}", i % 2) for i in range(10)])
    validation = write_csv(tmp_path / "v.csv", [("good", "positive"), ("bad", "negative")])
    splits = load_splits(
        train, "text", "label", validation_file=validation, label_names=["negative", "positive"]
    )
    assert splits.validation["label_id"].tolist() == [1, 0]
    assert splits.report.file("validation").label_counts == {"negative": 1, "positive": 1}


def test_label_counts_follow_dropped_validation_rows(tmp_path):
    train = write_csv(tmp_path / "t.csv", [(f"t{i}", i % 2) for i in range(10)])
    validation = write_csv(tmp_path / "v.csv", [("a", 0), ("b", 1), ("c", 2), ("d", 1)])
    report = validate_dataset(train, ValidationOptions(drop_invalid=True), validation)
    assert report.file("validation").label_counts == {"0": 1, "1": 2}
    assert report.file("validation").rows_dropped == 1


def test_retention_ignores_nan_metrics():
    infos = [CheckpointInfo(Path("c-1"), 1, None, float("nan")), CheckpointInfo(Path("c-2"), 2, None, 0.5)]
    assert {role: i.step for role, i in select_retained(infos, True, 0.01).items()} == {
        "last": 2,
        "best": 2,
        "fastest": 2,
    }
    assert {role: i.step for role, i in select_retained(infos[:1], True, 0.01).items()} == {"last": 1}


def test_concurrent_version_records_are_all_kept(tmp_path):
    from finetune_platform.settings import Settings

    index = VersionIndex(Settings(FINETUNE_HOME=tmp_path))

    def record(i: int) -> None:
        index.record(
            DatasetVersion(
                f"{i:012x}",
                f"{i:064x}",
                f"/data/{i}.csv",
                "csv",
                i,
                {},
                "text",
                "label",
                "2026-01-01T00:00:00",
            )
        )

    threads = [threading.Thread(target=record, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(v.rows for v in index.all()) == list(range(12))


def test_recommend_rejects_bad_vectors(tmp_path):
    from finetune_platform.tracking.model_cards import CardStore, ModelCard
    from finetune_platform.tracking.search import recommend

    store = CardStore(tmp_path)
    store.save(
        ModelCard(
            "m",
            1,
            "minilm",
            "English",
            "t",
            "",
            {},
            [],
            None,
            None,
            None,
            "Staging",
            "",
            "x",
            embedding=[1.0] + [0.0] * 383,
        )
    )
    for bad, message in (
        (["a"] * 384, "vector: expected a list of numbers"),
        ([float("nan")] * 384, "vector: every number must be finite"),
        ([0.0] * 384, "vector: a zero vector has no direction"),
    ):
        with pytest.raises(ConfigError, match=message):
            recommend(store, np.asarray(bad, dtype=object) if isinstance(bad[0], str) else bad)
