"""Sentence embeddings with the bundled all-MiniLM-L6-v2 (mean pooling, L2-normalised), loaded once.

Two backends give the same vectors (to ~1e-6): PyTorch + transformers where they are installed (workers, the
CLI), and ONNX Runtime + tokenizers over an exported copy (`finetune models export-embedder`) for the API
image, which carries no PyTorch. FINETUNE_EMBEDDER_DIR names the exported copy; when it is set, it is used.
"""

from __future__ import annotations

import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from finetune_platform.catalogue import resolve_base_model
from finetune_platform.errors import ConfigError

EMBEDDING_MODEL = "minilm"
DIMENSIONS = 384
MAX_LENGTH = 256
EMBEDDER_DIR_VARIABLE = "FINETUNE_EMBEDDER_DIR"


class TextEmbedder:
    """The PyTorch backend."""

    def __init__(self, model: str = EMBEDDING_MODEL) -> None:
        # lazy: torch and transformers; the API image has neither and uses the ONNX embedder
        import torch
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        source = resolve_base_model(model).source
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.model = AutoModel.from_pretrained(source).eval()
        self.torch = torch

    def embed(self, texts: list[str]) -> np.ndarray:
        """(len(texts), 384) unit vectors: cosine similarity is their dot product."""
        torch = self.torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32)


class OnnxEmbedder:
    """The ONNX Runtime backend over a folder written by :func:`export_embedder` (no PyTorch needed)."""

    def __init__(self, folder: Path) -> None:
        # lazy: onnxruntime and tokenizers, only when recommendations are asked for
        import onnxruntime
        from tokenizers import Tokenizer

        folder = Path(folder)
        missing = [name for name in ("model.onnx", "tokenizer.json") if not (folder / name).is_file()]
        if missing:
            raise ConfigError(
                f"{EMBEDDER_DIR_VARIABLE}: {str(folder)!r} has no {', '.join(missing)}; "
                "write one with `finetune models export-embedder --output DIR`"
            )
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_LENGTH)
        self.tokenizer.enable_padding()
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = onnxruntime.InferenceSession(
            str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.inputs = {item.name for item in self.session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        encoded = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }
        (hidden,) = self.session.run(
            ["last_hidden_state"], {k: v for k, v in feeds.items() if k in self.inputs}
        )
        mask = feeds["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)


def export_embedder(output: Path, model: str = EMBEDDING_MODEL) -> Path:
    """Export the embedding model to ``output``/model.onnx with its tokenizer (needs PyTorch, once, at build)."""
    import torch  # lazy: torch, only to export (the API image has none)

    embedder = TextEmbedder(model)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    example = embedder.tokenizer(["an example sentence"], return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in example]

    class Hidden(torch.nn.Module):
        def __init__(self, encoder) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, *tensors):
            return self.encoder(**dict(zip(names, tensors, strict=True))).last_hidden_state

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Hidden(embedder.model),
            tuple(example[name] for name in names),
            str(output / "model.onnx"),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={name: {0: "batch", 1: "length"} for name in [*names, "last_hidden_state"]},
            opset_version=17,
            dynamo=False,
        )
    embedder.tokenizer.save_pretrained(str(output))  # writes tokenizer.json, the fast tokenizer's file
    (output / "embedder.json").write_text(
        json.dumps({"model": model, "dimensions": DIMENSIONS, "max_length": MAX_LENGTH}, indent=2) + "\n"
    )
    for leftover in ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        (output / leftover).unlink(missing_ok=True)
    return output


@lru_cache(maxsize=1)
def default_embedder() -> TextEmbedder | OnnxEmbedder:
    """The exported ONNX copy where FINETUNE_EMBEDDER_DIR names one, else PyTorch."""
    folder = os.environ.get(EMBEDDER_DIR_VARIABLE)
    if folder:
        return OnnxEmbedder(Path(folder))
    try:
        import torch  # noqa: F401  # lazy: only checks that PyTorch is installed
    except ImportError:
        raise ConfigError(
            "model recommendations need the sentence embedder: PyTorch is not installed here, so export it "
            f"where it is (`finetune models export-embedder --output DIR`) and set {EMBEDDER_DIR_VARIABLE}=DIR"
        ) from None
    return TextEmbedder()
