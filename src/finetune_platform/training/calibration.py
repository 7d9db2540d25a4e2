"""Calibrated scores: temperature scaling fitted on the validation set, and how well probabilities match
accuracy before and after (expected calibration error, a reliability diagram).

A classifier's softmax is often over-confident. Dividing its logits by one temperature T > 0, chosen to minimise
the validation set's negative log-likelihood, makes its probabilities honest without changing a single argmax
(accuracy is unchanged). The temperature is stored with the model (``artifacts/calibration.json``) and every
inference runtime divides by it (``inference.softmax``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_platform.atomic import write_atomic

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
# The search range of T: at most 20× sharper or flatter. An optimum beyond an end (a barely trained model's logits,
# all near 0, want T far below 1 and would read as certainties) is kept at that end. A stored value outside the
# range is not trusted (read as 1).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def probabilities(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    top = scaled.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_norm - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the mean negative log-likelihood of ``labels`` under softmax(logits / T).

    One parameter and a convex-in-practice objective: a golden-section search over log T is exact enough and
    needs no optimiser state (or torch)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return 1.0
    if (
        logits.argmax(axis=1) == labels
    ).all():  # never wrong here: the log-loss only falls as T -> 0, says nothing
        return 1.0
    low, high = np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = low, high
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc = negative_log_likelihood(logits, labels, float(np.exp(c)))
    fd = negative_log_likelihood(logits, labels, float(np.exp(d)))
    for _ in range(100):  # the bracket shrinks by 0.618 each round: far below 1e-6 in log T
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = negative_log_likelihood(logits, labels, float(np.exp(c)))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = negative_log_likelihood(logits, labels, float(np.exp(d)))
    return float(np.clip(np.exp((a + b) / 2.0), MIN_TEMPERATURE, MAX_TEMPERATURE))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """Per confidence bin (equal width over [0, 1]): rows, mean confidence and accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    table = []
    for index in range(bins):
        low, high = edges[index], edges[index + 1]
        inside = (
            (confidence > low) & (confidence <= high) if index else (confidence >= low) & (confidence <= high)
        )
        count = int(inside.sum())
        table.append({
            "low": float(low), "high": float(high), "count": count,
            "confidence": float(confidence[inside].mean()) if count else 0.0,
            "accuracy": float(correct[inside].mean()) if count else 0.0,
        })  # fmt: skip
    return table


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Σ over bins of (rows in bin / rows) × |accuracy − mean confidence|: 0 is perfectly calibrated."""
    total = len(labels)
    if total == 0:
        return 0.0
    return float(
        sum(
            b["count"] / total * abs(b["accuracy"] - b["confidence"])
            for b in reliability(probs, labels, bins)
        )
    )


@dataclass(frozen=True)
class Calibration:
    method: str  # "temperature"
    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    bins: int = ECE_BINS

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def calibrate(logits: np.ndarray, labels: np.ndarray) -> Calibration:
    temperature = fit_temperature(logits, labels)
    return Calibration(
        method="temperature",
        temperature=round(temperature, 6),
        ece_before=expected_calibration_error(probabilities(logits), labels),
        ece_after=expected_calibration_error(probabilities(logits, temperature), labels),
        nll_before=negative_log_likelihood(logits, labels),
        nll_after=negative_log_likelihood(logits, labels, temperature),
    )


def write_calibration(artifacts_dir: Path, calibration: Calibration) -> Path:
    path = Path(artifacts_dir) / CALIBRATION_FILE
    write_atomic(
        path, json.dumps({"method": calibration.method, "temperature": calibration.temperature}, indent=2)
    )
    return path


def read_temperature(folder: Path) -> float:
    """The temperature stored beside a model's label map; 1.0 when there is none (an uncalibrated model)."""
    path = Path(folder) / CALIBRATION_FILE
    if not path.is_file():
        return 1.0
    value = float(json.loads(path.read_text(encoding="utf-8")).get("temperature", 1.0))
    return value if MIN_TEMPERATURE <= value <= MAX_TEMPERATURE else 1.0


PANEL = 360  # pixels of one panel's plot square
MARGIN = 48


def reliability_png(logits: np.ndarray, labels: np.ndarray, calibration: Calibration, path: Path) -> Path:
    """The reliability diagram before and after scaling: accuracy against confidence per bin (bars), the dashed
    diagonal being perfect calibration. Drawn with Pillow, not matplotlib: a run pays milliseconds for it, not
    the seconds matplotlib's import and layout take."""
    from PIL import Image, ImageDraw  # lazy: drawing only when a run is calibrated

    width = 2 * (PANEL + 2 * MARGIN)
    image = Image.new("RGB", (width, PANEL + 2 * MARGIN), "white")
    draw = ImageDraw.Draw(image)
    panels = (
        ("before", 1.0, calibration.ece_before),
        (f"after (T = {calibration.temperature:.3f})", calibration.temperature, calibration.ece_after),
    )
    for index, (title, temperature, ece) in enumerate(panels):
        left, top = index * (PANEL + 2 * MARGIN) + MARGIN, MARGIN

        def point(x: float, y: float, left: int = left, top: int = top) -> tuple[float, float]:
            return left + x * PANEL, top + (1.0 - y) * PANEL

        for bin_ in reliability(probabilities(logits, temperature), labels, calibration.bins):
            if bin_["count"]:
                pad = 0.025 / calibration.bins
                corner = point(bin_["low"] + pad, bin_["accuracy"])
                draw.rectangle([corner, point(bin_["high"] - pad, 0.0)], fill=(31, 119, 180), outline="black")
        steps = 40  # the diagonal, dashed
        for step in range(0, steps, 2):
            draw.line(
                [point(step / steps, step / steps), point((step + 1) / steps, (step + 1) / steps)], "gray", 2
            )
        draw.rectangle([point(0.0, 1.0), point(1.0, 0.0)], outline="black")
        for tick in (0.0, 0.5, 1.0):
            x, y = point(tick, 0.0)
            draw.text((x - 8, y + 4), f"{tick:g}", fill="black")
            x, y = point(0.0, tick)
            draw.text((x - 22, y - 6), f"{tick:g}", fill="black")
        draw.text((left, top - 30), f"{title}: ECE {ece:.4f}", fill="black")
        draw.text((left + PANEL / 2 - 30, top + PANEL + 20), "confidence", fill="black")
        draw.text((left - MARGIN + 2, top - 14), "accuracy", fill="black")
    path = Path(path)
    image.save(path, format="PNG")
    return path
