"""The model registry as a client sees it: model cards, recommendations, stage moves, name owners and the base
models a training job may start from."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict, Timestamp
from finetune_platform.services.schemas.users import USERNAME_PATTERN

StageName = Literal["None", "Staging", "Production", "Archived"]
THRESHOLD_PATTERN = (
    r"^\s*[A-Za-z_][A-Za-z0-9_.]*\s*(>=|<=|==|=|>|<)\s*[-+]?[0-9]*[.]?[0-9]+([eE][-+]?[0-9]+)?\s*$"
)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
MODEL_VERSION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}@[0-9]{1,9}$"
BASE_MODEL_PATTERN = (
    r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?|/[A-Za-z0-9_./-]{1,200})$"
)


class ModelCardPublic(Public):
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Version number.")
    stage: str = Field(description="None, Staging, Production or Archived.")
    base_model: str = Field(description="Base model the adapter was trained from.")
    language: str = Field(description="Language of the training data.")
    task: str = Field(description="Task, e.g. text-classification.")
    description: str = Field(description="What the model is for.")
    metrics: dict[str, float] = Field(description="Final evaluation metrics.")
    tags: list[str] = Field(description="Free-form tags.")
    labels: list[str] = Field(description="Class labels.")
    dataset_version: str | None = Field(description="Version of the training data.")
    created_at: str = Field(description="Registration time.")
    owner: str | None = Field(
        default=None, description="Username owning the model name (None: registered before names were owned)."
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description=(
            "Temperature scaling fitted on the validation set (method, temperature, expected calibration error and "
            "log-loss before and after); null when the run was not calibrated."
        ),
    )

    @classmethod
    def of(cls, card: Any) -> ModelCardPublic:
        """From a ``ModelCard``, less what stays on the server (run folder, checksums, embedding)."""
        return cls(**{name: getattr(card, name) for name in cls.model_fields})


class Recommendation(Public):
    card: ModelCardPublic = Field(description="The model version.")
    score: float = Field(description="Cosine similarity to the query, -1 to 1.")


class RecommendRequest(Strict):
    """Exactly one of `query`, `embedding` or `like` (422 naming them otherwise)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"query": "sentiment of product reviews", "top_k": 3},
                {"like": "reviews@2", "stage": "Production"},
            ]
        }
    )

    query: str | None = Field(
        default=None, min_length=1, max_length=2000, description="What the model should do, in words."
    )
    embedding: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description=(
            "A vector of finite numbers the size of the model cards' embeddings (384, all-MiniLM-L6-v2 mean "
            "pooled); another size answers 422 naming the expected one. Need not be normalised."
        ),
    )
    like: str | None = Field(
        default=None,
        max_length=140,
        pattern=MODEL_VERSION_PATTERN,
        description="Models similar to this registered version, as name@version (itself left out).",
    )
    top_k: int = Field(default=5, ge=1, le=50, description="How many to return.")
    language: str | None = Field(default=None, max_length=32, description="Only models for this language.")
    task: str | None = Field(default=None, max_length=64, description="Only models for this task.")
    stage: StageName | None = Field(default=None, description="Only models in this stage.")


class StageChange(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "reviews", "version": 2, "stage": "Production"}]}
    )

    name: str = Field(max_length=128, description="Registered model name.")
    version: int = Field(ge=1, description="Version to move.")
    stage: StageName = Field(description="None, Staging, Production or Archived.")


class StageChangePublic(Public):
    name: str = Field(description="Registered model name.")
    version: int = Field(description="Version moved.")
    stage: str = Field(description="Its new stage.")
    archived: list[int] = Field(description="Versions moved out of Production by this transition.")


class ModelOwner(Public):
    name: str = Field(description="Registered model name.")
    owner: str = Field(description="Username owning it: only they (or an admin) register versions under it.")


class OwnerChange(Strict):
    model_config = ConfigDict(json_schema_extra={"examples": [{"owner": "bob"}]})

    owner: str = Field(
        min_length=2, max_length=64, pattern=USERNAME_PATTERN, description="The new owner's username."
    )


class BaseModelPublic(Public):
    name: str = Field(description="What `config.model.base_model` may name in POST /train.")
    added_by: int | None = Field(description="Admin who allowed it (None: allowed by the platform itself).")
    created_at: Timestamp = Field(description="When it was allowed.")


class BaseModelCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "sentence-transformers/all-MiniLM-L12-v2"}]}
    )

    name: str = Field(
        min_length=1,
        max_length=201,
        pattern=BASE_MODEL_PATTERN,
        description="A bundled alias (minilm), a Hugging Face id (org/name) or an absolute folder on the workers.",
    )
