"""Validated train/validation splits, with the label map built from the training rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_platform.data.loading import LabelMap, rows_text
from finetune_platform.data.validation import (
    DatasetValidationError,
    ValidationOptions,
    ValidationReport,
    validate_dataset,
)
from finetune_platform.errors import DatasetError


@dataclass(frozen=True)
class DatasetSplits:
    train: pd.DataFrame  # columns: row, text, label (normalised), label_id
    validation: pd.DataFrame
    label_map: LabelMap
    validation_source: str  # "file:<path>" or "split:<ratio>"
    report: ValidationReport


def load_splits(
    train_file: Path,
    text_column: str,
    label_column: str,
    *,
    validation_file: Path | None = None,
    validation_split: float = 0.1,
    label_names: list[str] | None = None,
    max_train_rows: int | None = None,
    max_validation_rows: int | None = None,
    seed: int = 42,
    tokenizer: Any = None,
    max_length: int | None = None,
    drop_invalid: bool = False,
) -> DatasetSplits:
    """Validate first (refusing invalid data, or dropping invalid rows), then build the splits."""
    options = ValidationOptions(
        text_column=text_column,
        label_column=label_column,
        label_names=label_names,
        tokenizer=tokenizer,
        max_length=max_length,
        drop_invalid=drop_invalid,
        collect_rows=True,
    )
    report = validate_dataset(Path(train_file), options, Path(validation_file) if validation_file else None)
    if not report.ok:
        raise DatasetValidationError(report)
    train = report.file("train").rows
    if max_train_rows is not None:
        train = train.head(max_train_rows)
    label_map = LabelMap.build(train["label"].tolist(), label_names)
    if len(set(train["label"].tolist())) < 2:
        raise DatasetError(
            f"the first {len(train)} training rows hold only one label ({train['label'].iloc[0]!r}); "
            "a classifier needs two: raise data.max_train_rows or shuffle the file"
        )
    train = _with_ids(train, label_map, "training")
    if validation_file is not None:
        validation = report.file("validation").rows
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        validation = _with_ids(validation, label_map, "validation")
        source = f"file:{validation_file}"
    else:
        train, validation = _stratified_split(train, validation_split, seed)
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        source = f"split:{validation_split}"
    return DatasetSplits(
        train.reset_index(drop=True), validation.reset_index(drop=True), label_map, source, report
    )


def _with_ids(frame: pd.DataFrame, label_map: LabelMap, role: str) -> pd.DataFrame:
    lookup = label_map.id_lookup()
    as_text = isinstance(label_map.raw_values[0], str)
    ids = frame["label"].map(lambda value: lookup.get(str(value) if as_text else value))
    unknown = frame.loc[ids.isna(), "row"].tolist()
    if unknown:
        raise DatasetError(
            f"{role}: labels {sorted({str(v) for v in frame.loc[ids.isna(), 'label']})} in {rows_text(unknown)} "
            f"do not occur in the training rows used ({list(label_map.names)}); with data.max_train_rows, "
            "take more rows or shuffle the file"
        )
    return frame.assign(label_id=ids.astype(int))


def _stratified_split(table: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn (slow; not in the API image)

    counts = table["label_id"].value_counts()
    n_validation = max(1, round(len(table) * ratio))
    stratify = table["label_id"] if counts.min() >= 2 and n_validation >= len(counts) else None
    train, validation = train_test_split(table, test_size=n_validation, random_state=seed, stratify=stratify)
    return train, validation
