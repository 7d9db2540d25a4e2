"""Read labelled text datasets (CSV, TSV, JSONL, JSON, Parquet) in chunks, with precise errors.

Every reader yields ``Chunk`` objects: a frame with ``row`` (1-based data row number), ``text`` and
``label`` columns, plus the malformed lines it had to skip. Problems that make the whole file unreadable
(not UTF-8, empty, no header, a missing or duplicated column, a quote that never closes) raise
``DatasetFileError`` with a message that names the line, byte offset or column.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_platform.errors import DatasetError

DEFAULT_CHUNK_ROWS = 100_000
MAX_ROWS_NAMED = 10
_BOM = codecs.BOM_UTF8


class DatasetFormat(StrEnum):
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"


_SUFFIXES = {
    ".csv": DatasetFormat.CSV,
    ".tsv": DatasetFormat.TSV,
    ".tab": DatasetFormat.TSV,
    ".jsonl": DatasetFormat.JSONL,
    ".ndjson": DatasetFormat.JSONL,
    ".json": DatasetFormat.JSON,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
}


class DatasetFileError(DatasetError):
    """The file as a whole cannot be read as a dataset; ``code`` says why (for reports and tests)."""

    def __init__(self, message: str, reason: str, fix: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.fix = fix


@dataclass(frozen=True)
class MalformedLine:
    line: int
    reason: str


@dataclass
class Chunk:
    frame: pd.DataFrame  # columns: row, text, label (text/label may be missing -> NaN)
    malformed: list[MalformedLine] = field(default_factory=list)


def detect_format(path: Path) -> DatasetFormat:
    try:
        return _SUFFIXES[Path(path).suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(_SUFFIXES))
        raise DatasetFileError(
            f"{path}: unknown dataset format {Path(path).suffix or '(no extension)'!r}; supported: {supported}",
            "unknown_format",
            "rename the file with the extension of its format",
        ) from None


def resolve_dataset_path(name: str | Path, root: Path | None = None) -> Path:
    """A dataset path; with ``root``, one that must stay inside it (uploads, shared dataset folders)."""
    path = Path(name)
    if root is None:
        return path
    root = Path(root).resolve()
    resolved = (root / path).resolve()
    if not resolved.is_relative_to(root):
        raise DatasetFileError(
            f"dataset path {str(name)!r} escapes the dataset directory {root}",
            "path_outside_root",
            "name a file inside the dataset directory, without '..' or an absolute path",
        )
    return resolved


def check_utf8(path: Path, block_size: int = 1 << 20) -> bool:
    """Strict UTF-8 check of the whole file in blocks; returns whether it starts with a BOM.

    The error names the line and the byte offset of the first invalid byte.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0
    newlines = 0
    has_bom = False
    with Path(path).open("rb") as handle:
        while block := handle.read(block_size):
            if offset == 0:
                has_bom = block.startswith(_BOM)
            try:
                decoder.decode(block, final=False)
            except UnicodeDecodeError as exc:
                bad = offset + exc.start
                line = newlines + block.count(b"\n", 0, exc.start) + 1
                raise DatasetFileError(
                    f"{path}: not UTF-8: invalid byte 0x{block[exc.start]:02x} at byte offset {bad} (line {line})",
                    "not_utf8",
                    "re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                ) from None
            newlines += block.count(b"\n")
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DatasetFileError(
                f"{path}: not UTF-8: the file ends inside a multi-byte character (byte offset {offset})",
                "not_utf8",
                "re-save the file as UTF-8",
            ) from None
    if offset == 0:
        raise DatasetFileError(f"{path}: the file is empty", "empty_file", "export the data again")
    return has_bom


def _missing_columns(path: Path, columns: list[str], wanted: tuple[str, str], mapping_hint: str) -> None:
    missing = [name for name in wanted if name not in columns]
    if missing:
        available = ", ".join(map(str, columns)) or "none"
        raise DatasetFileError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; available columns: {available}",
            "missing_column",
            mapping_hint,
        )


_MAPPING_HINT = (
    "set the column names (data.text_column / data.label_column, or --text-column / --label-column)"
)
_SKIPPED = re.compile(r"Skipping line (\d+): (.+)")


def _read_delimited(
    path: Path, text_column: str, label_column: str, chunk_rows: int, sep: str
) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    encoding = "utf-8-sig" if has_bom else "utf-8"
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    with Path(path).open(encoding=encoding, newline="") as handle:
        header_line = handle.readline()
    raw_header = next(csv.reader([header_line], delimiter=sep, quoting=quoting), [])
    header = [name.strip() for name in raw_header]
    if not any(header):
        raise DatasetFileError(
            f"{path}: no header row (the first line is blank)",
            "no_header",
            "put the column names on the first line",
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DatasetFileError(
            f"{path}: duplicate column name(s) in the header: {', '.join(map(repr, duplicates))}",
            "duplicate_column",
            "give every column a unique name",
        )
    _missing_columns(path, header, (text_column, label_column), _MAPPING_HINT)
    reader = pd.read_csv(
        path,
        sep=sep,
        quoting=quoting,
        encoding=encoding,
        keep_default_na=False,  # types are inferred (fast); "NA" or "null" stay texts, only "" is missing
        na_values=[""],
        on_bad_lines="warn",  # every column is read: with usecols pandas would not notice ragged rows
        # Texts stay exactly as written ("007", "1.50"); other columns are inferred, which is much faster.
        dtype={column: "str" for column in raw_header if column.strip() == text_column},
        chunksize=chunk_rows,
        skipinitialspace=False,
    )
    next_row = 1
    saw_rows = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            for frame in reader:
                malformed = _drain_bad_lines(caught)
                saw_rows = saw_rows or len(frame) > 0 or bool(malformed)
                # A skipped line still occupies its row number, so later rows keep the numbers a person
                # counts in the file (data rows from 1 after the header).
                skipped = [bad.line - 1 for bad in malformed]
                numbers = np.arange(next_row, next_row + len(frame) + len(skipped))
                numbers = numbers[~np.isin(numbers, skipped)][: len(frame)]
                frame.columns = [str(name).strip() for name in frame.columns]  # "text, label" headers
                frame = pd.DataFrame(
                    {
                        "row": numbers,
                        "text": frame[text_column].to_numpy(),
                        "label": frame[label_column].to_numpy(),
                    }
                )
                next_row = int(numbers[-1]) + 1 if len(numbers) else next_row + len(skipped)
                yield Chunk(frame, malformed)
        except pd.errors.ParserError as exc:
            message = str(exc)
            unclosed = re.search(r"EOF inside string starting at row (\d+)", message)
            if unclosed:
                raise DatasetFileError(
                    f"{path}: a quote opened on line {int(unclosed.group(1)) + 1} never closes",
                    "unclosed_quote",
                    'close the quote, or double the quote characters inside the field ("")',
                ) from None
            raise DatasetFileError(
                f"{path}: cannot be parsed: {message}", "parse_error", "check the file"
            ) from None
        except pd.errors.EmptyDataError:
            saw_rows = False
        trailing = _drain_bad_lines(caught)
        if trailing:
            yield Chunk(pd.DataFrame({"row": [], "text": [], "label": []}), trailing)
            saw_rows = True
    if not saw_rows:
        raise DatasetFileError(
            f"{path}: only a header, no data rows", "no_rows", "add data rows below the header"
        )


def _drain_bad_lines(caught: list[warnings.WarningMessage]) -> list[MalformedLine]:
    malformed = []
    for warning in caught:
        for match in _SKIPPED.finditer(str(warning.message)):
            malformed.append(MalformedLine(int(match.group(1)), match.group(2).strip()))
    caught.clear()
    return malformed


def _read_jsonl(path: Path, text_column: str, label_column: str, chunk_rows: int) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    rows: list[tuple[int, Any, Any]] = []
    malformed: list[MalformedLine] = []
    seen = {text_column: False, label_column: False}
    row = 0
    with Path(path).open(encoding="utf-8-sig" if has_bom else "utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                malformed.append(
                    MalformedLine(line_number, f"not valid JSON ({exc.msg} at column {exc.colno})")
                )
                continue
            if not isinstance(record, dict):
                malformed.append(MalformedLine(line_number, f"not a JSON object ({type(record).__name__})"))
                continue
            row += 1
            seen[text_column] = seen[text_column] or text_column in record
            seen[label_column] = seen[label_column] or label_column in record
            rows.append((row, record.get(text_column), record.get(label_column)))
            if len(rows) >= chunk_rows:
                yield _records_chunk(rows, malformed)
                rows, malformed = [], []
    if row == 0 and not malformed:
        raise DatasetFileError(
            f"{path}: no records (only blank lines)", "no_rows", "add one JSON object per line"
        )
    if row and not all(seen.values()):
        _missing_columns(
            path, [name for name, found in seen.items() if found], (text_column, label_column), _MAPPING_HINT
        )
    if rows or malformed:
        yield _records_chunk(rows, malformed)


def _records_chunk(rows: list[tuple[int, Any, Any]], malformed: list[MalformedLine]) -> Chunk:
    frame = pd.DataFrame(rows, columns=["row", "text", "label"])
    for column in ("text", "label"):
        frame[column] = frame[column].map(_scalar_to_str, na_action="ignore")
    return Chunk(frame, malformed)


def _scalar_to_str(value: Any) -> Any:
    """JSON and Parquet values as the text a CSV would hold; non-scalars become NaN with a marker."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return float("nan")


def _read_json(path: Path, text_column: str, label_column: str, chunk_rows: int) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8-sig" if has_bom else "utf-8"))
    except json.JSONDecodeError as exc:
        raise DatasetFileError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            "parse_error",
            "fix the JSON, or use JSONL (one object per line) for large files",
        ) from None
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DatasetFileError(
            f'{path}: expected a JSON array of objects (or {{"data": [...]}}), got {type(document).__name__}',
            "parse_error",
            "wrap the records in a list",
        )
    if not document:
        raise DatasetFileError(f"{path}: the array holds no records", "no_rows", "add records")
    malformed = [
        MalformedLine(index + 1, f"record {index + 1} is not a JSON object")
        for index, record in enumerate(document)
        if not isinstance(record, dict)
    ]
    records = [record for record in document if isinstance(record, dict)]
    keys = set().union(*(record.keys() for record in records)) if records else set()
    _missing_columns(path, sorted(keys), (text_column, label_column), _MAPPING_HINT)
    rows = [(i + 1, r.get(text_column), r.get(label_column)) for i, r in enumerate(records)]
    for start in range(0, max(len(rows), 1), chunk_rows):
        yield _records_chunk(rows[start : start + chunk_rows], malformed if start == 0 else [])


def _read_parquet(path: Path, text_column: str, label_column: str, chunk_rows: int) -> Iterator[Chunk]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetFileError(
            f"{path}: not a readable Parquet file ({exc})", "parse_error", "export the data again"
        ) from None
    _missing_columns(path, parquet.schema_arrow.names, (text_column, label_column), _MAPPING_HINT)
    if parquet.metadata.num_rows == 0:
        raise DatasetFileError(f"{path}: no data rows", "no_rows", "add data rows")
    next_row = 1
    for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[text_column, label_column]):
        frame = batch.to_pandas()
        frame = frame.rename(columns={text_column: "text", label_column: "label"})
        for column in ("text", "label"):
            frame[column] = frame[column].map(_scalar_to_str, na_action="ignore").astype(object)
        frame.insert(0, "row", range(next_row, next_row + len(frame)))
        next_row += len(frame)
        yield Chunk(frame, [])


READERS: dict[DatasetFormat, Callable[..., Iterator[Chunk]]] = {
    DatasetFormat.CSV: lambda p, t, lab, n: _read_delimited(p, t, lab, n, ","),
    DatasetFormat.TSV: lambda p, t, lab, n: _read_delimited(p, t, lab, n, "\t"),
    DatasetFormat.JSONL: _read_jsonl,
    DatasetFormat.JSON: _read_json,
    DatasetFormat.PARQUET: _read_parquet,
}


def iter_chunks(
    path: Path, text_column: str, label_column: str, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[Chunk]:
    """Stream a dataset file as chunks; memory stays bounded by ``chunk_rows``, not by the file."""
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"dataset file not found: {path}", "not_found", "check the path")
    if not path.is_file():
        raise DatasetFileError(f"{path}: is not a file", "not_found", "give the path of a dataset file")
    fmt = detect_format(path)
    yield from READERS[fmt](path, text_column, label_column, chunk_rows)


def rows_text(numbers: list[int], total: int | None = None, noun: str = "rows") -> str:
    """'rows 2, 5 and 3 more' for the first few of many row numbers."""
    shown = numbers[:MAX_ROWS_NAMED]
    total = len(numbers) if total is None else total
    more = total - len(shown)
    return f"{noun} " + ", ".join(map(str, shown)) + (f" and {more} more" if more > 0 else "")


_INTEGER = re.compile(r"[-+]?[0-9]+")


def is_integer_text(text: str) -> bool:
    """'12', '-3' (ASCII digits only: '²' or '①' are words here, not numbers)."""
    return _INTEGER.fullmatch(text) is not None


def normalise_label(value: Any) -> int | str:
    """Integers (also '1' or '1.0' as read from text formats) stay integers; anything else is a string."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if is_integer_text(text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


@dataclass(frozen=True)
class LabelMap:
    """Label ids 0..K-1 and their names; saved with the model as label_map.json."""

    names: tuple[str, ...]
    raw_values: tuple[int | str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def to_json(self) -> dict[str, Any]:
        return {
            "id2label": {str(i): name for i, name in enumerate(self.names)},
            "label2id": {name: i for i, name in enumerate(self.names)},
            "raw_values": list(self.raw_values),
        }

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LabelMap:
        names = tuple(document["id2label"][str(i)] for i in range(len(document["id2label"])))
        return cls(names=names, raw_values=tuple(document["raw_values"]))

    @classmethod
    def build(cls, values: list[int | str], declared_names: list[str] | None = None) -> LabelMap:
        """From the distinct (normalised) labels of the training rows, and the declared names if any."""
        distinct = list(dict.fromkeys(values))
        if distinct and all(isinstance(v, int) for v in distinct):
            if declared_names is not None:
                out_of_range = [v for v in sorted(distinct) if not 0 <= v < len(declared_names)]
                if out_of_range:
                    raise DatasetError(
                        f"label {out_of_range[0]!r} has no name: data.label_names lists {len(declared_names)} "
                        f"names, so integer labels must be 0..{len(declared_names) - 1}"
                    )
                return cls(tuple(declared_names), tuple(range(len(declared_names))))
            ordered = sorted(distinct)
            return cls(tuple(str(v) for v in ordered), tuple(ordered))
        as_text = [str(v) for v in distinct]
        if declared_names is not None:
            unknown = sorted(set(as_text) - set(declared_names))
            if unknown:
                raise DatasetError(f"label {unknown[0]!r} is not in data.label_names {declared_names}")
            return cls(tuple(declared_names), tuple(declared_names))
        ordered_text = sorted(as_text)
        return cls(tuple(ordered_text), tuple(ordered_text))

    def id_lookup(self) -> dict[Any, int]:
        return {value: i for i, value in enumerate(self.raw_values)}
