"""A trained adapter on its base model, ready to classify texts (or text pairs).

Texts are tokenised once, sorted by length and run in batches padded to the longest text of each
batch; a text longer than the model's max length is truncated and the prediction says so. What the
outputs mean follows the model's task (its label_map.json): one label, any number of labels, or a number.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_platform.catalogue import resolve_base_model
from finetune_platform.errors import ConfigError, NotFoundError
from finetune_platform.inference.softmax import outputs
from finetune_platform.tracking.registry import ADAPTER_FILE, ModelRegistry
from finetune_platform.training.calibration import read_temperature
from finetune_platform.training.checkpoints import (
    PREFIX,
    CheckpointInfo,
    is_complete,
    list_checkpoints,
    select_retained,
)
from finetune_platform.training.config import TrainConfig, read_run_config
from finetune_platform.training.models import load_tokenizer, match_pad_token, quiet_libraries
from finetune_platform.training.run_folder import RunFolder

logger = logging.getLogger("finetune_platform.inference")
DEFAULT_MAX_LENGTH = 128
# A text is cut to this many characters per token of max length before it is tokenised: a tokenizer reads the
# whole string even when it keeps max_length tokens (2.2 MB of text: 2.7 s of CPU for MiniLM's). SST-2 runs to
# 4.7 characters a MiniLM token at the median, 9.4 at most, so what the model reads is kept; a text cut this
# way counts as truncated.
CHARS_PER_TOKEN = 16
# The head a base model is built with, by the label map's task (transformers' problem_type).
PROBLEM_TYPES = {
    "single_label": "single_label_classification",
    "multi_label": "multi_label_classification",
    "regression": "regression",
}


def head_options(label_map: Any) -> dict[str, Any]:
    """What ``from_pretrained`` builds the classification head with: one output per label (one for
    regression), the label names, and the task's problem_type."""
    names = label_map.names
    return {
        "num_labels": label_map.num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {label: i for i, label in enumerate(names)},
        "problem_type": PROBLEM_TYPES[label_map.task],
    }


def read_label_map(adapter_dir: Path) -> Any:
    """The adapter folder's label_map.json (written by the recipe), or NotFoundError."""
    from finetune_platform.data.loading import LabelMap  # lazy: data.loading imports pandas, unused here

    label_file = Path(adapter_dir) / "label_map.json"
    if not label_file.is_file():
        raise NotFoundError(f"{adapter_dir}: no label_map.json (not a platform adapter folder)")
    label_map = LabelMap.from_json(json.loads(label_file.read_text(encoding="utf-8")))
    return dataclasses.replace(label_map, temperature=read_temperature(adapter_dir))


def card_max_length(card: Any) -> int:
    """The max length the registered version was trained with (from its run folder), else the default."""
    config_path = Path(card.run_folder) / "config.yaml" if card.run_folder else None
    if config_path is None or not config_path.is_file():
        return DEFAULT_MAX_LENGTH
    return read_run_config(config_path).model.max_length


@dataclass(frozen=True)
class Prediction:
    """One text's answer. single_label: the most probable class. multi_label: ``label``/``probability`` the most
    probable label, ``probabilities`` each label's own (sigmoid), ``labels`` every label above its threshold,
    most probable first (possibly none). regression: ``value`` the number (training units), ``label`` 0 and
    ``label_name`` the target's name (the model's one output), no probability."""

    label: int  # the class id: the index of the class in the model's labels (id2label)
    label_name: str  # that class's name, id2label[label]
    probability: float | None  # None for regression
    probabilities: dict[str, float]
    truncated: bool
    task: str = "single_label"
    labels: tuple[tuple[str, float], ...] = ()  # multi_label: (name, probability) above its threshold
    value: float | None = None  # regression


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: int | None
    base_model: str
    language: str
    labels: tuple[str, ...]
    max_length: int
    task: str = "single_label"  # the label map's: single_label, multi_label or regression
    pair: bool = False  # the model reads two texts per row (text and text_pair)

    def of_labels(self, label_map: Any) -> ModelInfo:
        """This description with the task and pair input of the model's own label map."""
        return dataclasses.replace(self, task=label_map.task, pair=label_map.pair)


@dataclass(frozen=True)
class AdapterSource:
    """Where a trained adapter lives and what it is: enough to load it on any runtime."""

    key: str  # name@version (name@run-id for a run folder, name@run-id:checkpoint-N for one of its checkpoints)
    adapter_dir: Path
    info: ModelInfo
    label_map: Any
    # The tokenizer and label_map.json, where they are not beside the adapter (a checkpoint: its run's artifacts/).
    tokenizer_dir: Path | None = None
    checkpoint: CheckpointInfo | None = None  # the run's checkpoint used, where it is not the final adapter
    checkpoint_role: str = ""  # why that one: "best" or "last" (of a run without a final adapter), or "named"

    @classmethod
    def of(cls, key: str, adapter_dir: Path, info: ModelInfo) -> AdapterSource:
        label_map = read_label_map(adapter_dir)
        return cls(key, Path(adapter_dir), info.of_labels(label_map), label_map)

    @property
    def files_dir(self) -> Path:
        """Where the tokenizer and label_map.json are."""
        return self.tokenizer_dir or self.adapter_dir


def run_language(base_model: str, language: str | None) -> str:
    """The language a run recorded, 'auto' (or none) resolved from the base model as the recipe does."""
    return resolve_base_model(base_model, language or "auto").language


def task_fields(prediction: Prediction) -> dict[str, Any]:
    """What a multi-label or regression answer adds (a single-label answer stays as it always was): ``task``,
    then ``labels`` (every label above its threshold, most probable first) or ``value`` (the number)."""
    if prediction.task == "multi_label":
        labels = [{"label": name, "probability": p} for name, p in prediction.labels]
        return {"task": prediction.task, "labels": labels}
    if prediction.task == "regression":
        return {"task": prediction.task, "value": prediction.value}
    return {}


def answer(prediction: Prediction, info: ModelInfo, latency_ms: float) -> dict[str, Any]:
    """One prediction in the seed README's shape (``label`` the class id, ``probability``, ``latency_ms``,
    ``base_model``, ``language``), then ours: ``label_name``, ``probabilities``, ``truncated``, ``model``,
    ``version``, and for a multi-label or regression model ``task_fields``. The server's /predict and
    `finetune predict --text` answer this."""
    return {
        "label": prediction.label,
        "probability": prediction.probability,
        "latency_ms": latency_ms,
        "base_model": info.base_model,
        "language": info.language,
        "label_name": prediction.label_name,
        "probabilities": prediction.probabilities,
        "truncated": prediction.truncated,
        "model": info.name,
        "version": info.version,
        **task_fields(prediction),
    }


def source_from_run(run_folder: Path) -> AdapterSource:
    """The adapter a run folder holds (artifacts/), described by its config.yaml. A run without one (interrupted,
    or still training) lends the complete checkpoint it would end with: its best (its last where the config
    says ``checkpoints.final_model: last``, or no checkpoint has a metric); ``checkpoint`` says which."""
    run = RunFolder(Path(run_folder))
    if not run.config_path.is_file():
        raise NotFoundError(f"{run_folder}: not a run folder (no config.yaml)")
    config = read_run_config(run.config_path)
    if (run.artifacts_dir / ADAPTER_FILE).is_file():
        return _run_source(run, config)
    checkpoints = list_checkpoints(run.checkpoints_dir)
    if not checkpoints:
        status = run.status.value if run.status else "never started"
        raise NotFoundError(
            f"{run_folder}: nothing to predict with: the run ({status}) has no final adapter in artifacts/ and "
            "no complete checkpoint in artifacts/checkpoints/ (the first is written at its first evaluation)"
        )
    retained = select_retained(
        checkpoints,
        config.training.metric_for_best_model.greater_is_better,
        config.checkpoints.fastest_tolerance,
    )
    role = "best" if config.checkpoints.final_model == "best" and "best" in retained else "last"
    return _run_source(run, config, retained[role], role)


def source_from_checkpoint(checkpoint_dir: Path) -> AdapterSource:
    """One complete checkpoint of a run folder (``RUN_FOLDER/artifacts/checkpoints/checkpoint-N``), with its
    run's tokenizer and labels."""
    path = Path(checkpoint_dir)
    where = path.resolve()
    run = RunFolder(where.parent.parent.parent)
    if not (
        where.name.startswith(PREFIX) and where.parent == run.checkpoints_dir and run.config_path.is_file()
    ):
        raise NotFoundError(
            f"{checkpoint_dir}: not a checkpoint of a run folder (RUN_FOLDER/artifacts/checkpoints/checkpoint-N)"
        )
    complete = list_checkpoints(run.checkpoints_dir)
    names = ", ".join(info.path.name for info in complete) or "none"
    if not where.is_dir() or not is_complete(where):
        state = "is incomplete (its save was cut off)" if where.is_dir() else "does not exist"
        raise NotFoundError(f"{checkpoint_dir} {state}; the run's complete checkpoints: {names}")
    info = next(info for info in complete if info.path.name == where.name)
    return _run_source(run, read_run_config(run.config_path), info, "named")


def _run_source(
    run: RunFolder, config: TrainConfig, checkpoint: CheckpointInfo | None = None, role: str = ""
) -> AdapterSource:
    if checkpoint is not None and not (run.artifacts_dir / "label_map.json").is_file():
        raise NotFoundError(
            f"{run.root}: no label_map.json in artifacts/: the run was interrupted before this version "
            "wrote its tokenizer and labels there, so its checkpoints cannot be used; train it to the end "
            "(finetune train CONFIG --resume)"
        )
    label_map = read_label_map(run.artifacts_dir)
    info = ModelInfo(
        config.model_name,
        None,
        config.model.base_model,
        run_language(config.model.base_model, config.model.language),
        tuple(label_map.names),
        config.model.max_length,
    ).of_labels(label_map)
    key = f"{config.model_name}@{run.root.name}"
    if checkpoint is None:
        return AdapterSource(key, run.artifacts_dir, info, label_map)
    return AdapterSource(
        f"{key}:{checkpoint.path.name}", checkpoint.path, info, label_map, run.artifacts_dir, checkpoint, role
    )


def source_from_registry(settings: Any, reference: str) -> AdapterSource:
    """``name``, ``name@version`` or ``name@stage``: the checksum-verified adapter of that version."""
    adapter_dir, card = ModelRegistry(settings).verified_adapter(reference)
    info = ModelInfo(
        card.name, card.version, card.base_model, card.language, tuple(card.labels), card_max_length(card)
    )
    return AdapterSource.of(f"{card.name}@{card.version}", adapter_dir, info)


def length_groups(lengths: list[int], most: int, padding_budget: int) -> list[list[int]]:
    """Indices in forward passes: by length, a new pass started when joining the current one would add
    more than ``padding_budget`` padding tokens (or it holds ``most``). Short texts of mixed lengths padded
    to the longest in one pass cost more than a few passes: on 2 CPU cores, 32 SST-2 sentences run in
    ~45 ms this way against ~100 ms as one pass (bench/inference.py)."""
    groups: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        if current and (
            len(current) >= most or len(current) * (lengths[i] - lengths[current[-1]]) > padding_budget
        ):
            groups.append(current)
            current = []
        current.append(i)
    if current:
        groups.append(current)
    return groups


class Classifier:
    """Tokenisation, length-grouped batching and label mapping around a model; subclasses supply the
    forward pass (``_outputs``) for the active adapter."""

    tokenizer: Any
    label_map: Any
    info: ModelInfo
    padding_budget = 12  # tokens of padding a text may add to a forward pass before it starts another

    # -- prediction ----------------------------------------------------------------------------------
    def _encode(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text (with its pair, as training tokenised it: ``tokenizer(texts, pairs)``), cut to max
        length (keeping the closing special token), and whether each was cut."""
        limit = self.info.max_length
        most = (limit + 1) * CHARS_PER_TOKEN
        clipped = [text[:most] for text in texts]
        clipped_pairs = None if pairs is None else [pair[:most] for pair in pairs]
        encoded = self._tokens(clipped, clipped_pairs, limit + 1)
        over = [len(ids) > limit or len(text) > most for ids, text in zip(encoded, texts, strict=True)]
        if pairs is not None:
            over = [cut or len(pair) > most for cut, pair in zip(over, pairs, strict=True)]
        if any(over):
            kept_pairs = (
                None if clipped_pairs is None else [p for p, o in zip(clipped_pairs, over, strict=True) if o]
            )
            cut = self._tokens([t for t, o in zip(clipped, over, strict=True) if o], kept_pairs, limit)
            replacement = iter(cut)
            encoded = [next(replacement) if o else ids for ids, o in zip(encoded, over, strict=True)]
        return encoded, over

    def _tokens(self, texts: list[str], pairs: list[str] | None, max_length: int) -> list[list[int]]:
        """Token ids of each text (with its pair), truncated to ``max_length``: how training tokenises."""
        return self.tokenizer(texts, text_pair=pairs, truncation=True, max_length=max_length)["input_ids"]

    def _padded(self, rows: list[list[int]]) -> tuple[Any, Any]:
        """Token ids and attention mask (int64 numpy) of ``rows`` padded to the longest."""
        width = max(len(row) for row in rows)
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = row
            mask[index, : len(row)] = 1
        return ids, mask

    def _outputs(self, ids: Any, mask: Any) -> Any:
        """The head's meaning (``softmax.outputs`` of the logits, by the active label map's task; rows × outputs,
        numpy) for one padded batch of token ids (int64 numpy)."""
        raise NotImplementedError

    def _head(self, logits: Any) -> Any:
        """``softmax.outputs`` of ``logits`` for the active adapter's label map."""
        label_map = self.label_map
        return outputs(logits, label_map.task, label_map.temperature, label_map.scale)

    def encode(self, texts: list[str], pairs: list[str] | None = None) -> tuple[list[list[int]], list[bool]]:
        """Token ids per text and whether each was truncated (``_encode``); ConfigError for an empty text or
        pair, for pairs given to a model of one text, or none given to a model that reads pairs."""
        name = self.info.name
        if self.label_map.pair and pairs is None:
            raise ConfigError(f"text_pair: model {name!r} reads text pairs; give the second text of each")
        if not self.label_map.pair and pairs is not None:
            raise ConfigError(f"text_pair: model {name!r} reads one text; leave text_pair out")
        if pairs is not None and len(pairs) != len(texts):
            raise ConfigError(f"text_pair: {len(pairs)} pairs for {len(texts)} texts; give one per text")
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"text {index}: empty; give the text to classify")
        for index, pair in enumerate(pairs or ()):
            if not isinstance(pair, str) or not pair.strip():
                raise ConfigError(f"text_pair {index}: empty; give the second text of the pair")
        return self._encode(texts, pairs)

    def predict(
        self, texts: list[str], batch_size: int = 64, pairs: list[str] | None = None
    ) -> list[Prediction]:
        return self.predict_encoded(*self.encode(texts, pairs), batch_size=batch_size)

    def predict_encoded(
        self, encoded: list[list[int]], truncated: list[bool], batch_size: int = 64
    ) -> list[Prediction]:
        """Predictions for texts already tokenised by ``encode`` (the server splits big work between the two)."""
        values_of: list[Any] = [None] * len(encoded)
        for batch in length_groups([len(ids) for ids in encoded], batch_size, self.padding_budget):
            ids, mask = self._padded([encoded[i] for i in batch])
            for row, values in zip(batch, self._outputs(ids, mask).tolist(), strict=True):
                values_of[row] = values
        shape = PREDICTIONS[self.label_map.task]
        return [shape(self.label_map, values, cut) for values, cut in zip(values_of, truncated, strict=True)]


def _single_label(label_map: Any, values: list[float], truncated: bool) -> Prediction:
    names = label_map.names
    best = max(range(len(values)), key=values.__getitem__)
    return Prediction(
        label=best,
        label_name=names[best],
        probability=round(values[best], 6),
        probabilities={name: round(v, 6) for name, v in zip(names, values, strict=True)},
        truncated=truncated,
    )


def _multi_label(label_map: Any, values: list[float], truncated: bool) -> Prediction:
    """Each label's own probability; every label above its threshold (0.5 where the map has none)."""
    names = label_map.names
    thresholds = label_map.thresholds or (0.5,) * len(names)
    best = max(range(len(values)), key=values.__getitem__)
    above = sorted(
        (i for i, (p, t) in enumerate(zip(values, thresholds, strict=True)) if p > t),
        key=lambda i: (-values[i], i),
    )
    return Prediction(
        label=best,
        label_name=names[best],
        probability=round(values[best], 6),
        probabilities={name: round(v, 6) for name, v in zip(names, values, strict=True)},
        truncated=truncated,
        task="multi_label",
        labels=tuple((names[i], round(values[i], 6)) for i in above),
    )


def _regression(label_map: Any, values: list[float], truncated: bool) -> Prediction:
    """The one output, in the training targets' units; the label is that output (the target's name)."""
    (value,) = values
    return Prediction(
        label=0,
        label_name=label_map.names[0],
        probability=None,
        probabilities={},
        truncated=truncated,
        task="regression",
        value=round(value, 6),
    )


# A row of outputs turned into a Prediction, by the label map's task.
PREDICTIONS = {"single_label": _single_label, "multi_label": _multi_label, "regression": _regression}


class Predictor(Classifier):
    """One adapter on its base model. ``merge`` folds the LoRA weights into the base (one model served)."""

    def __init__(
        self,
        adapter_dir: Path,
        base_model: str,
        *,
        name: str,
        version: int | None = None,
        language: str = "",
        max_length: int = DEFAULT_MAX_LENGTH,
        device: str = "cpu",
        merge: bool = True,
        adapter_name: str = "default",
        tokenizer_dir: Path | None = None,
    ) -> None:
        # lazy: torch, PEFT and transformers load with a model, not when the runtime registry is imported
        import torch
        from peft import PeftModel
        from transformers import AutoModelForSequenceClassification

        quiet_libraries()
        adapter_dir = Path(adapter_dir)
        files_dir = (
            Path(tokenizer_dir) if tokenizer_dir is not None else adapter_dir
        )  # a checkpoint: its run's
        self.label_map = read_label_map(files_dir)
        reference = resolve_base_model(base_model, language or "auto")
        self.tokenizer = load_tokenizer(str(files_dir))
        names = self.label_map.names
        model = AutoModelForSequenceClassification.from_pretrained(
            reference.source, **head_options(self.label_map), torch_dtype=torch.float32
        )
        match_pad_token(model, self.tokenizer.pad_token_id)  # a decoder pools the last token before padding
        model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name)
        model = (model.merge_and_unload() if merge else model).to(device).eval()
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            model = model.to(torch.bfloat16)  # merged in fp32 first; probabilities are computed in fp32
        self.model = model
        self.device = device
        self.info = ModelInfo(name, version, base_model, reference.language, names, max_length).of_labels(
            self.label_map
        )
        if device != "cpu":
            # padding costs a GPU next to nothing against another forward pass: one pass per batch
            self.padding_budget = sys.maxsize

    def _outputs(self, ids: Any, mask: Any) -> Any:
        import torch  # lazy: torch loads with a model, not when the runtime registry is imported

        with torch.inference_mode():
            logits = self.model(
                input_ids=torch.from_numpy(ids).to(self.device),
                attention_mask=torch.from_numpy(mask).to(self.device),
            ).logits
            return self._head(logits).cpu().numpy()

    # -- construction from a run folder or the registry --------------------------------------------
    @classmethod
    def from_run(cls, run_folder: Path, **options: Any) -> Predictor:
        return cls.of(source_from_run(run_folder), **options)

    @classmethod
    def from_registry(cls, settings: Any, reference: str, **options: Any) -> Predictor:
        """``name``, ``name@version`` or ``name@stage``: the verified adapter of that registered version."""
        return cls.of(source_from_registry(settings, reference), **options)

    @classmethod
    def of(cls, source: AdapterSource, **options: Any) -> Predictor:
        info = source.info
        return cls(
            source.adapter_dir,
            info.base_model,
            name=info.name,
            version=info.version,
            language=info.language,
            max_length=info.max_length,
            tokenizer_dir=source.tokenizer_dir,
            **options,
        )
