"""Dynamic batching for `finetune serve`: requests that arrive together share the model's passes, a big
request is cut into pieces so that a small one is not stuck behind it."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily

from finetune_platform.inference.pool import ModelPool
from finetune_platform.inference.predictor import Prediction


@dataclass(eq=False)
class _Request:
    """One request's texts on their way through the model, in one piece or over several."""

    key: str
    texts: list[str]
    future: asyncio.Future
    pairs: list[str] | None = None  # the second text of each, for a model that reads pairs
    rows: list[list[int]] | None = None  # token ids per text, once tokenised
    truncated: list[bool] = field(default_factory=list)
    results: list[Prediction] = field(default_factory=list)  # of the first len(results) texts
    error: Exception | None = None

    @property
    def finished(self) -> bool:
        return self.error is not None or len(self.results) == len(self.texts) or self.future.done()


class Batcher:
    """Requests that arrive while the model runs are served together by its next pass; an idle request runs
    at once (``wait_ms`` > 0 holds each pass open that long to gather more).

    A pass takes at most ``max_tokens`` tokens, one text from each waiting request in turn, the requests that
    have had the fewest texts run first: a request bigger than that runs over several passes, and one that
    arrives meanwhile goes into the next pass instead of waiting for the big one to finish."""

    def __init__(self, pool: ModelPool, wait_ms: float, max_batch: int, max_tokens: int = 2048) -> None:
        self.pool, self.wait, self.max_batch, self.max_tokens = pool, wait_ms / 1000, max_batch, max_tokens
        self.pending: list[_Request] = []  # arrived since the last pass began
        self.active: list[_Request] = []  # with texts left to run
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self.running: asyncio.Task | None = None
        self.batches = 0
        self.metrics: InferenceMetrics | None = None

    async def predict(self, key: str, texts: list[str], pairs: list[str] | None = None) -> list[Prediction]:
        request = _Request(key, texts, asyncio.get_running_loop().create_future(), pairs)
        self.pending.append(request)
        if self.running is None or self.running.done():
            self.running = asyncio.create_task(self._drain())
        return await request.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self.pending or self.active:
            if self.wait and self.pending:
                await asyncio.sleep(self.wait)
            self.active += self.pending
            self.pending = []
            for key in dict.fromkeys(request.key for request in self.active):
                requests = [r for r in self.active if r.key == key and not r.finished]
                if not requests:
                    continue
                try:
                    await loop.run_in_executor(self.executor, self._run, key, requests)
                except Exception as exc:
                    for request in requests:
                        request.error = request.error or exc
                self.batches += 1
                for request in requests:
                    if request.finished and not request.future.done():
                        if request.error is not None:
                            request.future.set_exception(request.error)
                        else:
                            request.future.set_result(request.results)
            self.active = [request for request in self.active if not request.finished]

    def _run(self, key: str, requests: list[_Request]) -> None:
        """One pass (on the inference thread): tokenise the requests new to it, then run the next piece."""
        host, _ = self.pool.load(key)
        started = time.perf_counter()
        with host.using(key):
            for request in requests:
                if request.rows is None:
                    try:
                        request.rows, request.truncated = host.encode(request.texts, request.pairs)
                    except Exception as exc:  # this request's own problem: the others still run
                        request.error = exc
            piece = self._piece([request for request in requests if request.error is None])
            if not piece:
                return
            predictions = host.predict_encoded(
                [request.rows[i] for request, i in piece],
                [request.truncated[i] for request, i in piece],
                batch_size=self.max_batch,
            )
        for (request, _), prediction in zip(piece, predictions, strict=True):
            request.results.append(prediction)
        if self.metrics is not None:
            self.metrics.observe(key, len(piece), time.perf_counter() - started)

    def _piece(self, requests: list[_Request]) -> list[tuple[_Request, int]]:
        """(request, text index) pairs of the next pass: each request's next text in turn, the least served
        request first (then the oldest), until the next text would take the pass over ``max_tokens`` (a pass
        always holds at least one text)."""
        requests = sorted(requests, key=lambda request: len(request.results))  # stable: oldest first on ties
        piece: list[tuple[_Request, int]] = []
        cursors = [len(request.results) for request in requests]
        tokens, more = 0, True
        while more:
            more = False
            for number, request in enumerate(requests):
                index = cursors[number]
                if index == len(request.texts):
                    continue
                assert request.rows is not None
                cost = len(request.rows[index])
                if piece and tokens + cost > self.max_tokens:
                    return piece
                piece.append((request, index))
                tokens, cursors[number], more = tokens + cost, index + 1, True
        return piece


class InferenceMetrics:
    """Model time per batch and texts per batch (by model), and the adapters resident now."""

    def __init__(self, registry: Any, pool: ModelPool) -> None:
        self.seconds = Histogram(
            "inference_batch_seconds", "Time a batch spends in the model, tokenising included", ["model"],
            registry=registry, buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )  # fmt: skip
        self.sizes = Histogram(
            "inference_batch_size", "Texts per batch", ["model"], registry=registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
        )  # fmt: skip

        class Resident:
            def collect(self):
                yield GaugeMetricFamily(
                    "inference_resident_adapters", "Adapters loaded now", len(pool.loaded())
                )

        registry.register(Resident())

    def observe(self, key: str, texts: int, seconds: float) -> None:
        model = key.partition("@")[0]
        self.seconds.labels(model).observe(seconds)
        self.sizes.labels(model).observe(texts)
