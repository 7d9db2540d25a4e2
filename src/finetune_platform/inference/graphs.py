"""A merged model's forward pass captured as CUDA graphs, one per batch-shape bucket, and replayed.

On a GPU a batch of short texts spends most of its time in Python launching the ~100 kernels of an eager
forward pass, holding the GIL that the server's event loop needs to read requests. A replay is one call: the
GPU runs the same kernels, the CPU is free. Shapes are bucketed (rows to a power of two, width to a multiple
of 16) so a few dozen graphs, captured when the model loads, cover every batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from finetune_platform.inference.softmax import outputs

WIDTH_MULTIPLE = 16
# largest difference of an output between a replay and the eager pass (bf16): a probability, or a regression
# value relative to its magnitude (at least 1)
AGREEMENT_TOLERANCE = 0.02


def row_buckets(most: int) -> list[int]:
    """Powers of two from 1 up to the first one holding ``most`` rows."""
    buckets = [1]
    while buckets[-1] < most:
        buckets.append(buckets[-1] * 2)
    return buckets


def width_buckets(most: int) -> list[int]:
    """Multiples of WIDTH_MULTIPLE up to the first one holding ``most`` tokens."""
    return list(range(WIDTH_MULTIPLE, -(-most // WIDTH_MULTIPLE) * WIDTH_MULTIPLE + 1, WIDTH_MULTIPLE))


def bucket_of(value: int, buckets: list[int]) -> int:
    for size in buckets:
        if value <= size:
            return size
    raise ValueError(f"{value} is larger than the largest bucket ({buckets[-1]})")


def pad_to_bucket(
    ids: np.ndarray, mask: np.ndarray, rows: int, width: int, pad_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """``ids``/``mask`` (n × w) padded to rows × width. Padding rows attend to their first token only, so
    attention over them stays finite; their outputs are discarded."""
    n, w = ids.shape
    padded_ids = np.full((rows, width), pad_id, dtype=np.int64)
    padded_mask = np.zeros((rows, width), dtype=np.int64)
    padded_ids[:n, :w] = ids
    padded_mask[:n, :w] = mask
    padded_mask[n:, 0] = 1
    return padded_ids, padded_mask


def forward_probabilities(
    model: Any,
    ids: Any,
    mask: Any,
    ready_mask: bool = True,
    temperature: float = 1.0,
    head: Callable[[Any], Any] | None = None,
) -> Any:
    """What the model's logits mean (fp32) for token ids and a 2-D 0/1 mask, as a graph captures it: ``head``
    (``softmax.outputs`` for the adapter's task, scale and temperature), the softmax at ``temperature`` without.

    ``ready_mask``: the mask is handed over in 4-D, which most encoders use as given instead of inspecting its
    values (a check that waits for the GPU, which a capture forbids). Families that build their own mask
    (DeBERTa) refuse a 4-D one and get the 2-D mask."""
    if ready_mask:
        width = mask.shape[1]
        mask = mask.bool()[:, None, None, :].expand(-1, 1, width, -1)
    head = head or partial(outputs, temperature=temperature)
    return head(model(input_ids=ids, attention_mask=mask).logits)


@dataclass
class Captured:
    graph: Any
    ids: Any  # static inputs the replay reads
    mask: Any
    probabilities: Any  # static output the replay writes (``head``'s: probabilities, or regression values)


class GraphUnavailable(RuntimeError):
    """The model's forward pass cannot be captured, or its replay disagrees with the eager pass."""


class GraphedForward:
    """A sequence-classification model's outputs (already on CUDA, in eval mode) by graph replay: ``head`` of its
    logits (``softmax.outputs`` for the merged adapter's task, captured into every graph), else the softmax at
    ``temperature``.

    Not thread-safe: captures and replays share one memory pool, so the caller runs one batch at a time
    (the server's hosts hold a lock around each batch).
    """

    def __init__(
        self,
        model: Any,
        max_rows: int,
        max_width: int,
        pad_id: int,
        temperature: float = 1.0,
        head: Callable[[Any], Any] | None = None,
    ) -> None:
        import torch  # lazy: torch loads with a model, not when the runtime registry is imported

        self.model, self.pad_id = model, pad_id
        # the one merged adapter's task, scale and calibration, captured into every graph
        self.head = head or partial(outputs, temperature=temperature)
        self.device = next(model.parameters()).device
        self.rows, self.widths = row_buckets(max_rows), width_buckets(max_width)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[tuple[int, int], Captured] = {}
        self.ready_mask = True  # a 4-D mask, else the model's own (2-D): see forward_probabilities

    def capture(self, rows: int, width: int) -> Captured:
        import torch  # lazy: torch loads with a model, not when the runtime registry is imported

        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((rows, width), dtype=torch.long, device=self.device)
        mask[:, 0] = 1
        with torch.no_grad():
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up outside the graph: library handles, kernel selection
                for _ in range(2):
                    forward_probabilities(self.model, ids, mask, self.ready_mask, head=self.head)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                probabilities = forward_probabilities(self.model, ids, mask, self.ready_mask, head=self.head)
        captured = Captured(graph, ids, mask, probabilities)
        self.graphs[(rows, width)] = captured
        return captured

    def capture_all(self, sample: tuple[np.ndarray, np.ndarray], expected: np.ndarray) -> int:
        """Every bucket, largest first (later captures reuse its memory), with a 4-D mask or else the model's
        own; then the replay of a sample batch is checked against ``expected`` (its eager probabilities).
        GraphUnavailable when neither captures or the replay disagrees."""
        failures = []
        for ready_mask in (True, False):
            self.ready_mask = ready_mask
            try:
                for width in reversed(self.widths):
                    for rows in reversed(self.rows):
                        self.capture(rows, width)
                replayed = self(*sample)
                break
            except Exception as exc:  # any capture error means: try the other mask, then serve eagerly
                self.graphs.clear()
                failures.append(f"{'4-D' if ready_mask else '2-D'} mask: {type(exc).__name__}: {exc}")
        else:
            raise GraphUnavailable("capture failed with a " + "; with a ".join(failures))
        difference = float((np.abs(replayed - expected) / np.maximum(np.abs(expected), 1.0)).max())
        if difference > AGREEMENT_TOLERANCE:
            self.graphs.clear()
            raise GraphUnavailable(f"replayed outputs differ from the eager pass by {difference:.4f}")
        return len(self.graphs)

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch  # lazy: torch loads with a model, not when the runtime registry is imported

        n, w = ids.shape
        rows, width = bucket_of(n, self.rows), bucket_of(w, self.widths)
        captured = self.graphs.get((rows, width)) or self.capture(rows, width)
        padded_ids, padded_mask = pad_to_bucket(ids, mask, rows, width, self.pad_id)
        captured.ids.copy_(torch.from_numpy(padded_ids))
        captured.mask.copy_(torch.from_numpy(padded_mask))
        captured.graph.replay()
        return captured.probabilities[:n].cpu().numpy()
