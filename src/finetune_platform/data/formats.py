"""The dataset file formats and the suffixes that name them: the one list that validation, training, upload,
prediction and the UI's upload widget accept (standard library only, so the UI image can import it)."""

from __future__ import annotations

import csv
from enum import StrEnum
from pathlib import PurePath


class DatasetFormat(StrEnum):
    """A dataset file format; the value is what an upload records and a validation report shows. Its readers
    are keyed by it: ``data.loading.READERS`` (training, validation, upload) and ``inference.batch`` (prediction)."""

    CSV = "csv"
    TSV = "tsv"
    JSONL = "jsonl"
    JSON = "json"
    PARQUET = "parquet"

    @property
    def suffixes(self) -> tuple[str, ...]:
        """Its file suffixes, lower case, the usual one first."""
        return _SUFFIXES[self]

    @property
    def delimiter(self) -> str | None:
        """The cell separator of a delimited text format, else None."""
        return _DELIMITERS.get(self)

    @property
    def quoting(self) -> int | None:
        """How a delimited text format quotes cells (a ``csv.QUOTE_*`` constant, for ``csv`` and pandas), else
        None. TSV has no quoting, as GLUE ships it: a ``"`` is part of the text wherever it stands."""
        return _QUOTING.get(self)


_SUFFIXES = {
    DatasetFormat.CSV: (".csv",),
    DatasetFormat.TSV: (".tsv", ".tab"),
    DatasetFormat.JSONL: (".jsonl", ".ndjson"),
    DatasetFormat.JSON: (".json",),
    DatasetFormat.PARQUET: (".parquet", ".pq"),
}
_DELIMITERS = {DatasetFormat.CSV: ",", DatasetFormat.TSV: "\t"}
_QUOTING = {DatasetFormat.CSV: csv.QUOTE_MINIMAL, DatasetFormat.TSV: csv.QUOTE_NONE}
BY_SUFFIX = {suffix: fmt for fmt, suffixes in _SUFFIXES.items() for suffix in suffixes}
# In messages and the UI's file picker: sorted, so that a message reads the same however the table grows.
SUFFIXES: tuple[str, ...] = tuple(sorted(BY_SUFFIX))
SUFFIXES_TEXT = ", ".join(SUFFIXES)


def suffix_of(name: str | PurePath) -> str | None:
    """The registered suffix (lower case) that a file name ends with, in any case, or None. A name that is
    only a suffix (".csv") has one; no suffix ends another, so at most one matches."""
    lowered = str(name).lower()
    return next((suffix for suffix in SUFFIXES if lowered.endswith(suffix)), None)


def format_of(name: str | PurePath) -> DatasetFormat | None:
    """The format a file name's suffix names, or None."""
    suffix = suffix_of(name)
    return None if suffix is None else BY_SUFFIX[suffix]


def _any_case(suffix: str) -> str:
    return "".join(f"[{ch}{ch.upper()}]" if ch.isalpha() else ch for ch in suffix.removeprefix("."))


# A file name ending in a registered suffix, in any case, for a JSON Schema ``pattern``: written without
# regex flags, which JSON Schema (ECMA-262) readers of the OpenAPI document would not apply.
NAME_PATTERN = r"^.*[.](" + "|".join(_any_case(suffix) for suffix in SUFFIXES) + r")$"
# The shortest such name: a one-character stem and the shortest suffix ("a.pq"), the upload query's bound.
NAME_MIN_LENGTH = min(len(suffix) for suffix in SUFFIXES) + 1
