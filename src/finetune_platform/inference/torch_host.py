"""The PyTorch runtime: a base model with PEFT adapters attached and switched per batch, or one adapter merged
into its weights (the fastest PyTorch form; on CUDA its batches can be replayed from CUDA graphs)."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from finetune_platform.inference.graphs import GraphedForward, GraphUnavailable
from finetune_platform.inference.predictor import AdapterSource, Prediction, Predictor

if TYPE_CHECKING:
    from finetune_platform.inference.graphs import GraphedForward

logger = logging.getLogger("finetune_platform.inference")
# texts of a few lengths whose outputs must agree between graph replay and the eager pass (a model that reads
# pairs gets each as both texts)
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
        "tokenizer_dir": source.tokenizer_dir,
    }


class TorchHost(Predictor):
    """A PyTorch base model and its adapters: any number of PEFT adapters (any LoRA variant) switched per
    batch, or, ``merged``, one adapter folded into the weights. ``cuda_graphs`` (merged, on CUDA): each batch
    is replayed from CUDA graphs captured for up to ``max_rows`` texts; a model whose capture fails or whose
    replay disagrees with the eager pass is served eagerly, with a warning.

    Reuses ``Predictor``'s tokenisation and batching; only one batch runs at a time (the active adapter is
    model state), which the server's batcher guarantees."""

    def __init__(
        self,
        first: AdapterSource,
        device: str = "cpu",
        *,
        merged: bool = False,
        max_rows: int = 64,
        cuda_graphs: bool = False,
    ) -> None:
        super().__init__(**_predictor_options(first), device=device, merge=merged, adapter_name=first.key)
        self.merged = merged
        self.adapters: OrderedDict[str, AdapterSource] = OrderedDict({first.key: first})
        self.lock = threading.Lock()
        self.graphs: GraphedForward | None = None
        if merged and cuda_graphs and device.startswith("cuda"):
            self.graphs = self._capture(first.key, max_rows)
        self.runtime = "torch+cuda-graphs" if self.graphs is not None else "torch"

    def _capture(self, key: str, max_rows: int) -> GraphedForward | None:
        graphs = GraphedForward(
            self.model, max_rows, self.info.max_length, self.tokenizer.pad_token_id or 0, head=self._head
        )
        texts = list(GRAPH_CHECK_TEXTS)
        sample = self._padded(self._encode(texts, texts if self.label_map.pair else None)[0])
        started = time.perf_counter()
        try:
            count = graphs.capture_all(sample, expected=super()._outputs(*sample))
        except GraphUnavailable as exc:
            logger.warning("%s: served without CUDA graphs (%s)", key, exc)
            return None
        logger.info("%s: %d CUDA graphs captured in %.1f s", key, count, time.perf_counter() - started)
        return graphs

    def _outputs(self, ids: Any, mask: Any) -> Any:
        if self.graphs is None:
            return super()._outputs(ids, mask)
        return self.graphs(ids, mask)

    def accepts(self, source: AdapterSource) -> bool:
        return not self.merged  # PEFT holds adapters of any rank and targets side by side; merged: one only

    def attach(self, source: AdapterSource) -> None:
        if self.merged:
            raise ValueError(f"{source.key}: a merged model serves only {next(iter(self.adapters))}")
        self.model.load_adapter(str(source.adapter_dir), adapter_name=source.key)
        self.adapters[source.key] = source

    def detach(self, key: str) -> None:
        self.model.delete_adapter(key)
        del self.adapters[key]

    @contextmanager
    def using(self, key: str) -> Iterator[TorchHost]:
        """This host, alone, with ``key`` the active adapter (for ``encode`` and ``predict_encoded``)."""
        with self.lock:
            source = self.adapters[key]
            self.adapters.move_to_end(key)
            if not self.merged:
                self.model.set_adapter(key)
            self.info, self.label_map = source.info, source.label_map
            yield self

    def predict_with(
        self, key: str, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
    ) -> list[Prediction]:
        with self.using(key):
            return self.predict(texts, batch_size, pairs)
