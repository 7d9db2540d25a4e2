"""The format registry: one table of formats and suffixes, a reader of every format on each side that reads
files (training and validation; prediction), and the API's name pattern accepting exactly what the upload
service accepts."""

from __future__ import annotations

import re

import pytest

from finetune_platform.data import loading
from finetune_platform.data.formats import (
    BY_SUFFIX,
    NAME_PATTERN,
    SUFFIXES,
    SUFFIXES_TEXT,
    DatasetFormat,
    format_of,
    suffix_of,
)
from finetune_platform.errors import ConfigError
from finetune_platform.inference import batch
from finetune_platform.services.datasets import check_name


def test_the_registry_names_each_format_by_its_suffixes():
    assert {fmt: fmt.suffixes for fmt in DatasetFormat} == {
        DatasetFormat.CSV: (".csv",),
        DatasetFormat.TSV: (".tsv", ".tab"),
        DatasetFormat.JSONL: (".jsonl", ".ndjson"),
        DatasetFormat.JSON: (".json",),
        DatasetFormat.PARQUET: (".parquet", ".pq"),
    }
    assert SUFFIXES == tuple(sorted(BY_SUFFIX)) == (
        ".csv", ".json", ".jsonl", ".ndjson", ".parquet", ".pq", ".tab", ".tsv",
    )  # fmt: skip
    assert SUFFIXES_TEXT == ".csv, .json, .jsonl, .ndjson, .parquet, .pq, .tab, .tsv"
    assert {fmt.delimiter for fmt in DatasetFormat} == {",", "\t", None}
    assert [fmt.value for fmt in DatasetFormat] == ["csv", "tsv", "jsonl", "json", "parquet"]  # stored values
    # no suffix ends another, so a name has at most one
    assert not [(a, b) for a in SUFFIXES for b in SUFFIXES if a != b and a.endswith(b)]


def test_every_format_has_a_reader_for_training_and_for_prediction():
    assert set(loading.READERS) == set(DatasetFormat)
    assert set(batch.READERS) == set(DatasetFormat)


@pytest.mark.parametrize(
    ("name", "suffix", "fmt"),
    [
        ("reviews.csv", ".csv", DatasetFormat.CSV),
        ("Reviews.TAB", ".tab", DatasetFormat.TSV),
        ("a.b.tsv", ".tsv", DatasetFormat.TSV),
        ("events.NdJson", ".ndjson", DatasetFormat.JSONL),
        ("x.jsonl", ".jsonl", DatasetFormat.JSONL),
        ("x.json", ".json", DatasetFormat.JSON),
        ("table.pq", ".pq", DatasetFormat.PARQUET),
        ("dir/table.parquet", ".parquet", DatasetFormat.PARQUET),
        (".csv", ".csv", DatasetFormat.CSV),  # only a suffix: the upload names it dataset.csv
        ("sheet.xlsx", None, None),
        ("notes.csv.txt", None, None),
        ("csv", None, None),
        ("", None, None),
    ],
)
def test_a_name_has_the_format_of_its_suffix_in_any_case(name, suffix, fmt):
    assert suffix_of(name) == suffix
    assert format_of(name) is fmt
    # the upload query's pattern (in the OpenAPI schema) and the upload service agree on every name
    assert (re.fullmatch(NAME_PATTERN, name) is not None) == (suffix is not None)
    if suffix is None:
        with pytest.raises(ConfigError, match=f"the name must end in one of {re.escape(SUFFIXES_TEXT)}$"):
            check_name(name)
    else:
        assert check_name(name)[1] == suffix


def test_the_name_pattern_needs_no_regex_flags():
    """JSON Schema readers of the OpenAPI document apply the pattern without Python's flags."""
    assert "(?" not in NAME_PATTERN
    for suffix in SUFFIXES:
        assert re.fullmatch(NAME_PATTERN, f"data{suffix.upper()}")
        assert re.fullmatch(NAME_PATTERN, f"data{suffix.title()}")


def test_an_unknown_suffix_is_refused_naming_every_registered_one(tmp_path):
    with pytest.raises(loading.DatasetFileError, match=f"supported: {re.escape(SUFFIXES_TEXT)}$"):
        loading.detect_format(tmp_path / "d.xlsx")
    data = tmp_path / "d.xlsx"
    data.write_text("text,label\nfine,1\n")
    for read in (lambda: batch.check_columns(data, "text"), lambda: batch.read_texts(data, "text", "label")):
        with pytest.raises(
            ConfigError, match=f"unknown format '.xlsx'; use one of {re.escape(SUFFIXES_TEXT)}$"
        ):
            read()
