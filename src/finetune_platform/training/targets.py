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


# Each label's prior log-odds is clipped here: a label no training row (or every row) holds stays finite.
PRIOR_FLOOR = 1e-4


def prior_log_odds(targets: np.ndarray) -> np.ndarray:
    """Each label's log-odds of being present in a multi-hot (rows, labels) target matrix, from its share of the
    training rows (clipped to [1e-4, 1 − 1e-4])."""
    share = np.clip(np.asarray(targets, dtype=np.float64).mean(axis=0), PRIOR_FLOOR, 1.0 - PRIOR_FLOOR)
    return np.log(share / (1.0 - share))


def init_head_bias(model: Any, targets: np.ndarray) -> bool:
    """Start a multi-label head at each label's prior: its output bias set to ``prior_log_odds``, so the first
    steps learn from the text instead of spending large gradients on pushing rare labels towards their prior
    (with the bias at 0 every label starts at p = 0.5, and a frozen-encoder LoRA run on rare labels can collapse to
    predicting the priors alone). The head is the trainable Linear with a bias and one output per label; False
    where there is none (a decoder's ``score`` has no bias)."""
    import torch  # lazy: torch loads with a model

    width = targets.shape[1]
    heads = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.Linear)
        and module.out_features == width
        and module.bias is not None
        and module.bias.requires_grad
    ]
    if len(heads) != 1:
        return False
    with torch.no_grad():
        heads[0].bias.copy_(torch.as_tensor(prior_log_odds(targets), dtype=heads[0].bias.dtype))
    return True
