"""Many LoRA adapters on one ONNX Runtime graph of their base model.

The base model is exported once with every LoRA factor (and every fully trained module, such as the
classification head) turned into a graph input, so one session serves any adapter of the same shape:
a request feeds its adapter's tensors, which stay resident as ONNX Runtime values (an adapter costs its
own few megabytes, never a copy of the base). On 2 CPU cores this runs a one-sentence request about 3×
faster than PyTorch with identical outputs (see bench/inference.py); ``int8`` also quantizes the base
weights (faster again, accuracy to be checked per model).

Only plain LoRA is exported (no DoRA, per-layer rank/alpha patterns, LoRA biases or fan-in-fan-out);
``UnsupportedAdapter`` tells the caller to use the PyTorch host instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import json
import logging
import math
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from finetune_platform.catalogue import resolve_base_model
from finetune_platform.inference.predictor import AdapterSource, Classifier, Prediction, head_options
from finetune_platform.training.models import load_tokenizer, match_pad_token, quiet_libraries

logger = logging.getLogger("finetune_platform.inference")
PREFIX = "base_model.model."
UNSUPPORTED = {
    "use_dora": False,
    "use_rslora": None,  # handled: scale alpha / sqrt(r)
    "lora_bias": False,
    "fan_in_fan_out": False,
    "alpha_pattern": {},
    "rank_pattern": {},
    "layers_to_transform": None,
    "trainable_token_indices": None,
}


class UnsupportedAdapter(Exception):
    """The adapter uses a LoRA variant the ONNX graph does not express."""


@dataclass(frozen=True)
class AdapterTensors:
    """An adapter's tensors, keyed by graph input name, and the shape signature a graph is built for."""

    values: dict[str, Any]  # input name -> numpy array (LoRA B already scaled)
    signature: tuple[tuple[str, tuple[int, ...]], ...]

    @classmethod
    def read(cls, adapter_dir: Path) -> AdapterTensors:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("peft_type") != "LORA":
            raise UnsupportedAdapter(f"peft_type {config.get('peft_type')!r}")
        for option, plain in UNSUPPORTED.items():
            if option != "use_rslora" and config.get(option) not in (plain, None, {}, False):
                raise UnsupportedAdapter(f"{option}={config[option]!r}")
        rank, alpha = config["r"], config["lora_alpha"]
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
        values = {}
        for key, value in tensors.items():
            if not key.startswith(PREFIX):
                raise UnsupportedAdapter(f"tensor {key!r}")
            name = key[len(PREFIX) :]
            values[name] = (value * scale if ".lora_B." in name else value).astype("float32", copy=False)
        signature = tuple(sorted((name, tuple(value.shape)) for name, value in values.items()))
        return cls(values, signature)


def _classifier(base_source: str, label_map: Any, pad_token_id: int | None) -> Any:
    """The base sequence classifier in fp32 with the label map's head (``head_options``), its pad token the
    tokenizer's (a decoder pools the last token before padding)."""
    # lazy: torch and transformers load with a model, not when the runtime registry is imported
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        base_source, **head_options(label_map), torch_dtype=torch.float32
    )
    return match_pad_token(model, pad_token_id).eval()


def _slotted_model(
    base_source: str, label_map: Any, signature: tuple, pad_token_id: int | None
) -> tuple[Any, list[str]]:
    """The base model with each adapted Linear reading its LoRA factors, and each fully trained module
    its weights, from attributes the export wrapper fills with graph inputs."""
    # lazy: torch and transformers load with a model, not when the runtime registry is imported
    from torch import nn
    from torch.nn import functional

    class LoraSlot(nn.Module):
        def __init__(self, base: nn.Module) -> None:
            super().__init__()
            self.base, self.down, self.up = base, None, None

        def forward(self, x):
            return self.base(x) + functional.linear(functional.linear(x, self.down), self.up)

    class WeightSlot(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.bias = None, None

        def forward(self, x):
            return functional.linear(x, self.weight, self.bias)

    model = _classifier(base_source, label_map, pad_token_id)
    names = [name for name, _ in signature]
    slots: dict[str, nn.Module] = {}
    for name in names:
        module_path, _, parameter = name.rpartition(".")
        if ".lora_A." in name or ".lora_B." in name:
            module_path = name.split(".lora_", 1)[0]
            if module_path not in slots:
                slots[module_path] = LoraSlot(model.get_submodule(module_path))
        elif parameter in {"weight", "bias"}:
            slots.setdefault(module_path, WeightSlot())
        else:
            raise UnsupportedAdapter(f"tensor {name!r}")
    for module_path, slot in slots.items():
        parent, _, child = module_path.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, slot)

    def bind(values: list) -> None:
        for name, value in zip(names, values, strict=True):
            if ".lora_A." in name:
                slots[name.split(".lora_", 1)[0]].down = value
            elif ".lora_B." in name:
                slots[name.split(".lora_", 1)[0]].up = value
            else:
                module_path, _, parameter = name.rpartition(".")
                setattr(slots[module_path], parameter, value)

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, *adapter):
            bind(list(adapter))
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Graph(), names


def _merged_model(base_source: str, label_map: Any, tensors: AdapterTensors, pad_token_id: int | None) -> Any:
    """The base model with one adapter folded in (W + B·A, trained modules copied): no LoRA ops left."""
    # lazy: torch and transformers load with a model, not when the runtime registry is imported
    import torch
    from torch import nn

    model = _classifier(base_source, label_map, pad_token_id)
    values = tensors.values
    with torch.no_grad():
        for name, value in values.items():
            if ".lora_A." in name:
                continue
            if ".lora_B." in name:
                module_path = name.split(".lora_", 1)[0]
                delta = value @ values[f"{module_path}.lora_A.weight"]
                model.get_submodule(module_path).weight += torch.from_numpy(delta)
            else:
                module_path, _, parameter = name.rpartition(".")
                getattr(model.get_submodule(module_path), parameter).copy_(torch.from_numpy(value))

    class Graph(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return Graph()


def build_session(
    base_source: str,
    label_map: Any,
    tensors: AdapterTensors,
    *,
    merged: bool,
    int8: bool,
    threads: int,
    example_ids: list[int],
    pad_token_id: int | None = None,
) -> tuple[Any, dict[str, str]]:
    """Export to ONNX (in memory) and open an ONNX Runtime session: the adapter merged into the base, or
    the base with every adapter tensor a graph input; ``example_ids`` (one tokenised text) trace it. Returns the
    session and the input name per tensor."""
    # lazy: onnxruntime and torch load with a model, not when the runtime registry is imported
    import onnxruntime
    import torch

    if merged:
        graph, names = _merged_model(base_source, label_map, tensors, pad_token_id), []
    else:
        graph, names = _slotted_model(base_source, label_map, tensors.signature, pad_token_id)
    inputs = [f"a{i}" for i in range(len(names))]
    example = [torch.from_numpy(np.ascontiguousarray(tensors.values[name])) for name in names]
    ids = torch.tensor([example_ids], dtype=torch.long)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (ids, torch.ones_like(ids), *example),
            buffer,
            input_names=["input_ids", "attention_mask", *inputs],
            output_names=["logits"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "length"},
                "attention_mask": {0: "batch", 1: "length"},
            },
            opset_version=17,
            dynamo=False,
        )
    model_bytes = buffer.getvalue()
    del graph
    if int8:
        model_bytes = _quantized(model_bytes)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # idle threads sleep rather than spin: in a server they would take the CPU the event loop needs
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    del model_bytes
    _release_freed_memory()  # the PyTorch model the graph came from is gone: give its pages back
    return session, dict(zip(names, inputs, strict=True))


def _release_freed_memory() -> None:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _quantized(model_bytes: bytes) -> bytes:
    """Dynamic int8 quantization of the base weights (the adapter inputs stay float)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: onnxruntime, with a model

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "model.onnx"), Path(folder, "model.int8.onnx")
        source.write_bytes(model_bytes)
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
        return target.read_bytes()


class OnnxHost(Classifier):
    """A base model's ONNX session and the adapters resident on it (a ``runtimes.Runtime``).

    ``merged``: the one adapter folded into the base weights, for a server's default model: one sentence in
    ~2 ms instead of ~4 ms on 2 CPU cores; such a host accepts no other adapter.
    """

    runtime = "onnx"

    def __init__(
        self, first: AdapterSource, *, int8: bool = False, merged: bool = False, threads: int | None = None
    ) -> None:
        # lazy: torch and transformers load with a model, not when the runtime registry is imported
        import torch

        quiet_libraries()
        tensors = AdapterTensors.read(first.adapter_dir)
        reference = resolve_base_model(first.info.base_model, first.info.language or None)
        self.tokenizer = load_tokenizer(str(first.files_dir))
        self.signature = tensors.signature
        self.merged = merged
        self.session, self.inputs = build_session(
            reference.source,
            first.label_map,
            tensors,
            merged=merged,
            int8=int8,
            threads=threads or torch.get_num_threads(),
            example_ids=self.tokenizer("a short example")["input_ids"],
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if int8:
            self.runtime = "onnx-int8"
        self.adapters: OrderedDict[str, AdapterSource] = OrderedDict()
        self._feeds: dict[str, dict[str, Any]] = {}
        self._active: str | None = None
        self.lock = threading.Lock()
        self._attach(first, tensors)
        self._active, self.info, self.label_map = first.key, first.info, first.label_map

    def accepts(self, source: AdapterSource) -> bool:
        """Whether ``source`` has this graph's shape (same modules adapted, same ranks, same labels); an
        adapter the graph cannot express at all (DoRA, ...) is not accepted, and goes to a torch host."""
        if self.merged:
            return False
        try:
            return AdapterTensors.read(source.adapter_dir).signature == self.signature
        except UnsupportedAdapter:
            return False

    def attach(self, source: AdapterSource) -> None:
        tensors = AdapterTensors.read(source.adapter_dir)
        if self.merged or tensors.signature != self.signature:
            raise UnsupportedAdapter(f"{source.key}: adapter shape differs from this graph's")
        self._attach(source, tensors)

    def _attach(self, source: AdapterSource, tensors: AdapterTensors) -> None:
        import onnxruntime  # lazy: onnxruntime loads with a model, not when the registry is imported

        self._feeds[source.key] = {
            self.inputs[name]: onnxruntime.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value))
            for name, value in tensors.values.items()
            if name in self.inputs  # a merged graph has no adapter inputs
        }
        self.adapters[source.key] = source

    def detach(self, key: str) -> None:
        del self._feeds[key], self.adapters[key]

    def _outputs(self, ids: Any, mask: Any) -> Any:
        import onnxruntime  # lazy: onnxruntime loads with a model, not when the registry is imported

        feeds = {
            "input_ids": onnxruntime.OrtValue.ortvalue_from_numpy(ids),
            "attention_mask": onnxruntime.OrtValue.ortvalue_from_numpy(mask),
            **self._feeds[self._active],
        }
        return self._head(self.session.run_with_ort_values(["logits"], feeds)[0].numpy())

    @contextmanager
    def using(self, key: str) -> Iterator[OnnxHost]:
        """This host, alone, with ``key`` the active adapter (for ``encode`` and ``predict_encoded``)."""
        with self.lock:
            source = self.adapters[key]
            self.adapters.move_to_end(key)
            self._active, self.info, self.label_map = key, source.info, source.label_map
            yield self

    def predict_with(
        self, key: str, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
    ) -> list[Prediction]:
        with self.using(key):
            return self.predict(texts, batch_size, pairs)
