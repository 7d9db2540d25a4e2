"""`finetune serve`: predictions over HTTP from registered adapters, many adapters per base model,
requests arriving together batched together. The routes, error handlers, callers' check and app factory;
the adapter pool and the batching are the domain's (``inference.pool``, ``inference.batcher``)."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import OAuth2PasswordBearer
from fastapi.security.utils import get_authorization_scheme_param
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import Scope

from finetune_platform.errors import PlatformError
from finetune_platform.http_guard import AUTHENTICATED, BodyLimit, SecurityHeaders, invalid_fields
from finetune_platform.inference.batcher import Batcher, InferenceMetrics
from finetune_platform.inference.pool import ModelPool
from finetune_platform.inference.predictor import (
    AdapterSource,
    Prediction,
    answer,
    source_from_run,
    task_fields,
)
from finetune_platform.inference.runtimes import serving_device
from finetune_platform.observability import mount_metrics, system_registry
from finetune_platform.security import InvalidToken, Tokens
from finetune_platform.serve.schemas import (
    SERVE_ERRORS,
    BatchRequest,
    BatchResponse,
    ModelsResponse,
    PredictRequest,
    PredictResponse,
    ServeHealth,
)
from finetune_platform.services.users import token_caller
from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.inference")
BEARER = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)
NO_CREDENTIALS = "send a platform token (Authorization: Bearer) or an X-API-Key"


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
        source = source_from_run(run_folder)
        if source.checkpoint is not None:
            logger.warning(
                "%s has no final adapter: serving its %s (step %d)",
                run_folder,
                source.checkpoint.path.name,
                source.checkpoint.step,
            )
        pool.serve_local(source)
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

    def check_texts(texts: list[str], what: str, empty: str) -> int:
        """The characters of ``texts`` (``what`` names them in an error: text, text_pair), each within the limit
        and not blank (``empty`` says what to give instead)."""
        most = settings.SERVE_MAX_TEXT_CHARS
        for index, text in enumerate(texts):
            if len(text) > most:
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{what} {index}: {len(text)} characters, more than the limit of {most} per text",
                )
            if not text.strip():
                raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{what} {index}: empty; {empty}")
        return sum(len(text) for text in texts)

    async def run(
        body_model: str | None, texts: list[str], pairs: list[str] | None, pair_field: str
    ) -> tuple[list[Prediction], AdapterSource, float]:
        total = check_texts(texts, "text", "give the text to classify")
        if pairs is not None:
            if len(pairs) != len(texts):
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT,
                    f"{pair_field}: {len(pairs)} for {len(texts)} texts; give one per text",
                )
            total += check_texts(pairs, "text_pair", "give the second text of the pair")
        if total > settings.SERVE_MAX_REQUEST_CHARS:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{total} characters in all, more than the limit of {settings.SERVE_MAX_REQUEST_CHARS} per request",
            )
        started = time.perf_counter()
        key = pool.cached_key(body_model)
        loop = asyncio.get_running_loop()
        if key is None:  # a registry lookup: on its own thread, never queued behind a running batch
            key = await loop.run_in_executor(resolver, pool.key_for, body_model)
        source = pool.known_source(key) or await loop.run_in_executor(resolver, pool.source, key)
        check_pairs(source, pairs, pair_field)
        predictions = await batcher.predict(key, texts, pairs)
        return predictions, source, round((time.perf_counter() - started) * 1000, 2)

    @app.post(
        "/predict",
        dependencies=[Depends(authorize)],
        summary="Classify one text",
        response_model=PredictResponse,
        response_model_exclude_unset=True,  # a single-label answer has no task fields
        responses=SERVE_ERRORS,
    )
    async def predict(body: PredictRequest) -> dict[str, Any]:
        """The seed README's answer: `label` (the class id), `probability`, `latency_ms`, `base_model`,
        `language`; and `label_name`, `probabilities`, `truncated`, `model`, `version`. A multi-label model's
        answer adds `task` and `labels` (every label above its threshold), a regression model's `task` and
        `value`. A model trained on text pairs needs `text_pair`."""
        pairs = None if body.text_pair is None else [body.text_pair]
        predictions, source, latency = await run(body.model, [body.text], pairs, "text_pair")
        return answer(predictions[0], source.info, latency)

    @app.post(
        "/predict/batch",
        dependencies=[Depends(authorize)],
        summary="Classify a list of texts",
        response_model=BatchResponse,
        response_model_exclude_unset=True,  # a single-label answer has no task fields
        responses=SERVE_ERRORS,
    )
    async def predict_batch(body: BatchRequest) -> dict[str, Any]:
        """One prediction per text (`label` the class id, as for /predict, with the task's fields), and the model
        that answered. A model trained on text pairs needs `text_pairs`, one per text."""
        if len(body.texts) > settings.SERVE_MAX_BATCH:
            raise HTTPException(
                status.HTTP_413_CONTENT_TOO_LARGE,
                f"{len(body.texts)} texts: at most {settings.SERVE_MAX_BATCH} per request",
            )
        predictions, source, latency = await run(body.model, body.texts, body.text_pairs, "text_pairs")
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
        **task_fields(prediction),
    }


def check_pairs(source: AdapterSource, pairs: list[str] | None, field: str) -> None:
    """422 naming ``field`` (text_pair, text_pairs) when a model that reads pairs gets none, or one of a single
    text gets some."""
    name = source.info.name
    if source.label_map.pair and pairs is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}: model {name!r} reads text pairs; give {field} with the second text"
            + (" of each" if field == "text_pairs" else ""),
        )
    if not source.label_map.pair and pairs is not None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}: model {name!r} reads one text; leave {field} out",
        )


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
