"""Temperature scaling and the expected calibration error, against numbers worked out by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from finetune_platform.inference.softmax import softmax
from finetune_platform.training.calibration import (
    CALIBRATION_FILE,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
    read_temperature,
    reliability,
)


def overconfident(count: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``temperature`` times too sharp: labels drawn from softmax(z), the model says softmax(T·z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.5, size=(count, 3))
    truth = probabilities(z)
    labels = np.array([rng.choice(3, p=row) for row in truth])
    return z * temperature, labels


def test_the_fitted_temperature_undoes_overconfidence_and_keeps_every_prediction():
    logits, labels = overconfident(20_000, 2.5)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(2.5, abs=0.1)
    result = calibrate(logits, labels)
    assert result.temperature == pytest.approx(temperature, abs=1e-5)
    assert result.ece_after < result.ece_before / 3 and result.nll_after < result.nll_before
    assert (probabilities(logits).argmax(1) == probabilities(logits, temperature).argmax(1)).all()


def test_a_calibrated_model_keeps_a_temperature_of_one_and_one_class_cannot_be_fitted():
    logits, labels = overconfident(20_000, 1.0, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.06)
    assert fit_temperature(logits, np.zeros(len(labels), dtype=int)) == 1.0  # one class: nothing to fit
    assert fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int)) == 1.0
    perfect = np.array([[3.0, -3.0], [-2.0, 2.0], [1.0, 0.5]])
    assert (
        fit_temperature(perfect, np.array([0, 1, 0])) == 1.0
    )  # right on every row: no evidence of over-confidence
    assert fit_temperature(perfect, np.array([0, 1, 1])) != 1.0


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2]])
    labels = np.array([0, 1])  # right at 0.9, wrong at 0.8
    # bin (0.867, 0.933]: accuracy 1, confidence 0.9; bin (0.733, 0.8]: accuracy 0, confidence 0.8
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.1 + 0.5 * 0.8)
    table = reliability(probs, labels)
    assert len(table) == 15 and sum(b["count"] for b in table) == 2
    assert negative_log_likelihood(np.log(probs), labels) == pytest.approx(-(np.log(0.9) + np.log(0.2)) / 2)


def test_every_runtime_softmax_divides_by_the_temperature():
    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 0.3]], dtype=np.float32)
    expected = probabilities(logits, 1.7)
    assert np.allclose(softmax(logits, 1.7), expected, atol=1e-6)
    assert np.allclose(softmax(torch.from_numpy(logits), 1.7).numpy(), expected, atol=1e-6)
    assert np.allclose(softmax(logits), probabilities(logits), atol=1e-6)


def test_the_stored_temperature_is_read_back_and_a_bad_one_ignored(tmp_path):
    assert read_temperature(tmp_path) == 1.0  # no calibration.json: uncalibrated
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "temperature", "temperature": 1.8}))
    assert read_temperature(tmp_path) == 1.8
    (tmp_path / CALIBRATION_FILE).write_text(json.dumps({"method": "temperature", "temperature": 1e6}))
    assert read_temperature(tmp_path) == 1.0


def test_the_reliability_diagram_draws_each_bins_accuracy(tmp_path):
    from PIL import Image

    from finetune_platform.training.calibration import MARGIN, PANEL, reliability_png

    # every row 0.9 confident (logit gap ln 9) and right: one bar, 0.8-0.867 of confidence, reaching accuracy 1
    logits = np.tile([[np.log(9.0), 0.0]], (30, 1))
    labels = np.zeros(30, dtype=int)
    calibration = calibrate(logits, labels)
    path = reliability_png(logits, labels, calibration, tmp_path / "reliability.png")
    image = Image.open(path).convert("RGB")
    assert image.size == (2 * (PANEL + 2 * MARGIN), PANEL + 2 * MARGIN)

    def pixel(panel: int, confidence: float, accuracy: float) -> tuple[int, int, int]:
        left = panel * (PANEL + 2 * MARGIN) + MARGIN
        return image.getpixel((round(left + confidence * PANEL), round(MARGIN + (1 - accuracy) * PANEL)))

    bar = (31, 119, 180)
    for panel in (0, 1):  # a model right on every row keeps T = 1: the same bar after scaling
        assert pixel(panel, 0.9, 0.5) == bar and pixel(panel, 0.9, 0.98) == bar
        assert pixel(panel, 0.3, 0.5) == (255, 255, 255)  # no rows there: no bar
