"""Load a labelled text dataset from CSV, TSV, JSONL, JSON or Parquet into a text/label table."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_platform.errors import DatasetError

MAX_ROWS_NAMED = 10


class DatasetFormat(StrEnum):
    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, encoding="utf-8", keep_default_na=False, na_values=[""], dtype=object)


def _read_tsv(path: Path) -> pd.DataFrame:
    # TSV has no quoting convention: quotes are part of the text (SST-2 phrases contain them).
    return pd.read_csv(
        path,
        sep="\t",
        quoting=csv.QUOTE_NONE,
        encoding="utf-8",
        keep_default_na=False,
        na_values=[""],
        dtype=object,
    )


def _read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path}: line {line_number} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{path}: line {line_number} is not a JSON object")
            records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path) -> pd.DataFrame:
    document = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DatasetError(f'{path}: expected a JSON array of objects (or {{"data": [...]}})')
    return pd.DataFrame.from_records(document)


def _read_parquet(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path)


READERS: dict[DatasetFormat, Callable[[Path], pd.DataFrame]] = {
    DatasetFormat.CSV: _read_csv,
    DatasetFormat.TSV: _read_tsv,
    DatasetFormat.JSONL: _read_jsonl,
    DatasetFormat.JSON: _read_json,
    DatasetFormat.PARQUET: _read_parquet,
}

_SUFFIXES = {
    ".csv": DatasetFormat.CSV,
    ".tsv": DatasetFormat.TSV,
    ".txt": DatasetFormat.TSV,
    ".jsonl": DatasetFormat.JSONL,
    ".ndjson": DatasetFormat.JSONL,
    ".json": DatasetFormat.JSON,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
}


def detect_format(path: Path) -> DatasetFormat:
    try:
        return _SUFFIXES[path.suffix.lower()]
    except KeyError:
        supported = ", ".join(sorted(_SUFFIXES))
        raise DatasetError(
            f"{path}: unknown dataset format {path.suffix!r}; supported: {supported}"
        ) from None


def _rows(indices: Any) -> str:
    """Data rows are numbered from 1 (the first row after a header)."""
    numbers = [int(i) + 1 for i in list(indices)[:MAX_ROWS_NAMED]]
    more = len(indices) - len(numbers)
    return ", ".join(map(str, numbers)) + (f" and {more} more" if more > 0 else "")


def load_table(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    """Read a file into a table with columns ``text`` and ``label`` (the label kept as read)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    reader = READERS[detect_format(path)]
    try:
        frame = reader(path)
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte offset {exc.start}: {exc.reason})") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        if isinstance(exc, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot be parsed as {detect_format(path).value}: {exc}") from exc
    missing = [column for column in (text_column, label_column) if column not in frame.columns]
    if missing:
        available = ", ".join(map(str, frame.columns)) or "none"
        raise DatasetError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))}; available columns: {available} "
            "(set data.text_column / data.label_column)"
        )
    table = frame[[text_column, label_column]].rename(columns={text_column: "text", label_column: "label"})
    table = table.reset_index(drop=True)
    null_labels = table.index[table["label"].isna()]
    if len(null_labels):
        raise DatasetError(f"{path}: column {label_column!r} is empty in rows {_rows(null_labels)}")
    text = table["text"]
    blank = table.index[text.isna() | text.astype(str).str.strip().eq("")]
    if len(blank):
        raise DatasetError(f"{path}: column {text_column!r} is empty in rows {_rows(blank)}")
    table["text"] = text.astype(str)
    table["label"] = table["label"].map(_normalise_label)
    return table


def _normalise_label(value: Any) -> int | str:
    """Integers (also '1' or 1.0 as read from text formats) stay integers; anything else is a string."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        return int(text)
    return text


@dataclass(frozen=True)
class LabelMap:
    """Label ids 0..K-1 and their names; saved with the model as label_map.json."""

    names: tuple[str, ...]
    raw_values: tuple[int | str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.names)

    def id_of(self, raw: int | str) -> int:
        return self.raw_values.index(raw)

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
    def build(cls, labels: pd.Series, declared_names: list[str] | None = None) -> LabelMap:
        values = list(dict.fromkeys(labels.tolist()))
        if all(isinstance(v, int) for v in values):
            ordered: list[int | str] = sorted(values)
            if declared_names is not None:
                out_of_range = [v for v in ordered if not 0 <= v < len(declared_names)]
                if out_of_range:
                    raise DatasetError(
                        f"label {out_of_range[0]!r} has no name: data.label_names lists {len(declared_names)} "
                        f"names, so integer labels must be 0..{len(declared_names) - 1}"
                    )
                ordered = list(range(len(declared_names)))
                names = tuple(declared_names)
            else:
                names = tuple(str(v) for v in ordered)
        else:
            if declared_names is not None:
                unknown = sorted({str(v) for v in values} - set(declared_names))
                if unknown:
                    raise DatasetError(f"label {unknown[0]!r} is not in data.label_names {declared_names}")
                ordered = list(declared_names)
            else:
                ordered = sorted(str(v) for v in values)
            names = tuple(str(v) for v in ordered)
        if len(names) < 2:
            raise DatasetError(
                f"only one label ({names[0]!r}) in the training data: a classifier needs at least two"
            )
        return cls(names=names, raw_values=tuple(ordered))

    def encode(self, table: pd.DataFrame, source: Path) -> list[int]:
        index = {value: i for i, value in enumerate(self.raw_values)}
        keys = table["label"].map(str) if isinstance(self.raw_values[0], str) else table["label"]
        ids = keys.map(index)
        unknown = table.index[ids.isna()]
        if len(unknown):
            first = table["label"].iloc[unknown[0]]
            raise DatasetError(
                f"{source}: label {first!r} in rows {_rows(unknown)} is not one of the training labels "
                f"{list(self.names)}"
            )
        return ids.astype(int).tolist()
