"""Classification metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def summary_metrics(logits: np.ndarray, label_ids: np.ndarray) -> dict[str, float]:
    """The scalar metrics logged at every evaluation."""
    # lazy: scikit-learn loads only when scores are computed
    from sklearn.metrics import accuracy_score, f1_score

    predictions = np.asarray(logits).argmax(axis=-1)
    return {
        "accuracy": float(accuracy_score(label_ids, predictions)),
        "macro_f1": float(f1_score(label_ids, predictions, average="macro", zero_division=0)),
    }


def classification_report(
    logits: np.ndarray, label_ids: np.ndarray, names: tuple[str, ...]
) -> dict[str, Any]:
    """Full report for metrics.json: summary, per-class scores and the confusion matrix (rows = truth)."""
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
