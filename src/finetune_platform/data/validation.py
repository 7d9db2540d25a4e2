"""Dataset validation: one streaming pass per file, row-level problems, a report for people and machines.

Each problem is an ``Issue`` (error or warning) that names its rows (the first few row numbers), counts
them and says how to fix it. Row-level errors can be dropped instead of stopping the run; file-level
errors (unreadable file, a single class, mixed label types, no valid rows) always stop it. A file over a
reading limit (``DatasetLimits``) is not reported on: ``DatasetLimitError`` refuses it outright.

``validate_in_child`` runs the same validation in a fresh interpreter whose address space is capped, so
that an upload which decodes to more than the counters catch costs that process, never the API's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import resource
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa  # with .compute and .parquet (data.loading): loaded before _child_main measures
import xxhash

from finetune_platform.data.loading import (
    DEFAULT_CHUNK_ROWS,
    MAX_ROWS_NAMED,
    DatasetFileError,
    DatasetLimitError,
    DatasetLimits,
    detect_format,
    is_integer_text,
    iter_chunks,
    normalise_label,
    rows_text,
)
from finetune_platform.errors import ConfigError, DatasetError, ErrorCode, PlatformError, QuotaExceeded

HASH_SCHEME = "finetune-dataset-v1"
IMBALANCE_RATIO = 5  # largest class / smallest class at which the report recommends class weights
logger = logging.getLogger(__name__)

# What a run learns from each row (training.config.Task's values; data sits below training, so as text).
SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label", "multi_label", "regression"
TASKS = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
_DETAILS = 3  # bad label cells whose value a message quotes


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class Check(StrEnum):
    FILE = "file"
    MALFORMED_LINE = "malformed_line"
    NESTED_VALUE = "nested_value"
    EMPTY_TEXT = "empty_text"
    EMPTY_PAIR = "empty_text_pair"
    NULL_LABEL = "null_label"
    MALFORMED_LABEL = "malformed_label"
    NOT_A_NUMBER = "not_a_number"
    CONSTANT_TARGET = "constant_target"
    UNKNOWN_LABEL = "unknown_label"
    MIXED_LABEL_TYPES = "mixed_label_types"
    SINGLE_CLASS = "single_class"
    RARE_CLASS = "rare_class"
    IMBALANCED = "imbalanced_classes"
    UNUSED_LABEL = "unused_label"
    DUPLICATE = "duplicate"
    CONFLICTING_DUPLICATE = "conflicting_duplicate"
    OVERLAP = "train_validation_overlap"
    TRUNCATED = "truncated"
    LONG_TEXT = "long_text"
    NO_VALID_ROWS = "no_valid_rows"
    SPLIT_TOO_SMALL = "split_too_small"


# Row-level errors: with drop_invalid the rows go and the run continues.
DROPPABLE = {
    Check.MALFORMED_LINE,
    Check.NESTED_VALUE,
    Check.EMPTY_TEXT,
    Check.EMPTY_PAIR,
    Check.NULL_LABEL,
    Check.MALFORMED_LABEL,
    Check.NOT_A_NUMBER,
    Check.UNKNOWN_LABEL,
    Check.CONFLICTING_DUPLICATE,  # an error for labels; for regression targets a warning, never dropped
}


@dataclass
class Issue:
    code: Check
    severity: Severity
    message: str
    fix: str
    count: int = 0
    rows: list[int] = field(default_factory=list)
    dropped: bool = False

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["code"] = self.code.value
        document["severity"] = self.severity.value
        return document


@dataclass
class ValidationOptions:
    text_column: str = "text"
    label_column: str = "label"
    # single_label: one label per row; multi_label: a JSON list ('["a", "b"]', '[]') or a label_delimiter-
    # separated cell ('a,b'); regression: a finite number
    task: str = SINGLE_LABEL
    text_pair_column: str | None = None  # a second text per row (sentence pairs), checked like the text
    label_delimiter: str = ","  # multi_label: what separates a cell's labels
    label_names: list[str] | None = None
    tokenizer: Any = None  # a Hugging Face tokenizer: enables the token-length checks
    max_length: int | None = None
    min_rows_per_class: int = 5
    long_text_chars: int = 10_000
    drop_invalid: bool = False
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    collect_rows: bool = False  # keep the valid rows in memory (training needs them)
    limits: DatasetLimits | None = None  # reading limits; None: the settings' (DatasetLimits.from_settings)
    # The share of the training rows a run holds out for validation when it has no validation file: with it, a
    # single_label file whose labels cannot be split (``split_checks``) is an error. None: no split is checked.
    validation_split: float | None = None

    def __post_init__(self) -> None:
        self.task = str(self.task)  # training.config.Task is a str enum: its value
        if self.text_column == self.label_column:
            raise ConfigError(
                f"the text column and the label column are both {self.text_column!r}: name two different columns"
            )
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        pair = self.text_pair_column
        if pair is not None and pair in (self.text_column, self.label_column):
            role = "text" if pair == self.text_column else "label"
            raise ConfigError(
                f"the text pair column and the {role} column are both {pair!r}: name a third column"
            )
        if not self.label_delimiter or self.label_delimiter.isspace():
            raise ConfigError(
                f"label delimiter {self.label_delimiter!r}: give the characters that separate labels (e.g. ',')"
            )


@dataclass
class FileReport:
    path: str
    role: str
    format: str | None = None
    rows_read: int = 0
    rows_valid: int = 0
    rows_dropped: int = 0
    issues: list[Issue] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    content_hash: str | None = None
    text_length: dict[str, float] = field(default_factory=dict)
    token_length: dict[str, float] = field(default_factory=dict)
    task: str = SINGLE_LABEL
    target: dict[str, float] = field(default_factory=dict)  # regression: min, max, mean, std of the targets
    rows: pd.DataFrame | None = None  # valid rows (row, text, [text_pair,] label) when collected
    # Per valid row, for cross-file checks: text hash, label (normalised, as text) and row number.
    _text_hashes: np.ndarray | None = None
    _labels: np.ndarray | None = None  # label codes into _vocabulary
    _vocabulary: list[str] = field(default_factory=list)
    # multi_label: per vocabulary entry (a label set), its labels as text
    _label_sets: list[tuple[str, ...]] = field(default_factory=list)
    _row_numbers: np.ndarray | None = None

    @property
    def version(self) -> str | None:
        return self.content_hash[:12] if self.content_hash else None

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity is Severity.ERROR and not i.dropped]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity is Severity.WARNING]

    def add(
        self,
        code: Check,
        severity: Severity,
        message: str,
        fix: str,
        rows: list[int] | None = None,
        count: int | None = None,
    ) -> Issue:
        rows = list(rows or [])
        issue = Issue(
            code,
            severity,
            message,
            fix,
            count if count is not None else len(rows),
            [int(r) for r in rows[:MAX_ROWS_NAMED]],
        )
        self.issues.append(issue)
        return issue

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "role": self.role,
            "format": self.format,
            "rows_read": self.rows_read,
            "rows_valid": self.rows_valid,
            "rows_dropped": self.rows_dropped,
            "version": self.version,
            "content_hash": self.content_hash,
            "label_counts": self.label_counts,
            "text_length": self.text_length,
            "token_length": self.token_length,
            "task": self.task,
            "target": self.target,
            "issues": [issue.to_json() for issue in self.issues],
        }


@dataclass
class ValidationReport:
    files: list[FileReport]
    drop_invalid: bool = False

    @property
    def ok(self) -> bool:
        return all(not f.errors for f in self.files)

    def file(self, role: str) -> FileReport:
        return next(f for f in self.files if f.role == role)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "drop_invalid": self.drop_invalid,
            "errors": sum(len(f.errors) for f in self.files),
            "warnings": sum(len(f.warnings) for f in self.files),
            "files": [f.to_json() for f in self.files],
        }

    def summary(self) -> str:
        lines = []
        for report in self.files:
            labels = ", ".join(f"{name} {count}" for name, count in report.label_counts.items())
            head = f"{report.role}: {report.path}: {report.rows_read} rows read, {report.rows_valid} valid"
            if report.rows_dropped:
                head += f", {report.rows_dropped} dropped"
            if labels:
                head += f"; labels: {labels}"
            if report.target:
                target = report.target
                head += (
                    f"; target: {target['min']:g} to {target['max']:g}, mean {target['mean']:g}, "
                    f"std {target['std']:g}"
                )
            if report.version:
                head += f"; version {report.version}"
            lines.append(head)
            for issue in report.issues:
                state = "dropped" if issue.dropped else issue.severity.value
                lines.append(f"  {state:<8} {issue.code.value}: {issue.message}")
                lines.append(f"           fix: {issue.fix}")
        errors = sum(len(f.errors) for f in self.files)
        warnings = sum(len(f.warnings) for f in self.files)
        verdict = "VALID" if self.ok else "INVALID"
        lines.append(
            f"result: {verdict} ({errors} error{'s' * (errors != 1)}, "
            f"{warnings} warning{'s' * (warnings != 1)})"
        )
        return "\n".join(lines)

    def write_json(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")


class DatasetValidationError(DatasetError):
    """Raised by training when validation found errors; carries the whole report."""

    def __init__(self, report: ValidationReport) -> None:
        first = next(issue for f in report.files for issue in f.errors)
        super().__init__(f"invalid dataset: {first.message}\n{report.summary()}")
        self.report = report


# ------------------------------------------------------------------------------------------------
def as_text(values: pd.Series) -> pd.Series:
    """Text as strings (a column of numbers is read as numbers); missing values stay missing."""
    if pd.api.types.is_string_dtype(values.dtype) and not pd.api.types.is_object_dtype(values.dtype):
        return values
    return values.map(_scalar_text, na_action="ignore").astype("str")


def _scalar_text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class LabelListError(ValueError):
    """A multi-label cell that is not a list of labels; ``reason`` follows "label '…'" in a message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_label_list(cell: str, delimiter: str = ",") -> tuple[int | str, ...]:
    """The labels of a multi-label cell, normalised as single labels are ('1' is 1): a JSON list of strings
    and integers ('["a", "b"]'; '[]' holds none) or, for a cell not starting with '[', a ``delimiter``-separated
    string ('a,b'; each part stripped). LabelListError says what is wrong otherwise."""
    cell = cell.strip()
    if not cell.startswith("["):
        parts = [part.strip() for part in cell.split(delimiter)]
        if "" in parts:
            raise LabelListError(f"has an empty label (labels are separated by {delimiter!r})")
        return tuple(normalise_label(part) for part in parts)
    try:
        items = json.loads(cell)
    except json.JSONDecodeError as error:
        raise LabelListError(f"is not a valid JSON list ({error.msg} at column {error.colno})") from None
    except RecursionError:
        raise LabelListError("is nested too deep") from None
    except ValueError:  # an integer of more digits than Python converts
        raise LabelListError("holds a number too long to read") from None
    labels = []
    for item in items:
        if isinstance(item, list):
            raise LabelListError("holds a nested list")
        if isinstance(item, dict):
            raise LabelListError("holds an object")
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise LabelListError(f"holds {json.dumps(item)}, not a string or an integer")
        if isinstance(item, str) and not item.strip():
            raise LabelListError("holds an empty label")
        labels.append(normalise_label(item))
    return tuple(labels)


def _first_repeat(labels: tuple[Any, ...]) -> Any:
    seen: set[Any] = set()
    for label in labels:
        if label in seen:
            return label
        seen.add(label)
    return None


_NUMBER = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def parse_target(value: Any) -> float | str:
    """A regression cell as a float, or why it is not one ("is not a number", "is not a finite number")."""
    if isinstance(value, bool | np.bool_):
        return "is not a number"
    if isinstance(value, int | float | np.integer | np.floating):
        try:
            number = float(value)
        except OverflowError:  # an integer past the float range
            return "is not a finite number"
    else:
        text = str(value).strip()
        if _NUMBER.fullmatch(text) is None:
            try:
                number = float(text)  # 'nan', 'inf', 'Infinity': numbers, but not finite ones
            except ValueError:
                return "is not a number"
            return "is not a finite number" if not math.isfinite(number) else "is not a number"
        number = float(text)
    return number if math.isfinite(number) else "is not a finite number"


def _shown(value: str, limit: int = 50) -> str:
    """A cell quoted in a message, cut at ``limit`` characters."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def normalised_text(text: pd.Series) -> pd.Series:
    """What makes two texts 'the same': surrounding whitespace does not count."""
    return text.str.strip()


def _hash_texts(texts: list[str]) -> np.ndarray:
    """64-bit xxh3 of each text's UTF-8 bytes: a fixed, documented algorithm, stable across versions."""
    digest = xxhash.xxh3_64_intdigest
    return np.fromiter(
        (digest(text.encode("utf-8", "surrogatepass")) for text in texts), dtype=np.uint64, count=len(texts)
    )


def _mix(text_hashes: np.ndarray, label_hashes: np.ndarray) -> np.ndarray:
    """One hash per (text, label) row from the two parts (splitmix64 finaliser over their combination)."""
    with np.errstate(over="ignore"):
        z = text_hashes ^ (label_hashes * np.uint64(0x9E3779B97F4A7C15))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def summary_stats(values: np.ndarray) -> dict[str, float]:
    """min, mean, median, 95th percentile and max of a length distribution."""
    if values.size == 0:
        return {}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 2),
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "max": int(values.max()),
    }


class _FileScan:
    """Accumulates one file's checks chunk by chunk (memory: the chunk plus ~30 bytes per row)."""

    def __init__(self, report: FileReport, options: ValidationOptions) -> None:
        self.report = report
        self.options = options
        self.problem_rows: dict[Check, list[int]] = {}
        self.problem_counts: dict[Check, int] = {}
        self.malformed: list[tuple[int, str]] = []
        self.malformed_count = 0
        # "text" / "text_pair" / "label" -> the first rows whose cell held an object or array, and how many did
        self.nested_rows: dict[str, list[int]] = {}
        self.nested_counts: dict[str, int] = {}
        self.unknown_values: dict[str, int] = {}
        self.label_types: set[type] = set()
        self.long_rows: list[int] = []
        self.long_count = 0
        self.truncated_rows: list[int] = []
        self.truncated_count = 0
        self.text_hashes: list[np.ndarray] = []
        self.row_hashes: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []  # label code per valid row; codes index `vocabulary`
        self.vocabulary: list[str] = []  # normalised labels as text, in order of appearance
        self.normalised: list[int | str] = []  # the same labels with their type (int or str)
        self.codes_by_name: dict[str, int] = {}
        self.row_numbers: list[np.ndarray] = []
        self.char_lengths: list[np.ndarray] = []
        self.token_lengths: list[np.ndarray] = []
        self.kept: list[pd.DataFrame] = []
        self.declared = self._declared_values(options.label_names)
        self.label_hash_cache = np.array([], dtype=np.uint64)
        self.targets: list[np.ndarray] = []  # regression: the target of each valid row
        # malformed label lists, targets that are not numbers: "row 7: label 'abc' is not a number", …
        self.label_details: dict[Check, list[str]] = {}

    @staticmethod
    def _declared_values(names: list[str] | None) -> set[Any] | None:
        if names is None:
            return None
        return set(range(len(names))) | set(names)

    def _note(self, check: Check, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        listed = self.problem_rows.setdefault(check, [])
        if len(listed) < MAX_ROWS_NAMED:
            listed.extend(rows[: MAX_ROWS_NAMED - len(listed)].tolist())
        self.problem_counts[check] = self.problem_counts.get(check, 0) + int(rows.size)

    def _note_nested(self, role: str, rows: np.ndarray) -> None:
        if rows.size:
            listed = self.nested_rows.setdefault(role, [])
            listed.extend(rows[: MAX_ROWS_NAMED - len(listed)].tolist())
            self.nested_counts[role] = self.nested_counts.get(role, 0) + int(rows.size)

    def feed(self, frame: pd.DataFrame, malformed: list[Any], nested: list[tuple[int, str]] = ()) -> None:
        self.report.rows_read += len(frame)
        for bad in malformed:
            if len(self.malformed) < MAX_ROWS_NAMED:
                self.malformed.append((bad.line, bad.reason))
            self.malformed_count += 1
        if frame.empty:
            return
        options = self.options
        rows = frame["row"].to_numpy()
        text = as_text(frame["text"])
        text_missing = text.isna().to_numpy()
        key = normalised_text(text)  # the normalised text: surrounding whitespace does not count
        empty_text = text_missing | key.eq("").fillna(True).to_numpy(dtype=bool)
        # A nested JSON value is NaN in the frame: invalid like a missing one, reported as what it is.
        nested_text = np.isin(rows, [row for row, role in nested if role == "text"])
        self._note_nested("text", rows[nested_text])
        self._note(Check.EMPTY_TEXT, rows[empty_text & ~nested_text])
        blank = empty_text  # rows without their text(s): their label is not checked
        pair = pair_key = None
        if options.text_pair_column is not None:
            pair = as_text(frame["text_pair"])
            pair_key = normalised_text(pair)
            empty_pair = pair.isna().to_numpy() | pair_key.eq("").fillna(True).to_numpy(dtype=bool)
            nested_pair = np.isin(rows, [row for row, role in nested if role == "text_pair"])
            self._note_nested("text_pair", rows[nested_pair & ~empty_text])
            self._note(Check.EMPTY_PAIR, rows[empty_pair & ~nested_pair & ~empty_text])
            blank = empty_text | empty_pair

        label_raw = frame["label"]
        null_label = label_raw.isna().to_numpy()
        nested_label = np.isin(rows, [row for row, role in nested if role == "label"]) & ~blank
        self._note_nested("label", rows[nested_label])
        targets = None
        if options.task == MULTI_LABEL:
            codes, null_label, bad_label = self._label_sets(label_raw, rows, null_label, blank)
        elif options.task == REGRESSION:
            targets, null_label, bad_label = self._targets(label_raw, rows, null_label, blank)
        else:
            codes, null_label, bad_label = self._single_labels(label_raw, rows, null_label, blank)
        self._note(Check.NULL_LABEL, rows[null_label & ~blank & ~nested_label])

        lengths = text.str.len().fillna(0).to_numpy(dtype=np.int64)
        if pair is not None:
            lengths = lengths + pair.str.len().fillna(0).to_numpy(dtype=np.int64)
        long = lengths > options.long_text_chars
        if long.any():
            self.long_count += int(long.sum())
            self.long_rows.extend(rows[long][: MAX_ROWS_NAMED - len(self.long_rows)].tolist())

        valid = ~(blank | null_label | bad_label)
        if not valid.any():
            return
        valid_rows = rows[valid]
        text_hashes = _hash_texts(key[valid].tolist())
        if pair_key is not None:  # a pair is the same row as another when both its texts are
            text_hashes = _mix(text_hashes, _hash_texts(pair_key[valid].tolist()))
        self.text_hashes.append(text_hashes)
        if targets is not None:
            # a target is its own label: its float's bits (2 and '2.0' alike), no vocabulary of values
            bits = np.where(targets[valid] == 0, 0.0, targets[valid]).view(np.uint64)
            self.targets.append(targets[valid])
            self.row_hashes.append(_mix(text_hashes, _mix(bits, np.uint64(0))))
            self.codes.append(bits.view(np.int64))
        else:
            valid_codes = codes[valid]
            self.row_hashes.append(_mix(text_hashes, self._label_hashes()[valid_codes]))
            self.codes.append(valid_codes.astype(np.int32))
        self.row_numbers.append(valid_rows)
        self.char_lengths.append(lengths[valid].astype(np.int32))
        if options.tokenizer is not None:
            pairs = pair[valid].tolist() if pair is not None else None
            self._token_lengths(text[valid].tolist(), valid_rows, pairs)
        if options.collect_rows:
            labels = (
                targets[valid].tolist() if targets is not None else [self.normalised[c] for c in valid_codes]
            )
            columns = {"row": valid_rows, "text": text[valid].to_numpy()}
            if pair is not None:
                columns["text_pair"] = pair[valid].to_numpy()
            self.kept.append(pd.DataFrame({**columns, "label": labels}))

    def _single_labels(
        self, label_raw: pd.Series, rows: np.ndarray, null_label: np.ndarray, blank: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(code per row, missing label, unknown label) of one label per row."""
        # Normalise each distinct label once: '1', '1.0' and 1 are the same label.
        distinct = pd.unique(label_raw[~null_label])
        normalised_of = {value: self._declared_id(normalise_label(value)) for value in distinct}
        blank_values = {value for value, norm in normalised_of.items() if norm == ""}
        if blank_values:
            null_label = null_label | label_raw.isin(blank_values).to_numpy()
        self.label_types.update(type(v) for v in normalised_of.values() if v != "")
        codes_of = {value: self._code(norm) for value, norm in normalised_of.items() if norm != ""}
        codes = label_raw.map(codes_of).fillna(-1).to_numpy(dtype=np.int64)

        bad_label = np.zeros(len(label_raw), dtype=bool)
        if self.declared is not None:
            allowed = [code for value, code in codes_of.items() if normalised_of[value] in self.declared]
            bad_label = (~null_label) & ~np.isin(codes, allowed)
            for code in codes[bad_label & ~blank]:
                value = self.vocabulary[code]
                self.unknown_values[value] = self.unknown_values.get(value, 0) + 1
            self._note(Check.UNKNOWN_LABEL, rows[bad_label & ~blank])
        return codes, null_label, bad_label

    def _label_sets(
        self, label_raw: pd.Series, rows: np.ndarray, null_label: np.ndarray, blank: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(code per row, missing label, malformed or unknown label) of a multi-label column: a row's code
        names its set of labels, so rows with the same labels share one."""
        delimiter = self.options.label_delimiter
        parsed: dict[Any, tuple[Any, ...] | str] = {}
        for value in pd.unique(label_raw[~null_label]):
            cell = _scalar_text(value).strip()
            if cell == "":
                continue
            try:
                labels = tuple(self._declared_id(label) for label in parse_label_list(cell, delimiter))
            except LabelListError as error:
                parsed[value] = error.reason
                continue
            repeated = _first_repeat(labels)
            parsed[value] = f"repeats label {str(repeated)!r}" if repeated is not None else labels
        null_label = null_label | ~label_raw.isin(list(parsed)).to_numpy() & ~null_label
        reasons = {value: outcome for value, outcome in parsed.items() if isinstance(outcome, str)}
        malformed = label_raw.isin(list(reasons)).to_numpy() & ~null_label
        self._note_label_details(Check.MALFORMED_LABEL, label_raw, rows, malformed & ~blank, reasons)

        codes_of: dict[Any, int] = {}
        unknown_of: dict[Any, list[str]] = {}
        for value, labels in parsed.items():
            if isinstance(labels, str):
                continue
            # a label outside the declared set is reported as unknown, not as another type of label
            known = labels if self.declared is None else [label for label in labels if label in self.declared]
            self.label_types.update(type(label) for label in known)
            ordered = tuple(_label_order(list(labels)))
            codes_of[value] = self._code(ordered, json.dumps([str(label) for label in ordered]))
            if self.declared is not None:
                unknown = [str(label) for label in ordered if label not in self.declared]
                if unknown:
                    unknown_of[value] = unknown
        codes = label_raw.map(codes_of).fillna(-1).to_numpy(dtype=np.int64)
        unknown = label_raw.isin(list(unknown_of)).to_numpy() & ~null_label
        for value in label_raw[unknown & ~blank]:
            for label in unknown_of[value]:
                self.unknown_values[label] = self.unknown_values.get(label, 0) + 1
        self._note(Check.UNKNOWN_LABEL, rows[unknown & ~blank])
        return codes, null_label, malformed | unknown

    def _targets(
        self, label_raw: pd.Series, rows: np.ndarray, null_label: np.ndarray, blank: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(target per row (NaN where there is none), missing target, not a finite number) of a regression
        column."""
        parsed: dict[Any, float | str] = {}
        for value in pd.unique(label_raw[~null_label]):
            if isinstance(value, str) and value.strip() == "":
                continue
            parsed[value] = parse_target(value)
        null_label = null_label | ~label_raw.isin(list(parsed)).to_numpy() & ~null_label
        reasons = {value: outcome for value, outcome in parsed.items() if isinstance(outcome, str)}
        bad_label = label_raw.isin(list(reasons)).to_numpy() & ~null_label
        self._note_label_details(Check.NOT_A_NUMBER, label_raw, rows, bad_label & ~blank, reasons)
        numbers = {value: target for value, target in parsed.items() if not isinstance(target, str)}
        targets = label_raw.map(numbers).to_numpy(dtype=np.float64, na_value=np.nan)
        return targets, null_label, bad_label

    def _note_label_details(
        self, check: Check, label_raw: pd.Series, rows: np.ndarray, bad: np.ndarray, reasons: dict[Any, str]
    ) -> None:
        """Note the rows, and for the first few of them the value and what is wrong with it."""
        if not bad.any():
            return
        details = self.label_details.setdefault(check, [])
        for row, value in zip(rows[bad][: _DETAILS - len(details)], label_raw[bad], strict=False):
            details.append(f"row {int(row)}: label {_shown(_scalar_text(value))} {reasons[value]}")
        self._note(check, rows[bad])

    def _declared_id(self, label: int | str) -> int | str:
        """With label_names declared, a name and its index are the same label ('positive' == 1)."""
        names = self.options.label_names
        if names is not None and isinstance(label, str) and label in names:
            return names.index(label)
        return label

    def _code(self, normalised: Any, name: str | None = None) -> int:
        """The code of a label (a label set, a target), named by its text (default: str of it)."""
        name = str(normalised) if name is None else name
        if name not in self.codes_by_name:
            self.codes_by_name[name] = len(self.vocabulary)
            self.vocabulary.append(name)
            self.normalised.append(normalised)
        return self.codes_by_name[name]

    def _label_hashes(self) -> np.ndarray:
        """The hash of each vocabulary entry, computed once (a file's label sets may be many)."""
        known = len(self.label_hash_cache)
        if known < len(self.vocabulary):
            self.label_hash_cache = np.concatenate(
                [self.label_hash_cache, _hash_texts(self.vocabulary[known:])]
            )
        return self.label_hash_cache

    def _token_lengths(self, texts: list[str], rows: np.ndarray, pairs: list[str] | None = None) -> None:
        # a pair is measured as the model reads it: both texts with the tokenizer's separators
        arguments = (texts,) if pairs is None else (texts, pairs)
        encoded = self.options.tokenizer(
            *arguments, add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        token_lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
        self.token_lengths.append(token_lengths)
        if self.options.max_length is not None:
            over = token_lengths > self.options.max_length
            self.truncated_count += int(over.sum())
            self.truncated_rows.extend(rows[over][: MAX_ROWS_NAMED - len(self.truncated_rows)].tolist())

    def finish(self) -> FileReport:
        report, options = self.report, self.options
        fix_drop = " (or drop these rows with --drop-invalid / data.invalid_rows: drop)"
        if self.malformed_count:
            first = "; ".join(f"line {line}: {reason}" for line, reason in self.malformed[:3])
            report.add(
                Check.MALFORMED_LINE,
                Severity.ERROR,
                f"{self.malformed_count} malformed line(s) could not be read ({first})",
                "fix the quoting or the number of fields on those lines" + fix_drop,
                [line for line, _ in self.malformed],
                self.malformed_count,
            )
        roles = [("text", options.text_column), ("text_pair", options.text_pair_column)]
        for role, name in [*roles, ("label", options.label_column)]:
            if role in self.nested_counts:
                count = self.nested_counts[role]
                report.add(
                    Check.NESTED_VALUE,
                    Severity.ERROR,
                    f"column {name!r} holds a JSON object or array instead of a value in {count} row(s): "
                    f"{rows_text(self.nested_rows[role], count)}",
                    f"put the {role.replace('_', ' ')} itself in the field, not an object or a list"
                    + fix_drop,
                    self.nested_rows[role],
                    count,
                )
        no_labels = " (a row with no labels holds '[]')" if options.task == MULTI_LABEL else ""
        for check, what, fix in (
            (Check.EMPTY_TEXT, f"column {options.text_column!r} is empty or whitespace", ""),
            (Check.EMPTY_PAIR, f"column {options.text_pair_column!r} is empty or whitespace", ""),
            (Check.NULL_LABEL, f"column {options.label_column!r} is empty", no_labels),
        ):
            if check in self.problem_counts:
                count = self.problem_counts[check]
                report.add(
                    check,
                    Severity.ERROR,
                    f"{what} in {count} row(s): {rows_text(self.problem_rows[check], count)}",
                    "fill in the missing values or remove the rows" + fix + fix_drop,
                    self.problem_rows[check],
                    count,
                )
        for check, what, fix in (
            (
                Check.MALFORMED_LABEL,
                "a malformed label list",
                "write each row's labels as a JSON list of strings or integers ('[\"a\", \"b\"]', '[]' for "
                f"none) or separated by {options.label_delimiter!r} ('a{options.label_delimiter}b'), "
                "each label once",
            ),
            (
                Check.NOT_A_NUMBER,
                "a label that is not a finite number",
                "write each row's target as a number",
            ),
        ):
            if check in self.problem_counts:
                count = self.problem_counts[check]
                details = "; ".join(self.label_details[check])
                more = count - len(self.label_details[check])
                report.add(
                    check,
                    Severity.ERROR,
                    f"{count} row(s) have {what}: {details}" + (f"; and {more} more" if more else ""),
                    fix + fix_drop,
                    self.problem_rows[check],
                    count,
                )
        if Check.UNKNOWN_LABEL in self.problem_counts:
            count = self.problem_counts[Check.UNKNOWN_LABEL]
            values = ", ".join(repr(v) for v in sorted(self.unknown_values)[:5])
            report.add(
                Check.UNKNOWN_LABEL,
                Severity.ERROR,
                f"{count} row(s) have labels outside the declared set {options.label_names} ({values}): "
                f"{rows_text(self.problem_rows[Check.UNKNOWN_LABEL], count)}",
                "correct the labels, or add them to data.label_names / --label-names" + fix_drop,
                self.problem_rows[Check.UNKNOWN_LABEL],
                count,
            )
        if len(self.label_types) > 1:
            report.add(
                Check.MIXED_LABEL_TYPES,
                Severity.ERROR,
                f"column {options.label_column!r} mixes numbers and words (e.g. 1 and 'positive')",
                "use one kind of label: all integers 0..K-1 (named with label_names) or all words",
            )
        if self.long_count:
            report.add(
                Check.LONG_TEXT,
                Severity.WARNING,
                f"{self.long_count} text(s) are longer than {options.long_text_chars:,} characters: "
                f"{rows_text(self.long_rows, self.long_count)}",
                "check these records (a missing delimiter can glue many rows into one); "
                "long texts are truncated to max_length tokens",
                self.long_rows,
                self.long_count,
            )

        text_hashes = _concat(self.text_hashes, np.uint64)
        row_hashes = _concat(self.row_hashes, np.uint64)
        labels = _concat(self.codes, np.int32)  # codes into self.vocabulary (regression: the targets' bits)
        row_numbers = _concat(self.row_numbers, np.int64)
        report.content_hash = _content_hash(row_hashes)
        conflict_rows = self._duplicates(text_hashes, labels, row_numbers)
        keep = ~np.isin(row_numbers, conflict_rows)
        if options.drop_invalid:
            text_hashes, labels, row_numbers = text_hashes[keep], labels[keep], row_numbers[keep]
            keep = np.ones(len(row_numbers), dtype=bool)
        report._text_hashes, report._row_numbers = text_hashes, row_numbers
        report._labels, report._vocabulary = labels, list(self.vocabulary)
        report.task = options.task

        if options.task == REGRESSION:
            self._target_checks(_concat(self.targets, np.float64))  # every valid row: none is a conflict
        else:
            if options.task == MULTI_LABEL:
                report._label_sets = [tuple(map(str, labels_of)) for labels_of in self.normalised]
            counts = _tally(labels[keep], report._vocabulary, report._label_sets or None)
            report.label_counts = _named_counts(counts, options.label_names)
            self._class_checks(counts)
        if self.truncated_count:
            share = self.truncated_count / max(len(row_numbers), 1)
            report.add(
                Check.TRUNCATED,
                Severity.WARNING,
                f"{self.truncated_count} text(s) ({share:.1%}) are longer than max_length={options.max_length} "
                f"tokens and will be truncated: {rows_text(self.truncated_rows, self.truncated_count)}",
                "raise model.max_length (costs time and memory) or shorten these texts",
                self.truncated_rows,
                self.truncated_count,
            )
        report.text_length = summary_stats(_concat(self.char_lengths, np.int64))
        report.token_length = summary_stats(_concat(self.token_lengths, np.int64))

        report.rows_valid = int(keep.sum())
        if options.drop_invalid:
            droppable = [i for i in report.issues if i.code in DROPPABLE and i.severity is Severity.ERROR]
            for issue in droppable:
                issue.dropped = True
            report.rows_dropped = sum(issue.count for issue in droppable)
        if report.rows_valid == 0:
            report.add(
                Check.NO_VALID_ROWS,
                Severity.ERROR,
                "no valid rows are left to train on",
                "fix the errors above; dropping invalid rows cannot help when none are valid",
            )
        if options.collect_rows and self.kept:
            kept = pd.concat(self.kept, ignore_index=True)
            report.rows = kept[kept["row"].isin(report._row_numbers)].reset_index(drop=True)
        return report

    def _duplicates(self, text_hashes: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Warn on exact duplicates; error on same text with different labels (whose rows it returns).

        Sorting the 8-byte hashes finds repeats without a hash table of the rows; only rows whose text
        repeats (usually few) go into a frame for the per-group checks.
        """
        if text_hashes.size < 2:
            return np.array([], dtype=np.int64)
        order = np.argsort(text_hashes, kind="stable")
        ordered = text_hashes[order]
        same_as_previous = ordered[1:] == ordered[:-1]
        if not same_as_previous.any():
            return np.array([], dtype=np.int64)
        in_group = np.zeros(len(ordered), dtype=bool)
        in_group[1:] |= same_as_previous
        in_group[:-1] |= same_as_previous
        chosen = order[in_group]
        repeated = pd.DataFrame({"h": text_hashes[chosen], "label": labels[chosen], "row": rows[chosen]})
        frame = repeated.sort_values("row")
        label_sets = repeated.groupby("h")["label"].nunique()
        conflicting_hashes = label_sets.index[label_sets > 1]
        conflicts = repeated[repeated["h"].isin(conflicting_hashes)].sort_values("row")
        exact = frame[frame.duplicated(["h", "label"], keep="first") & ~frame["h"].isin(conflicting_hashes)]
        if len(exact):
            exact_rows = exact["row"].sort_values().tolist()
            self.report.add(
                Check.DUPLICATE,
                Severity.WARNING,
                f"{len(exact_rows)} row(s) repeat an earlier row exactly: {rows_text(exact_rows)}",
                "remove the repeats: they weigh those examples more and can leak into validation",
                exact_rows,
                len(exact_rows),
            )
        if len(conflicts) and self.options.task == REGRESSION:  # noisy targets, not contradictions
            conflict_rows = conflicts["row"].tolist()
            self.report.add(
                Check.CONFLICTING_DUPLICATE,
                Severity.WARNING,
                f"{len(conflicting_hashes)} text(s) appear with different values, in {len(conflict_rows)} rows: "
                f"{rows_text(conflict_rows)}",
                "check these rows: the model learns something between a text's values",
                conflict_rows,
                len(conflict_rows),
            )
        elif len(conflicts):
            conflict_rows = conflicts["row"].tolist()
            groups = len(conflicting_hashes)
            self.report.add(
                Check.CONFLICTING_DUPLICATE,
                Severity.ERROR,
                f"{groups} text(s) appear with different labels, in {len(conflict_rows)} rows: "
                f"{rows_text(conflict_rows)}",
                "decide the right label for each such text and keep one row"
                + (" (or drop them all with --drop-invalid / data.invalid_rows: drop)"),
                conflict_rows,
                len(conflict_rows),
            )
            return conflicts["row"].to_numpy()
        return np.array([], dtype=np.int64)

    def _target_checks(self, targets: np.ndarray) -> None:
        """Regression: the targets' summary, and a training file whose targets never vary."""
        if targets.size == 0:
            return
        self.report.target = {
            "min": float(targets.min()),
            "max": float(targets.max()),
            "mean": float(targets.mean()),
            "std": float(targets.std(ddof=0)),
        }
        if self.report.role == "train" and targets.min() == targets.max():
            self.report.add(
                Check.CONSTANT_TARGET,
                Severity.ERROR,
                f"every row's label is {targets[0]:g}: a regression needs targets that vary",
                "check the label column, or add rows with other values",
            )

    def _class_checks(self, counts: pd.Series) -> None:
        report, options = self.report, self.options
        present = [str(name) for name in counts.index if counts[name] > 0]
        if options.task == MULTI_LABEL and len(present) < 2:
            if report._labels is not None and report._labels.size:  # some rows are valid
                what = f"only one label ({present[0]!r})" if present else "no label"
                report.add(
                    Check.SINGLE_CLASS,
                    Severity.ERROR,
                    f"{what} in the data: a multi-label classifier needs at least two",
                    "add rows with other labels, or check the label column (for one yes/no label, use "
                    "task: single_label)",
                )
        elif report.rows_read and len(present) == 1:
            report.add(
                Check.SINGLE_CLASS,
                Severity.ERROR,
                f"only one label ({present[0]!r}) in the data: a classifier needs at least two",
                "add rows of the other classes, or check the label column",
            )
        rare = [
            f"{_label_name(name, options.label_names)} ({int(counts[name])})"
            for name in counts.index
            if 0 < counts[name] < options.min_rows_per_class
        ]
        if rare and len(present) > 1:
            report.add(
                Check.RARE_CLASS,
                Severity.WARNING,
                f"classes with fewer than {options.min_rows_per_class} rows: {', '.join(rare)}",
                "add examples of these classes or merge them; the model will rarely predict them",
            )
        if options.label_names is not None and present:
            names_used = {str(n) for n in present}
            unused = [
                name
                for i, name in enumerate(options.label_names)
                if name not in names_used and str(i) not in names_used
            ]
            if unused:
                report.add(
                    Check.UNUSED_LABEL,
                    Severity.WARNING,
                    f"declared label(s) with no rows: {', '.join(map(repr, unused))}",
                    "add rows for them or remove them from label_names",
                )
        if report.role == "train" and len(present) > 1:
            self._imbalance_check(counts)

    def _imbalance_check(self, counts: pd.Series) -> None:
        """Training data whose largest class has IMBALANCE_RATIO× the rows of its smallest: recommend weights."""
        present = counts[counts > 0]
        largest, smallest = present.idxmax(), present.idxmin()
        if present[largest] < IMBALANCE_RATIO * present[smallest]:
            return
        names = self.options.label_names
        self.report.add(
            Check.IMBALANCED,
            Severity.WARNING,
            f"imbalanced classes: the largest, {_label_name(largest, names)} ({_rows(present[largest])}), "
            f"has {present[largest] / present[smallest]:.1f}× the rows of the smallest, "
            f"{_label_name(smallest, names)} ({_rows(present[smallest])})",
            "set training.class_weights: balanced (the loss then weighs each class by its rarity), or add rows "
            "of the smaller classes",
        )


def _tally(codes: np.ndarray, vocabulary: list[str], label_sets: list[tuple[str, ...]] | None) -> pd.Series:
    """Rows per label (vocabulary entry); with ``label_sets`` (multi-label), rows per label of the sets: a
    row counts once for each of its labels."""
    tally = np.bincount(codes, minlength=len(vocabulary)) if codes.size else np.zeros(0, int)
    if label_sets is None:
        return pd.Series({vocabulary[code]: int(n) for code, n in enumerate(tally) if n}, dtype=int)
    counts: dict[str, int] = {}
    for code in np.flatnonzero(tally):
        for label in label_sets[code]:
            counts[label] = counts.get(label, 0) + int(tally[code])
    return pd.Series(counts, dtype=int)


def _named_counts(counts: pd.Series, declared: list[str] | None) -> dict[str, int]:
    return {_label_name(name, declared): int(counts[name]) for name in _label_order(list(counts.index))}


def _rows(count: int) -> str:
    return f"{int(count)} row{'s' * (int(count) != 1)}"


def _concat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
    return np.concatenate(parts) if parts else np.array([], dtype=dtype)


def _label_name(value: Any, declared: list[str] | None) -> str:
    text = str(value)
    if declared is not None and is_integer_text(text) and 0 <= int(text) < len(declared):
        return declared[int(text)]
    return text


def _label_order(values: list[Any]) -> list[Any]:
    def key(value: Any) -> tuple[int, Any]:
        text = str(value)
        return (0, int(text)) if is_integer_text(text) else (1, text)

    return sorted(values, key=key)


def _content_hash(row_hashes: np.ndarray) -> str:
    """Order-independent: the same rows in another order are the same dataset version."""
    digest = hashlib.sha256(HASH_SCHEME.encode())
    digest.update(np.sort(row_hashes).astype("<u8").tobytes())
    return digest.hexdigest()


def validate_file(path: Path, options: ValidationOptions, role: str = "train") -> FileReport:
    """Validate one file; unreadable files give a report with one file-level error, never a traceback."""
    report = FileReport(path=str(path), role=role)
    scan = _FileScan(report, options)
    try:
        report.format = detect_format(Path(path)).value
        chunks = iter_chunks(
            Path(path),
            options.text_column,
            options.label_column,
            options.chunk_rows,
            options.limits,
            text_pair_column=options.text_pair_column,
            label_lists=options.task == MULTI_LABEL,
        )
        for chunk in chunks:  # DatasetLimitError goes through: the file is refused, not reported on
            scan.feed(chunk.frame, chunk.malformed, chunk.nested)
    except DatasetFileError as exc:
        report.issues = [Issue(Check.FILE, Severity.ERROR, exc.message, exc.fix or "fix the file", 0, [])]
        report.rows_valid = 0
        return report
    return scan.finish()


def validate_dataset(
    train: Path, options: ValidationOptions, validation: Path | None = None
) -> ValidationReport:
    """Validate a training file and, optionally, its validation file, with the checks across both."""
    train_report = validate_file(train, options, "train")
    files = [train_report]
    if validation is None and options.validation_split is not None and not _has_file_error(train_report):
        split_checks(train_report, options.task, options.validation_split)
    if validation is not None:
        validation_report = validate_file(validation, options, "validation")
        files.append(validation_report)
        if not _has_file_error(train_report) and not _has_file_error(validation_report):
            _cross_checks(train_report, validation_report, options)
    return ValidationReport(files, drop_invalid=options.drop_invalid)


MAX_LABELS_NAMED = 10  # labels a split message names


def split_checks(report: FileReport, task: str, ratio: float) -> None:
    """Whether a training file can give up ``ratio`` of its valid rows as validation rows that hold every label:
    each label needs 2 rows (one for each side) and the validation rows must number at least the labels (the
    split is stratified, and then puts one of each label there). single_label only: a multi-label row holds any
    number of labels (none too) and micro-F1 needs no row of each, and a regression target has no labels."""
    if task != SINGLE_LABEL or report.rows_valid == 0:
        return
    share = f"{ratio * 100:g}%"
    single = {name: count for name, count in report.label_counts.items() if 0 < count < 2}
    if single:
        named = [
            f"label {name!r} has {_rows(count)}" for name, count in list(single.items())[:MAX_LABELS_NAMED]
        ]
        more = len(single) - len(named)
        report.add(
            Check.SPLIT_TOO_SMALL,
            Severity.ERROR,
            ", ".join(named)
            + (f" (and {more} more label{'s' * (more != 1)})" if more else "")
            + f": a validation split of {share} needs at least 2 rows of every label (one for training, one for "
            "validation)",
            "add rows of these labels, or give a validation file (data.validation_file, --validation-file)",
        )
        return
    labels = sum(1 for count in report.label_counts.values() if count > 0)
    held_out = validation_rows(report.rows_valid, ratio)
    if held_out < labels:
        needed = math.ceil(100 * labels / report.rows_valid) / 100
        report.add(
            Check.SPLIT_TOO_SMALL,
            Severity.ERROR,
            f"a validation split of {share} of {_rows(report.rows_valid)} holds {_rows(held_out)}, fewer than "
            f"the {labels} labels: every label needs a validation row",
            f"raise data.validation_split to {needed:g} or more, add rows, or give a validation file "
            "(data.validation_file, --validation-file)",
        )


def validation_rows(rows: int, ratio: float) -> int:
    """How many of ``rows`` a validation split of ``ratio`` holds out (``data.splits`` splits by it)."""
    return max(1, round(rows * ratio))


def _labels_of(report: FileReport, code: int) -> tuple[str, ...]:
    """The labels (as text) of a vocabulary entry: itself, or the labels of a multi-label set."""
    return report._label_sets[code] if report._label_sets else (report._vocabulary[code],)


def _has_file_error(report: FileReport) -> bool:
    return any(issue.code is Check.FILE for issue in report.issues)


def _cross_checks(train: FileReport, validation: FileReport, options: ValidationOptions) -> None:
    overlap = np.isin(validation._text_hashes, train._text_hashes)
    if overlap.any():
        rows = sorted(validation._row_numbers[overlap].tolist())
        validation.add(
            Check.OVERLAP,
            Severity.WARNING,
            f"{len(rows)} validation row(s) also appear in the training data: {rows_text(rows)}",
            "remove them from one of the files: overlapping rows inflate validation scores",
            rows,
        )
    if options.task == REGRESSION:  # a target needs no training row of the same value
        return
    train_labels = {label for code in np.unique(train._labels) for label in _labels_of(train, code)}
    unseen_codes = [
        code
        for code in range(len(validation._vocabulary))
        if not train_labels.issuperset(_labels_of(validation, code))
    ]
    unseen = np.isin(validation._labels, unseen_codes) if train_labels else np.zeros(0, bool)
    if unseen.any():
        rows = validation._row_numbers[unseen].tolist()
        values = sorted(
            {
                label
                for code in np.unique(validation._labels[unseen])
                for label in _labels_of(validation, code)
            }
            - train_labels
        )
        issue = validation.add(
            Check.UNKNOWN_LABEL,
            Severity.ERROR,
            f"{len(rows)} validation row(s) have labels never seen in training "
            f"({', '.join(map(repr, values[:5]))}): {rows_text(rows)}",
            "fix the labels, or add training rows for them (or drop these rows with "
            "--drop-invalid / data.invalid_rows: drop)",
            rows,
        )
        if options.drop_invalid:
            issue.dropped = True
            keep = ~unseen
            validation.rows_dropped += len(rows)
            validation.rows_valid -= len(rows)
            validation._text_hashes = validation._text_hashes[keep]
            validation._labels = validation._labels[keep]
            validation._row_numbers = validation._row_numbers[keep]
            counts = _tally(validation._labels, validation._vocabulary, validation._label_sets or None)
            validation.label_counts = _named_counts(counts, options.label_names)
            if validation.rows is not None:
                validation.rows = validation.rows[validation.rows["row"].isin(validation._row_numbers)]
            if validation.rows_valid <= 0:
                validation.add(
                    Check.NO_VALID_ROWS,
                    Severity.ERROR,
                    "no valid validation rows are left",
                    "fix the validation labels",
                )


# -- validation in a memory-capped child process -----------------------------------------------------
_CHILD_MODULE = "finetune_platform.data.validation"
_CHILD_OPTIONS = (
    "text_column",
    "label_column",
    "task",
    "text_pair_column",
    "label_delimiter",
    "label_names",
    "min_rows_per_class",
    "long_text_chars",
)


_CHILD_SLOTS: dict[int, threading.BoundedSemaphore] = {}
_CHILD_SLOTS_LOCK = threading.Lock()
SLOT_WAIT_SECONDS = 30.0


def _child_slot(concurrency: int) -> threading.BoundedSemaphore:
    with _CHILD_SLOTS_LOCK:
        return _CHILD_SLOTS.setdefault(concurrency, threading.BoundedSemaphore(concurrency))


def validate_in_child(
    train: Path,
    options: ValidationOptions,
    memory_mb: int,
    *,
    concurrency: int = 2,
    timeout_seconds: float = 600.0,
) -> dict[str, Any]:
    """``validate_dataset(train, options).to_json()``, computed by ``python -m finetune_platform.data.validation``
    whose address space may grow by ``memory_mb`` MiB past what it maps at start (RLIMIT_AS, set in the
    child once Python, pandas and pyarrow are loaded: those map about 0.4 GiB whatever the file).

    An upload that decodes to more memory than that stops the child (MemoryError, or a signal where a
    library aborts on a failed allocation) and comes back as DatasetLimitError naming VALIDATION_MEMORY_MB;
    the calling process only ever holds the report. Errors the child raises on purpose come back with their
    message and code. Starting the child (pandas, pyarrow) costs about a second per upload.
    """
    slot = _child_slot(concurrency)
    if not slot.acquire(
        timeout=SLOT_WAIT_SECONDS
    ):  # at most ``concurrency`` children (and their memory) at once
        raise QuotaExceeded(
            f"the server is validating {concurrency} uploads already (VALIDATION_CONCURRENCY); try again shortly"
        )
    try:
        return _validate_in_child(train, options, memory_mb, timeout_seconds)
    finally:
        slot.release()


def _validate_in_child(
    train: Path, options: ValidationOptions, memory_mb: int, timeout_seconds: float
) -> dict[str, Any]:
    limits = options.limits or DatasetLimits.from_settings()
    request = {
        "train": str(Path(train).resolve()),
        "memory_mb": memory_mb,
        "options": {name: getattr(options, name) for name in _CHILD_OPTIONS},
        "limits": asdict(limits),
    }
    try:
        completed = subprocess.run(
            [sys.executable, "-m", _CHILD_MODULE],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_seconds,  # subprocess.run kills the child when it runs out
            # glibc reserves address space per thread arena, which RLIMIT_AS counts: two arenas are plenty
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )
    except subprocess.TimeoutExpired:
        raise DatasetLimitError(
            f"validation took longer than its limit of {timeout_seconds:g} s", "VALIDATION_TIMEOUT_SECONDS"
        ) from None
    answer: dict[str, Any] | None = None
    if completed.returncode == 0:
        try:
            answer = json.loads(completed.stdout)
        except json.JSONDecodeError:
            answer = None
    over_memory = DatasetLimitError(
        f"validation needed more memory than its limit of {memory_mb:,} MiB", "VALIDATION_MEMORY_MB"
    )
    if answer is None:
        if completed.returncode < 0:
            name = signal.Signals(-completed.returncode).name
            logger.warning("upload validation ended with %s: %s", name, completed.stderr[-2000:])
            raise DatasetLimitError(
                f"validation ended with {name}, most likely over its memory limit of {memory_mb:,} MiB",
                "VALIDATION_MEMORY_MB",
            )
        logger.error("upload validation failed (exit %s): %s", completed.returncode, completed.stderr[-4000:])
        if "MemoryError" in completed.stderr:
            raise over_memory
        raise PlatformError("validation of the upload failed unexpectedly; the server log has the cause")
    if "report" in answer:
        return answer["report"]
    if answer.get("memory"):
        raise over_memory
    if answer.get("setting"):
        raise DatasetLimitError(answer["detail"], answer["setting"])
    raise PlatformError(answer["error"], ErrorCode(answer["code"]))


def _child_main() -> None:
    """The child's side: read the request on stdin, cap memory, validate, answer one JSON object."""
    # pyarrow, pyarrow.compute and pyarrow.parquet are loaded (module top, data.loading) before the start is
    # measured: their libraries map a few hundred MiB, whatever the file.
    # Arrow allocates through malloc here: mimalloc would reserve a large arena up front, so the address
    # space would no longer track the memory used.
    pa.set_memory_pool(pa.system_memory_pool())
    request = json.loads(sys.stdin.read())
    cap = _address_space() + (int(request["memory_mb"]) << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        options = ValidationOptions(**request["options"], limits=DatasetLimits(**request["limits"]))
        answer: dict[str, Any] = {"report": validate_dataset(Path(request["train"]), options).to_json()}
    except MemoryError:
        answer = {"memory": True}
    except DatasetLimitError as exc:
        answer = {"detail": exc.detail, "setting": exc.setting}
    except PlatformError as exc:
        answer = {"error": exc.message, "code": exc.code.value}
    sys.stdout.write(json.dumps(answer))


def _address_space() -> int:
    """Bytes of address space this process maps now (Linux; 0 where /proc does not say)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmSize:")[1].split()[0]) << 10


if __name__ == "__main__":
    _child_main()
