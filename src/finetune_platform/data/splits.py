"""Train/validation splits of a loaded dataset, with the label map built from the training rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from finetune_platform.data.loading import LabelMap, load_table


@dataclass(frozen=True)
class DatasetSplits:
    train: pd.DataFrame  # columns text, label (raw), label_id
    validation: pd.DataFrame
    label_map: LabelMap
    validation_source: str  # "file:<path>" or "split:<ratio>"


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
) -> DatasetSplits:
    train = load_table(train_file, text_column, label_column)
    if max_train_rows is not None:
        train = train.head(max_train_rows)
    label_map = LabelMap.build(train["label"], label_names)
    train = train.assign(label_id=label_map.encode(train, train_file))
    if validation_file is not None:
        validation = load_table(validation_file, text_column, label_column)
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        validation = validation.assign(label_id=label_map.encode(validation, validation_file))
        source = f"file:{validation_file}"
    else:
        train, validation = _stratified_split(train, validation_split, seed)
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        source = f"split:{validation_split}"
    return DatasetSplits(train.reset_index(drop=True), validation.reset_index(drop=True), label_map, source)


def _stratified_split(table: pd.DataFrame, ratio: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    from sklearn.model_selection import train_test_split

    counts = table["label_id"].value_counts()
    n_validation = max(1, round(len(table) * ratio))
    stratify = table["label_id"] if counts.min() >= 2 and n_validation >= len(counts) else None
    train, validation = train_test_split(table, test_size=n_validation, random_state=seed, stratify=stratify)
    return train, validation
