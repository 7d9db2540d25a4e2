"""Device and precision selection: auto picks CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from finetune_platform.errors import ConfigError, DeviceError
from finetune_platform.training.config import Device, Precision, Quantization, TrainConfig


@dataclass(frozen=True)
class Accelerators:
    """What this machine offers; a value object so selection is testable without the hardware."""

    cuda: bool
    mps: bool
    cuda_bf16: bool = False
    cpu_bf16: bool = False  # native bf16 matrix units (AVX512-BF16 or AMX)

    @classmethod
    def detect(cls) -> Accelerators:
        # lazy: torch loads only where a model runs
        import torch

        cuda = torch.cuda.is_available()
        mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        cpu = torch.cpu
        cpu_bf16 = any(
            getattr(cpu, probe, lambda: False)()
            for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        )
        return cls(cuda=cuda, mps=mps, cuda_bf16=cuda and torch.cuda.is_bf16_supported(), cpu_bf16=cpu_bf16)


def select_device(requested: Device, available: Accelerators | None = None) -> Device:
    available = available or Accelerators.detect()
    if requested is Device.AUTO:
        if available.cuda:
            return Device.CUDA
        if available.mps:
            return Device.MPS
        return Device.CPU
    if requested is Device.CUDA and not available.cuda:
        raise DeviceError("device: 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    if requested is Device.MPS and not available.mps:
        raise DeviceError("device: 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'")
    return requested


def select_precision(
    requested: Precision, device: Device, available: Accelerators | None = None
) -> Precision:
    available = available or Accelerators.detect()
    if requested is Precision.AUTO:
        if device is Device.CUDA:
            return Precision.BF16 if available.cuda_bf16 else Precision.FP16
        if device is Device.CPU and available.cpu_bf16:
            # bf16 autocast with fp32 master weights: measured ~2x faster on AVX512-BF16 CPUs at equal
            # accuracy (bench/train_throughput.py); CPUs without native bf16 would only emulate it.
            return Precision.BF16
        return Precision.FP32
    if requested is Precision.FP16 and device is Device.CPU:
        raise DeviceError("precision: 'fp16' is not supported on the CPU; use 'bf16' or 'fp32'")
    if requested is Precision.BF16 and device is Device.CUDA and not available.cuda_bf16:
        raise DeviceError("precision: this CUDA device has no bf16 support; use 'fp16' or 'fp32'")
    return requested


def check_device(config: TrainConfig, available: Accelerators | None = None) -> Device:
    """The device a config trains on, or a DeviceError naming the device (and precision) this machine lacks:
    called before anything is written for a run."""
    available = available or Accelerators.detect()
    device = select_device(config.device, available)
    select_precision(config.precision, device, available)
    check_devices(config, device)
    check_quantization(config, device, bitsandbytes=importlib.util.find_spec("bitsandbytes") is not None)
    return device


def check_quantization(config: TrainConfig, device: Device, *, bitsandbytes: bool) -> None:
    """``model.quantization: 4bit`` trains here only on CUDA with bitsandbytes installed: ConfigError saying
    what this machine lacks."""
    if config.model.quantization is Quantization.NONE or (device is Device.CUDA and bitsandbytes):
        return
    missing = []
    if device is not Device.CUDA:
        missing.append(f"no CUDA device (the run would train on {device.value})")
    if not bitsandbytes:
        missing.append("no bitsandbytes package")
    raise ConfigError(
        "model.quantization: 4bit needs CUDA and the bitsandbytes package (pip install bitsandbytes); "
        f"this machine has {' and '.join(missing)}"
    )


def check_devices(config: TrainConfig, device: Device) -> None:
    """``training.devices`` processes fit this machine: one per visible GPU on CUDA, any number on the CPU."""
    wanted = config.training.devices
    if wanted == 1:
        return
    if device is Device.MPS:
        raise ConfigError(f"training.devices: {wanted} processes need CUDA GPUs (or the CPU); MPS runs one")
    if device is Device.CUDA:
        # lazy: torch loads only where a model runs
        import torch

        visible = torch.cuda.device_count()
        if visible < wanted:
            raise ConfigError(
                f"training.devices: {wanted} GPUs requested but {visible} CUDA device(s) visible "
                "(check CUDA_VISIBLE_DEVICES)"
            )
