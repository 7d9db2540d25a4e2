"""Read labelled text datasets (CSV, TSV, JSONL, JSON, Parquet) in chunks, with precise errors.

Every reader yields ``Chunk`` objects: a frame with ``row`` (1-based data row number), ``text`` and
``label`` columns (and ``text_pair`` when a pair column is named), plus the malformed lines it had to skip.
Problems that make the whole file unreadable (not UTF-8, empty, no header, a missing or duplicated column, a
quote that never closes) raise ``DatasetFileError`` with a message that names the line, byte offset or column.

A file is also what a user uploads, so reading it is bounded by ``DatasetLimits`` while it is read: rows,
decoded bytes, characters per cell and JSON nesting. A file over a limit raises ``DatasetLimitError``
naming the limit, the value and the row (or line) as soon as it is seen: a 1 KB Parquet file of one
dictionary-encoded string repeated a million times is refused from its sizes, never decoded.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # pandas imports it (and pyarrow.compute) already
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_platform.data.formats import SUFFIXES_TEXT, DatasetFormat, format_of
from finetune_platform.errors import DatasetError
from finetune_platform.settings import Settings, get_settings

DEFAULT_CHUNK_ROWS = 100_000
MAX_ROWS_NAMED = 10
_BOM = codecs.BOM_UTF8
# Decoded bytes of the text and label cells handed on in one Parquet chunk: a batch whose cells are long
# (one dictionary entry repeated) is cut into slices this size before its strings are materialised;
# validating a chunk holds a few copies of it.
CHUNK_DECODED_BYTES = 16 << 20
# Decoded bytes one batch of delta-encoded Parquet strings may reach with every cell at MAX_TEXT_CHARS.
_DELTA_BATCH_BYTES = 64 << 20


class DatasetFileError(DatasetError):
    """The file as a whole cannot be read as a dataset; ``code`` says why (for reports and tests)."""

    def __init__(self, message: str, reason: str, fix: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.fix = fix


class DatasetLimitError(DatasetError):
    """Reading the file would pass a limit of ``DatasetLimits``: the whole file is refused (an upload is not
    recorded), unlike a file error, which a validation report lists."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(f"dataset refused: {message} ({setting})")
        self.detail = message
        self.setting = setting


@dataclass(frozen=True)
class DatasetLimits:
    """What reading one dataset file may cost; the defaults are the Settings fields of the same names."""

    max_rows: int
    max_decoded_bytes: int
    max_text_chars: int
    max_json_depth: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> DatasetLimits:
        if settings is None:
            settings = get_settings()
        return cls(
            max_rows=settings.MAX_DATASET_ROWS,
            max_decoded_bytes=settings.MAX_DATASET_DECODED_BYTES,
            max_text_chars=settings.MAX_TEXT_CHARS,
            max_json_depth=settings.MAX_JSON_DEPTH,
        )


class _Budget:
    """Counts one file's rows and decoded bytes (text and label cells: strings as UTF-8, a number as 8
    bytes) against its limits."""

    def __init__(self, limits: DatasetLimits) -> None:
        self.limits = limits
        self.decoded = 0

    def rows(self, last_row: int) -> None:
        limit = self.limits.max_rows
        if last_row > limit:
            raise DatasetLimitError(
                f"row {limit + 1:,} is one more than the limit of {limit:,} rows", "MAX_DATASET_ROWS"
            )

    def cell(self, row: int, column: str, chars: int, size: int) -> None:
        """One cell (the JSON readers check each record as they decode it)."""
        if chars > self.limits.max_text_chars:
            self._too_long(row, column, chars)
        self.decoded += size
        if self.decoded > self.limits.max_decoded_bytes:
            self._too_big(row)

    def cells(self, rows: np.ndarray, column: str, chars: np.ndarray, sizes: np.ndarray) -> None:
        """A column of a chunk, before its cells are handed on."""
        over = np.flatnonzero(chars > self.limits.max_text_chars)
        if over.size:
            self._too_long(int(rows[over[0]]), column, int(chars[over[0]]))
        running = self.decoded + np.cumsum(sizes, dtype=np.int64)
        if running.size and running[-1] > self.limits.max_decoded_bytes:
            first = int(np.argmax(running > self.limits.max_decoded_bytes))
            self.decoded = int(running[first])
            self._too_big(int(rows[first]))
        self.decoded = int(running[-1]) if running.size else self.decoded

    def _too_long(self, row: int, column: str, chars: int) -> None:
        raise DatasetLimitError(
            f"row {row:,}, column {column!r}: {chars:,} characters, more than the limit of "
            f"{self.limits.max_text_chars:,} per cell",
            "MAX_TEXT_CHARS",
        )

    def _too_big(self, row: int) -> None:
        raise DatasetLimitError(
            f"by row {row:,} the text and label cells decode to {self.decoded:,} bytes, more than the limit "
            f"of {self.limits.max_decoded_bytes:,}",
            "MAX_DATASET_DECODED_BYTES",
        )


@dataclass(frozen=True)
class MalformedLine:
    line: int
    reason: str


@dataclass
class Chunk:
    frame: pd.DataFrame  # columns: row, text, [text_pair,] label (cells may be missing -> NaN)
    malformed: list[MalformedLine] = field(default_factory=list)
    # (row, "text", "text_pair" or "label") of JSON cells that held an object or array: NaN in the frame
    nested: list[tuple[int, str]] = field(default_factory=list)


def detect_format(path: Path) -> DatasetFormat:
    found = format_of(Path(path).name)
    if found is None:
        raise DatasetFileError(
            f"{path}: unknown dataset format {Path(path).suffix or '(no extension)'!r}; supported: {SUFFIXES_TEXT}",
            "unknown_format",
            "rename the file with the extension of its format",
        )
    return found


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


def _missing_columns(path: Path, columns: list[str], wanted: tuple[str, ...], mapping_hint: str) -> None:
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
_PAIR_MAPPING_HINT = (
    "set the column names (data.text_column / data.text_pair_column / data.label_column, or --text-column / "
    "--text-pair-column / --label-column)"
)


def _wanted(text_column: str, label_column: str, pair_column: str | None) -> tuple[str, ...]:
    """The columns a reader takes, in frame order, and the hint naming their settings."""
    if pair_column is None:
        return (text_column, label_column)
    return (text_column, pair_column, label_column)


def _hint(pair_column: str | None) -> str:
    return _MAPPING_HINT if pair_column is None else _PAIR_MAPPING_HINT


def _roles(pair_column: str | None) -> tuple[str, ...]:
    """The frame's names of the columns ``_wanted`` lists."""
    return ("text", "label") if pair_column is None else ("text", "text_pair", "label")


_SKIPPED = re.compile(r"Skipping line (\d+): (.+)")


def _series_sizes(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Characters and UTF-8 bytes of each cell of a column as read (missing: 0; a number: 8 bytes)."""
    if not (pd.api.types.is_string_dtype(values.dtype) or pd.api.types.is_object_dtype(values.dtype)):
        return np.zeros(len(values), np.int64), np.full(len(values), 8, np.int64)
    try:
        return _arrow_sizes(pa.array(values, type=pa.large_string(), from_pandas=True))
    except (pa.ArrowTypeError, pa.ArrowInvalid):  # pandas may mix numbers into a column of words
        texts = values.map(_scalar_to_str, na_action="ignore")
        return _arrow_sizes(pa.array(texts, type=pa.large_string(), from_pandas=True))


def _read_delimited(
    path: Path,
    text_column: str,
    label_column: str,
    chunk_rows: int,
    limits: DatasetLimits,
    fmt: DatasetFormat,
    pair_column: str | None = None,
    label_lists: bool = False,  # JSON formats only: a list in a label cell is kept as its JSON text
) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    wanted = _wanted(text_column, label_column, pair_column)
    texts = {text_column, pair_column} - {None}
    encoding = "utf-8-sig" if has_bom else "utf-8"
    sep, quoting = fmt.delimiter, fmt.quoting  # the registry's: prediction reads the file the same way
    with Path(path).open(encoding=encoding, newline="") as handle:
        header_line = handle.readline()
    try:
        raw_header = next(csv.reader([header_line], delimiter=sep, quoting=quoting), [])
    except csv.Error as exc:  # e.g. a column name longer than csv.field_size_limit()
        raise DatasetFileError(
            f"{path}: the header row cannot be read ({exc})",
            "no_header",
            "put the column names on the first line",
        ) from None
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
    _missing_columns(path, header, wanted, _hint(pair_column))
    next_row = 1
    saw_rows = False
    budget = _Budget(limits)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        try:
            # built here: pandas reads the first chunk (and may meet an unclosed quote) while it is made
            reader = pd.read_csv(
                path,
                sep=sep,
                quoting=quoting,
                encoding=encoding,
                keep_default_na=False,  # types are inferred (fast); "NA" or "null" stay texts, only "" is missing
                na_values=[""],
                on_bad_lines="warn",  # every column is read: with usecols pandas would not notice ragged rows
                # Texts stay exactly as written ("007", "1.50"); other columns are inferred, which is much faster.
                dtype={column: "str" for column in raw_header if column.strip() in texts},
                chunksize=chunk_rows,
                skipinitialspace=False,
            )
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
                        **{
                            role: frame[name].to_numpy()
                            for role, name in zip(_roles(pair_column), wanted, strict=True)
                        },
                    }
                )
                next_row = int(numbers[-1]) + 1 if len(numbers) else next_row + len(skipped)
                budget.rows(next_row - 1)
                for role, name in zip(_roles(pair_column), wanted, strict=True):
                    budget.cells(numbers, name, *_series_sizes(frame[role]))
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
            yield Chunk(pd.DataFrame({"row": [], **{role: [] for role in _roles(pair_column)}}), trailing)
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


# -- JSON and JSONL ---------------------------------------------------------------------------------
_JSON_STEP = np.zeros(256, np.int8)
_JSON_STEP[[ord("["), ord("{")]] = 1
_JSON_STEP[[ord("]"), ord("}")]] = -1
_JSON_SPECIAL = _JSON_STEP != 0
_JSON_SPECIAL[ord('"')] = True
_JSON_WHITESPACE = re.compile(r"[ \t\n\r]*")


def json_too_deep(data: bytes, limit: int, block: int = 1 << 22) -> int | None:
    """Byte offset where arrays and objects first nest deeper than ``limit``, or None.

    The json module recurses once per level and fails near 1,000 levels (RecursionError), so the depth is
    measured before parsing, with numpy over blocks of the bytes: brackets inside strings do not count
    (escaped backslashes and quotes are blanked first, keeping every offset).
    """
    if data.count(b"[") + data.count(b"{") <= limit:  # most lines and files: nothing to measure
        return None
    data = data.replace(b"\\\\", b"__").replace(b'\\"', b"__")
    depth, in_string = 0, 0
    for start in range(0, len(data), block):
        part = np.frombuffer(data, np.uint8, count=min(block, len(data) - start), offset=start)
        where = np.flatnonzero(_JSON_SPECIAL[part])
        kinds = part[where]
        quotes = kinds == ord('"')
        inside = (np.cumsum(quotes) + in_string) % 2 == 1
        levels = depth + np.cumsum(np.where(quotes | inside, 0, _JSON_STEP[kinds]), dtype=np.int64)
        over = np.flatnonzero(levels > limit)
        if over.size:
            return start + int(where[over[0]])
        if levels.size:
            depth = int(levels[-1])
        in_string = (in_string + int(quotes.sum())) % 2
    return None


def _check_depth(data: bytes, limits: DatasetLimits, first_line: int = 1) -> None:
    offset = json_too_deep(data, limits.max_json_depth)
    if offset is not None:
        line = first_line + data.count(b"\n", 0, offset)
        raise DatasetLimitError(
            f"line {line:,}: JSON nested more than {limits.max_json_depth} levels deep", "MAX_JSON_DEPTH"
        )


def _decode(decoder: json.JSONDecoder, document: str, position: int) -> tuple[Any, int]:
    """One JSON value at ``position``; every way it can fail is a JSONDecodeError or a limit error."""
    try:
        return decoder.raw_decode(document, position)
    except json.JSONDecodeError:
        raise
    except RecursionError:  # only when the depth limit is set above what the parser manages
        line = document.count("\n", 0, position) + 1
        raise DatasetLimitError(f"line {line:,}: JSON nested too deep to parse", "MAX_JSON_DEPTH") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise json.JSONDecodeError(
            f"a number of more than {sys.get_int_max_str_digits():,} digits", document, position
        ) from None


def _skip(document: str, position: int) -> int:
    return _JSON_WHITESPACE.match(document, position).end()  # type: ignore[union-attr]


class _NotAnArray(Exception):
    def __init__(self, kind: str) -> None:
        self.kind = kind


def _json_records(document: str) -> Iterator[Any]:
    """The elements of the document's array, or of its ``{"data": [...]}`` member, decoded one at a time
    (json.loads would hold them all at once); syntax errors raise JSONDecodeError as json.loads does."""
    decoder = json.JSONDecoder()
    position = _skip(document, 0)
    if document.startswith("[", position):
        position = yield from _array_items(decoder, document, position)
    elif document.startswith("{", position):
        position, found = yield from _data_member(decoder, document, position)
        if not found:
            _end(document, position)
            raise _NotAnArray("dict")
    else:
        value, position = _decode(decoder, document, position)
        _end(document, position)
        raise _NotAnArray(type(value).__name__)
    _end(document, position)


def _end(document: str, position: int) -> None:
    position = _skip(document, position)
    if position != len(document):
        raise json.JSONDecodeError("Extra data", document, position)


def _array_items(decoder: json.JSONDecoder, document: str, position: int) -> Iterator[Any]:
    position = _skip(document, position + 1)
    if document.startswith("]", position):
        return position + 1
    while True:
        value, position = _decode(decoder, document, position)
        yield value
        position = _skip(document, position)
        if document.startswith(",", position):
            position = _skip(document, position + 1)
        elif document.startswith("]", position):
            return position + 1
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", document, position)


def _data_member(decoder: json.JSONDecoder, document: str, position: int) -> Iterator[Any]:
    """Walk an object's members, streaming the records of its "data" array; returns (end, found)."""
    found = False
    position = _skip(document, position + 1)
    if document.startswith("}", position):
        return position + 1, found
    while True:
        if not document.startswith('"', position):
            raise json.JSONDecodeError(
                "Expecting property name enclosed in double quotes", document, position
            )
        key, position = _decode(decoder, document, position)
        position = _skip(document, position)
        if not document.startswith(":", position):
            raise json.JSONDecodeError("Expecting ':' delimiter", document, position)
        position = _skip(document, position + 1)
        if key == "data" and not found and document.startswith("[", position):
            found = True
            position = yield from _array_items(decoder, document, position)
        else:
            _, position = _decode(decoder, document, position)
        position = _skip(document, position)
        if document.startswith(",", position):
            position = _skip(document, position + 1)
        elif document.startswith("}", position):
            return position + 1, found
        else:
            raise json.JSONDecodeError("Expecting ',' delimiter", document, position)


_NESTED = object()  # a cell that held an object or an array
_NOT_UNICODE = object()  # a string with a lone surrogate


class _JsonRows:
    """JSON records as rows of chunks: each text and label cell is checked against the limits as it is
    decoded; an object or array in a cell is a row error (``Chunk.nested``), never a crash. With
    ``label_lists`` (multi-label data), an array in the label cell is kept as its JSON text, for the label
    parser to check like a '["a", "b"]' cell of a CSV file."""

    def __init__(
        self,
        text_column: str,
        label_column: str,
        limits: DatasetLimits,
        pair_column: str | None = None,
        label_lists: bool = False,
    ) -> None:
        self.columns = _wanted(text_column, label_column, pair_column)
        self.roles = _roles(pair_column)
        self.label_column = label_column
        self.label_lists = label_lists
        self.budget = _Budget(limits)
        self.rows: list[tuple[Any, ...]] = []
        self.nested: list[tuple[int, str]] = []
        self.malformed: list[MalformedLine] = []
        self.row = 0
        self.seen = dict.fromkeys(self.columns, False)
        self.all_seen = False

    def add(self, record: dict[str, Any], line: int) -> None:
        if not self.all_seen:
            self.seen = {name: seen or name in record for name, seen in self.seen.items()}
            self.all_seen = all(self.seen.values())
        cells = []
        for name in self.columns:
            value = record.get(name)
            if self.label_lists and name == self.label_column and isinstance(value, list):
                value = json.dumps(value, ensure_ascii=False)
            cell = self._cell(value)
            if cell[0] is _NOT_UNICODE:  # JSON may escape a lone surrogate (\ud800)
                self.malformed.append(
                    MalformedLine(line, f"field {name!r} is not valid Unicode (a lone surrogate)")
                )
                return
            cells.append(cell)
        self.row += 1
        budget = self.budget
        if self.row > budget.limits.max_rows:
            budget.rows(self.row)
        values: list[Any] = [self.row]
        for name, role, (value, chars, size) in zip(self.columns, self.roles, cells, strict=True):
            budget.cell(self.row, name, chars, size)
            if value is _NESTED:
                self.nested.append((self.row, role))
                value = float("nan")
            values.append(value)
        self.rows.append(tuple(values))

    @staticmethod
    def _cell(value: Any) -> tuple[Any, int, int]:
        """(the cell as text, characters, UTF-8 bytes); NaN for a missing value or NaN (a JSON extension)."""
        if type(value) is str:
            if value.isascii():
                return value, len(value), len(value)
            try:
                return value, len(value), len(value.encode("utf-8"))
            except UnicodeEncodeError:
                return _NOT_UNICODE, 0, 0
        if isinstance(value, dict | list):
            return _NESTED, 0, 0
        if value is None or value != value:
            return float("nan"), 0, 0
        text = _scalar_to_str(value)  # a number or a boolean: 8 bytes, as in the other formats
        return text, len(text), 8

    def chunk(self) -> Chunk:
        frame = pd.DataFrame(self.rows, columns=["row", *self.roles], dtype=object)
        chunk = Chunk(frame, self.malformed, self.nested)
        self.rows, self.malformed, self.nested = [], [], []
        return chunk


def _read_jsonl(
    path: Path,
    text_column: str,
    label_column: str,
    chunk_rows: int,
    limits: DatasetLimits,
    pair_column: str | None = None,
    label_lists: bool = False,
) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    records = _JsonRows(text_column, label_column, limits, pair_column, label_lists)
    depth = limits.max_json_depth
    with Path(path).open(encoding="utf-8-sig" if has_bom else "utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if line.count("[") + line.count("{") > depth:
                _check_depth(line.encode("utf-8", "surrogatepass"), limits, line_number)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                records.malformed.append(
                    MalformedLine(line_number, f"not valid JSON ({exc.msg} at column {exc.colno})")
                )
                continue
            except RecursionError:  # only when the depth limit is set above what the parser manages
                raise DatasetLimitError(
                    f"line {line_number:,}: JSON nested too deep to parse", "MAX_JSON_DEPTH"
                ) from None
            except ValueError:  # an integer of more digits than Python converts
                records.malformed.append(
                    MalformedLine(
                        line_number, f"a number of more than {sys.get_int_max_str_digits():,} digits"
                    )
                )
                continue
            if not isinstance(record, dict):
                records.malformed.append(
                    MalformedLine(line_number, f"not a JSON object ({type(record).__name__})")
                )
                continue
            records.add(record, line_number)
            if len(records.rows) >= chunk_rows:
                yield records.chunk()
    if records.row == 0 and not records.malformed:
        raise DatasetFileError(
            f"{path}: no records (only blank lines)", "no_rows", "add one JSON object per line"
        )
    if records.row and not all(records.seen.values()):
        found = [name for name, seen in records.seen.items() if seen]
        _missing_columns(path, found, records.columns, _hint(pair_column))
    if records.rows or records.malformed:
        yield records.chunk()


def _scalar_to_str(value: Any) -> Any:
    """JSON and Parquet values as the text a CSV would hold; non-scalars become NaN with a marker."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    return float("nan")


def _read_json(
    path: Path,
    text_column: str,
    label_column: str,
    chunk_rows: int,
    limits: DatasetLimits,
    pair_column: str | None = None,
    label_lists: bool = False,
) -> Iterator[Chunk]:
    has_bom = check_utf8(path)
    data = Path(path).read_bytes()[len(_BOM) if has_bom else 0 :]
    _check_depth(data, limits)
    document = data.decode("utf-8")
    del data
    records = _JsonRows(text_column, label_column, limits, pair_column, label_lists)
    keys: dict[str, None] = {}  # the first keys seen, for the missing-column message
    index = 0
    try:
        for index, record in enumerate(_json_records(document), start=1):
            if not isinstance(record, dict):
                records.malformed.append(MalformedLine(index, f"record {index} is not a JSON object"))
                continue
            if not records.all_seen and len(keys) < 100:
                keys.update(dict.fromkeys(map(str, record)))
            records.add(record, index)
            if len(records.rows) >= chunk_rows:
                yield records.chunk()
    except json.JSONDecodeError as exc:
        raise DatasetFileError(
            f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})",
            "parse_error",
            "fix the JSON, or use JSONL (one object per line) for large files",
        ) from None
    except _NotAnArray as exc:
        raise DatasetFileError(
            f'{path}: expected a JSON array of objects (or {{"data": [...]}}), got {exc.kind}',
            "parse_error",
            "wrap the records in a list",
        ) from None
    if index == 0:
        raise DatasetFileError(f"{path}: the array holds no records", "no_rows", "add records")
    if records.row and not all(records.seen.values()):
        _missing_columns(path, sorted(keys), records.columns, _hint(pair_column))
    if records.rows or records.malformed:
        yield records.chunk()


# -- Parquet ----------------------------------------------------------------------------------------
def _arrow_sizes(array: Any) -> tuple[np.ndarray, np.ndarray]:
    """Characters and UTF-8 bytes of each cell of an Arrow array (missing: 0; a number: 8 bytes).

    A dictionary array is measured through its dictionary and indices, without decoding it.
    """
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        chars, sizes = _arrow_sizes(array.dictionary)
        present = array.indices.is_valid().to_numpy(zero_copy_only=False)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
        if not len(chars):
            return np.zeros(len(array), np.int64), np.zeros(len(array), np.int64)
        return chars[indices] * present, sizes[indices] * present
    if _is_text_type(array.type):

        def measure(kernel: Any) -> np.ndarray:
            return kernel(array).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)

        return measure(pc.utf8_length), measure(pc.binary_length)
    present = array.is_valid().to_numpy(zero_copy_only=False).astype(np.int64)
    return np.zeros(len(array), np.int64), present * 8


def _is_text_type(kind: Any) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _parquet_column_ok(kind: Any) -> bool:
    """Text, numbers, booleans or all-missing; anything else (lists, structs, binary, dates) is refused."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return _is_text_type(kind) or any(
        check(kind)
        for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_null)
    )


def _check_parquet_utf8(path: Path, array: Any, rows: np.ndarray, column: str) -> None:
    """Parquet strings are not checked for UTF-8 on read; a bad one would fail deep in pandas."""
    values = array.dictionary if pa.types.is_dictionary(array.type) else array
    if not _is_text_type(values.type):
        return
    try:
        values.validate(full=True)
        return
    except pa.ArrowInvalid:
        pass
    raw = values.cast(pa.large_binary())
    bad = next(i for i in range(len(raw)) if raw[i].is_valid and not _is_utf8(raw[i].as_py()))
    position = bad
    if pa.types.is_dictionary(array.type):
        position = int(np.flatnonzero(array.indices.fill_null(-1).to_numpy(zero_copy_only=False) == bad)[0])
    raise DatasetFileError(
        f"{path}: row {int(rows[position])}, column {column!r}: not UTF-8 text",
        "not_utf8",
        "write the column as UTF-8 strings",
    )


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_parquet(
    path: Path,
    text_column: str,
    label_column: str,
    chunk_rows: int,
    limits: DatasetLimits,
    pair_column: str | None = None,
    label_lists: bool = False,  # unused: Parquet label cells are strings or numbers (multi-label: '["a", "b"]')
) -> Iterator[Chunk]:
    """Refuse from the metadata what it shows (rows, uncompressed sizes), then read batches with text kept
    dictionary-encoded, measure them and hand on slices of at most CHUNK_DECODED_BYTES decoded."""
    try:
        parquet = pq.ParquetFile(path)
    except MemoryError:  # under the validation child's memory cap: not the file's fault
        raise
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DatasetFileError(
            f"{path}: not a readable Parquet file ({exc})", "parse_error", "export the data again"
        ) from None
    schema = parquet.schema_arrow
    duplicates = sorted({name for name in schema.names if schema.names.count(name) > 1})
    if duplicates:
        raise DatasetFileError(
            f"{path}: duplicate column name(s): {', '.join(map(repr, duplicates))}",
            "duplicate_column",
            "give every column a unique name",
        )
    columns = _wanted(text_column, label_column, pair_column)
    _missing_columns(path, schema.names, columns, _hint(pair_column))
    for name in columns:
        kind = schema.field(name).type
        if not _parquet_column_ok(kind):
            raise DatasetFileError(
                f"{path}: column {name!r} holds {kind} values; text and label columns hold strings or numbers",
                "column_type",
                "store the column as strings (labels may also be integers)",
            )
    metadata = parquet.metadata
    if metadata.num_rows == 0:
        raise DatasetFileError(f"{path}: no data rows", "no_rows", "add data rows")
    if metadata.num_rows > limits.max_rows:
        raise DatasetLimitError(
            f"the Parquet metadata declares {metadata.num_rows:,} rows, more than the limit of {limits.max_rows:,}",
            "MAX_DATASET_ROWS",
        )
    wanted = set(columns)
    declared = sum(
        group.column(i).total_uncompressed_size
        for group in map(metadata.row_group, range(metadata.num_row_groups))
        for i in range(group.num_columns)
        if group.column(i).path_in_schema in wanted
    )
    if declared > limits.max_decoded_bytes:
        names = ", ".join(map(repr, columns[:-1])) + f" and {columns[-1]!r}"
        raise DatasetLimitError(
            f"the Parquet metadata says columns {names} hold {declared:,} bytes "
            f"uncompressed, more than the limit of {limits.max_decoded_bytes:,}",
            "MAX_DATASET_DECODED_BYTES",
        )
    # Strings stay dictionary-encoded in each batch: measured through the dictionary, decoded per slice.
    # Arrow cannot keep delta-encoded strings as a dictionary (where one repeated string also costs next to
    # nothing): those are read a few rows at a time, as many as _DELTA_BATCH_BYTES holds at the cell limit.
    strings = [name for name in columns if _is_text_type(_value_type(schema.field(name).type))]
    encodings = _encodings(metadata, strings)
    as_dictionary = [name for name in strings if encodings[name] <= _DICTIONARY_READABLE]
    batch_rows = chunk_rows
    if len(as_dictionary) < len(strings):
        batch_rows = max(1, min(chunk_rows, _DELTA_BATCH_BYTES // limits.max_text_chars))
    # No reading threads (pre-buffering, column threads): each reserves address space, and validation of
    # uploads runs under an address-space cap (VALIDATION_MEMORY_MB) where a failed thread start aborts.
    parquet = pq.ParquetFile(path, read_dictionary=as_dictionary, pre_buffer=False)
    budget = _Budget(limits)
    pending = _PendingRows(columns, _roles(pair_column))
    next_row = 1
    try:
        batches = parquet.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=False)
        for batch in batches:
            rows = np.arange(next_row, next_row + batch.num_rows)
            next_row += batch.num_rows
            budget.rows(next_row - 1)
            sizes = np.zeros(batch.num_rows, np.int64)
            for name in columns:
                column = batch.column(name)
                _check_parquet_utf8(path, column, rows, name)
                chars, cell_bytes = _arrow_sizes(column)
                budget.cells(rows, name, chars, cell_bytes)
                sizes += cell_bytes
            for start, stop in _slices(sizes, CHUNK_DECODED_BYTES):
                part_bytes = int(sizes[start:stop].sum())
                if (
                    pending.rows + stop - start > chunk_rows
                    or pending.size + part_bytes > CHUNK_DECODED_BYTES
                ):
                    yield from pending.flush()
                pending.add(batch.slice(start, stop - start), rows[start:stop], part_bytes)
        yield from pending.flush()
    except MemoryError:
        raise
    except (OSError, pa.ArrowException) as exc:  # a page that does not decode
        raise DatasetFileError(
            f"{path}: not a readable Parquet file ({exc})", "parse_error", "export the data again"
        ) from None


_DICTIONARY_READABLE = frozenset({"PLAIN", "PLAIN_DICTIONARY", "RLE_DICTIONARY", "RLE", "BIT_PACKED"})


def _encodings(metadata: Any, columns: list[str]) -> dict[str, set[str]]:
    """The page encodings each of ``columns`` uses, over all row groups."""
    found: dict[str, set[str]] = {name: set() for name in columns}
    for group in map(metadata.row_group, range(metadata.num_row_groups)):
        for i in range(group.num_columns):
            chunk = group.column(i)
            if chunk.path_in_schema in found:
                found[chunk.path_in_schema].update(chunk.encodings)
    return found


def _value_type(kind: Any) -> Any:
    return kind.value_type if pa.types.is_dictionary(kind) else kind


def _slices(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive rows whose sizes add up to at most ``budget`` (one row at least)."""
    total = np.cumsum(sizes, dtype=np.int64)
    start = 0
    while start < len(sizes):
        base = int(total[start - 1]) if start else 0
        stop = max(int(np.searchsorted(total, base + budget, side="right")), start + 1)
        yield start, stop
        start = stop


class _PendingRows:
    """Measured Parquet rows gathered into one chunk (small batches merged, big ones arrive sliced)."""

    def __init__(self, columns: tuple[str, ...], roles: tuple[str, ...]) -> None:
        self.columns, self.roles = columns, roles
        self.parts: list[tuple[Any, np.ndarray]] = []
        self.rows = 0
        self.size = 0

    def add(self, part: Any, rows: np.ndarray, size: int) -> None:
        self.parts.append((part, rows))
        self.rows += len(rows)
        self.size += size

    def flush(self) -> Iterator[Chunk]:
        if not self.parts:
            return
        cells = {
            role: np.concatenate([_cells(part.column(name)) for part, _ in self.parts])
            for role, name in zip(self.roles, self.columns, strict=True)
        }
        rows = np.concatenate([rows for _, rows in self.parts])
        self.parts, self.rows, self.size = [], 0, 0
        yield Chunk(pd.DataFrame({"row": rows, **cells}))


def _cells(array: pa.Array) -> np.ndarray:
    """An Arrow column as the object array of texts a CSV reader would give (a number as its text)."""
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    values = array.to_numpy(zero_copy_only=False).astype(object, copy=False)
    if _is_text_type(array.type):
        return values
    return pd.Series(values, dtype=object).map(_scalar_to_str, na_action="ignore").to_numpy(dtype=object)


# The reader of each registered format: every format of data.formats has one (tests/unit/test_dataset_formats.py).
READERS: dict[DatasetFormat, Callable[..., Iterator[Chunk]]] = {
    DatasetFormat.CSV: partial(_read_delimited, fmt=DatasetFormat.CSV),
    DatasetFormat.TSV: partial(_read_delimited, fmt=DatasetFormat.TSV),
    DatasetFormat.JSONL: _read_jsonl,
    DatasetFormat.JSON: _read_json,
    DatasetFormat.PARQUET: _read_parquet,
}


def iter_chunks(
    path: Path,
    text_column: str,
    label_column: str,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    limits: DatasetLimits | None = None,
    *,
    text_pair_column: str | None = None,
    label_lists: bool = False,
) -> Iterator[Chunk]:
    """Stream a dataset file as chunks; memory stays bounded by ``chunk_rows``, not by the file, and the
    file is refused (DatasetLimitError) as soon as it passes one of ``limits`` (default: the settings).

    ``text_pair_column``: also read this column, as the frame's ``text_pair``. ``label_lists`` (multi-label
    data): a JSON array in a JSON or JSONL label cell is kept as its JSON text instead of being a row error."""
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"dataset file not found: {path}", "not_found", "check the path")
    if not path.is_file():
        raise DatasetFileError(f"{path}: is not a file", "not_found", "give the path of a dataset file")
    if text_column == label_column:
        raise DatasetFileError(
            f"the text column and the label column are both {text_column!r}",
            "same_column",
            "name two different columns (--text-column / --label-column)",
        )
    if text_pair_column is not None and text_pair_column in (text_column, label_column):
        role = "text" if text_pair_column == text_column else "label"
        raise DatasetFileError(
            f"the text pair column and the {role} column are both {text_pair_column!r}",
            "same_column",
            "name a third column for the second text (--text-pair-column)",
        )
    fmt = detect_format(path)
    yield from READERS[fmt](
        path,
        text_column,
        label_column,
        chunk_rows,
        limits or DatasetLimits.from_settings(),
        pair_column=text_pair_column,
        label_lists=label_lists,
    )


def rows_text(numbers: list[int], total: int | None = None, noun: str = "rows") -> str:
    """'rows 2, 5 and 3 more' for the first few of many row numbers."""
    shown = numbers[:MAX_ROWS_NAMED]
    total = len(numbers) if total is None else total
    more = total - len(shown)
    return f"{noun} " + ", ".join(map(str, shown)) + (f" and {more} more" if more > 0 else "")


_INTEGER = re.compile(r"[-+]?[0-9]+")


def is_integer_text(text: str) -> bool:
    """'12', '-3' (ASCII digits only: '²' or '①' are words here, not numbers; so is a run of more digits
    than Python converts to an int, sys.get_int_max_str_digits())."""
    if _INTEGER.fullmatch(text) is None:
        return False
    longest = sys.get_int_max_str_digits()
    return longest == 0 or len(text.lstrip("+-")) <= longest


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
    """What a model's outputs mean; saved with the model as label_map.json.

    ``task``: 'single_label' (a softmax over ``names``), 'multi_label' (a sigmoid per name; a label is predicted
    when its probability is above its entry in ``thresholds``) or 'regression' (one output, ``names`` holding the
    target column's name; the model predicts the standardised target, ``scale`` = (mean, std) of the training
    targets turns it back). ``temperature``: what single-label logits are divided by before the softmax (its
    calibration.json beside it; 1.0 when uncalibrated). ``pair``: the model reads two texts per row.
    """

    names: tuple[str, ...]
    raw_values: tuple[int | str, ...]
    temperature: float = 1.0
    task: str = "single_label"
    thresholds: tuple[float, ...] | None = None  # multi_label: one per name
    scale: tuple[float, float] = (0.0, 1.0)  # regression: (mean, std) of the training targets
    pair: bool = False

    @property
    def num_labels(self) -> int:
        """Outputs of the model's head: one per label, one for regression."""
        return len(self.names)

    def to_json(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "id2label": {str(i): name for i, name in enumerate(self.names)},
            "label2id": {name: i for i, name in enumerate(self.names)},
            "raw_values": list(self.raw_values),
            "task": self.task,
            "pair": self.pair,
        }
        if self.task == "multi_label":
            document["thresholds"] = list(self.thresholds or [0.5] * len(self.names))
        if self.task == "regression":
            document["scale"] = {"mean": self.scale[0], "std": self.scale[1]}
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> LabelMap:
        """A label_map.json; one written before tasks existed is a single-label map."""
        names = tuple(document["id2label"][str(i)] for i in range(len(document["id2label"])))
        task = document.get("task", "single_label")
        thresholds = document.get("thresholds")
        scale = document.get("scale") or {"mean": 0.0, "std": 1.0}
        return cls(
            names=names,
            raw_values=tuple(document["raw_values"]),
            task=task,
            thresholds=tuple(float(t) for t in thresholds) if thresholds is not None else None,
            scale=(float(scale["mean"]), float(scale["std"])),
            pair=bool(document.get("pair", False)),
        )

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
