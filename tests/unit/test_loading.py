import json

import pandas as pd
import pytest

from finetune_platform.data.loading import LabelMap, detect_format, load_table
from finetune_platform.data.splits import load_splits
from finetune_platform.errors import DatasetError
from tests.conftest import write_csv


def test_every_format_loads_the_same_table(tmp_path):
    rows = [("good movie, really", 1), ('he said "meh"', 0)]
    frame = pd.DataFrame(rows, columns=["text", "label"])
    write_csv(tmp_path / "d.csv", rows)
    (tmp_path / "d.tsv").write_text('text\tlabel\ngood movie, really\t1\nhe said "meh"\t0\n')
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in rows) + "\n")
    (tmp_path / "d.json").write_text(json.dumps([{"text": t, "label": y} for t, y in rows]))
    frame.to_parquet(tmp_path / "d.parquet")
    for suffix in ("csv", "tsv", "jsonl", "json", "parquet"):
        table = load_table(tmp_path / f"d.{suffix}", "text", "label")
        assert table["text"].tolist() == ["good movie, really", 'he said "meh"'], suffix
        assert table["label"].tolist() == [1, 0], suffix


def test_column_mapping_and_missing_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("x", "pos")], header=("sentence", "sentiment"))
    assert load_table(path, "sentence", "sentiment")["label"].tolist() == ["pos"]
    with pytest.raises(DatasetError) as caught:
        load_table(path, "text", "label")
    assert str(caught.value) == (
        f"{path}: missing column(s) 'text', 'label'; available columns: sentence, "
        "sentiment (set data.text_column / data.label_column)"
    )


def test_empty_text_and_null_labels_name_their_rows(tmp_path):
    path = write_csv(tmp_path / "d.csv", [("a", 1), ("  ", 0), ("b", ""), ("", 1)])
    with pytest.raises(DatasetError, match=r"column 'label' is empty in rows 3$"):
        load_table(path, "text", "label")
    path = write_csv(tmp_path / "e.csv", [("a", 1), ("  ", 0), ("b", 1), ("", 1)])
    with pytest.raises(DatasetError, match=r"column 'text' is empty in rows 2, 4$"):
        load_table(path, "text", "label")


def test_malformed_jsonl_and_non_utf8(tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DatasetError, match=r"line 2 is not valid JSON"):
        load_table(bad, "text", "label")
    latin = tmp_path / "d.csv"
    latin.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"not UTF-8 text \(byte offset"):
        load_table(latin, "text", "label")


def test_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match=r"unknown dataset format '\.xlsx'"):
        detect_format(tmp_path / "d.xlsx")


def test_label_maps():
    assert LabelMap.build(pd.Series(["pos", "neg", "pos"])).names == ("neg", "pos")
    assert LabelMap.build(pd.Series([2, 0, 1])).names == ("0", "1", "2")
    named = LabelMap.build(pd.Series([1, 0]), ["negative", "positive"])
    assert named.names == ("negative", "positive") and named.raw_values == (0, 1)
    assert LabelMap.from_json(named.to_json()) == named
    with pytest.raises(DatasetError, match=r"only one label \('pos'\)"):
        LabelMap.build(pd.Series(["pos", "pos"]))
    with pytest.raises(DatasetError, match=r"label 5 has no name: data.label_names lists 2 names"):
        LabelMap.build(pd.Series([0, 5]), ["a", "b"])


def test_validation_labels_must_exist_in_training(tmp_path):
    train = write_csv(tmp_path / "t.csv", [("a", "pos"), ("b", "neg")])
    validation = write_csv(tmp_path / "v.csv", [("c", "pos"), ("d", "meh"), ("e", "meh")])
    with pytest.raises(DatasetError) as caught:
        load_splits(train, "text", "label", validation_file=validation)
    assert (
        str(caught.value)
        == f"{validation}: label 'meh' in rows 2, 3 is not one of the training labels ['neg', 'pos']"
    )


def test_stratified_split_and_row_limits(tmp_path):
    rows = [(f"text {i}", "pos" if i % 4 else "neg") for i in range(100)]
    train = write_csv(tmp_path / "t.csv", rows)
    splits = load_splits(train, "text", "label", validation_split=0.2, seed=1)
    assert (len(splits.train), len(splits.validation)) == (80, 20)
    assert splits.validation["label"].value_counts().to_dict() == {"pos": 15, "neg": 5}
    assert set(splits.train["text"]).isdisjoint(splits.validation["text"])
    limited = load_splits(train, "text", "label", validation_split=0.2, max_train_rows=40, seed=1)
    assert (len(limited.train), len(limited.validation)) == (32, 8)
