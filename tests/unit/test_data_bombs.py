"""Decompression and structure bombs against the dataset readers: every limit of DatasetLimits refuses a
file while it is read (before decoding, for what Parquet metadata shows), crafted shapes become issues
that name the row or field instead of exceptions, and the memory-capped validation child answers a
report or a refusal while the calling process stays small."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.data.loading import DatasetLimitError, DatasetLimits, iter_chunks, json_too_deep
from finetune_platform.data.validation import (
    Check,
    ValidationOptions,
    validate_dataset,
    validate_in_child,
)
from finetune_platform.errors import ConfigError
from tests.conftest import ROOT

DEFAULTS = DatasetLimits.from_settings()
SAMPLE = ROOT / "data" / "sample" / "train.csv"


def small(**changes) -> DatasetLimits:
    values = {"max_rows": 1000, "max_decoded_bytes": 10**9, "max_text_chars": 1000, "max_json_depth": 64}
    return DatasetLimits(**{**values, **changes})


def parquet_bytes(table: pa.Table, **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", **options)
    return buffer.getvalue()


def repeated(text: str, rows: int) -> pa.DictionaryArray:
    """One dictionary entry referenced by every row: a few bytes on disk, rows x len(text) decoded."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([text]))


def labels(rows: int) -> pa.Array:
    return pa.array(["pos", "neg"] * (rows // 2) + ["pos"] * (rows % 2))


def refusal(path: Path, limits: DatasetLimits | None = None, **columns) -> str:
    with pytest.raises(DatasetLimitError) as caught:
        validate_dataset(path, ValidationOptions(limits=limits, **columns))
    return caught.value.message


HWM_SCRIPT = """
import json, sys
from pathlib import Path
from finetune_platform.data.validation import ValidationOptions, validate_dataset

def peak():
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) << 10

before = peak()
try:
    validate_dataset(Path(sys.argv[1]), ValidationOptions())
    outcome = "accepted"
except Exception as exc:
    outcome = f"{type(exc).__name__}: {exc}"
print(json.dumps({"outcome": outcome, "growth": peak() - before}))
"""


def validate_in_fresh_process(path: Path) -> dict:
    """Validation in a new interpreter, with the growth of its peak resident memory (VmHWM)."""
    done = subprocess.run(
        [sys.executable, "-c", HWM_SCRIPT, str(path)], capture_output=True, text=True, timeout=600, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- Parquet ----------------------------------------------------------------------------------------
def test_a_parquet_dictionary_bomb_is_refused_without_being_decoded(tmp_path):
    """800 bytes on disk, 1 GB of text once decoded: the counters see it through the dictionary."""
    path = tmp_path / "bomb.parquet"
    path.write_bytes(
        parquet_bytes(pa.table({"text": repeated("x" * 1_000_000, 1000), "label": labels(1000)}))
    )
    assert path.stat().st_size < 2000
    measured = validate_in_fresh_process(path)
    assert measured["outcome"] == (
        "DatasetLimitError: dataset refused: by row 537 the text and label cells decode to 537,000,000 bytes, "
        "more than the limit of 536,870,912 (MAX_DATASET_DECODED_BYTES)"
    )
    assert measured["growth"] < 100 << 20  # before the limits: +2.9 GB, and the file was accepted


def test_a_long_repeated_cell_is_refused_at_its_row(tmp_path):
    path = tmp_path / "cell.parquet"
    rows = ["short"] * 3 + ["y" * (DEFAULTS.max_text_chars + 1)]
    text = pa.DictionaryArray.from_arrays(pa.array([0, 0, 0, 1], pa.int32()), pa.array(["short", rows[-1]]))
    path.write_bytes(parquet_bytes(pa.table({"review": text, "stars": labels(4)})))
    assert refusal(path, text_column="review", label_column="stars") == (
        "dataset refused: row 4, column 'review': 2,000,001 characters, more than the limit of 2,000,000 per "
        "cell (MAX_TEXT_CHARS)"
    )


def test_a_delta_encoded_bomb_is_read_a_few_rows_at_a_time(tmp_path):
    """Delta encoding stores a repeated string as its shared prefix: the metadata says ~1 MB, and Arrow
    cannot keep it as a dictionary, so the reader takes small batches and counts them."""
    path = tmp_path / "delta.parquet"
    table = pa.table({"text": pa.array(["d" * 1_000_000] * 120), "label": labels(120)})
    path.write_bytes(parquet_bytes(table, use_dictionary=False, column_encoding={"text": "DELTA_BYTE_ARRAY"}))
    assert path.stat().st_size < 2000
    limits = small(max_text_chars=2_000_000, max_decoded_bytes=50_000_000)
    assert refusal(path, limits) == (
        "dataset refused: by row 50 the text and label cells decode to 50,000,099 bytes, more than the limit "
        "of 50,000,000 (MAX_DATASET_DECODED_BYTES)"
    )


def test_rows_and_sizes_in_the_parquet_metadata_are_refused_before_reading(tmp_path):
    rows = DEFAULTS.max_rows + 1
    many = tmp_path / "many.parquet"
    many.write_bytes(
        parquet_bytes(pa.table({"text": repeated("a review", rows), "label": repeated("pos", rows)}))
    )
    assert refusal(many) == (
        "dataset refused: the Parquet metadata declares 10,000,001 rows, more than the limit of 10,000,000 "
        "(MAX_DATASET_ROWS)"
    )
    plain = tmp_path / "plain.parquet"
    table = pa.table({"text": pa.array([f"text number {i}" for i in range(200)]), "label": labels(200)})
    plain.write_bytes(parquet_bytes(table, use_dictionary=False))
    metadata = pq.ParquetFile(plain).metadata
    declared = sum(metadata.row_group(0).column(i).total_uncompressed_size for i in range(2))
    assert refusal(plain, small(max_decoded_bytes=declared - 1)) == (
        f"dataset refused: the Parquet metadata says columns 'text' and 'label' hold {declared:,} bytes "
        f"uncompressed, more than the limit of {declared - 1:,} (MAX_DATASET_DECODED_BYTES)"
    )


@pytest.mark.parametrize(
    ("name", "table", "message"),
    [
        (
            "struct",
            pa.table({"text": pa.array([{"a": 1}, {"a": 2}]), "label": pa.array([0, 1])}),
            "column 'text' holds struct<a: int64> values; text and label columns hold strings or numbers",
        ),
        (
            "list",
            pa.table({"text": pa.array(["a", "b"]), "label": pa.array([[1], [2]])}),
            "column 'label' holds list<element: int64> values; text and label columns hold strings or numbers",
        ),
        (
            "binary",
            pa.table({"text": pa.array([b"a", b"b"]), "label": pa.array([0, 1])}),
            "column 'text' holds binary values; text and label columns hold strings or numbers",
        ),
        (
            "duplicate",
            pa.table([pa.array(["a"]), pa.array([1]), pa.array([2])], names=["text", "label", "label"]),
            "duplicate column name(s): 'label'",
        ),
        (
            "not_utf8",
            pa.table(
                {
                    "text": pa.array([b"fine", b"\xff\xfe"], pa.binary()).view(pa.string()),
                    "label": pa.array([0, 1]),
                }
            ),
            "row 2, column 'text': not UTF-8 text",
        ),
    ],
)
def test_crafted_parquet_shapes_are_file_issues_not_crashes(tmp_path, name, table, message):
    path = tmp_path / f"{name}.parquet"
    path.write_bytes(parquet_bytes(table))
    report = validate_dataset(path, ValidationOptions())
    issue = report.files[0].issues[0]
    assert (report.ok, issue.code) == (False, Check.FILE)
    assert issue.message == f"{path}: {message}"


# -- every format: rows, cells, decoded bytes ---------------------------------------------------------
def write(folder: Path, fmt: str, rows: list[tuple[str, str]]) -> Path:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["text", "label"])
    path = folder / f"data.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        path.write_text(json.dumps({"data": frame.to_dict("records")}))
    else:
        frame.to_parquet(path)
    return path


FORMATS = ["csv", "tsv", "jsonl", "json", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_cell_over_the_character_limit_names_its_row_and_column(tmp_path, fmt):
    path = write(tmp_path, fmt, [("fine", "pos"), ("é" * 101, "neg"), ("fine too", "neg")])
    assert refusal(path, small(max_text_chars=100)) == (
        "dataset refused: row 2, column 'text': 101 characters, more than the limit of 100 per cell "
        "(MAX_TEXT_CHARS)"
    )
    label = write(tmp_path, fmt, [("fine", "pos"), ("also fine", "n" * 101)])
    assert "row 2, column 'label': 101 characters" in refusal(label, small(max_text_chars=100))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])
def test_a_row_past_the_row_limit_is_refused(tmp_path, fmt):
    path = write(tmp_path, fmt, [(f"text {i}", "pos") for i in range(4)])
    assert refusal(path, small(max_rows=3)) == (
        "dataset refused: row 4 is one more than the limit of 3 rows (MAX_DATASET_ROWS)"
    )
    validate_dataset(path, ValidationOptions(limits=small(max_rows=4)))  # at the limit: read


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "json"])  # Parquet: the bombs above
def test_decoded_bytes_are_counted_as_utf8_in_every_format(tmp_path, fmt):
    """'é' is two bytes: rows 1 and 2 hold 4 + 3 and 4 + 3 bytes (text + label); the limit 13 falls in row 2."""
    path = write(tmp_path, fmt, [("éé", "pos"), ("éé", "neg"), ("x", "pos")])
    message = refusal(path, small(max_decoded_bytes=13))
    assert message.startswith("dataset refused: by row 2 the text and label cells decode to ")
    assert message.endswith(" bytes, more than the limit of 13 (MAX_DATASET_DECODED_BYTES)")
    validate_dataset(path, ValidationOptions(limits=small(max_decoded_bytes=18)))  # 7 + 7 + 4: all of it


# -- JSON and JSONL ---------------------------------------------------------------------------------
def test_deep_jsonl_and_json_are_refused_naming_the_line(tmp_path):
    """json.loads raises RecursionError near 1,000 levels: the depth is measured before parsing."""
    deep = "[" * 100_000 + "]" * 100_000
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text('{"text": "fine", "label": 1}\n' + f'{{"text": {deep}, "label": 0}}\n')
    assert refusal(jsonl) == "dataset refused: line 2: JSON nested more than 64 levels deep (MAX_JSON_DEPTH)"
    document = tmp_path / "deep.json"
    document.write_text('[{"text": "fine", "label": 1},\n' + deep + "]")
    assert (
        refusal(document) == "dataset refused: line 2: JSON nested more than 64 levels deep (MAX_JSON_DEPTH)"
    )
    for path in (jsonl, document):
        result = CliRunner().invoke(app, ["data", "validate", str(path)])
        assert result.exit_code == 1
        assert "JSON nested more than 64 levels deep (MAX_JSON_DEPTH)" in result.output


def test_depth_is_counted_outside_strings_only(tmp_path):
    tricky = 'a \\" [[[[ \\\\" {{{{ ]]]' * 100  # escaped quotes and backslashes around brackets
    path = tmp_path / "tricky.jsonl"
    path.write_text(
        json.dumps({"text": tricky, "label": 1}) + "\n" + json.dumps({"text": "b", "label": 0}) + "\n"
    )
    frame = next(iter_chunks(path, "text", "label", limits=small(max_text_chars=10_000))).frame
    assert frame["text"].tolist() == [tricky, "b"]

    def nested(levels: int) -> bytes:  # levels of arrays and objects, outermost an object
        return json.dumps(
            {"text": "x", "label": 1, "meta": json.loads("[" * (levels - 1) + "]" * (levels - 1))}
        ).encode()

    assert json_too_deep(nested(64), 64) is None
    assert json_too_deep(nested(65), 64) == 64 + len('{"text": "x", "label": 1, "meta": ') - 1
    for block in (1, 2, 7, 64):  # the scan carries depth and string state across blocks
        data = b'["' + b"[" * 200 + b'\\"]", ' + nested(65) + b"]"
        assert json_too_deep(data, 65, block=block) == json_too_deep(data, 65)
        assert json_too_deep(data, 65) is not None and json_too_deep(data, 66) is None


def test_a_nested_value_in_a_cell_is_a_row_error_naming_row_and_column(tmp_path):
    path = tmp_path / "nested.jsonl"
    records = [{"text": f"review {i}", "label": i % 2} for i in range(12)]
    records[2]["text"] = {"title": "an object"}
    records[5]["label"] = [1, 0]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    report = validate_dataset(path, ValidationOptions())
    nested = [issue for issue in report.files[0].issues if issue.code is Check.NESTED_VALUE]
    assert [(issue.message, issue.rows) for issue in nested] == [
        ("column 'text' holds a JSON object or array instead of a value in 1 row(s): rows 3", [3]),
        ("column 'label' holds a JSON object or array instead of a value in 1 row(s): rows 6", [6]),
    ]
    assert not report.ok
    dropped = validate_dataset(path, ValidationOptions(drop_invalid=True))
    assert dropped.ok and dropped.files[0].rows_valid == 10 and dropped.files[0].rows_dropped == 2


@pytest.mark.parametrize(
    ("name", "content", "code", "message"),
    [
        (
            "huge_number.jsonl",
            '{"text": "a", "label": ' + "1" * 5000 + '}\n{"text": "b", "label": 1}\n',
            Check.MALFORMED_LINE,
            "1 malformed line(s) could not be read (line 1: a number of more than 4,300 digits)",
        ),
        (
            "huge_number.json",
            '[{"text": "a", "label": ' + "1" * 5000 + "}]",
            Check.FILE,
            "not valid JSON (a number of more than 4,300 digits at line 1, column 2)",
        ),
        (
            "surrogate.jsonl",
            '{"text": "\\ud800 lone", "label": 1}\n{"text": "b", "label": 0}\n',
            Check.MALFORMED_LINE,
            "1 malformed line(s) could not be read (line 1: field 'text' is not valid Unicode (a lone surrogate))",
        ),
        (
            "huge_label.csv",
            "text,label\na," + "1" * 5000 + "\nb,1\n",
            Check.MIXED_LABEL_TYPES,
            "column 'label' mixes numbers and words (e.g. 1 and 'positive')",
        ),
        (
            "long_header.csv",
            "text,label," + "h" * 200_000 + "\na,1,2\n",
            Check.FILE,
            "the header row cannot be read (field larger than field limit (131072))",
        ),
        (
            "trailing.json",
            '{"data": [{"text": "a", "label": 1}]} []',
            Check.FILE,
            "not valid JSON (Extra data at line 1, column 39)",
        ),
        (
            "data_not_a_list.json",
            '{"data": {"text": "a"}, "other": [1]}',
            Check.FILE,
            'expected a JSON array of objects (or {"data": [...]}), got dict',
        ),
    ],
)
def test_crafted_text_shapes_are_issues_not_crashes(tmp_path, name, content, code, message):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    report = validate_dataset(path, ValidationOptions())
    issue = report.files[0].issues[0]
    assert (report.ok, issue.code) == (False, code)
    assert issue.message.removeprefix(f"{path}: ") == message


def test_a_label_column_pandas_reads_as_numbers_and_words_is_measured(tmp_path):
    """pandas may put ints and strings in one object column of a chunk; the byte count copes."""
    path = tmp_path / "mixed.csv"
    lines = [f"t{i},{i}" for i in range(300_000)] + [f"u{i},x{i}" for i in range(300_000)]
    path.write_text("text,label\n" + "\n".join(lines) + "\n")
    report = validate_dataset(path, ValidationOptions(chunk_rows=400_000))
    assert [issue.code for issue in report.files[0].issues][:1] == [Check.MIXED_LABEL_TYPES]


def test_the_same_column_for_text_and_label_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="the text column and the label column are both 'label'"):
        ValidationOptions(text_column="label", label_column="label")


def test_json_records_stream_with_the_same_rows_as_before(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 3, "extra": {"nested": [i]}} for i in range(2500)]
    for document in (rows, {"meta": {"a": [1, 2]}, "data": rows, "after": "x"}):
        path = tmp_path / "records.json"
        path.write_text(json.dumps(document, indent=1))
        chunks = list(iter_chunks(path, "text", "label", chunk_rows=1000))
        assert [len(chunk.frame) for chunk in chunks] == [1000, 1000, 500]
        assert chunks[2].frame["row"].tolist()[:2] == [2001, 2002]
        assert chunks[0].frame["label"].tolist()[:4] == ["0", "1", "2", "0"]


# -- the memory-capped child --------------------------------------------------------------------------
def test_the_child_gives_the_report_validation_gives_in_process():
    options = ValidationOptions()
    assert validate_in_child(SAMPLE, options, 2048) == validate_dataset(SAMPLE.resolve(), options).to_json()


def test_the_child_answers_refusals_and_config_errors_as_the_library_raises_them(tmp_path):
    path = write(tmp_path, "csv", [("fine", "pos"), ("x" * 101, "neg")])
    with pytest.raises(DatasetLimitError) as caught:
        validate_in_child(path, ValidationOptions(limits=small(max_text_chars=100)), 512)
    assert caught.value.message == refusal(path, small(max_text_chars=100))
    assert caught.value.setting == "MAX_TEXT_CHARS"


BUILD_ONE_CELL = """
import sys
import pyarrow as pa, pyarrow.parquet as pq
cell = "z" * int(sys.argv[2])
text = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array([cell]))
pq.write_table(pa.table({"text": text, "label": ["a", "b"]}), sys.argv[1], compression="zstd")
"""


def test_a_file_that_passes_the_counters_but_not_the_memory_cap_only_costs_the_child(tmp_path):
    """One 100-million-character cell, with the counters opened up: reading it needs several copies of
    it, more than 128 MiB; the child stops, this process does not grow by the cell."""
    path = tmp_path / "one_cell.parquet"
    subprocess.run(
        [sys.executable, "-c", BUILD_ONE_CELL, str(path), str(100_000_000)], check=True, timeout=300
    )
    limits = DatasetLimits(max_rows=10, max_decoded_bytes=10**10, max_text_chars=10**9, max_json_depth=64)
    before = peak_memory()
    with pytest.raises(DatasetLimitError) as caught:
        validate_in_child(path, ValidationOptions(limits=limits), 128)
    assert caught.value.message == (
        "dataset refused: validation needed more memory than its limit of 128 MiB (VALIDATION_MEMORY_MB)"
    )
    assert peak_memory() - before < 50 << 20


def peak_memory() -> int:
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) << 10


def test_the_settings_carry_the_documented_defaults():
    from finetune_platform.settings import Settings

    defaults = {name: field.default for name, field in Settings.model_fields.items()}
    assert DatasetLimits.from_settings(Settings.model_construct(**defaults)) == DatasetLimits(
        max_rows=10_000_000, max_decoded_bytes=512 << 20, max_text_chars=2_000_000, max_json_depth=64
    )
    assert defaults["VALIDATION_MEMORY_MB"] == 2048
