"""`finetune serve`: predictions over HTTP from registered adapters, many adapters per base model,
requests arriving together batched together."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import Scope

from finetune_platform.errors import PlatformError
from finetune_platform.http_guard import AUTHENTICATED, BodyLimit, SecurityHeaders, invalid_fields
from finetune_platform.inference.hosting import open_host, serving_device
from finetune_platform.inference.predictor import (
    AdapterSource,
    Prediction,
    answer,
    source_from_registry,
    source_from_run,
)
from finetune_platform.observability import mount_metrics, system_registry
from finetune_platform.security import InvalidToken, Tokens
from finetune_platform.services.users import token_caller
from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.inference")
BEARER = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)
DEFAULT_SLOT = ""  # the resolution cache's entry for "no model named, no --model given"
NO_CREDENTIALS = "send a platform token (Authorization: Bearer) or an X-API-Key"


class ModelPool:
    """Resolves references to verified adapters and keeps them attached to shared base models (LRU)."""

    def __init__(
        self,
        settings: Settings,
        default: str | None,
        max_adapters: int,
        resolve_seconds: float,
        runtime: str = "onnx",
        device: str = "cpu",
        max_batch: int = 64,
        cuda_graphs: bool = True,
    ) -> None:
        self.settings, self.default, self.max_adapters = settings, default, max_adapters
        self.resolve_seconds, self.runtime, self.device = resolve_seconds, runtime, device
        self.max_batch, self.cuda_graphs = max_batch, cuda_graphs
        self.local: set[str] = set()  # run folders served without the registry (their keys never move)
        self.hosts: list[Any] = []  # one per base model and label count (ONNX: and adapter shape)
        self._resolved: dict[str, tuple[float, str]] = {}  # reference -> (when, name@version)
        self.default_key: str | None = None  # what the default model resolves to now
        self._recent: OrderedDict[str, None] = OrderedDict()  # resident adapters, least recently used first
        self._sources: dict[str, AdapterSource] = {}

    def default_reference(self) -> str:
        from finetune_platform.errors import NotFoundError
        from finetune_platform.tracking.registry import ModelRegistry, Stage

        if self.default:
            return self.default
        versions = ModelRegistry(self.settings).versions()
        production = [v for v in versions if v.stage is Stage.PRODUCTION]
        chosen = production or versions
        if not chosen:
            raise NotFoundError("no registered model to serve: train one, or name one with --model")
        newest = max(chosen, key=lambda v: (v.created_at, v.version))
        return f"{newest.name}@production" if production else newest.name

    def cached_key(self, reference: str | None) -> str | None:
        """name@version without touching the registry, when the reference pins a version or was resolved
        less than ``resolve_seconds`` ago; None when it must be looked up (``key_for``)."""
        slot = reference or self.default or DEFAULT_SLOT
        name, _, selector = slot.partition("@")
        if slot in self.local:
            key = slot
        elif selector.isdigit():
            key = f"{name}@{int(selector)}"
        else:
            cached = self._resolved.get(slot)
            if not cached or time.monotonic() - cached[0] >= self.resolve_seconds:
                return None
            key = cached[1]
        if not reference or reference == self.default:
            self.default_key = key
        return key

    def key_for(self, reference: str | None) -> str:
        """name@version for a reference; moving references (stage, newest, the default) are looked up again
        every ``resolve_seconds``."""
        key = self.cached_key(reference)
        if key is not None:
            return key
        from finetune_platform.tracking.registry import ModelRegistry

        slot = reference or self.default or DEFAULT_SLOT
        info = ModelRegistry(self.settings).resolve(
            self.default_reference() if slot == DEFAULT_SLOT else slot
        )
        key = f"{info.name}@{info.version}"
        cached = self._resolved.get(slot)
        if cached and cached[1] != key:
            logger.info("%s now resolves to %s", reference or "the default model", key)
        self._resolved[slot] = (time.monotonic(), key)
        if not reference or reference == self.default:
            self.default_key = key
        return key

    def serve_local(self, source: AdapterSource) -> None:
        """Make an adapter from a run folder the default model; its key resolves without the registry."""
        self.local.add(source.key)
        self._sources[source.key] = source
        self.default = source.key

    def source(self, key: str) -> AdapterSource:
        return self._sources[key]

    def load(self, key: str) -> tuple[Any, AdapterSource]:
        """The host with ``key`` attached (downloaded, verified, attached on first use)."""
        source = self._sources.get(key)
        if source is None:
            source = self._sources[key] = source_from_registry(self.settings, key)
        host = next((h for h in self.hosts if key in h.adapters), None)
        if host is None:
            host = self._host_for(key, source)
        self._recent[key] = None
        self._recent.move_to_end(key)
        self._evict(keep=key)
        return host, source

    def _host_for(self, key: str, source: AdapterSource) -> Any:
        """Where a new adapter goes. Alone on its base model it is merged into it (the single-model case:
        ~3 ms instead of ~4 ms a sentence on 2 cores). A second adapter of that base moves both to the shared
        graph with adapters as inputs, unless it is a new default (a promotion): then it replaces the old."""
        same_base = [host for host in self.hosts if self._same_base(host, source)]
        merged = next((host for host in same_base if host.merged), None)
        if merged is not None:
            self.hosts.remove(merged)
            same_base.remove(merged)
            (earlier,) = merged.adapters.values()
            if key == self.default_key:
                logger.info("%s replaces %s as the default model", key, earlier.key)
            else:
                same_base.append(self._open(earlier))
        if not same_base and (self.runtime != "torch" or self.device != "cpu"):
            return self._open(source, merged=True)
        host = next((host for host in same_base if host.accepts(source)), None)
        if host is None:
            return self._open(source)
        host.attach(source)
        return host

    def _open(self, source: AdapterSource, merged: bool = False) -> Any:
        host = open_host(
            source,
            self.runtime,
            self.device,
            merged=merged,
            max_rows=self.max_batch,
            cuda_graphs=self.cuda_graphs,
        )
        self.hosts.append(host)
        return host

    @staticmethod
    def _same_base(host: Any, source: AdapterSource) -> bool:
        first = next(iter(host.adapters.values()))
        return (first.info.base_model, len(first.label_map.names)) == (
            source.info.base_model,
            len(source.label_map.names),
        )

    def _evict(self, keep: str) -> None:
        """Past ``max_adapters``, the least recently used adapters go (never ``keep``, the one in use);
        a host whose last adapter goes is dropped with its graph."""
        resident = {key: host for host in self.hosts for key in host.adapters}
        for key in [key for key in self._recent if key not in resident]:
            del self._recent[key]
        while len(resident) > self.max_adapters:
            key = next(key for key in self._recent if key != keep)
            host = resident.pop(key)
            del self._recent[key]
            if len(host.adapters) > 1:
                with host.lock:
                    host.detach(key)
            else:
                self.hosts.remove(host)
            logger.info("unloaded %s (more than %d adapters resident)", key, self.max_adapters)

    def loaded(self) -> list[dict[str, Any]]:
        return [
            {"model": s.info.name, "version": s.info.version, "base_model": s.info.base_model,
             "language": s.info.language, "labels": list(s.label_map.names), "max_length": s.info.max_length,
             "runtime": host.runtime, "merged": host.merged}
            for host in self.hosts
            for s in host.adapters.values()
        ]  # fmt: skip


@dataclass(eq=False)
class _Request:
    """One request's texts on their way through the model, in one piece or over several."""

    key: str
    texts: list[str]
    future: asyncio.Future
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

    async def predict(self, key: str, texts: list[str]) -> list[Prediction]:
        request = _Request(key, texts, asyncio.get_running_loop().create_future())
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
                        request.rows, request.truncated = host.encode(request.texts)
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
        from prometheus_client import Histogram
        from prometheus_client.core import GaugeMetricFamily

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


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(
        min_length=1, description="The text to classify (at most SERVE_MAX_TEXT_CHARS characters)."
    )
    model: str | None = Field(
        default=None,
        max_length=200,
        description="name, name@version or name@production; default: the served model.",
    )


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(
        min_length=1,
        description="Texts to classify: at most SERVE_MAX_BATCH, SERVE_MAX_REQUEST_CHARS characters in all.",
    )
    model: str | None = Field(default=None, max_length=200, description="As for /predict.")


LABEL = (
    "Class id: the index of the predicted class in the model's labels (its id2label), as in the seed README."
)
PROBABILITY = "Probability of the predicted class (softmax, 0 to 1)."
LABEL_NAME = "Name of the predicted class: the model's labels[label] (GET /models lists them)."
PROBABILITIES = "Probability of every class, by class name."
TRUNCATED = "Whether the text was cut to the model's max length (in tokens) before it was classified."
LATENCY = (
    "Milliseconds the server spent on the request: model lookup, queueing, tokenising, the forward pass."
)
BASE_MODEL = "Base model the adapter was trained on (a catalogue name, Hugging Face id or path)."
LANGUAGE = "Language of the model and its training data (e.g. English)."
MODEL = "Registered model name (the run's model name for a run folder served with --run)."
VERSION = "Registered version; null for a run folder served with --run."


class PredictResponse(BaseModel):
    """The seed README's answer (label id, probability, latency_ms, base_model, language), then ours."""

    label: int = Field(description=LABEL)
    probability: float = Field(description=PROBABILITY)
    latency_ms: float = Field(description=LATENCY)
    base_model: str = Field(description=BASE_MODEL)
    language: str = Field(description=LANGUAGE)
    label_name: str = Field(description=LABEL_NAME)
    probabilities: dict[str, float] = Field(description=PROBABILITIES)
    truncated: bool = Field(description=TRUNCATED)
    model: str = Field(description=MODEL)
    version: int | None = Field(description=VERSION)


class TextPrediction(BaseModel):
    label: int = Field(description=LABEL)
    probability: float = Field(description=PROBABILITY)
    label_name: str = Field(description=LABEL_NAME)
    probabilities: dict[str, float] = Field(description=PROBABILITIES)
    truncated: bool = Field(description=TRUNCATED)


class BatchResponse(BaseModel):
    predictions: list[TextPrediction] = Field(description="One prediction per text, in the order sent.")
    latency_ms: float = Field(description=LATENCY)
    base_model: str = Field(description=BASE_MODEL)
    language: str = Field(description=LANGUAGE)
    model: str = Field(description=MODEL)
    version: int | None = Field(description=VERSION)


class ResidentAdapter(BaseModel):
    model: str = Field(description=MODEL)
    version: int | None = Field(description=VERSION)
    base_model: str = Field(description=BASE_MODEL)
    language: str = Field(description=LANGUAGE)
    labels: list[str] = Field(description="Class names; a prediction's label is an index into this list.")
    max_length: int = Field(description="Tokens per text; longer texts are truncated.")
    runtime: str = Field(description="onnx, onnx-int8 or torch.")
    merged: bool = Field(description="Whether the adapter is folded into its base model (alone on it).")


class ModelsResponse(BaseModel):
    loaded: list[ResidentAdapter] = Field(description="Adapters resident now.")
    max_adapters: int = Field(description="Adapters kept resident at most (SERVE_MAX_ADAPTERS).")
    batches: int = Field(description="Forward passes run since the start.")


class ServeHealth(BaseModel):
    status: str = Field(description="`ok` while the server answers.")
    resident_adapters: int = Field(description="Adapters loaded now.")


class ServeProblem(BaseModel):
    field: str = Field(description="Where: body.<field>, query.<name>, path.<name> or header.<name>.")
    message: str = Field(description="What is wrong with it.")


class ServeError(BaseModel):
    detail: str = Field(description="What went wrong, safe to show.")
    code: str | None = Field(
        default=None, description="Machine-readable error code, when the platform raised it."
    )
    problems: list[ServeProblem] | None = Field(default=None, description="Each invalid field (422).")


SERVE_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ServeError, "description": description}
    for code, description in (
        (401, "No credentials, or an unknown API key or invalid token (outside local mode)."),
        (404, "No such registered model or version (or none registered yet)."),
        (413, "The body, a request's texts or their characters in all are over the limit."),
        (422, "Invalid request: an empty or too long text, or the fields named in `problems`."),
    )
}


def create_serve_app(settings: Settings, model: str | None = None, run_folder: Path | None = None) -> FastAPI:
    """The inference app. ``run_folder``: serve that run's adapter as the default model, without the registry.
    Outside local mode a weak JWT_SECRET or API key refuses the start (the platform's secret policy)."""
    settings.check_secrets(require_jwt=False)
    device = serving_device(settings.SERVE_DEVICE)
    if device != "cpu" and settings.SERVE_RUNTIME != "torch":
        logger.info(
            "serving on %s with PyTorch (SERVE_RUNTIME=%s runs on the CPU only)",
            device,
            settings.SERVE_RUNTIME,
        )
    pool = ModelPool(
        settings,
        model,
        settings.SERVE_MAX_ADAPTERS,
        settings.SERVE_RESOLVE_SECONDS,
        settings.SERVE_RUNTIME,
        device,
        settings.SERVE_MAX_BATCH,
        settings.SERVE_CUDA_GRAPHS,
    )
    if run_folder is not None:
        pool.serve_local(source_from_run(run_folder))
    batcher = Batcher(
        pool, settings.SERVE_BATCH_WAIT_MS, settings.SERVE_MAX_BATCH, settings.SERVE_MAX_BATCH_TOKENS
    )
    resolver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="resolve")
    app = FastAPI(
        title="finetune-platform inference", description="Predictions from registered LoRA adapters."
    )
    app.state.pool, app.state.batcher = pool, batcher
    callers = ServeCallers(settings)
    authorize = callers.dependency()
    # bodies are capped, and refused unread from an unknown caller, before FastAPI reads them
    app.add_middleware(
        BodyLimit,
        default_limit=settings.MAX_JSON_BODY_BYTES,
        limits={("POST", "/predict/batch"): settings.SERVE_MAX_BODY_BYTES},
        authenticate=callers.refusal,
    )
    app.add_middleware(SecurityHeaders, environment=settings.ENVIRONMENT, no_store_paths=())

    @app.exception_handler(PlatformError)
    async def platform_error(request: Request, exc: PlatformError):
        # the table in errors.py, shared with the REST API
        return JSONResponse({"detail": exc.message, "code": exc.code.value}, status_code=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        # the fields named, the input never echoed: a 422 does not grow with what a client sent
        return JSONResponse({"detail": "invalid request", "problems": invalid_fields(exc)}, status_code=422)

    async def run(body_model: str | None, texts: list[str]) -> tuple[list[Prediction], AdapterSource, float]:
        most = settings.SERVE_MAX_TEXT_CHARS
        for index, text in enumerate(texts):
            if len(text) > most:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"text {index}: {len(text)} characters, more than the limit of {most} per text",
                )
            if not text.strip():
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, f"text {index}: empty; give the text to classify"
                )
        total = sum(len(text) for text in texts)
        if total > settings.SERVE_MAX_REQUEST_CHARS:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{total} characters in all, more than the limit of {settings.SERVE_MAX_REQUEST_CHARS} per request",
            )
        started = time.perf_counter()
        key = pool.cached_key(body_model)
        if key is None:  # a registry lookup: on its own thread, never queued behind a running batch
            key = await asyncio.get_running_loop().run_in_executor(resolver, pool.key_for, body_model)
        predictions = await batcher.predict(key, texts)
        return predictions, pool.source(key), round((time.perf_counter() - started) * 1000, 2)

    @app.post(
        "/predict",
        dependencies=[Depends(authorize)],
        summary="Classify one text",
        response_model=PredictResponse,
        responses=SERVE_ERRORS,
    )
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """The seed README's answer: `label` (the class id), `probability`, `latency_ms`, `base_model`,
        `language`; and `label_name`, `probabilities`, `truncated`, `model`, `version`."""
        predictions, source, latency = await run(body.model, [body.text])
        return answer(predictions[0], source.info, latency)

    @app.post(
        "/predict/batch",
        dependencies=[Depends(authorize)],
        summary="Classify a list of texts",
        response_model=BatchResponse,
        responses=SERVE_ERRORS,
    )
    async def predict_batch(body: BatchRequest) -> dict[str, Any]:
        """One prediction per text (`label` the class id, as for /predict), and the model that answered."""
        if len(body.texts) > settings.SERVE_MAX_BATCH:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{len(body.texts)} texts: at most {settings.SERVE_MAX_BATCH} per request",
            )
        predictions, source, latency = await run(body.model, body.texts)
        info = source.info
        return {
            "predictions": [_shape(p) for p in predictions], "latency_ms": latency, "base_model": info.base_model,
            "language": info.language, "model": info.name, "version": info.version,
        }  # fmt: skip

    @app.get(
        "/models",
        dependencies=[Depends(authorize)],
        summary="Adapters resident now",
        response_model=ModelsResponse,
        responses={401: SERVE_ERRORS[401]},
    )
    async def models() -> dict[str, Any]:
        return {"loaded": pool.loaded(), "max_adapters": pool.max_adapters, "batches": batcher.batches}

    @app.get("/health", summary="Liveness", response_model=ServeHealth)
    async def health() -> dict[str, Any]:
        return {"status": "ok", "resident_adapters": len(pool.loaded())}

    if settings.METRICS_ENABLED:
        registry = system_registry(settings)
        batcher.metrics = InferenceMetrics(registry, pool)
        mount_metrics(app, registry, settings)
    return app


def freeze_heap() -> None:
    """Call once the served models are loaded: what is alive then (torch, transformers, the models: ~430,000
    objects) stays alive, so the garbage collector stops walking it. A full collection over it takes ~160 ms
    on 2 CPU cores, a pause that every request in flight waits through."""
    gc.collect()
    gc.freeze()


def _shape(prediction: Prediction) -> dict[str, Any]:
    return {
        "label": prediction.label,
        "probability": prediction.probability,
        "label_name": prediction.label_name,
        "probabilities": prediction.probabilities,
        "truncated": prediction.truncated,
    }


class ServeCallers:
    """Who may call the server: anyone in local mode; otherwise an X-API-Key from SERVE_API_KEYS or a platform
    JWT (Authorization: Bearer) of an active user. One check on the raw headers, so that ``BodyLimit`` runs it
    before a body is read and the routes without a body run it as a dependency."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.open = settings.ENVIRONMENT == "local"
        self.keys = [key.get_secret_value().encode("utf-8") for key in settings.SERVE_API_KEYS]
        self._tokens: Any = None

    def _known_key(self, headers: Headers) -> bool:
        given = headers.get("x-api-key")
        if given is None:
            return False
        given_bytes = given.encode("utf-8")
        return any(hmac.compare_digest(given_bytes, key) for key in self.keys)

    def _token_refusal(self, authorization: str | None) -> str | None:
        """Why the bearer token does not identify an active user (a database read: call it off the loop)."""
        scheme, token = get_authorization_scheme_param(authorization)
        if scheme.lower() != "bearer" or not token:
            return NO_CREDENTIALS
        try:
            self._tokens = self._tokens or Tokens(self.settings)
        except PlatformError:  # no usable JWT_SECRET: this server takes API keys only
            return NO_CREDENTIALS
        try:
            token_caller(self._tokens, self.settings, token)
        except InvalidToken as exc:
            return str(exc)
        return None

    async def refusal(self, scope: Scope) -> str | None:
        """Why the request is refused (401), or None; ``BodyLimit``'s ``authenticate``."""
        if self.open:
            return None
        headers = Headers(scope=scope)
        if self._known_key(headers):
            return None
        return await run_in_threadpool(self._token_refusal, headers.get("authorization"))

    def dependency(self) -> Callable:
        async def authorize(request: Request, bearer: Annotated[str | None, Depends(BEARER)]) -> None:
            # ``bearer`` only documents the scheme in the OpenAPI schema; the check reads the headers itself
            if request.scope.get(AUTHENTICATED):
                return
            problem = await self.refusal(request.scope)
            if problem is not None:
                raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})

        return authorize
