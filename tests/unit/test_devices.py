import pytest

from finetune_platform.errors import DeviceError
from finetune_platform.training.config import Device, Precision
from finetune_platform.training.devices import Accelerators, select_device, select_precision

CPU_ONLY = Accelerators(cuda=False, mps=False)
CUDA = Accelerators(cuda=True, mps=False, cuda_bf16=True)
OLD_CUDA = Accelerators(cuda=True, mps=False, cuda_bf16=False)
MAC = Accelerators(cuda=False, mps=True)


@pytest.mark.parametrize(
    ("available", "expected"),
    [
        (CPU_ONLY, Device.CPU),
        (CUDA, Device.CUDA),
        (MAC, Device.MPS),
        (Accelerators(cuda=True, mps=True), Device.CUDA),
    ],
)
def test_auto_prefers_cuda_then_mps_then_cpu(available, expected):
    assert select_device(Device.AUTO, available) is expected


def test_explicit_device_that_is_missing_is_refused():
    with pytest.raises(DeviceError, match="device: 'cuda' was requested but no CUDA device is available"):
        select_device(Device.CUDA, CPU_ONLY)
    with pytest.raises(DeviceError, match="device: 'mps' was requested but Apple MPS is not available"):
        select_device(Device.MPS, CUDA)
    assert select_device(Device.CPU, CUDA) is Device.CPU


@pytest.mark.parametrize(
    ("device", "available", "expected"),
    [
        (Device.CUDA, CUDA, Precision.BF16),
        (Device.CUDA, OLD_CUDA, Precision.FP16),
        (Device.CPU, CPU_ONLY, Precision.FP32),
        (Device.MPS, MAC, Precision.FP32),
        (Device.CPU, Accelerators(cuda=False, mps=False, cpu_bf16=True), Precision.BF16),
    ],
)
def test_auto_precision(device, available, expected):
    assert select_precision(Precision.AUTO, device, available) is expected


def test_unsupported_precisions_are_refused():
    with pytest.raises(DeviceError, match="precision: 'fp16' is not supported on the CPU"):
        select_precision(Precision.FP16, Device.CPU, CPU_ONLY)
    with pytest.raises(DeviceError, match="precision: this CUDA device has no bf16 support"):
        select_precision(Precision.BF16, Device.CUDA, OLD_CUDA)
    assert select_precision(Precision.BF16, Device.CPU, CPU_ONLY) is Precision.BF16


def test_detect_matches_this_machine():
    import torch

    detected = Accelerators.detect()
    assert detected.cuda == torch.cuda.is_available()
