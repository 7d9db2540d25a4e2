"""The one softmax: numpy (ONNX Runtime's logits) and torch (PyTorch's, eager or in a CUDA graph) give the
same probabilities as ``torch.softmax`` in fp32, stay finite for logits whose ``exp`` overflows, and no other
module computes probabilities itself."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune_platform.inference.softmax import softmax

SOURCE = Path(__file__).resolve().parents[2] / "src" / "finetune_platform"
LOGITS = [
    [[0.3, -1.2], [2.5, 2.5], [-4.0, 7.5]],
    [[1000.0, 999.0, -1000.0], [-800.0, -801.0, -799.5]],  # naive exp overflows / underflows to 0/0
    [[60000.0, -60000.0]],  # the largest fp16 magnitudes
]


@pytest.mark.parametrize("rows", LOGITS)
@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_numpy_and_torch_agree_with_torch_softmax_in_fp32(rows, dtype):
    logits = np.asarray(rows, dtype=dtype)
    expected = torch.softmax(torch.from_numpy(logits).float(), dim=-1).numpy()
    from_numpy = softmax(logits)
    from_torch = softmax(torch.from_numpy(logits))
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    assert isinstance(from_torch, torch.Tensor) and from_torch.dtype == torch.float32
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(from_torch.numpy(), expected)
    assert np.isfinite(from_numpy).all()
    np.testing.assert_allclose(from_numpy.sum(axis=-1), 1.0, rtol=1e-6)


def test_bf16_logits_are_turned_into_fp32_probabilities():
    logits = torch.tensor([[3.0, 1.0, -2.0]], dtype=torch.bfloat16)
    probabilities = softmax(logits)
    assert probabilities.dtype == torch.float32
    assert torch.equal(probabilities, torch.softmax(logits.float(), dim=-1))


def test_the_last_axis_is_normalised_for_any_rank():
    logits = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32)
    np.testing.assert_allclose(softmax(logits).sum(axis=-1), np.ones((2, 3)), rtol=1e-6)
    assert softmax(logits).argmax(axis=-1).tolist() == logits.argmax(axis=-1).tolist()


# Training objectives, never a served prediction: the focal loss's p_t (losses.py) and the log-loss a temperature is
# fitted to (calibration.py). Each is named with the lines it may have; a new exponential anywhere else fails.
OBJECTIVE_MATH = {"training/losses.py": 1, "training/calibration.py": 7}


def test_no_other_module_computes_a_softmax():
    """Every runtime (onnx, onnx-int8, torch, torch + CUDA graphs) goes through ``softmax``: no other module
    calls a softmax or an exponential (torch.softmax, tensor.softmax, np.exp, math.exp) of its own, but the
    training objectives named in OBJECTIVE_MATH, which no runtime imports to predict."""
    written = re.compile(r"\w\.(?:softmax|exp)\(")
    found = [
        f"{path.relative_to(SOURCE)}:{number}"
        for path in sorted(SOURCE.rglob("*.py"))
        if path != SOURCE / "inference" / "softmax.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if written.search(line)
    ]
    counted = {name: sum(1 for place in found if place.startswith(f"{name}:")) for name in OBJECTIVE_MATH}
    assert counted == OBJECTIVE_MATH
    assert [place for place in found if place.split(":")[0] not in OBJECTIVE_MATH] == []
    for module in SOURCE.glob(
        "inference/*.py"
    ):  # a runtime reads a stored temperature, never computes with one
        text = module.read_text(encoding="utf-8")
        assert "calibration import probabilities" not in text and "losses" not in text, module.name
