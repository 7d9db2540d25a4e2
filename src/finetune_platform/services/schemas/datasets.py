"""Uploaded datasets: what a client sees of one, of its validation report and of its recorded versions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict, Timestamp


class DatasetPublic(Public):
    id: str = Field(description="Dataset id, for POST /train.")
    name: str = Field(description="The file name given at upload (a label only).")
    format: str = Field(description="csv, tsv, jsonl, json or parquet.")
    size_bytes: int = Field(description="Size of the stored file.")
    rows: int = Field(description="Rows read.")
    version: str | None = Field(description="Content version (first 12 hex digits of its hash).")
    valid: bool = Field(description="False when validation found errors; the report says which rows.")
    created_at: Timestamp = Field(description="Upload time.")
    owner_id: int = Field(exclude=True, repr=False)  # datasets are private: the owner is the caller

    @property
    def label(self) -> str:
        """How messages name the dataset: by id and name, never by where the server keeps it."""
        return f"dataset {self.id} ({self.name})"


class IssuePublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = Field(
        description="The check: file, empty_text, null_label, duplicate, conflicting_duplicate, …"
    )
    severity: str = Field(description="error or warning.")
    message: str = Field(description="What is wrong, naming rows and values.")
    fix: str = Field(description="How to fix it.")
    count: int = Field(default=0, description="Rows concerned.")
    rows: list[int] = Field(default_factory=list, description="The first rows concerned (1-based data rows).")
    dropped: bool = Field(default=False, description="The rows were dropped (data.invalid_rows: drop).")


class FileReportPublic(BaseModel):
    model_config = ConfigDict(extra="allow")

    path: str = Field(description="The file as the client named it (never a server path).")
    role: str = Field(description="train or validation.")
    format: str | None = Field(default=None, description="csv, tsv, jsonl, json or parquet.")
    rows_read: int = Field(default=0, description="Rows read.")
    rows_valid: int = Field(default=0, description="Rows without errors.")
    rows_dropped: int = Field(default=0, description="Invalid rows dropped.")
    version: str | None = Field(
        default=None, description="Content version (first 12 hex digits of its hash)."
    )
    content_hash: str | None = Field(default=None, description="SHA-256 over the sorted hashes of the rows.")
    label_counts: dict[str, int] = Field(
        default_factory=dict, description="Rows per label (multi_label: rows holding it; regression: none)."
    )
    text_length: dict[str, int | float] = Field(
        default_factory=dict, description="Text length in characters."
    )
    token_length: dict[str, int | float] = Field(default_factory=dict, description="Text length in tokens.")
    task: str = Field(
        default="single_label",
        description="What the labels were read as: single_label, multi_label or regression.",
    )
    target: dict[str, float] = Field(
        default_factory=dict, description="regression: min, max, mean and std of the valid rows' targets."
    )
    issues: list[IssuePublic] = Field(default_factory=list, description="Errors and warnings.")


class DatasetReport(BaseModel):
    """A validation report: its verdict, and per file the checks that failed with rows and fixes."""

    model_config = ConfigDict(extra="allow")

    ok: bool = Field(description="No errors: the data may be trained on.")
    drop_invalid: bool = Field(default=False, description="Invalid rows are dropped instead of refused.")
    errors: int = Field(default=0, description="Errors over all files.")
    warnings: int = Field(default=0, description="Warnings over all files.")
    files: list[FileReportPublic] = Field(default_factory=list, description="One report per file.")

    @classmethod
    def of(cls, document: dict[str, Any]) -> DatasetReport:
        return cls.model_validate(document)


class DatasetUploaded(DatasetPublic):
    report: DatasetReport = Field(description="The validation report (checks, issues with rows and fixes).")


class DatasetVersionPublic(Public):
    version: str = Field(description="Content version (first 12 hex digits of its hash).")
    content_hash: str = Field(description="SHA-256 over the sorted hashes of the normalised rows.")
    format: str | None = Field(description="csv, tsv, jsonl, json or parquet.")
    rows: int = Field(description="Rows read.")
    label_counts: dict[str, int] = Field(description="Rows per label.")
    text_column: str = Field(description="Column with the text.")
    label_column: str = Field(description="Column with the label.")
    source: str = Field(description="Who recorded it: upload, api (a submitted job), train (a run) or cli.")
    created_at: Timestamp = Field(description="When it was recorded.")

    @classmethod
    def of(cls, version: Any) -> DatasetVersionPublic:
        """From a recorded version (``data.versioning.DatasetVersion``), less the file it was read from."""
        return cls(
            version=version.version,
            content_hash=version.content_hash,
            format=version.format,
            rows=version.rows,
            label_counts=version.label_counts,
            text_column=version.text_column,
            label_column=version.label_column,
            source=version.source,
            created_at=version.created_at,
        )


# -- a dataset's data audit (POST/GET /datasets/{id}/audit) --
# The bounds are data.audit.AuditOptions' own (tests/api/test_data_audit.py holds them equal); this module stays
# free of the audit engine's imports (pandas, cleanlab) for the API's start.


AUDIT_EXAMPLE = {"validation_dataset_id": "3f0c9a52-8d1e-4b7a-9c55-0f6d2e8b1a47", "folds": 5}


class DataAuditCreate(Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [AUDIT_EXAMPLE]})

    validation_dataset_id: str | None = Field(
        default=None,
        max_length=36,
        description=(
            "Id of an uploaded validation dataset (the caller's): its rows join the label-error folds, and "
            "near-duplicates across the two files are reported as leaks. Read with its own upload's columns."
        ),
    )
    folds: int = Field(
        default=5,
        ge=2,
        le=20,
        description="k of the stratified k-fold that gives each row its out-of-fold predicted probabilities.",
    )
    near_duplicate_cosine: float = Field(
        default=0.95,
        ge=0.5,
        le=1.0,
        description="Embedding cosine at or above which two rows are near-duplicates (1: identical only).",
    )
    outlier_z: float = Field(
        default=5.0,
        gt=0,
        le=1000,
        description="Robust z-score of a row's distance to the nearest class centroid at which it is an outlier.",
    )
    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts before the task is failed.")


class DataAuditPublic(BaseModel):
    """A finished audit: its audit.json (docs/data.md#audit lists every field) and the task that made it."""

    model_config = ConfigDict(extra="allow")

    task_id: str = Field(description="The audit task that wrote it (GET /task/{task_id}).")
    dataset_id: str = Field(description="The audited dataset.")
    validation_dataset_id: str | None = Field(default=None, description="The validation dataset, if one.")
    pending_task_id: str | None = Field(
        default=None, description="A newer audit task of the dataset still queued or running, if one."
    )
    downloads: list[str] = Field(
        description="The names GET /datasets/{id}/audit/{name} serves for this audit: audit.md and the plots."
    )
    audit_version: int = Field(description="Version of the audit.json layout.")
    created_at: str = Field(description="When the audit was written (ISO time).")
    task: str = Field(description="single_label, multi_label or regression.")
    files: dict[str, Any] = Field(
        description="Per role (train, validation): the dataset (by id and name), content_hash, rows_read, "
        "rows_audited."
    )
    options: dict[str, Any] = Field(description="The audit options it ran with.")
    summary: dict[str, Any] = Field(
        description="rows_audited, label_errors, estimated_label_noise, near_duplicate_groups, cross_split_groups, "
        "conflicting_groups, overlapping_label_pairs, outliers."
    )
    label_errors: dict[str, Any] = Field(
        description="count, estimated_noise and rows (file, row, text, label, suggested, score), most likely first."
    )
    near_duplicates: dict[str, Any] = Field(
        description="groups (rows, size, cross_split: a leak, conflicting: labels differ, similarity, method)."
    )
    class_overlap: list[dict[str, Any]] = Field(
        description="Label pairs confused far above chance out of fold: labels, confused, expected, ratio."
    )
    outliers: dict[str, Any] = Field(description="count and rows (file, row, text, label, z, reason).")
