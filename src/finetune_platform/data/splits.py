"""Validated train/validation splits, with the label map built from the training rows."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_platform.data.loading import LabelMap, rows_text
from finetune_platform.data.validation import (
    MULTI_LABEL,
    REGRESSION,
    SINGLE_LABEL,
    DatasetValidationError,
    ValidationOptions,
    ValidationReport,
    validate_dataset,
    validation_rows,
)
from finetune_platform.errors import DatasetError

TARGET_BINS = 10  # regression: quantile bins of the target that the validation split is stratified on


@dataclass(frozen=True)
class DatasetSplits:
    # columns: row, text, [text_pair,] label (normalised), label_id. label_id per task: single_label the class
    # id; multi_label a tuple of sorted label ids (maybe empty); regression the target (a float, raw units).
    train: pd.DataFrame
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
    task: str = SINGLE_LABEL,
    text_pair_column: str | None = None,
    label_delimiter: str = ",",
) -> DatasetSplits:
    """Validate first (refusing invalid data, or dropping invalid rows), then build the splits."""
    options = ValidationOptions(
        text_column=text_column,
        label_column=label_column,
        task=task,
        text_pair_column=text_pair_column,
        label_delimiter=label_delimiter,
        label_names=label_names,
        tokenizer=tokenizer,
        max_length=max_length,
        drop_invalid=drop_invalid,
        collect_rows=True,
        validation_split=None if validation_file is not None else validation_split,
    )
    task = options.task
    report = validate_dataset(Path(train_file), options, Path(validation_file) if validation_file else None)
    if not report.ok:
        raise DatasetValidationError(report)
    train = report.file("train").rows
    if max_train_rows is not None:
        train = train.head(max_train_rows)
    pair = text_pair_column is not None
    if task == REGRESSION:
        # ids are the targets themselves; the scale comes from the training rows once they are split
        label_map = LabelMap((label_column,), (), task=REGRESSION, pair=pair)
        train = train.assign(label_id=train["label"].astype(float))
    else:
        label_map = _label_map(train, task, label_names, pair)
        train = _with_ids(train, label_map, "training")
    if validation_file is not None:
        validation = report.file("validation").rows
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        if task == REGRESSION:
            validation = validation.assign(label_id=validation["label"].astype(float))
        else:
            validation = _with_ids(validation, label_map, "validation")
        source = f"file:{validation_file}"
    else:
        train, validation = _stratified_split(
            train, validation_split, seed, _strata(train, task), cover=task == SINGLE_LABEL
        )
        if max_validation_rows is not None:
            validation = validation.head(max_validation_rows)
        source = f"split:{validation_split}"
    if task == REGRESSION:
        label_map = replace(label_map, scale=_scale(train["label_id"].to_numpy(dtype=np.float64)))
    return DatasetSplits(
        train.reset_index(drop=True), validation.reset_index(drop=True), label_map, source, report
    )


def _label_map(train: pd.DataFrame, task: str, label_names: list[str] | None, pair: bool) -> LabelMap:
    """From the training rows used: their labels (multi_label: every label of every row)."""
    if task == MULTI_LABEL:
        values = [label for labels in train["label"] for label in labels]
        seen = list(dict.fromkeys(values))
        if len(seen) < 2:
            held = f"only the label {seen[0]!r}" if seen else "no label"
            raise DatasetError(
                f"the first {len(train)} training rows hold {held}; a multi-label classifier needs two: raise "
                "data.max_train_rows or shuffle the file"
            )
        if label_names is not None:  # validation turned every label into its index among the declared names
            return LabelMap(tuple(label_names), tuple(range(len(label_names))), task=MULTI_LABEL, pair=pair)
        return replace(LabelMap.build(values), task=MULTI_LABEL, pair=pair)
    label_map = replace(LabelMap.build(train["label"].tolist(), label_names), pair=pair)
    if len(set(train["label"].tolist())) < 2:
        raise DatasetError(
            f"the first {len(train)} training rows hold only one label ({train['label'].iloc[0]!r}); "
            "a classifier needs two: raise data.max_train_rows or shuffle the file"
        )
    return label_map


def _scale(targets: np.ndarray) -> tuple[float, float]:
    """(mean, std) of the training targets (ddof 0): what the model's standardised output is scaled back by."""
    std = float(targets.std(ddof=0))
    if std == 0:
        raise DatasetError(
            f"the {len(targets)} training rows used all have the target {targets[0]:g}; a regression needs targets "
            "that vary: raise data.max_train_rows or shuffle the file"
        )
    return float(targets.mean()), std


def _with_ids(frame: pd.DataFrame, label_map: LabelMap, role: str) -> pd.DataFrame:
    lookup = label_map.id_lookup()
    as_text = isinstance(label_map.raw_values[0], str)

    def label_id(value: Any) -> Any:
        return lookup.get(str(value) if as_text else value)

    if label_map.task == MULTI_LABEL:
        ids = frame["label"].map(lambda labels: tuple(map(label_id, labels)))
        known = ids.map(lambda found: None not in found)
        unknown_labels = {
            str(v) for labels in frame.loc[~known, "label"] for v in labels if label_id(v) is None
        }
        ids = ids.map(lambda found: tuple(sorted(found)) if None not in found else None)
    else:
        ids = frame["label"].map(label_id)
        known = ids.notna()
        unknown_labels = {str(v) for v in frame.loc[~known, "label"]}
    unknown = frame.loc[~known, "row"].tolist()
    if unknown:
        raise DatasetError(
            f"{role}: labels {sorted(unknown_labels)} in {rows_text(unknown)} "
            f"do not occur in the training rows used ({list(label_map.names)}); with data.max_train_rows, "
            "take more rows or shuffle the file"
        )
    if label_map.task == MULTI_LABEL:
        return frame.assign(label_id=ids)
    return frame.assign(label_id=ids.astype(int))


def _strata(table: pd.DataFrame, task: str) -> pd.Series:
    """What the validation split keeps the proportions of: the class; multi_label, each row's rarest label
    (-1: no label); regression, the target's quantile bin."""
    if task == MULTI_LABEL:
        frequency = pd.Series([i for ids in table["label_id"] for i in ids]).value_counts()
        return table["label_id"].map(lambda ids: min(ids, key=lambda i: (frequency[i], i)) if ids else -1)
    if task == REGRESSION:
        bins = pd.qcut(table["label_id"], TARGET_BINS, labels=False, duplicates="drop")
        return bins.fillna(-1).astype(int)  # one value throughout: no bins
    return table["label_id"]


def _stratified_split(
    table: pd.DataFrame, ratio: float, seed: int, strata: pd.Series, *, cover: bool = False
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified on ``strata`` where every stratum has two rows and the validation rows cover them all;
    random otherwise. With ``cover`` (single_label: the strata are the labels), a stratified split then holds a
    row of every stratum: proportional allocation may leave a small one out next to a large one."""
    from sklearn.model_selection import train_test_split  # lazy: scikit-learn (slow; not in the API image)

    counts = strata.value_counts()
    n_validation = validation_rows(len(table), ratio)
    stratify = strata if counts.min() >= 2 and n_validation >= len(counts) else None
    train, validation = train_test_split(table, test_size=n_validation, random_state=seed, stratify=stratify)
    if cover and stratify is not None:
        train, validation = _cover_strata(train, validation, strata)
    return train, validation


def _cover_strata(
    train: pd.DataFrame, validation: pd.DataFrame, strata: pd.Series
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Swap a training row of each stratum missing from the validation rows for a validation row of the stratum
    it holds most of: the same sizes, every stratum on both sides (each has two rows, and there are at least as
    many validation rows as strata)."""
    for stratum in sorted(set(strata[train.index]) - set(strata[validation.index])):
        held = strata[validation.index].value_counts()
        given = validation.index[strata[validation.index] == held.index[0]][-1]
        taken = train.index[strata[train.index] == stratum][0]
        given_row, taken_row = validation.loc[[given]], train.loc[[taken]]
        validation = pd.concat([validation.drop(index=given), taken_row])
        train = pd.concat([train.drop(index=taken), given_row])
    return train, validation
