"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (mean pooling, L2-normalised), loaded once."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

EMBEDDING_MODEL = "minilm"
DIMENSIONS = 384


class TextEmbedder:
    def __init__(self, model: str = EMBEDDING_MODEL) -> None:
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        from finetune_platform.training.models import resolve_base_model

        source = resolve_base_model(model).source
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval()
        self.torch = torch

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors: cosine similarity is their dot product."""
        torch = self.torch
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


@lru_cache(maxsize=1)
def default_embedder() -> TextEmbedder:
    return TextEmbedder()
