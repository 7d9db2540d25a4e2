"""Request and response bodies of `finetune serve` (its OpenAPI schema)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(
        min_length=1, description="The text to classify (at most SERVE_MAX_TEXT_CHARS characters)."
    )
    text_pair: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "The second text, for a model trained on text pairs (GET /models: `pair` true), which refuses a request "
            "without it; a model of one text refuses it (422). At most SERVE_MAX_TEXT_CHARS characters; it counts "
            "towards the model's max length in tokens together with `text`."
        ),
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
    text_pairs: list[str] | None = Field(
        default=None,
        description=(
            "The second text of each pair, one per text in the same order, for a model trained on text pairs "
            "(required by it, refused by a model of one text: 422). Each at most SERVE_MAX_TEXT_CHARS characters; "
            "they count towards SERVE_MAX_REQUEST_CHARS with the texts."
        ),
    )
    model: str | None = Field(default=None, max_length=200, description="As for /predict.")


LABEL = (
    "Class id: the index of the predicted class in the model's labels (its id2label), as in the seed README. "
    "multi_label: the most probable label's; regression: 0, the model's one output."
)
PROBABILITY = (
    "Probability of the predicted class (softmax, 0 to 1); multi_label: the most probable label's own "
    "(sigmoid); regression: null."
)
LABEL_NAME = (
    "Name of the predicted class: the model's labels[label] (GET /models lists them); regression: the name of "
    "the target the model predicts (its training label column)."
)
PROBABILITIES = (
    "Probability of every class, by class name; multi_label: each label's own (they need not sum to 1); "
    "regression: empty."
)
TASK = "Only for a multi_label or regression model (a single_label answer has no `task`): what the model predicts."
LABELS = (
    "multi_label only: every label whose probability is above its threshold (the model's, from training), most "
    "probable first; empty when none is."
)
VALUE = "regression only: the predicted number, in the units of the training targets."
PAIR = "Whether the model reads text pairs: requests must then give `text_pair` (`text_pairs` for a batch)."
TASK_OF_MODEL = "single_label, multi_label or regression: what the model predicts (see the answers' fields)."


class LabelProbability(BaseModel):
    label: str = Field(description="A label's name (one of the model's labels).")
    probability: float = Field(description="Its probability (sigmoid, 0 to 1), above its threshold.")


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
    probability: float | None = Field(description=PROBABILITY)
    latency_ms: float = Field(description=LATENCY)
    base_model: str = Field(description=BASE_MODEL)
    language: str = Field(description=LANGUAGE)
    label_name: str = Field(description=LABEL_NAME)
    probabilities: dict[str, float] = Field(description=PROBABILITIES)
    truncated: bool = Field(description=TRUNCATED)
    model: str = Field(description=MODEL)
    version: int | None = Field(description=VERSION)
    task: str | None = Field(default=None, description=TASK)
    labels: list[LabelProbability] | None = Field(default=None, description=LABELS)
    value: float | None = Field(default=None, description=VALUE)


class TextPrediction(BaseModel):
    label: int = Field(description=LABEL)
    probability: float | None = Field(description=PROBABILITY)
    label_name: str = Field(description=LABEL_NAME)
    probabilities: dict[str, float] = Field(description=PROBABILITIES)
    truncated: bool = Field(description=TRUNCATED)
    task: str | None = Field(default=None, description=TASK)
    labels: list[LabelProbability] | None = Field(default=None, description=LABELS)
    value: float | None = Field(default=None, description=VALUE)


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
    labels: list[str] = Field(
        description="Class names; a prediction's label is an index into this list (regression: the target's name)."
    )
    max_length: int = Field(
        description="Tokens per text (a pair's two texts together); longer ones are truncated."
    )
    runtime: str = Field(description="onnx, onnx-int8, torch or torch+cuda-graphs.")
    merged: bool = Field(description="Whether the adapter is folded into its base model (alone on it).")
    task: str = Field(description=TASK_OF_MODEL)
    pair: bool = Field(description=PAIR)


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
        (
            422,
            "Invalid request: an empty or too long text or text pair, a text pair missing for a model that reads "
            "pairs (or given to one that does not), or the fields named in `problems`.",
        ),
    )
}
