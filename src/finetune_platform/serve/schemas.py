"""Request and response bodies of `finetune serve` (its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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
    runtime: str = Field(description="onnx, onnx-int8, torch or torch+cuda-graphs.")
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
