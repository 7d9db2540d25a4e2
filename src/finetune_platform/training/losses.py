"""The training loss of each task, and what it weighs for imbalanced data.

single_label: cross entropy, optionally class-weighted and focal. multi_label: binary cross entropy with logits, a
mean over rows and labels, optionally with a per-label pos_weight (positives weighted against negatives).
regression: mean squared error on the standardised target. Evaluation never weighs: its loss is the plain
cross entropy, binary cross entropy or squared error (``evaluation_loss``), so runs stay comparable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from finetune_platform.errors import ConfigError

FOCAL_FLOOR = 1e-12


def resolve_class_weights(
    setting: str | dict[str, float],
    names: Sequence[str],
    raw_values: Sequence[int | str],
    train_label_ids: Iterable[Any],
    task: str = "single_label",
) -> tuple[float, ...] | None:
    """One weight per class id (0..K-1) for ``training.class_weights``, or None for 'none'.

    single_label: 'balanced' is rows / (classes × rows of the class) over the classes the training split holds
    (a declared label without rows never appears as a target; it keeps 1). multi_label: the weights are each
    label's pos_weight, and 'balanced' is negatives / positives of the label in the training split (a label
    that no row, or every row, holds keeps 1). A mapping names labels as the data does: by name, or by the raw
    value (an integer label named through data.label_names); labels it leaves out weigh 1.
    """
    if setting == "none":
        return None
    if setting == "balanced" and task == "multi_label":
        return balanced_pos_weights(train_label_ids, len(names))
    if setting == "balanced":
        counts = Counter(int(i) for i in train_label_ids)
        rows, present = sum(counts.values()), len(counts)
        return tuple(
            rows / (present * counts[class_id]) if counts[class_id] else 1.0 for class_id in range(len(names))
        )
    lookup = {name: i for i, name in enumerate(names)}
    for i, raw in enumerate(raw_values):
        lookup.setdefault(str(raw), i)
    weights = [1.0] * len(names)
    for label, weight in setting.items():
        if label not in lookup:
            known = ", ".join(repr(name) for name in names)
            raise ConfigError(
                f"training.class_weights: unknown label {label!r}; the training data's labels are {known}"
            )
        weights[lookup[label]] = float(weight)
    return tuple(weights)


def balanced_pos_weights(train_label_ids: Iterable[Sequence[int]], num_labels: int) -> tuple[float, ...]:
    """Per label: rows without it / rows with it (1 where either count is 0: nothing to balance)."""
    rows = 0
    positives = [0] * num_labels
    for ids in train_label_ids:
        rows += 1
        for label_id in set(ids):
            positives[int(label_id)] += 1
    return tuple((rows - p) / p if 0 < p < rows else 1.0 for p in positives)


def named_weights(weights: Sequence[float] | None, names: Sequence[str]) -> dict[str, float] | None:
    """``{label name: weight}`` as a run records it (rounded to 6 digits for reading)."""
    if weights is None:
        return None
    return {name: round(weight, 6) for name, weight in zip(names, weights, strict=True)}


def row_losses(logits: Any, labels: Any, *, weights: Any = None, gamma: float | None = None) -> Any:
    """Each row's loss: cross entropy, times (1 − p_t)^gamma for focal loss, times its class's weight (α).

    Rows, not weights, are what the caller averages over (torch's weighted mean divides by the weights' sum
    instead), so micro-batches and data-parallel shares of one batch add up to exactly the whole batch's loss.
    """
    log_p = torch.nn.functional.log_softmax(logits.float(), dim=-1).gather(1, labels[:, None]).squeeze(1)
    loss = -log_p
    if gamma is not None:
        # floored: (1 − p_t)^gamma with 0 < gamma < 1 has an infinite gradient where p_t rounds to 1
        loss = (1.0 - log_p.exp()).clamp(min=FOCAL_FLOOR).pow(gamma) * loss
    if weights is not None:
        loss = weights.index_select(0, labels) * loss
    return loss


def multi_label_losses(logits: Any, targets: Any, *, pos_weight: Any = None) -> Any:
    """Each row's binary cross entropy with logits, averaged over its labels; ``pos_weight`` (one per label)
    multiplies the positive term."""
    per_label = torch.nn.functional.binary_cross_entropy_with_logits(
        logits.float(), targets.float(), pos_weight=pos_weight, reduction="none"
    )
    return per_label.mean(dim=1)


def regression_losses(outputs: Any, targets: Any) -> Any:
    """Each row's squared error (one output per row, the standardised target)."""
    return (outputs.float().reshape(-1) - targets.float()) ** 2


def task_row_losses(
    task: str, logits: Any, targets: Any, *, weights: Any = None, gamma: float | None = None
) -> Any:
    """Each row's training loss for ``task`` (the caller averages over rows)."""
    if task == "multi_label":
        return multi_label_losses(logits, targets, pos_weight=weights)
    if task == "regression":
        return regression_losses(logits, targets)
    return row_losses(logits, targets, weights=weights, gamma=gamma)


def evaluation_loss(task: str, logits: Any, targets: Any) -> float:
    """The unweighted mean loss that every evaluation reports: cross entropy (single_label), binary cross entropy
    over rows and labels (multi_label), squared error of the standardised target (regression)."""
    logits, targets = torch.as_tensor(logits), torch.as_tensor(targets)
    if task == "single_label":
        return float(torch.nn.functional.cross_entropy(logits.float(), targets.long()))
    return float(task_row_losses(task, logits, targets).mean())
