"""The data check a run starts with: its dataset validated as training reads it, before anything is written.

One streaming pass of ``data.validation`` with the config's task, columns (a pair column too), label delimiter,
declared labels, invalid-row policy and validation split (labels too small to split are refused); no tokenizer
(the token-length checks only warn, and they run again when training loads the data), so no model library
loads. ``finetune train`` and a job submitted to the API both refuse invalid data here.

``data.audit: warn|block`` adds the data audit (``data.audit``) on the same files, run where training runs (the
command line, or the worker for a queued job) before the run folder is made, and cached by content under
FINETUNE_HOME/audits/ so that the next run on the same data reuses it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finetune_platform.data.audit import AUDIT_FILE, AuditOptions, audit_files, read_audit
from finetune_platform.data.fix import audited_options
from finetune_platform.data.validation import (
    DatasetValidationError,
    ValidationOptions,
    ValidationReport,
    validate_dataset,
    validate_file,
)
from finetune_platform.errors import DatasetError
from finetune_platform.settings import Settings
from finetune_platform.training.config import TrainConfig

logger = logging.getLogger("finetune_platform.training")
AUDITS_DIR = "audits"  # under FINETUNE_HOME: one folder per (training, validation) content


def validation_options(config: TrainConfig) -> ValidationOptions:
    data = config.data
    return ValidationOptions(
        text_column=data.text_column,
        label_column=data.label_column,
        task=config.task.value,
        text_pair_column=data.text_pair_column,
        label_delimiter=data.label_delimiter,
        label_names=data.label_names,
        drop_invalid=data.invalid_rows == "drop",
        validation_split=None if data.validation_file is not None else data.validation_split,
    )


def check_data(config: TrainConfig) -> ValidationReport:
    """The report on the config's training (and validation) file; DatasetValidationError, carrying it, when it
    holds an error."""
    data = config.data
    report = validate_dataset(data.train_file, validation_options(config), data.validation_file)
    if not report.ok:
        raise DatasetValidationError(report)
    return report


def audit_folder(config: TrainConfig, settings: Settings) -> Path:
    """FINETUNE_HOME/audits/<training content hash>[-<validation content hash>]/."""
    options = audited_options(validation_options(config))
    hashes = [validate_file(config.data.train_file, options, role="train").content_hash]
    if config.data.validation_file is not None:
        hashes.append(validate_file(config.data.validation_file, options, role="validation").content_hash)
    return Path(settings.FINETUNE_HOME) / AUDITS_DIR / "-".join(str(h) for h in hashes)


def cached_audit(config: TrainConfig, settings: Settings) -> tuple[dict[str, Any], Path]:
    """The audit of the config's files (audit.json and its path): the cached one when it is of this content and
    task, else a new one written there."""
    folder = audit_folder(config, settings)
    path = folder / AUDIT_FILE
    if path.is_file():
        try:
            document = read_audit(path)
        except DatasetError:
            document = None
        if document is not None and document.get("task") == config.task.value:
            logger.info("data audit: reusing %s", path)
            return document, path
    logger.info("data audit: auditing %s (cached in %s)", config.data.train_file, folder)
    report = audit_files(
        config.data.train_file,
        validation_options(config),
        config.data.validation_file,
        AuditOptions(max_rows=settings.AUDIT_MAX_ROWS),
    )
    report.write(folder)
    return report.to_json(), path


def check_audit(config: TrainConfig, settings: Settings) -> dict[str, Any] | None:
    """``data.audit``: off, None; warn, the audit's summary logged and returned (for metrics.json); block, the
    same, or a DatasetError when the estimated label noise is above ``data.max_label_noise``."""
    data = config.data
    if data.audit == "off":
        return None
    document, path = cached_audit(config, settings)
    summary = document["summary"]
    noise = summary["estimated_label_noise"]
    if data.audit == "block" and noise is not None and noise > data.max_label_noise:
        raise DatasetError(
            f"data.audit: block: estimated label noise {noise:.1%} is above data.max_label_noise "
            f"{data.max_label_noise:.1%} (audit: {path}); fix the data with finetune data fix or raise "
            "data.max_label_noise"
        )
    shown = f"{noise:.1%}" if noise is not None else "not estimated (regression)"
    logger.warning(
        "data audit: estimated label noise %s (%d likely label errors), %d near-duplicate groups (%d across train "
        "and validation), %d outliers; report: %s",
        shown, summary["label_errors"], summary["near_duplicate_groups"], summary["cross_split_groups"],
        summary["outliers"], path.with_name("audit.md"),
    )  # fmt: skip
    return {"mode": data.audit, "audit": str(path), "estimated_label_noise": noise,
            "max_label_noise": data.max_label_noise, "summary": summary}  # fmt: skip
