"""The inference runtimes: one protocol every loaded model answers (``Runtime``), one registry from a runtime's
name to its constructor (``REGISTRY``), and one factory (``open_runtime``) that picks the runtime for a device
and falls back where the chosen one cannot serve an adapter.

==================  ===================================================================  =================
name                what runs a batch                                                    devices
==================  ===================================================================  =================
onnx                ONNX Runtime: the base model's graph, adapters as inputs or one      CPU
                    merged in (identical outputs to torch, ~3x faster on 2 cores)
onnx-int8           the same with int8 base weights (faster; check accuracy)             CPU
torch               PyTorch + PEFT: adapters attached and switched, or one merged in     CPU, CUDA, MPS
torch+cuda-graphs   torch with one merged adapter, each batch replayed from CUDA graphs  CUDA
==================  ===================================================================  =================

Users choose among the first three (SERVE_RUNTIME, ``--runtime``); the device decides the rest: a GPU serves
torch, replayed from CUDA graphs when the model is merged and SERVE_CUDA_GRAPHS is on. An adapter the ONNX
graph cannot express (DoRA, per-layer ranks, ...) is served by torch, with a log line saying why."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from finetune_platform.errors import ConfigError
from finetune_platform.inference.onnx_host import OnnxHost, UnsupportedAdapter
from finetune_platform.inference.predictor import AdapterSource, ModelInfo, Prediction
from finetune_platform.inference.torch_host import TorchHost

logger = logging.getLogger("finetune_platform.inference")


class RuntimeName(StrEnum):
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    TORCH = "torch"
    TORCH_CUDA_GRAPHS = "torch+cuda-graphs"


# What a user may set (SERVE_RUNTIME, --runtime); CUDA graphs follow from the device and SERVE_CUDA_GRAPHS.
CHOICES: tuple[str, ...] = (RuntimeName.ONNX.value, RuntimeName.ONNX_INT8.value, RuntimeName.TORCH.value)


@runtime_checkable
class Runtime(Protocol):
    """A loaded base model with its resident adapters, one active per batch: what the adapter pool, the
    server's batcher, `finetune predict` and prediction jobs call."""

    runtime: str  # the registry name it runs as (shown by GET /models)
    merged: bool  # one adapter folded into the weights: accepts no other
    adapters: OrderedDict[str, AdapterSource]  # resident adapters by key, least recently used first
    lock: threading.Lock  # held by ``using``: one batch at a time
    info: ModelInfo  # of the active adapter
    label_map: Any

    def accepts(self, source: AdapterSource) -> bool:
        """Whether ``source`` can be attached beside the adapters already here."""
        ...

    def attach(self, source: AdapterSource) -> None: ...

    def detach(self, key: str) -> None: ...

    def using(self, key: str) -> AbstractContextManager[Runtime]:
        """This runtime, alone, with ``key`` the active adapter (for ``encode`` and ``predict_encoded``)."""
        ...

    def encode(
        self, texts: list[str], pairs: list[str] | None = None
    ) -> tuple[list[list[int]], list[bool]]: ...

    def predict_encoded(
        self, encoded: list[list[int]], truncated: list[bool], batch_size: int = 64
    ) -> list[Prediction]: ...

    def predict(
        self, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
    ) -> list[Prediction]:
        """Predictions under the active adapter (the first one, for a runtime of one adapter); ``pairs``: the
        second text of each, for a model that reads pairs."""
        ...

    def predict_with(
        self, key: str, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
    ) -> list[Prediction]: ...


@dataclass(frozen=True)
class Placement:
    """Where and how a runtime runs: the device, and the CUDA graphs of a merged model on a GPU
    (captured for up to ``max_rows`` texts a batch)."""

    device: str = "cpu"
    cuda_graphs: bool = True
    max_rows: int = 64


@dataclass(frozen=True)
class RuntimeKind:
    name: RuntimeName
    build: Callable[[AdapterSource, bool, Placement], Runtime]  # (first adapter, merged, placement)
    devices: tuple[str, ...]  # device types it runs on
    merged_only: bool = False
    fallback: RuntimeName | None = None  # when ``build`` raises UnsupportedAdapter


REGISTRY: dict[RuntimeName, RuntimeKind] = {
    kind.name: kind
    for kind in (
        RuntimeKind(
            RuntimeName.ONNX,
            lambda source, merged, _: OnnxHost(source, merged=merged),
            devices=("cpu",),
            fallback=RuntimeName.TORCH,
        ),
        RuntimeKind(
            RuntimeName.ONNX_INT8,
            lambda source, merged, _: OnnxHost(source, int8=True, merged=merged),
            devices=("cpu",),
            fallback=RuntimeName.TORCH,
        ),
        RuntimeKind(
            RuntimeName.TORCH,
            lambda source, merged, at: TorchHost(source, at.device, merged=merged, max_rows=at.max_rows),
            devices=("cpu", "cuda", "mps"),
        ),
        RuntimeKind(
            RuntimeName.TORCH_CUDA_GRAPHS,
            lambda source, _, at: TorchHost(
                source, at.device, merged=True, max_rows=at.max_rows, cuda_graphs=True
            ),
            devices=("cuda",),
            merged_only=True,
        ),
    )
}


def checked_choice(requested: str, setting: str = "SERVE_RUNTIME") -> RuntimeName:
    """A runtime a user may set, or ConfigError naming the ``setting`` and the choices."""
    if requested not in CHOICES:
        raise ConfigError(f"{setting} {requested!r}: choose one of {', '.join(CHOICES)}")
    return RuntimeName(requested)


def choose(requested: str, placement: Placement, merged: bool, setting: str = "SERVE_RUNTIME") -> RuntimeName:
    """The runtime that serves on ``placement``: the one requested where it runs on that device, else torch;
    torch replayed from CUDA graphs for a merged model on CUDA with graphs on."""
    name = checked_choice(requested, setting)
    device_type = placement.device.split(":", 1)[0]
    if device_type not in REGISTRY[name].devices:
        name = RuntimeName.TORCH
    graphs = REGISTRY[RuntimeName.TORCH_CUDA_GRAPHS]
    if name is RuntimeName.TORCH and merged and placement.cuda_graphs and device_type in graphs.devices:
        name = graphs.name
    return name


def open_runtime(
    source: AdapterSource,
    requested: str = RuntimeName.ONNX.value,
    placement: Placement | None = None,
    *,
    merged: bool = False,
    setting: str = "SERVE_RUNTIME",
) -> Runtime:
    """``source`` loaded on the runtime ``choose`` picks (``merged``: folded into the base, serving only it);
    where that runtime cannot express the adapter, on its registered fallback, with a log line saying why."""
    placement = placement or Placement()
    kind = REGISTRY[choose(requested, placement, merged, setting)]
    try:
        return kind.build(source, merged, placement)
    except UnsupportedAdapter as exc:
        if kind.fallback is None:
            raise
        logger.warning("%s: served with PyTorch, not ONNX Runtime (%s)", source.key, exc)
        return REGISTRY[kind.fallback].build(source, merged, placement)


def serving_device(requested: str) -> str:
    """SERVE_DEVICE resolved: auto is CUDA when present, else the CPU."""
    if requested != "auto":
        return requested
    import torch  # lazy: torch loads with a model, not when the runtime registry is imported

    return "cuda" if torch.cuda.is_available() else "cpu"
