"""The words the jobs table stores: a job's status, its stage while running, its kind.

``str`` enums with no dependencies, so a face that only reads or compares them (the CLI, the UI) does not
import SQLAlchemy. Which status follows which lives in ``services.job_states``.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PRUNED = "pruned"  # a sweep trial its pruner stopped early: ended on purpose, not failed


class SweepStatus(StrEnum):
    RUNNING = "running"  # trials are queued, running, or still to start
    SUCCEEDED = "succeeded"  # its budget is spent and at least one trial completed
    FAILED = "failed"  # its budget is spent and no trial completed
    CANCELLED = "cancelled"


class JobStage(StrEnum):
    """Where a running job is; the stage stays on the row once the job has ended, to say how far it got: a
    failed or cancelled job keeps the stage it stopped in, a succeeded one reads ``done``."""

    VALIDATING = "validating"
    TRAINING = "training"
    EVALUATING = "evaluating"
    REGISTERING = "registering"
    PREDICTING = "predicting"
    AUDITING = "auditing"
    DONE = "done"


class JobKind(StrEnum):
    TRAIN = "train"  # config: a TrainConfig
    PREDICT = "predict"  # config: model, input_file, text/label column, output_dir
    AUDIT = "audit"  # config: dataset (and validation dataset) id, file, label and columns; audit options; output_dir
