"""Class probabilities from a classifier's logits: the one softmax every runtime calls."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: Any) -> Any:
    """Probabilities over the last axis, computed in fp32 whatever precision the model ran in.

    A numpy array (ONNX Runtime's output) gives a numpy array; each row's maximum is subtracted before
    ``exp``, so a large logit cannot overflow. A torch tensor gives a tensor on its own device through torch's
    own stable kernel, without a host sync, so a CUDA graph can capture it.
    """
    if isinstance(logits, np.ndarray):
        logits = logits.astype(np.float32, copy=False)
        shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return shifted / shifted.sum(axis=-1, keepdims=True)
    return logits.float().softmax(dim=-1)
