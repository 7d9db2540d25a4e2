"""TrainConfig: the one typed, documented and validated description of a training run.

Read from YAML, overridden from the command line with ``--set section.field=value``, and validated
before any model or dataset is loaded. Every field carries help text; errors name the field.
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finetune_platform.atomic import write_atomic
from finetune_platform.errors import ConfigError


class Device(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Quantization(StrEnum):
    NONE = "none"
    NF4 = "4bit"


class Scheduler(StrEnum):
    LINEAR = "linear"
    COSINE = "cosine"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    POLYNOMIAL = "polynomial"


class EvalStrategy(StrEnum):
    EPOCH = "epoch"
    STEPS = "steps"


class Task(StrEnum):
    """What a run learns from each text: one label, any number of labels, or a number."""

    SINGLE_LABEL = "single_label"
    MULTI_LABEL = "multi_label"
    REGRESSION = "regression"


class BestMetric(StrEnum):
    ACCURACY = "accuracy"
    MACRO_F1 = "macro_f1"
    LOSS = "loss"
    MICRO_F1 = "micro_f1"
    SUBSET_ACCURACY = "subset_accuracy"
    RMSE = "rmse"
    MAE = "mae"
    PEARSON = "pearson"
    SPEARMAN = "spearman"

    @property
    def greater_is_better(self) -> bool:
        return self not in (BestMetric.LOSS, BestMetric.RMSE, BestMetric.MAE)


# The validation metrics each task reports (eval_<name>), the first its default for ranking checkpoints.
TASK_METRICS: dict[Task, tuple[BestMetric, ...]] = {
    Task.SINGLE_LABEL: (BestMetric.ACCURACY, BestMetric.MACRO_F1, BestMetric.LOSS),
    Task.MULTI_LABEL: (BestMetric.MICRO_F1, BestMetric.MACRO_F1, BestMetric.SUBSET_ACCURACY, BestMetric.LOSS),
    Task.REGRESSION: (
        BestMetric.RMSE,
        BestMetric.MAE,
        BestMetric.PEARSON,
        BestMetric.SPEARMAN,
        BestMetric.LOSS,
    ),
}


# The metric a run is compared with its majority baseline on before it is registered
# (registry.require_better_than_baseline; ``training.metrics.majority_baseline`` scores the baseline).
BASELINE_METRICS: dict[Task, BestMetric] = {
    Task.SINGLE_LABEL: BestMetric.ACCURACY,
    Task.MULTI_LABEL: BestMetric.MICRO_F1,
    Task.REGRESSION: BestMetric.RMSE,
}


def check_task_metric(task: Task, metric: BestMetric, field: str) -> None:
    """ValueError naming ``field`` when ``task`` reports no ``metric``."""
    if metric not in TASK_METRICS[task]:
        known = ", ".join(m.value for m in TASK_METRICS[task])
        raise ValueError(f"{field}: {task.value} runs report {known}, not {metric.value!r}")


# Upper bounds a real run never reaches. They keep a submitted config from taking a worker: a queued job
# asking for 1e9 epochs, 64 processes on a 2-core host or a seed numpy cannot take must be refused at
# submit (422 naming the field), not after three failed attempts.
MAX_ROWS = 100_000_000
MAX_STEPS = 10_000_000
MAX_BATCH = 4096
MAX_SEED = 2**32 - 1  # numpy's seed range


class _Section(BaseModel):
    # No float field takes inf or NaN (YAML .inf, JSON Infinity): every number must be finite.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, use_enum_values=False, allow_inf_nan=False
    )


class ModelSection(_Section):
    base_model: str = Field(
        default="minilm",
        description="'minilm' (bundled all-MiniLM-L6-v2, offline), a Hugging Face model id, or a local path.",
        min_length=1,
    )
    language: str = Field(
        default="auto",
        description="Language of the model and data, recorded with the run; 'auto' infers it from the model.",
    )
    max_length: int = Field(
        default=128,
        ge=8,
        le=8192,
        description=(
            "Tokens per text (8-8192); longer texts are truncated. Cost grows with the longest text in a batch."
        ),
    )
    quantization: Quantization = Field(
        default=Quantization.NONE,
        description=(
            "'4bit' loads the frozen base model in 4-bit NF4 (bitsandbytes, QLoRA style: double quantization, "
            "bf16 compute) and trains the LoRA factors and the head in fp32: about a quarter of the base's "
            "memory, for decoder LLMs on one GPU. Needs CUDA and the bitsandbytes package. 'none' keeps fp32 "
            "weights."
        ),
    )


class DataSection(_Section):
    train_file: Path = Field(
        description="Training data: CSV, TSV, JSONL, JSON or Parquet with text and label."
    )
    validation_file: Path | None = Field(
        default=None, description="Validation data in the same format; if unset, validation_split is used."
    )
    validation_split: float = Field(
        default=0.1,
        gt=0.0,
        lt=1.0,
        description=(
            "Share of the training rows held out (stratified) when no validation_file is given; above 0, below 1."
        ),
    )
    text_column: str = Field(
        default="text",
        min_length=1,
        max_length=128,
        description="Column holding the input text (128 characters).",
    )
    label_column: str = Field(
        default="label",
        min_length=1,
        max_length=128,
        description="Column holding the label (128 characters).",
    )
    text_pair_column: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "Column holding a second text for sentence-pair tasks (NLI, paraphrase, STS; 128 characters): each "
            "row is read as the pair (text, text_pair), joined by the tokenizer's separator, and prediction takes "
            "both texts. Unset: one text per row."
        ),
    )
    label_delimiter: str = Field(
        default=",",
        min_length=1,
        max_length=8,
        description=(
            "task: multi_label only: what separates a row's labels in its label cell ('sports,politics'); a cell "
            "may also hold a JSON list ('[\"sports\", \"politics\"]', '[]' for none). 1-8 characters."
        ),
    )
    label_names: list[Annotated[str, Field(max_length=256)]] | None = Field(
        default=None,
        max_length=10_000,
        description=(
            "Names for integer labels 0..K-1 (e.g. [negative, positive]); string labels name themselves. At most "
            "10,000 names of 256 characters."
        ),
    )
    max_train_rows: int | None = Field(
        default=None,
        ge=1,
        le=MAX_ROWS,
        description="Use only the first N training rows (benchmarks, quick experiments); 1 to 100,000,000.",
    )
    max_validation_rows: int | None = Field(
        default=None, ge=1, le=MAX_ROWS, description="Use only the first N validation rows; 1 to 100,000,000."
    )
    invalid_rows: Literal["error", "drop"] = Field(
        default="error",
        description=(
            "What row-level data errors do (empty text or label, unknown label, malformed line, conflicting "
            "duplicate): 'error' stops before training, 'drop' removes those rows and reports the counts."
        ),
    )
    audit: Literal["off", "warn", "block"] = Field(
        default="off",
        description=(
            "Audit the data before training (finetune data audit: likely label errors, near-duplicates, leaks, "
            "outliers), cached under FINETUNE_HOME/audits/ by content: 'warn' logs the summary and records the "
            "estimated label noise in metrics.json, 'block' also refuses to train when the estimated label noise "
            "is above max_label_noise (regression: never, no classes), 'off' skips it."
        ),
    )
    max_label_noise: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="audit: block: the highest estimated label noise (share of rows, 0 to 1) that still trains.",
    )

    @field_validator("audit", mode="before")
    @classmethod
    def _yaml_off(cls, value: object) -> object:
        return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false

    @field_validator("label_names")
    @classmethod
    def _unique_label_names(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if len(value) < 2:
                raise ValueError("needs at least two names")
            if len(set(value)) != len(value):
                raise ValueError("names must be unique")
        return value


class LoraSection(_Section):
    r: int = Field(
        default=8, ge=1, le=256, description="LoRA rank (1-256). Higher adds capacity and a little compute."
    )
    alpha: float = Field(
        default=16.0,
        gt=0,
        le=4096,
        description="LoRA scaling numerator (scale = alpha / r); above 0, at most 4096.",
    )
    dropout: float = Field(
        default=0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA input; from 0, below 1."
    )
    target_modules: list[Annotated[str, Field(max_length=128)]] | Literal["auto", "all-linear"] = Field(
        default="auto",
        max_length=64,
        description=(
            "Module names to adapt (at most 64); 'auto' picks per model family (BERT, RoBERTa, DistilBERT, ALBERT, "
            "and the decoders Llama, Qwen2, Mistral, Gemma: q_proj/v_proj, GPT-2: c_attn), else PEFT's default for "
            "the model type; 'all-linear' adapts every Linear layer but the head."
        ),
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty_modules(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list) and not value:
            raise ValueError("must name at least one module, or be 'auto'")
        return value


class Engine(StrEnum):
    AUTO = "auto"
    FAST = "fast"


class Loss(StrEnum):
    CROSS_ENTROPY = "cross_entropy"
    FOCAL = "focal"


MAX_CLASS_WEIGHT = 1_000_000
MAX_WEIGHTED_LABELS = 10_000  # as many as data.label_names may name


class TrainingSection(_Section):
    engine: Engine = Field(
        default=Engine.AUTO,
        description=(
            "Kept for older configs: every run trains on the platform's one loop (data kept on the device, "
            "length-bucketed batches, no host sync per step, fused AdamW, bf16/fp16 autocast, optional CUDA "
            "graphs, data parallel over training.devices). 'auto' and 'fast' both mean it; 'trainer' (the "
            "Hugging Face Trainer) was removed and is refused."
        ),
    )

    @field_validator("engine", mode="before")
    @classmethod
    def _removed_engine(cls, value: Any) -> Any:
        if value == "trainer":
            raise ValueError(
                "'trainer' (the Hugging Face Trainer engine) was removed: every run trains on the platform's "
                "driver, on every device; remove training.engine or set it to 'auto'"
            )
        return value

    devices: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Data-parallel processes, 1-64, started by torch's elastic launcher: one per GPU on CUDA (NCCL); "
            "on the CPU, processes over "
            "gloo. batch_size is per process; the global batch is batch_size × devices × "
            "gradient_accumulation_steps. A queued job may ask for at most what a worker of its pool has "
            "(POOL_MAX_DEVICES, GPU_POOL_MAX_DEVICES)."
        ),
    )
    nodes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Machines of a data-parallel run, 1-64, each running training.devices processes, meeting at "
            "training.rendezvous; the run folder must be on storage every node mounts. `finetune train` on the "
            "first node prints the torchrun command the others run. Queued jobs run on one machine."
        ),
    )
    rendezvous: str | None = Field(
        default=None,
        max_length=255,
        pattern=r"^[A-Za-z0-9.\-]+:[0-9]{1,5}$",
        description=(
            "host:port where the nodes of a multi-node run meet (torch's c10d rendezvous); needed when nodes > 1."
        ),
    )
    compile: Literal["none", "default", "reduce-overhead"] = Field(
        default="none",
        description=(
            "torch.compile of the training loop: 'default' fuses kernels, 'reduce-overhead' also replays them as "
            "CUDA graphs (fastest for short texts on a GPU; ~1-2 min of compiling first, so for long runs)."
        ),
    )
    learning_rate_reference_batch: int | None = Field(
        default=None,
        ge=1,
        le=1_048_576,
        description=(
            "Scale the learning rate by sqrt(global batch / this); e.g. 32 with batch_size 256 "
            "trains at learning_rate × 2.83. Unset: learning_rate is used as given. 1 to 1,048,576."
        ),
    )
    epochs: float = Field(
        default=3.0,
        gt=0,
        le=1000,
        description="Passes over the training data (fractions allowed); at most 1000.",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="Stop after this many optimizer steps (1 to 10,000,000); overrides epochs when set.",
    )
    batch_size: int = Field(
        default=32, ge=1, le=MAX_BATCH, description="Training rows per step on the device (memory); 1-4096."
    )
    eval_batch_size: int = Field(
        default=128, ge=1, le=8192, description="Rows per evaluation batch (memory); 1-8192."
    )
    learning_rate: float = Field(
        default=1e-3, gt=0, lt=1, description="Peak learning rate of AdamW; above 0, below 1."
    )
    scheduler: Scheduler = Field(default=Scheduler.LINEAR, description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(
        default=0.06, ge=0, lt=1, description="Share of steps spent warming up; from 0, below 1."
    )
    weight_decay: float = Field(default=0.01, ge=0, le=10, description="AdamW weight decay; 0 to 10.")
    gradient_accumulation_steps: int = Field(
        default=1,
        ge=1,
        le=1024,
        description="Steps whose gradients add up before an update (bigger effective batch); 1-1024.",
    )
    max_grad_norm: float = Field(
        default=1.0, gt=0, le=1_000_000, description="Gradient clipping norm; above 0, at most 1,000,000."
    )
    seed: int = Field(
        default=42,
        ge=0,
        le=MAX_SEED,
        description="Seed for data order, LoRA init and dropout; 0 to 4,294,967,295 (2**32 - 1).",
    )
    group_by_length: bool = Field(
        default=True,
        description="Batch texts of similar length together: far less padding, same data each epoch.",
    )
    logging_steps: int = Field(
        default=10,
        ge=1,
        le=MAX_STEPS,
        description="Steps between loss/learning-rate log lines; 1 to 10,000,000.",
    )
    eval_strategy: EvalStrategy = Field(
        default=EvalStrategy.EPOCH, description="Evaluate (and checkpoint) every epoch or every eval_steps."
    )
    eval_steps: int | None = Field(
        default=None,
        ge=1,
        le=MAX_STEPS,
        description="Steps between evaluations when eval_strategy is 'steps'; 1 to 10,000,000.",
    )
    metric_for_best_model: BestMetric = Field(
        default=BestMetric.ACCURACY,
        description=(
            "Validation metric that ranks checkpoints (and early stopping). single_label: accuracy, macro_f1, loss; "
            "multi_label: micro_f1 (its default), macro_f1, subset_accuracy, loss; regression: rmse (its default), "
            "mae, pearson, spearman, loss. loss, rmse and mae rank lower as better."
        ),
    )
    early_stopping_patience: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Stop after this many evaluations without improvement (1-10,000); unset = never.",
    )
    early_stopping_threshold: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description="Minimum improvement of the metric that counts as better; 0-1000.",
    )

    class_weights: (
        Literal["none", "balanced"]
        | dict[
            Annotated[str, Field(min_length=1, max_length=256)],
            Annotated[float, Field(gt=0, le=MAX_CLASS_WEIGHT)],
        ]
    ) = Field(
        default="none",
        description=(
            "Weight of each class in the training loss, for imbalanced data: 'none' (every row counts the same), "
            "'balanced' (rows / (classes × rows of the class), from the training split's counts: a class with a "
            "tenth of the rows weighs ten times more), or a mapping {label: weight} with the labels as the data "
            "names them (labels left out weigh 1; weights above 0, at most 1,000,000; an unknown label is refused "
            "when the data is loaded). task: multi_label: each label's pos_weight in the binary cross entropy "
            "(its positive rows weighed against its negative rows; 'balanced' = negatives / positives of the label "
            "in the training split, 1 for a label that no row or every row holds). task: regression: 'none' only. "
            "The resolved weights are recorded in config.yaml's resolved section and MLflow. Only the training loss "
            "is weighted: the evaluation loss (eval_loss) stays unweighted, so runs with and without weights "
            "compare."
        ),
    )
    loss: Loss = Field(
        default=Loss.CROSS_ENTROPY,
        description=(
            "Training loss: 'cross_entropy', or 'focal' ((1 − p_t)^focal_gamma × cross entropy, which turns "
            "attention from the rows the model already gets right to the hard ones), weighted by class_weights "
            "(as focal loss's α) when both are set. The per-row losses are averaged over the rows. Evaluation "
            "always reports the plain unweighted cross entropy. This is the single_label loss: with 'cross_entropy', "
            "task: multi_label trains on binary cross entropy with logits (a mean over rows and labels) and task: "
            "regression on the mean squared error of the standardised target; 'focal' is refused for both."
        ),
    )
    focal_gamma: float = Field(
        default=2.0,
        ge=0,
        le=100,
        description="Focusing exponent γ of the focal loss (used only with loss: focal); 0 is cross entropy; 0-100.",
    )

    @field_validator("class_weights", mode="before")
    @classmethod
    def _class_weights_checked(cls, value: Any) -> Any:
        # Checked here, whole, so an error names the label and says what is accepted (the union's own errors
        # would list each alternative's complaint).
        if isinstance(value, str):
            if value not in ("none", "balanced"):
                raise ValueError(f"{value!r}: use 'none', 'balanced' or a mapping {{label: weight}}")
            return value
        if not isinstance(value, dict):
            raise ValueError("use 'none', 'balanced' or a mapping {label: weight}")
        if not value:
            raise ValueError("an empty mapping weighs nothing: name at least one label, or use 'none'")
        if len(value) > MAX_WEIGHTED_LABELS:
            raise ValueError(f"at most {MAX_WEIGHTED_LABELS:,} labels")
        weights = {}
        for key, weight in value.items():
            # YAML reads `{0: 5, 1: 1}` with integer keys: the data's integer labels, named as text
            label = str(key) if isinstance(key, int) and not isinstance(key, bool) else key
            if not isinstance(label, str) or not 1 <= len(label) <= 256:
                raise ValueError(f"label {key!r}: a label of 1 to 256 characters")
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"label {label!r}: the weight must be a number (got {weight!r})")
            if not 0 < weight <= MAX_CLASS_WEIGHT:
                raise ValueError(
                    f"label {label!r}: the weight must be above 0 and at most 1,000,000 (got {weight!r})"
                )
            weights[label] = float(weight)
        return weights

    @model_validator(mode="after")
    def _eval_steps_needed(self) -> TrainingSection:
        if self.eval_strategy is EvalStrategy.STEPS and self.eval_steps is None:
            raise ValueError("eval_steps must be set when eval_strategy is 'steps'")
        if self.nodes > 1 and self.rendezvous is None:
            raise ValueError(
                f"nodes: {self.nodes} machines need training.rendezvous (host:port where they meet)"
            )
        return self

    @property
    def processes(self) -> int:
        """Data-parallel processes over all nodes (the world size)."""
        return self.devices * self.nodes


class CheckpointSection(_Section):
    fastest_tolerance: float = Field(
        default=0.01,
        ge=0,
        le=1000,
        description=(
            "Keep the earliest checkpoint whose metric is within this of the best (0.01 = 1 point of accuracy); "
            "0-1000."
        ),
    )
    final_model: Literal["best", "last"] = Field(
        default="best", description="Which checkpoint becomes the run's final adapter."
    )


class RegistrySection(_Section):
    enabled: bool = Field(default=True, description="Register the run's adapter as a new model version.")
    model_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Registered model name (at most 128 characters); default: the experiment name.",
    )
    task: str = Field(default="text-classification", description="Task recorded on the model card.")
    description: str = Field(default="", description="What the model is for; embedded for recommendation.")
    tags: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list,
        max_length=50,
        description="Free-form tags for search, e.g. [sentiment, small]; at most 50 of 64 characters.",
    )
    require_better_than_baseline: bool = Field(
        default=True,
        description=(
            "Register only a run that beats the majority baseline on its validation rows: single_label, the "
            "accuracy of always predicting the most frequent training label; multi_label, the micro_f1 of "
            "predicting each label's training majority (usually no label); regression, the rmse of predicting the "
            "training mean (the run's must be lower). A run that does not still succeeds, unregistered, and says "
            "why (metrics.json's registry and baseline)."
        ),
    )
    min_metric: float | None = Field(
        default=None,
        ge=-1.0,
        le=1_000_000.0,
        allow_inf_nan=False,
        description=(
            "The least training.metric_for_best_model a run must reach on its validation rows to be registered, "
            "in that metric's direction: for loss, rmse and mae (lower is better) it is the most the run may "
            "have. Unset: no bound. A run that misses it still succeeds, unregistered, and says why. From -1 "
            "(pearson and spearman reach it) to 1,000,000."
        ),
    )


class TrainConfig(_Section):
    """Everything a training run needs. `finetune config schema` prints it as JSON Schema."""

    experiment: str = Field(
        default="default",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Experiment name: groups runs under results/<experiment>/ and in MLflow.",
    )
    output_dir: Path = Field(default=Path("results"), description="Root folder of run folders.")
    device: Device = Field(default=Device.AUTO, description="auto picks CUDA, then Apple MPS, then CPU.")
    precision: Precision = Field(
        default=Precision.AUTO,
        description=(
            "auto: bf16 on CUDA with bf16 support, fp16 on other CUDA, bf16 on CPUs with native bf16 "
            "(AVX512-BF16/AMX), else fp32. Mixed precision keeps fp32 master weights."
        ),
    )
    model: ModelSection = Field(
        default_factory=ModelSection, description="The base model: which one, its language, tokens per text."
    )
    data: DataSection = Field(
        description="The dataset: training and validation files, their columns, labels and invalid rows."
    )
    lora: LoraSection = Field(
        default_factory=LoraSection, description="The LoRA adapter: rank, scaling, dropout, adapted modules."
    )
    training: TrainingSection = Field(
        default_factory=TrainingSection,
        description="The optimisation: epochs or steps, batch, learning rate, devices, evaluation, early stopping.",
    )
    checkpoints: CheckpointSection = Field(
        default_factory=CheckpointSection,
        description="Which checkpoints are kept (best, last, fastest) and which becomes the final adapter.",
    )
    registry: RegistrySection = Field(
        default_factory=RegistrySection,
        description="Registration of the final adapter as a model version, and what its model card says.",
    )
    task: Task = Field(
        default=Task.SINGLE_LABEL,
        description=(
            "single_label: one label per row (softmax over the labels). multi_label: any number of labels per row "
            "(a delimited or JSON-list label cell; a sigmoid per label, each label predicted above its threshold). "
            "regression: a number per row (the label column holds the target; mean squared error)."
        ),
    )
    thresholds: Literal["tune"] | Annotated[float, Field(gt=0, lt=1)] = Field(
        default=0.5,
        description=(
            "task: multi_label only: the probability above which a label is predicted, one number for every "
            "label (above 0, below 1), or 'tune' for each label's F1-best threshold on the validation set, chosen "
            "after training from 0.05, 0.10, ..., 0.95 (ties go to the value nearest 0.5; evaluations during "
            "training use 0.5). Stored with the model (label_map.json) and metrics.json, and applied by every "
            "runtime."
        ),
    )
    calibration: Literal["temperature", "none"] = Field(
        default="temperature",
        description=(
            "After training, fit temperature scaling on the validation set (one T dividing the logits, chosen to "
            "minimise the validation log-loss): probabilities that match accuracy, every prediction unchanged. "
            "Stored with the model (artifacts/calibration.json) and applied by every runtime; metrics.json, MLflow "
            "and the model card report the expected calibration error before and after. 'none' skips it. "
            "single_label only: multi_label and regression runs skip it."
        ),
    )

    @model_validator(mode="after")
    def _task_fits(self) -> TrainConfig:
        # A run that names no metric ranks by its task's first one; a named one must be the task's.
        metric = self.training.metric_for_best_model
        if (
            "metric_for_best_model" not in self.training.model_fields_set
            and metric not in TASK_METRICS[self.task]
        ):
            self.training.metric_for_best_model = TASK_METRICS[self.task][0]
        check_task_metric(self.task, self.training.metric_for_best_model, "training.metric_for_best_model")
        return self

    @model_validator(mode="after")
    def _loss_fits_task(self) -> TrainConfig:
        # multi_label trains on binary cross entropy, regression on squared error: no focal term, and a
        # regression target has no classes to weigh.
        t = self.training
        if t.loss is Loss.FOCAL and self.task is not Task.SINGLE_LABEL:
            trained_on = "binary cross entropy" if self.task is Task.MULTI_LABEL else "mean squared error"
            raise ValueError(
                f"training.loss: focal loss is for single_label runs; {self.task.value} runs train on "
                f"{trained_on}: set training.loss to cross_entropy"
            )
        if self.task is Task.REGRESSION and t.class_weights != "none":
            raise ValueError(
                "training.class_weights: a regression run has no classes to weigh; set it to 'none'"
            )
        return self

    @model_validator(mode="after")
    def _quantization_needs_cuda(self) -> TrainConfig:
        if self.model.quantization is Quantization.NF4 and self.device in (Device.CPU, Device.MPS):
            raise ValueError(
                f"model.quantization: 4bit needs CUDA (bitsandbytes NF4); device is {self.device.value!r}: "
                "set device to 'cuda' or 'auto', or model.quantization to 'none'"
            )
        return self

    @property
    def model_name(self) -> str:
        return self.registry.model_name or self.experiment

    def with_absolute_paths(self, base: Path | None = None) -> TrainConfig:
        """The same config with data files, output folder and a local base model made absolute.

        A queued job runs in a worker whose working directory is not the submitter's.
        """
        base = (base or Path.cwd()).resolve()

        def absolute(path: Path | None) -> Path | None:
            return None if path is None else (path if path.is_absolute() else base / path)

        data = self.data.model_copy(
            update={
                "train_file": absolute(self.data.train_file),
                "validation_file": absolute(self.data.validation_file),
            }
        )
        model = self.model
        local = base / model.base_model
        if not Path(model.base_model).is_absolute() and local.exists():
            model = model.model_copy(update={"base_model": str(local)})
        return self.model_copy(update={"data": data, "model": model, "output_dir": absolute(self.output_dir)})

    def to_yaml_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted-key view of the config (for MLflow params)."""
        return _flatten(self.to_yaml_dict())


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


MAX_REPORTED_PROBLEMS = 20  # an error message never grows with what a client sent


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each naming the dotted field and the offending value."""
    lines = []
    problems = error.errors()
    for problem in problems[:MAX_REPORTED_PROBLEMS]:
        field = ".".join(str(part) for part in problem["loc"]) or "(config)"
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; `finetune config schema` lists every field)"
        elif problem["type"] == "missing":
            message = "field required"
        # a check of the whole config names its field in the message itself
        line = message if not problem["loc"] else f"{field}: {message}"
        if (
            problem["type"] not in {"missing"}
            and "input" in problem
            and not isinstance(problem["input"], dict)
        ):
            shown = repr(problem["input"])
            line += f" (got {shown if len(shown) <= 120 else shown[:117] + '...'})"
        lines.append(line)
    if len(problems) > MAX_REPORTED_PROBLEMS:
        lines.append(f"… and {len(problems) - MAX_REPORTED_PROBLEMS} more")
    return "invalid training config:\n  " + "\n  ".join(lines)


def parse_override(assignment: str) -> tuple[list[str], Any]:
    """Split ``training.learning_rate=1e-3`` into a key path and a YAML-typed value."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. training.epochs=2"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {assignment!r}: value is not valid YAML ({exc.__class__.__name__})"
        ) from exc
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for assignment in overrides:
        path, value = parse_override(assignment)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {assignment!r}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = value
    return raw


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.model_validate(raw)  # pydantic reads YAML 1.1's "1e-3" strings as floats
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from exc


def read_document(
    path: Path | str, overrides: list[str] | None = None, *, kind: str = "config"
) -> dict[str, Any]:
    """A YAML file of sections (a training config, or a sweep: one plus its ``sweep:`` section) with ``--set``
    overrides applied; ConfigError naming the file when it is missing, not YAML or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}"
        )
    return apply_overrides(raw, overrides or [])


def load_config(path: Path | str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply ``--set`` overrides and validate; relative data paths stay as written."""
    return config_from_dict(read_document(path, overrides))


def dump_config(config: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    document = config.to_yaml_dict()
    if extra:
        document["resolved"] = extra
    write_atomic(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))


def read_run_config(path: Path) -> TrainConfig:
    """Load a run folder's config.yaml (which also holds a `resolved` section written by the recipe)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    raw.pop("resolved", None)
    return config_from_dict(raw)
