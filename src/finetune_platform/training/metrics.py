"""Validation metrics by task.

single_label: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix. multi_label: micro- and
macro-F1, subset accuracy (every label of a row right) and per-label precision/recall/F1/support, a label predicted
where its sigmoid probability is above its threshold. regression: RMSE, MAE, Pearson and Spearman correlation, in
the label column's units.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from finetune_platform.training.targets import raw_targets

# 'tune' tries these thresholds for each label: 0.05, 0.10, ..., 0.95.
THRESHOLD_GRID = tuple(round(0.05 * i, 2) for i in range(1, 20))


def _as_thresholds(thresholds: float | Sequence[float], num_labels: int) -> np.ndarray:
    if isinstance(thresholds, int | float):
        return np.full(num_labels, float(thresholds))
    return np.asarray(thresholds, dtype=np.float64)


def label_probabilities(logits: np.ndarray) -> np.ndarray:
    """Each label's sigmoid probability in fp32, as every runtime computes it (``inference.softmax.sigmoid``,
    which training cannot import: inference imports training)."""
    # lazy: scipy loads only when scores are computed
    from scipy.special import expit

    return expit(np.asarray(logits, dtype=np.float32))


def multi_label_predictions(logits: np.ndarray, thresholds: float | Sequence[float]) -> np.ndarray:
    """0/1 per row and label: the label's probability above its threshold."""
    probabilities = label_probabilities(logits)
    return (probabilities > _as_thresholds(thresholds, probabilities.shape[1])).astype(np.int64)


def _f1_per_label(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """F1 of each column (0 where a label is neither predicted nor present, as scikit-learn's zero_division=0)."""
    tp = (predicted & truth).sum(axis=0)
    wrong = (predicted != truth).sum(axis=0)
    denominator = 2 * tp + wrong
    return np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)


def tune_thresholds(probabilities: np.ndarray, targets: np.ndarray) -> tuple[float, ...]:
    """Per label, the THRESHOLD_GRID value with the best F1 on these rows; ties go to the value nearest 0.5, so a
    label whose F1 is the same everywhere (no positive row, say) keeps 0.5."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(targets).astype(np.int64)
    grid = np.asarray(THRESHOLD_GRID)
    # one row per grid value, one column per label
    scores = np.stack([_f1_per_label((probabilities > t).astype(np.int64), truth) for t in grid])
    order = np.argsort(np.abs(grid - 0.5), kind="stable")  # 0.5 first, then 0.45, 0.55, ...
    best = order[np.argmax(scores[order], axis=0)]
    return tuple(float(grid[i]) for i in best)


def _single_label_summary(logits: np.ndarray, targets: np.ndarray, **_: Any) -> dict[str, float]:
    # lazy: scikit-learn loads only when scores are computed
    from sklearn.metrics import accuracy_score, f1_score

    predictions = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(targets, predictions)),
        "macro_f1": float(f1_score(targets, predictions, average="macro", zero_division=0)),
    }


def _multi_label_summary(
    logits: np.ndarray, targets: np.ndarray, *, thresholds: float | Sequence[float] = 0.5, **_: Any
) -> dict[str, float]:
    # lazy: scikit-learn loads only when scores are computed
    from sklearn.metrics import accuracy_score, f1_score

    predicted = multi_label_predictions(logits, thresholds)
    truth = np.asarray(targets).astype(np.int64)
    return {
        "micro_f1": float(f1_score(truth, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, predicted)),
    }


def _correlation(method: Callable[..., Any], x: np.ndarray, y: np.ndarray) -> float:
    """0 where a side is constant (or there are fewer than 2 rows): the correlation is undefined there, and a
    checkpoint ranking needs a number."""
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(method(x, y).statistic)


def _regression_summary(
    logits: np.ndarray, targets: np.ndarray, *, scale: tuple[float, float] = (0.0, 1.0), **_: Any
) -> dict[str, float]:
    # lazy: scipy loads only when scores are computed
    from scipy.stats import pearsonr, spearmanr

    predicted = raw_targets(np.asarray(logits, dtype=np.float32), scale).reshape(-1)
    truth = raw_targets(targets, scale).reshape(-1)
    error = predicted - truth
    return {
        "rmse": float(np.sqrt(np.mean(error**2))),
        "mae": float(np.mean(np.abs(error))),
        "pearson": _correlation(pearsonr, predicted, truth),
        "spearman": _correlation(spearmanr, predicted, truth),
    }


_SUMMARIES: dict[str, Callable[..., dict[str, float]]] = {
    "single_label": _single_label_summary,
    "multi_label": _multi_label_summary,
    "regression": _regression_summary,
}


def summary_metrics(
    logits: np.ndarray,
    targets: np.ndarray,
    task: str = "single_label",
    *,
    thresholds: float | Sequence[float] = 0.5,
    scale: tuple[float, float] = (0.0, 1.0),
) -> dict[str, float]:
    """The scalar metrics logged at every evaluation (eval_<name>): ``targets`` as the loss reads them (class ids,
    multi-hot rows, standardised numbers); ``thresholds`` (multi_label: one for all labels or one per label) and
    ``scale`` (regression: (mean, std) of the training targets) say how to read the outputs."""
    if task not in _SUMMARIES:
        raise ValueError(f"unknown task {task!r}")
    return _SUMMARIES[task](logits, targets, thresholds=thresholds, scale=scale)


def classification_report(
    logits: np.ndarray, label_ids: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """Full single-label report for metrics.json: summary, per-class scores and the confusion matrix (rows = truth)."""
    # lazy: scikit-learn loads only when scores are computed
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    predictions = np.asarray(logits).argmax(axis=-1)
    ids = list(range(len(names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        label_ids, predictions, labels=ids, zero_division=0
    )
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        **summary_metrics(logits, label_ids),
        "per_class": per_class,
        "confusion_matrix": {
            "labels": list(names),
            "matrix": confusion_matrix(label_ids, predictions, labels=ids).tolist(),
        },
        "num_rows": len(label_ids),
    }


def multi_label_report(
    logits: np.ndarray, targets: np.ndarray, names: tuple[str, ...], thresholds: Sequence[float]
) -> dict[str, Any]:
    """Full multi-label report for metrics.json: summary and per-label scores, each with the threshold used."""
    # lazy: scikit-learn loads only when scores are computed
    from sklearn.metrics import precision_recall_fscore_support

    predicted = multi_label_predictions(logits, thresholds)
    truth = np.asarray(targets).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, zero_division=0)
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
            "threshold": float(thresholds[i]),
        }
        for i, name in enumerate(names)
    }
    return {
        **summary_metrics(logits, targets, "multi_label", thresholds=thresholds),
        "per_class": per_class,
        "num_rows": len(truth),
    }


def regression_report(logits: np.ndarray, targets: np.ndarray, scale: tuple[float, float]) -> dict[str, Any]:
    """Full regression report for metrics.json: the errors and correlations in the label column's units."""
    return {**summary_metrics(logits, targets, "regression", scale=scale), "num_rows": len(targets)}


def majority_baseline(
    task: str,
    train_ids: Sequence[Any],
    validation_ids: Sequence[Any],
    names: Sequence[str],
    scale: tuple[float, float] = (0.0, 1.0),
) -> dict[str, Any]:
    """The scores on the validation rows of a model that predicts the training rows' majority whatever the text:
    single_label the most frequent training label (ties: the first); multi_label each label the training rows
    hold more often than not (usually none); regression the training mean. ``train_ids`` and
    ``validation_ids`` are the splits' label_id column (class ids, tuples of label ids, raw targets)."""
    rows = len(validation_ids)
    if task == "single_label":
        majority = int(np.bincount(np.asarray(train_ids, dtype=np.int64), minlength=len(names)).argmax())
        logits = np.zeros((rows, len(names)))
        logits[:, majority] = 1.0
        truth = np.asarray(validation_ids, dtype=np.int64)
        return {"predicts": names[majority], **summary_metrics(logits, truth), "num_rows": rows}
    if task == "multi_label":
        held = _multi_hot(train_ids, len(names)).mean(axis=0) > 0.5
        logits = np.tile(np.where(held, 1.0, -1.0), (rows, 1))
        truth = _multi_hot(validation_ids, len(names))
        scores = summary_metrics(logits, truth, "multi_label", thresholds=0.5)
        return {"predicts": [names[i] for i in np.flatnonzero(held)], **scores, "num_rows": rows}
    mean, std = scale
    standardised = (np.asarray(validation_ids, dtype=np.float64) - mean) / std
    scores = summary_metrics(np.zeros((rows, 1)), standardised, "regression", scale=scale)
    return {"predicts": mean, **scores, "num_rows": rows}


def _multi_hot(label_ids: Sequence[Any], num_labels: int) -> np.ndarray:
    matrix = np.zeros((len(label_ids), num_labels), dtype=np.int64)
    for row, ids in enumerate(label_ids):
        matrix[row, list(ids)] = 1
    return matrix
