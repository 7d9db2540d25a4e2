"""The training loss for imbalanced data: class weights (resolved from the training split) and focal loss.

Evaluation never uses these: its loss is the plain unweighted cross entropy, so runs stay comparable.
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
    train_label_ids: Iterable[int],
) -> tuple[float, ...] | None:
    """One weight per class id (0..K-1) for ``training.class_weights``, or None for 'none'.

    'balanced' is rows / (classes × rows of the class) over the classes the training split holds (a declared
    label without rows never appears as a target; it keeps 1). A mapping names labels as the data does: by
    name, or by the raw value (an integer label named through data.label_names); labels it leaves out weigh 1.
    """
    if setting == "none":
        return None
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
