import json

import pandas as pd
import pytest

from finetune_platform.data.loading import (
    DatasetFileError,
    LabelMap,
    detect_format,
    iter_chunks,
    normalise_label,
)
from finetune_platform.data.splits import load_splits
from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.errors import DatasetError
from tests.conftest import write_csv


def read_all(path, text="text", label="label", chunk_rows=100_000):
    chunks = list(iter_chunks(path, text, label, chunk_rows))
    return pd.concat([c.frame for c in chunks], ignore_index=True), [m for c in chunks for m in c.malformed]


def test_every_format_yields_the_same_rows(tmp_path):
    rows = [("good movie, really", 1), ('he said "meh"', 0)]
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.tsv").write_text('text\tlabel\ngood movie, really\t1\nhe said "meh"\t0\n')
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"text": t, "label": y} for t, y in rows]}))
    pd.DataFrame(rows, columns=["text", "label"]).to_parquet(tmp_path / "d.parquet")
    for suffix in ("csv", "tsv", "jsonl", "json", "parquet"):
        frame, malformed = read_all(tmp_path / f"d.{suffix}")
        assert frame["row"].tolist() == [1, 2], suffix
        assert frame["text"].tolist() == ["good movie, really", 'he said "meh"'], suffix
        assert [normalise_label(v) for v in frame["label"]] == [1, 0], suffix
        assert malformed == [], suffix


def test_large_files_stream_in_chunks_with_continuous_row_numbers(tmp_path):
    path = write_csv(tmp_path / "big.csv", [(f"text {i}", i % 2) for i in range(2500)])
    chunks = list(iter_chunks(path, "text", "label", chunk_rows=1000))
    assert [len(c.frame) for c in chunks] == [1000, 1000, 500]
    assert chunks[2].frame["row"].tolist()[:2] == [2001, 2002]
    jsonl = tmp_path / "big.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(2500)))
    assert [len(c.frame) for c in iter_chunks(jsonl, "text", "label", chunk_rows=1000)] == [1000, 1000, 500]


def test_a_skipped_line_keeps_later_row_numbers(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,0,extra\nc,0\n")
    frame, malformed = read_all(path)
    assert frame["row"].tolist() == [1, 3]
    assert [(m.line, m.reason) for m in malformed] == [(3, "expected 2 fields, saw 3")]


def test_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufefftext,label\ncafé,1\n".encode())
    frame, _ = read_all(path)
    assert frame["text"].tolist() == ["café"]


def test_unknown_format():
    with pytest.raises(DatasetFileError, match=r"unknown dataset format '\.xlsx'"):
        detect_format("d.xlsx")


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", 1), (" 2 ", 2), ("1.0", 1), ("pos", "pos"), ("1.5", "1.5"), (3, 3), (True, 1)]
)
def test_label_normalisation(raw, expected):
    assert normalise_label(raw) == expected


def test_label_maps():
    assert LabelMap.build(["pos", "neg", "pos"]).names == ("neg", "pos")
    assert LabelMap.build([2, 0, 1]).names == ("0", "1", "2")
    named = LabelMap.build([1, 0], ["negative", "positive"])
    assert named.names == ("negative", "positive") and named.raw_values == (0, 1)
    assert LabelMap.from_json(named.to_json()) == named
    with pytest.raises(DatasetError, match=r"label 5 has no name: data.label_names lists 2 names"):
        LabelMap.build([0, 5], ["a", "b"])


def test_splits_validate_first_and_name_the_rows(tmp_path):
    train = write_csv(tmp_path / "t.csv", [("a", "pos"), ("b", "neg")] * 5)
    validation = write_csv(tmp_path / "v.csv", [("c", "pos"), ("d", "meh"), ("e", "meh")])
    with pytest.raises(DatasetValidationError) as caught:
        load_splits(train, "text", "label", validation_file=validation)
    assert str(caught.value).startswith(
        "invalid dataset: 2 validation row(s) have labels never seen in training ('meh'): rows 2, 3"
    )
    dropped = load_splits(train, "text", "label", validation_file=validation, drop_invalid=True)
    assert dropped.validation["text"].tolist() == ["c"]
    assert dropped.report.file("validation").rows_dropped == 2


def test_stratified_split_and_row_limits(tmp_path):
    rows = [(f"text {i}", "pos" if i % 4 else "neg") for i in range(100)]
    train = write_csv(tmp_path / "t.csv", rows)
    splits = load_splits(train, "text", "label", validation_split=0.2, seed=1)
    assert (len(splits.train), len(splits.validation)) == (80, 20)
    assert splits.validation["label"].value_counts().to_dict() == {"pos": 15, "neg": 5}
    assert set(splits.train["text"]).isdisjoint(splits.validation["text"])
    limited = load_splits(train, "text", "label", validation_split=0.2, max_train_rows=40, seed=1)
    assert (len(limited.train), len(limited.validation)) == (32, 8)
