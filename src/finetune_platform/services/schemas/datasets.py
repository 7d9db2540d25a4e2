"""Uploaded datasets: what a client sees of one, of its validation report and of its recorded versions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Timestamp


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
