"""Plots logged with runs and comparisons: confusion matrix and loss curves (matplotlib, headless)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib  # lazy: matplotlib, only for plots (not in the API image)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib, after choosing the Agg backend

    return plt


def confusion_matrix_png(confusion: dict[str, Any], path: Path, title: str = "Confusion matrix") -> Path:
    plt = _pyplot()
    labels, matrix = confusion["labels"], confusion["matrix"]
    size = max(4.0, 0.8 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(
                j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black"
            )
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def loss_curves_png(
    curves: dict[str, list[tuple[int, float]]], path: Path, title: str = "Training loss"
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, points in curves.items():
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


COMPARE_PLOT = "compare_loss.png"


def comparison_plot_path(run_ids: list[str], run_folders: list[str | None], fallback_root: Path) -> Path:
    """Where a comparison's loss curves go by default: beside the run folders, in
    ``<results>/comparisons/<short run ids>/compare_loss.png`` (``<results>`` holding the first compared run
    that has a run folder), else under ``fallback_root``; never the working directory."""
    folders = [Path(folder) for folder in run_folders if folder]
    # A run folder is <results>/<experiment>/<run>: comparisons live next to the experiments.
    root = folders[0].parent.parent if folders else fallback_root
    name = "-".join(run_id[:8] for run_id in run_ids)
    if len(name) > 120:  # many runs: a short stable name instead of a file name too long for the disk
        name = f"{len(run_ids)}-runs-" + hashlib.sha256(",".join(run_ids).encode()).hexdigest()[:12]
    return root.resolve() / "comparisons" / name / COMPARE_PLOT
