"""Class probabilities from a classifier's logits: the one softmax every runtime calls."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: Any, temperature: float = 1.0) -> Any:
    """Probabilities over the last axis, computed in fp32 whatever precision the model ran in, of the logits
    divided by the model's calibration ``temperature`` (1.0: uncalibrated; the argmax never changes).

    A numpy array (ONNX Runtime's output) gives a numpy array; each row's maximum is subtracted before
    ``exp``, so a large logit cannot overflow. A torch tensor gives a tensor on its own device through torch's
    own stable kernel, without a host sync, so a CUDA graph can capture it.
    """
    if isinstance(logits, np.ndarray):
        logits = logits.astype(np.float32, copy=False)
        if temperature != 1.0:
            logits = logits / np.float32(temperature)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.softmax(dim=-1)


def sigmoid(logits: Any) -> Any:
    """Each output's own probability (multi-label), in fp32; numpy stays finite for any logit."""
    if isinstance(logits, np.ndarray):
        logits = logits.astype(np.float32, copy=False)
        # exp of minus the magnitude only: never overflows, both signs exact
        e = np.exp(-np.abs(logits))
        return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32, copy=False)
    return logits.float().sigmoid()


def outputs(
    logits: Any, task: str = "single_label", temperature: float = 1.0, scale: tuple[float, float] = (0.0, 1.0)
) -> Any:
    """What a model's head means, by its label map's task: class probabilities (single_label, calibrated by
    ``temperature``), one probability per label (multi_label) or the predicted number (regression: the
    standardised output times the training targets' std plus their mean, ``scale``), rows × outputs in fp32.
    numpy in, numpy out; a torch tensor stays on its device (a CUDA graph captures this too)."""
    if task == "single_label":
        return softmax(logits, temperature)
    if task == "multi_label":
        return sigmoid(logits)
    if task == "regression":
        mean, std = scale
        if isinstance(logits, np.ndarray):
            return logits.astype(np.float32, copy=False) * np.float32(std) + np.float32(mean)
        return logits.float() * std + mean
    raise ValueError(f"unknown task {task!r}")
