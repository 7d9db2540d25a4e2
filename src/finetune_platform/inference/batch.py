"""Prediction over a file: read the texts, classify them in chunks with progress, write one output row
per input row atomically. Used by `finetune predict --input` and by queued prediction jobs."""

from __future__ import annotations

import csv
import json
import math
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
    # against the label column, when the input has one: single_label accuracy, multi_label subset accuracy
    # (the exact label set), regression the RMSE (``rmse``; accuracy None)
    accuracy: float | None
    task: str = "single_label"
    rmse: float | None = None
    scored: int | None = (
        None  # rows scored against the label column (multi_label, regression: those it parses)
    )

    def describe(self, output: Path) -> str:
        text = (
            f"wrote {self.rows} rows to {output} ({self.predicted} predicted, {self.empty} empty, "
            f"{self.truncated} truncated at {self.max_length} tokens)"
        )
        scored = self.predicted if self.scored is None else self.scored
        if self.accuracy is not None:
            what = "subset accuracy (exact label sets)" if self.task == "multi_label" else "accuracy"
            text += f"\n{what} against the {scored} labelled rows: {self.accuracy:.4f}"
        if self.rmse is not None:
            text += f"\nRMSE against the {scored} labelled rows: {self.rmse:.4f}"
        return text


@dataclass(frozen=True)
class InputRows:
    """A file's texts, its label column (None when it has none) and its pair column (None when not read)."""

    texts: list[str]
    labels: list[Any] | None
    pairs: list[str] | None = None


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


def _missing(path: Path, columns: list[str], column: str, what: str) -> ConfigError:
    return ConfigError(
        f"input {path.name}: no column {column!r} (columns: {', '.join(columns)}); choose the {what} column"
    )


def check_columns(path: Path, text_column: str, text_pair_column: str | None = None) -> list[str]:
    """The file's columns, read from its first rows only; ConfigError unless it exists, has a known
    format and has ``text_column`` (and ``text_pair_column``, when given)."""
    columns = [str(column) for column in _read(path, head=True).columns]
    if text_column not in columns:
        raise _missing(path, columns, text_column, "text")
    if text_pair_column is not None and text_pair_column not in columns:
        raise _missing(path, columns, text_pair_column, "text pair")
    return columns


def _cells(frame: Any, column: str) -> list[str]:
    return ["" if value is None else str(value) for value in frame[column].tolist()]


def read_rows(
    path: Path, text_column: str, label_column: str, text_pair_column: str | None = None
) -> InputRows:
    """The text column of a data file, its label column (if any) and its pair column (when named)."""
    frame = _read(path)
    columns = [str(column) for column in frame.columns]
    for column, what in ((text_column, "text"), (text_pair_column, "text pair")):
        if column is not None and column not in frame.columns:
            raise _missing(path, columns, column, what)
    labels = frame[label_column].tolist() if label_column in frame.columns else None
    pairs = _cells(frame, text_pair_column) if text_pair_column is not None else None
    return InputRows(_cells(frame, text_column), labels, pairs)


def read_texts(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[Any] | None]:
    """The text column of a data file (and its label column, if any)."""
    rows = read_rows(path, text_column, label_column)
    return rows.texts, rows.labels


def check_pair_input(predictor: Any, has_pairs: bool, option: str) -> None:
    """ConfigError naming ``option`` (how the caller names the pair column) unless the input has a pair column
    exactly when the model reads text pairs."""
    name = predictor.info.name
    if predictor.label_map.pair and not has_pairs:
        raise ConfigError(f"model {name!r} reads text pairs: give {option} (the column of the second texts)")
    if not predictor.label_map.pair and has_pairs:
        raise ConfigError(f"model {name!r} reads one text: leave {option} out")


def predict_file(
    predictor: Any,
    texts: list[str],
    labels: list[Any] | None,
    output: Path,
    batch_size: int = 64,
    on_progress: Callable[[int, int], None] | None = None,
    pairs: list[str] | None = None,
    pair_option: str = "text_pair_column",
) -> FileSummary:
    """Every input row gets an output row (an empty text or text pair gets an error instead of an answer),
    with the columns of the model's task (``COLUMNS``). ``pairs``: the second text of each row, for a model
    that reads pairs (ConfigError naming ``pair_option`` when the model and the input disagree on pairs).
    Text cells that a spreadsheet would run as formulas are written with a leading ' (``spreadsheet_safe``).

    ``on_progress(done, total)`` runs after each chunk; it may raise to stop (nothing is written then).
    """
    label_map = predictor.label_map
    check_pair_input(predictor, pairs is not None, pair_option)
    errors = {i: "empty text" for i, value in enumerate(texts) if not value.strip()}
    for i, value in enumerate(pairs or ()):
        if i not in errors and not value.strip():
            errors[i] = "empty text pair"
    valid = [i for i in range(len(texts)) if i not in errors]
    results: dict[int, Any] = {}
    chunk = batch_size * 8
    for start in range(0, len(valid), chunk):
        part = valid[start : start + chunk]
        chunk_pairs = None if pairs is None else [pairs[i] for i in part]
        answers = predictor.predict([texts[i] for i in part], batch_size, chunk_pairs)
        for i, prediction in zip(part, answers, strict=True):
            results[i] = prediction
        if on_progress is not None:
            on_progress(start + len(part), len(valid))
    task = label_map.task
    header, cells = COLUMNS[task]
    names = list(label_map.names)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=output.parent, prefix=f".{output.name}.", suffix=".tmp", delete=False, newline="",
        encoding="utf-8",
    ) as handle:  # fmt: skip
        writer = csv.writer(handle)

        def write(row: list[Any]) -> None:
            writer.writerow([spreadsheet_safe(cell) for cell in row])

        columns = header(names)
        write(["row", *columns, "error"])
        for i in range(len(texts)):
            found = results.get(i)
            if found is None:
                write([i + 1, *[""] * len(columns), errors[i]])
                continue
            write([i + 1, *cells(found, names), ""])
    os.replace(handle.name, output)
    scores = _scores(task, label_map, labels, valid, results)
    return FileSummary(
        rows=len(texts),
        predicted=len(valid),
        empty=len(texts) - len(valid),
        truncated=sum(1 for p in results.values() if p.truncated),
        max_length=predictor.info.max_length,
        task=task,
        **scores,
    )


def _single_label_columns(names: list[str]) -> list[str]:
    return ["label", "label_name", "probability", "truncated", *[f"p_{n}" for n in names]]


def _single_label_cells(found: Any, names: list[str]) -> list[Any]:
    probabilities = [found.probabilities[n] for n in names]
    return [found.label, found.label_name, found.probability, found.truncated, *probabilities]


def _multi_label_cells(found: Any, names: list[str]) -> list[Any]:
    predicted = LABEL_SEPARATOR.join(name for name, _ in found.labels)
    return [predicted, json.dumps(found.probabilities, ensure_ascii=False), found.truncated]


# Each task's output columns (between ``row`` and ``error``) and the cells of one prediction.
#  single_label: the class id, its name and probability, truncated, a p_<label> column per class;
#  multi_label: ``labels`` every label above its threshold, most probable first, joined by ","; ``probabilities``
#  each label's own, as a JSON object; truncated;  regression: ``value`` the number (training units), truncated.
COLUMNS: dict[str, tuple[Callable[[list[str]], list[str]], Callable[[Any, list[str]], list[Any]]]] = {
    "single_label": (_single_label_columns, _single_label_cells),
    "multi_label": (lambda names: ["labels", "probabilities", "truncated"], _multi_label_cells),
    "regression": (lambda names: ["value", "truncated"], lambda found, names: [found.value, found.truncated]),
}
LABEL_SEPARATOR = ","


def _label_set(cell: Any) -> frozenset[str] | None:
    """A multi-label cell as a set of names: a JSON list or a ","-separated string; None when it is neither."""
    if isinstance(cell, list | tuple):
        return frozenset(str(value) for value in cell)
    text = "" if cell is None else str(cell).strip()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except ValueError:
            return None
        return frozenset(str(value) for value in values) if isinstance(values, list) else None
    if not text:
        return None
    return frozenset(part.strip() for part in text.split(LABEL_SEPARATOR) if part.strip())


def _number(cell: Any) -> float | None:
    try:
        value = float(cell)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _scores(
    task: str, label_map: Any, labels: list[Any] | None, valid: list[int], results: dict[int, Any]
) -> dict[str, Any]:
    """The FileSummary's scores against the label column: accuracy (single_label: a label column holds the
    values the model was trained on, or their names, not class ids), subset accuracy over the rows whose cell
    parses (multi_label), RMSE over the rows holding a finite number (regression)."""
    if labels is None or not valid:
        return {"accuracy": None}
    if task == "multi_label":
        truths = {i: _label_set(labels[i]) for i in valid}
        scored = [i for i in valid if truths[i] is not None]
        if not scored:
            return {"accuracy": None, "scored": 0}
        exact = sum(1 for i in scored if truths[i] == {name for name, _ in results[i].labels})
        return {"accuracy": exact / len(scored), "scored": len(scored)}
    if task == "regression":
        targets = {i: _number(labels[i]) for i in valid}
        scored = [i for i in valid if targets[i] is not None]
        if not scored:
            return {"accuracy": None, "scored": 0}
        squared = sum((results[i].value - targets[i]) ** 2 for i in scored) / len(scored)
        return {"accuracy": None, "rmse": math.sqrt(squared), "scored": len(scored)}
    from finetune_platform.data.loading import (
        normalise_label,  # lazy: data.loading imports pandas (the API's start)
    )

    trained_as = label_map.raw_values
    correct = sum(
        1
        for i in valid
        if str(normalise_label(labels[i])) in {str(trained_as[results[i].label]), results[i].label_name}
    )
    return {"accuracy": correct / len(valid)}
