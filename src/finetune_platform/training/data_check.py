"""The data check a run starts with: its dataset validated as training reads it, before anything is written.

One streaming pass of ``data.validation`` with the config's task, columns (a pair column too), label delimiter,
declared labels, invalid-row policy and validation split (labels too small to split are refused); no tokenizer
(the token-length checks only warn, and they run again when training loads the data), so no model library
loads. ``finetune train`` and a job submitted to the API both refuse invalid data here.
"""

from __future__ import annotations

from finetune_platform.data.validation import (
    DatasetValidationError,
    ValidationOptions,
    ValidationReport,
    validate_dataset,
)
from finetune_platform.training.config import TrainConfig


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
