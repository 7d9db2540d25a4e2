"""Prediction over a file: read the texts, classify them in chunks with progress, write one output row
per input row atomically. Used by `finetune predict --input` and by queued prediction jobs."""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_platform.data.formats import SUFFIXES_TEXT, DatasetFormat, format_of
from finetune_platform.errors import ConfigError

# A spreadsheet runs a cell that starts with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, with a leading ' (OWASP): label names come
    from whoever trained the model, possibly another user. Numbers stay numbers, and so does a label
    name that is only a number ('-1'): a spreadsheet reads it as that number, nothing runs."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


@dataclass(frozen=True)
class FileSummary:
    rows: int
    predicted: int
    empty: int
    truncated: int
    max_length: int
    accuracy: float | None  # against the label column, when the input has one

    def describe(self, output: Path) -> str:
        text = (
            f"wrote {self.rows} rows to {output} ({self.predicted} predicted, {self.empty} empty, "
            f"{self.truncated} truncated at {self.max_length} tokens)"
        )
        if self.accuracy is not None:
            text += f"\naccuracy against the {self.predicted} labelled rows: {self.accuracy:.4f}"
        return text


def _delimited(path: Path, fmt: DatasetFormat, head: bool) -> Any:
    # lazy: pandas, kept off the API's start (services.jobs imports this module for check_columns)
    import pandas as pd

    # the registry's delimiter and quoting, as training reads the file (a TSV text may start with ")
    return pd.read_csv(
        path,
        sep=fmt.delimiter,
        quoting=fmt.quoting,
        dtype=str,
        keep_default_na=False,
        nrows=1 if head else None,
    )


def _json_lines(path: Path, fmt: DatasetFormat, head: bool) -> Any:
    # lazy: pandas, kept off the API's start (services.jobs imports this module for check_columns)
    import pandas as pd

    if head:
        return next(pd.read_json(path, lines=True, dtype=False, chunksize=1))
    return pd.read_json(path, lines=True, dtype=False)


def _json(path: Path, fmt: DatasetFormat, head: bool) -> Any:
    # lazy: pandas, kept off the API's start (services.jobs imports this module for check_columns)
    import pandas as pd

    return pd.read_json(path, dtype=False)  # one document: read whole either way


def _parquet(path: Path, fmt: DatasetFormat, head: bool) -> Any:
    # lazy: pandas and pyarrow, kept off the API's start (services.jobs imports this module)
    import pandas as pd
    import pyarrow.parquet as pq

    return pq.read_schema(path).empty_table().to_pandas() if head else pd.read_parquet(path)


# Prediction's reader of each registered format: every row kept, texts as written (``data.loading.READERS``
# validate training data instead); with ``head``, the first row only, for its columns.
READERS: dict[DatasetFormat, Callable[[Path, DatasetFormat, bool], Any]] = {
    DatasetFormat.CSV: _delimited,
    DatasetFormat.TSV: _delimited,
    DatasetFormat.JSONL: _json_lines,
    DatasetFormat.JSON: _json,
    DatasetFormat.PARQUET: _parquet,
}


def _read(path: Path, head: bool = False) -> Any:
    """The file as a frame, read by the reader of its format; ConfigError unless it exists and has one."""
    if not path.is_file():
        shown = path.name if head else path  # the columns check answers API clients: no server path
        raise ConfigError(f"input {shown}: no such file")
    fmt = format_of(path.name)
    if fmt is None:
        raise ConfigError(
            f"input {path.name}: unknown format {path.suffix.lower()!r}; use one of {SUFFIXES_TEXT}"
        )
    return READERS[fmt](path, fmt, head)


def check_columns(path: Path, text_column: str) -> list[str]:
    """The file's columns, read from its first rows only; ConfigError unless it exists, has a known
    format and has ``text_column``."""
    columns = [str(column) for column in _read(path, head=True).columns]
    if text_column not in columns:
        raise ConfigError(
            f"input {path.name}: no column {text_column!r} (columns: {', '.join(columns)}); choose the text column"
        )
    return columns


def read_texts(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[Any] | None]:
    """The text column of a data file (and its label column, if any)."""
    frame = _read(path)
    if text_column not in frame.columns:
        raise ConfigError(
            f"input {path.name}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}); "
            "choose the text column"
        )
    texts = ["" if value is None else str(value) for value in frame[text_column].tolist()]
    labels = frame[label_column].tolist() if label_column in frame.columns else None
    return texts, labels


def predict_file(
    predictor: Any,
    texts: list[str],
    labels: list[Any] | None,
    output: Path,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
) -> FileSummary:
    """Every input row gets an output row (an empty text gets an error instead of a label): ``label`` the
    class id (the index in the model's labels), ``label_name`` its name, the probabilities. Text cells
    that a spreadsheet would run as formulas are written with a leading ' (``spreadsheet_safe``).

    ``on_progress(done, total)`` runs after each chunk; it may raise to stop (nothing is written then).
    """
    from finetune_platform.data.loading import (
        normalise_label,  # lazy: data.loading imports pandas (the API's start)
    )

    valid = [i for i, value in enumerate(texts) if value.strip()]
    results: dict[int, Any] = {}
    chunk = batch_size * 8
    for start in range(0, len(valid), chunk):
        part = valid[start : start + chunk]
        for i, prediction in zip(part, predictor.predict([texts[i] for i in part], batch_size), strict=True):
            results[i] = prediction
        if on_progress is not None:
            on_progress(start + len(part), len(valid))
    names = predictor.info.labels
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=output.parent, prefix=f".{output.name}.", suffix=".tmp", delete=False, newline="",
        encoding="utf-8",
    ) as handle:  # fmt: skip
        writer = csv.writer(handle)

        def write(cells: list[Any]) -> None:
            writer.writerow([spreadsheet_safe(cell) for cell in cells])

        write(["row", "label", "label_name", "probability", "truncated", *[f"p_{n}" for n in names], "error"])
        for i in range(len(texts)):
            found = results.get(i)
            if found is None:
                write([i + 1, "", "", "", "", *[""] * len(names), "empty text"])
                continue
            probabilities = [found.probabilities[n] for n in names]
            write(
                [i + 1, found.label, found.label_name, found.probability, found.truncated, *probabilities, ""]
            )
    os.replace(handle.name, output)
    accuracy = None
    if labels is not None and valid:
        # a label column holds the values the model was trained on (or their names), not class ids
        trained_as = predictor.label_map.raw_values
        correct = sum(
            1
            for i in valid
            if str(normalise_label(labels[i])) in {str(trained_as[results[i].label]), results[i].label_name}
        )
        accuracy = correct / len(valid)
    return FileSummary(
        rows=len(texts),
        predicted=len(valid),
        empty=len(texts) - len(valid),
        truncated=sum(1 for p in results.values() if p.truncated),
        max_length=predictor.info.max_length,
        accuracy=accuracy,
    )
