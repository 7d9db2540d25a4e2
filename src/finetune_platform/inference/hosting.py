"""Many adapters on one base model: each base model (per label count) is loaded once, LoRA adapters are
attached by name and switched per batch, the least recently used ones detached past a limit.

Two runtimes share this interface: ONNX Runtime (``OnnxHost``, the default: adapters fed as graph inputs)
and PyTorch with PEFT (``BaseHost``: any PEFT LoRA variant, CUDA/MPS devices)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from finetune_platform.errors import ConfigError
from finetune_platform.inference.predictor import AdapterSource, Prediction, Predictor

if TYPE_CHECKING:
    from finetune_platform.inference.graphs import GraphedForward

logger = logging.getLogger("finetune_platform.inference")
RUNTIMES = ("onnx", "onnx-int8", "torch")
# texts of a few lengths whose probabilities must agree between graph replay and the eager pass
GRAPH_CHECK_TEXTS = (
    "fine.",
    "a quiet, patient film that earns every minute of its ending",
    "the plot is thin, the jokes land rarely, and the two leads never seem to be in the same movie together",
)


def _predictor_options(source: AdapterSource) -> dict[str, Any]:
    info = source.info
    return {
        "adapter_dir": source.adapter_dir,
        "base_model": info.base_model,
        "name": info.name,
        "version": info.version,
        "language": info.language,
        "max_length": info.max_length,
    }


class BaseHost(Predictor):
    """A PyTorch base model with any number of attached PEFT adapters; ``predict`` runs under the active one.

    Reuses ``Predictor``'s tokenisation and batching; only one batch runs at a time (the active adapter
    is model state), which the server's batcher guarantees.
    """

    runtime = "torch"
    merged = False  # PEFT switches adapters on the unmerged model

    def __init__(self, first: AdapterSource, device: str = "cpu") -> None:
        super().__init__(**_predictor_options(first), device=device, merge=False, adapter_name=first.key)
        self.adapters: OrderedDict[str, AdapterSource] = OrderedDict({first.key: first})
        self.lock = threading.Lock()

    def accepts(self, source: AdapterSource) -> bool:
        return True  # PEFT holds adapters of any rank and targets side by side

    def attach(self, source: AdapterSource) -> None:
        self.model.load_adapter(str(source.adapter_dir), adapter_name=source.key)
        self.adapters[source.key] = source

    def detach(self, key: str) -> None:
        self.model.delete_adapter(key)
        del self.adapters[key]

    @contextmanager
    def using(self, key: str) -> Iterator[BaseHost]:
        """This host, alone, with ``key`` the active adapter (for ``encode`` and ``predict_encoded``)."""
        with self.lock:
            source = self.adapters[key]
            self.adapters.move_to_end(key)
            self.model.set_adapter(key)
            self.info, self.label_map = source.info, source.label_map
            yield self

    def predict_with(self, key: str, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        with self.using(key):
            return self.predict(texts, batch_size)


class MergedHost(Predictor):
    """One adapter folded into its base model's weights (PyTorch): the fastest form on a GPU, where each batch
    is one forward pass, replayed from CUDA graphs (``cuda_graphs``) captured for up to ``max_rows`` texts."""

    runtime = "torch"
    merged = True

    def __init__(
        self, source: AdapterSource, device: str, max_rows: int = 64, cuda_graphs: bool = True
    ) -> None:
        super().__init__(**_predictor_options(source), device=device, merge=True)
        self.adapters: OrderedDict[str, AdapterSource] = OrderedDict({source.key: source})
        self.lock = threading.Lock()
        self.graphs: GraphedForward | None = None
        if device.startswith("cuda") and cuda_graphs:
            self.graphs = self._capture(source.key, max_rows)

    def _capture(self, key: str, max_rows: int) -> GraphedForward | None:
        from finetune_platform.inference.graphs import GraphedForward, GraphUnavailable

        graphs = GraphedForward(self.model, max_rows, self.info.max_length, self.tokenizer.pad_token_id or 0)
        sample = self._padded(self._encode(list(GRAPH_CHECK_TEXTS))[0])
        started = time.perf_counter()
        try:
            count = graphs.capture_all(sample, expected=super()._probabilities(*sample))
        except GraphUnavailable as exc:
            logger.warning("%s: served without CUDA graphs (%s)", key, exc)
            return None
        logger.info("%s: %d CUDA graphs captured in %.1f s", key, count, time.perf_counter() - started)
        return graphs

    def _probabilities(self, ids: Any, mask: Any) -> Any:
        if self.graphs is None:
            return super()._probabilities(ids, mask)
        return self.graphs(ids, mask)

    def accepts(self, source: AdapterSource) -> bool:
        return False

    @contextmanager
    def using(self, key: str) -> Iterator[MergedHost]:
        with self.lock:
            yield self

    def predict_with(self, key: str, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        with self.using(key):
            return self.predict(texts, batch_size)


def serving_device(requested: str) -> str:
    """SERVE_DEVICE resolved: auto is CUDA when present, else the CPU."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def open_host(
    source: AdapterSource,
    runtime: str = "onnx",
    device: str = "cpu",
    merged: bool = False,
    max_rows: int = 64,
    cuda_graphs: bool = True,
) -> Any:
    """A host for ``source`` on ``runtime`` (``merged``: ONNX with the adapter folded in, serving only it);
    an adapter the ONNX graph cannot express (or a GPU device) falls back to PyTorch, with a log line
    saying why. ``max_rows`` and ``cuda_graphs``: the CUDA graphs of a merged host on a GPU."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if runtime != "torch" and device == "cpu":
        from finetune_platform.inference.onnx_host import OnnxHost, UnsupportedAdapter

        try:
            return OnnxHost(source, int8=runtime == "onnx-int8", merged=merged)
        except UnsupportedAdapter as exc:
            logger.warning("%s: served with PyTorch, not ONNX Runtime (%s)", source.key, exc)
    if merged and device != "cpu":
        return MergedHost(source, device, max_rows=max_rows, cuda_graphs=cuda_graphs)
    return BaseHost(source, device=device)


def load_predictor(source: AdapterSource, runtime: str = "onnx", device: str = "cpu") -> Any:
    """One adapter for `finetune predict` and file jobs: ONNX Runtime, or PyTorch with the LoRA weights
    merged into the base (the fastest PyTorch form when only one adapter is served)."""
    if runtime == "torch" or device != "cpu":
        if runtime not in RUNTIMES:
            raise ConfigError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
        return Predictor.of(source, device=device, merge=True)
    return open_host(source, runtime, device, merged=True)
