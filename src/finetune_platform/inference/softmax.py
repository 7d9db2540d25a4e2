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
