"""Model cards: one JSON file per registered model version, with an embedding of its text.

Cards live under MODEL_REGISTRY_DIR as ``<name>-v<version>.json``. The registry owns the stage (the version's
stage tag, with MLflow's own stage and the aliases kept in step); a card mirrors it, and ``reconcile`` repairs
any drift.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from finetune_platform.atomic import file_sha256, write_atomic
from finetune_platform.errors import NotFoundError


@dataclass
class ModelCard:
    name: str
    version: int
    base_model: str
    language: str
    task: str
    description: str
    metrics: dict[str, float]
    tags: list[str]
    dataset_version: str | None
    run_id: str | None
    run_folder: str | None
    stage: str
    created_at: str
    adapter_checksum: str
    labels: list[str] = field(default_factory=list)
    artifact_checksums: dict[str, str] = field(default_factory=dict)  # every file of the registered artifact
    owner: str | None = None  # username owning the model name (None: registered before names were owned)
    embedding: list[float] = field(default_factory=list)
    # Temperature scaling fitted on the validation set: method, temperature, ECE and log-loss before and after.
    calibration: dict[str, Any] | None = None
    # What the head predicts (the run's task; ``task`` above is the free-form name from registry.task):
    # single_label, multi_label or regression.
    task_type: str = "single_label"
    thresholds: dict[str, float] | None = (
        None  # multi_label: {label: probability above which it is predicted}
    )
    target_scale: dict[str, float] | None = None  # regression: {mean, std} of the training targets

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    def text(self) -> str:
        """What the embedding describes: the words a person would search with."""
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.metrics.items()))
        return (
            f"{self.description or self.name}. {self.task.replace('-', ' ')} model for {self.language} text, "
            f"fine-tuned from {self.base_model} with LoRA. {self.outputs_text()} "
            f"Tags: {', '.join(self.tags)}. Metrics: {metrics}."
        )

    def outputs_text(self) -> str:
        """What the model predicts, in words: its labels, and their thresholds or the target's scale."""
        if self.task_type == "regression":
            target = ", ".join(self.labels)
            if self.target_scale is None:
                return f"Regression of {target}."
            mean, std = self.target_scale["mean"], self.target_scale["std"]
            return f"Regression of {target} (training targets: mean {mean:.4g}, std {std:.4g})."
        if self.task_type == "multi_label":
            thresholds = self.thresholds or {}
            shown = ", ".join(
                f"{label} (threshold {thresholds[label]:.2f})" if label in thresholds else label
                for label in self.labels
            )
            return f"Multi-label: {shown}."
        return f"Labels: {', '.join(self.labels)}."

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def public(self) -> dict[str, Any]:
        """The card without its 384 numbers, for listings."""
        document = self.to_json()
        document.pop("embedding")
        return document


def file_checksum(path: Path) -> str:
    return f"sha256:{file_sha256(path)}"


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


class CardStore:
    """Reads and writes cards; keeps an in-memory index (and embedding matrix) until a card changes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._cache: tuple[float, list[ModelCard], np.ndarray] | None = None

    def path(self, name: str, version: int) -> Path:
        return self.root / f"{_SAFE.sub('_', name)}-v{int(version)}.json"

    def save(self, card: ModelCard) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(card.name, card.version)
        write_atomic(path, json.dumps(card.to_json(), indent=2))
        self._cache = None
        return path

    def delete(self, name: str, version: int) -> None:
        self.path(name, version).unlink(missing_ok=True)
        self._cache = None

    def get(self, name: str, version: int) -> ModelCard:
        path = self.path(name, version)
        if not path.is_file():
            raise NotFoundError(f"no model card for {name} version {version} in {self.root}")
        card = ModelCard(**json.loads(path.read_text(encoding="utf-8")))
        if (card.name, card.version) != (name, int(version)):  # two names can share a file name
            raise NotFoundError(
                f"no model card for {name} version {version} in {self.root} ({path.name} is {card.key})"
            )
        return card

    def all(self) -> list[ModelCard]:
        return self._load()[0]

    def matrix(self) -> tuple[list[ModelCard], np.ndarray]:
        cards, matrix = self._load()
        return cards, matrix

    def _load(self) -> tuple[list[ModelCard], np.ndarray]:
        stamp = self._stamp()
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1], self._cache[2]
        cards = []
        if self.root.is_dir():
            for path in sorted(self.root.glob("*-v*.json")):
                cards.append(ModelCard(**json.loads(path.read_text(encoding="utf-8"))))
        cards.sort(key=lambda c: (c.name, c.version))
        matrix = (
            np.array([c.embedding for c in cards], dtype=np.float32)
            if cards
            else np.zeros((0, 384), np.float32)
        )
        self._cache = (stamp, cards, matrix)
        return cards, matrix

    def _stamp(self) -> float:
        """Changes whenever a card file is added, removed or rewritten (atomic writes replace the file)."""
        if not self.root.is_dir():
            return 0.0
        return self.root.stat().st_mtime_ns
