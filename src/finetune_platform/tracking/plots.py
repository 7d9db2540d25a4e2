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


CELL_MOST, CELL_LEAST = 56, 4  # pixels of one cell of the confusion matrix
CELL_TEXT = 28  # the smallest cell that shows its count
MATRIX_SIDE = 640  # the matrix is this wide at most, up to 160 labels (4-pixel cells beyond)
MOST_DRAWN = 1000  # more labels than this: the image says so instead (a 4,000-pixel square at most)


def _blue(share: float) -> tuple[int, int, int]:
    """White (0) to dark blue (1), as matplotlib's Blues map runs."""
    low, high = (247, 251, 255), (8, 48, 107)
    return tuple(round(a + (b - a) * share) for a, b in zip(low, high, strict=True))


def confusion_matrix_png(confusion: dict[str, Any], path: Path, title: str = "Confusion matrix") -> Path:
    """Rows true, columns predicted, each cell shaded by its count (and showing it, where it fits). Drawn with
    Pillow: a tracked run pays milliseconds for it, not matplotlib's seconds of import and layout."""
    from PIL import Image, ImageDraw  # lazy: drawing only when a run is tracked

    labels, matrix = confusion["labels"], confusion["matrix"]
    count = max(len(labels), 1)
    if count > MOST_DRAWN:
        image = Image.new("RGB", (480, 60), "white")
        ImageDraw.Draw(image).text((8, 24), f"{title}: {count} labels, too many to draw", fill="black")
        image.save(Path(path), format="PNG")
        return Path(path)
    cell = max(CELL_LEAST, min(CELL_MOST, MATRIX_SIDE // count))
    margin = 120 if cell >= 12 else 40  # room for the label names, where they are drawn
    side = cell * count
    image = Image.new("RGB", (margin + side + 20, 30 + side + 30), "white")
    draw = ImageDraw.Draw(image)
    peak = max((max(row) for row in matrix if row), default=0) or 1
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            box = [margin + j * cell, 30 + i * cell, margin + (j + 1) * cell - 1, 30 + (i + 1) * cell - 1]
            draw.rectangle(box, fill=_blue(value / peak))
            if cell >= CELL_TEXT:
                colour = "white" if value > peak / 2 else "black"
                draw.text((box[0] + 4, box[1] + cell // 2 - 6), str(value), fill=colour)
    if cell >= 12:
        fits = max(1, (margin - 8) // 6)  # the default font is ~6 pixels a character
        for i, label in enumerate(labels):
            draw.text((4, 30 + i * cell + cell // 2 - 6), str(label)[:fits], fill="black")
            draw.text((margin + i * cell + 2, 34 + side), str(label)[: max(1, cell // 6)], fill="black")
    draw.text((margin, 8), title, fill="black")
    draw.text((4, 12), "true \\ predicted", fill="black")
    path = Path(path)
    image.save(path, format="PNG")
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
