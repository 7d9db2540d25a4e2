"""What the model learns to output for each row, by task: a class id (single_label), a multi-hot row of 0/1 per
label (multi_label), or the target standardised by the training targets' mean and std (regression)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def training_targets(
    label_ids: Sequence[Any], task: str, num_labels: int, scale: tuple[float, float]
) -> np.ndarray:
    """``label_ids`` (a split's label_id column) as the loss reads them: int64 (rows,) for single_label, float32
    (rows, num_labels) for multi_label (each row a tuple of label ids, possibly empty), float32 (rows,) of
    (y − mean) / std for regression."""
    if task == "single_label":
        return np.asarray(list(label_ids), dtype=np.int64).reshape(-1)
    if task == "multi_label":
        hot = np.zeros((len(label_ids), num_labels), dtype=np.float32)
        for row, ids in enumerate(label_ids):
            hot[row, list(ids)] = 1.0
        return hot
    if task == "regression":
        mean, std = scale
        return ((np.asarray(list(label_ids), dtype=np.float64) - mean) / std).astype(np.float32)
    raise ValueError(f"unknown task {task!r}")


def raw_targets(targets: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Standardised regression targets (or the model's outputs) back in the label column's units, as
    ``inference.softmax.outputs`` turns a regression output into a prediction."""
    mean, std = scale
    return np.asarray(targets, dtype=np.float64) * std + mean
