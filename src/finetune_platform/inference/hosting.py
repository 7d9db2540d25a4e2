"""Many adapters on one base model: each base model (per label count) is loaded once, LoRA adapters are
attached by name and switched per batch, the least recently used ones detached past a limit."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_platform.inference.predictor import ModelInfo, Prediction, Predictor, read_label_map


@dataclass(frozen=True)
class AdapterSource:
    key: str  # name@version
    adapter_dir: Path
    info: ModelInfo
    label_map: Any

    @classmethod
    def of(cls, key: str, adapter_dir: Path, info: ModelInfo) -> AdapterSource:
        return cls(key, adapter_dir, info, read_label_map(adapter_dir))


class BaseHost(Predictor):
    """A base model with any number of attached adapters; ``predict`` runs under the active one.

    Reuses ``Predictor``'s tokenisation and batching; only one batch runs at a time (the active adapter
    is model state), which the server's batcher guarantees.
    """

    def __init__(self, first: AdapterSource, device: str = "cpu") -> None:
        super().__init__(
            first.adapter_dir,
            first.info.base_model,
            name=first.info.name,
            version=first.info.version,
            language=first.info.language,
            max_length=first.info.max_length,
            device=device,
            merge=False,
            adapter_name=first.key,
        )
        self.adapters: OrderedDict[str, AdapterSource] = OrderedDict({first.key: first})
        self.lock = threading.Lock()

    def attach(self, source: AdapterSource) -> None:
        self.model.load_adapter(str(source.adapter_dir), adapter_name=source.key)
        self.adapters[source.key] = source

    def detach(self, key: str) -> None:
        self.model.delete_adapter(key)
        del self.adapters[key]

    def predict_with(self, key: str, texts: list[str], batch_size: int = 64) -> list[Prediction]:
        with self.lock:
            source = self.adapters[key]
            self.adapters.move_to_end(key)
            self.model.set_adapter(key)
            self.info, self.label_map = source.info, source.label_map
            return self.predict(texts, batch_size)
