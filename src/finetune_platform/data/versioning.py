"""Dataset versions: a content hash of the normalised rows, an index of versions, and diffs.

The hash is order-independent (the same rows in another order are the same version) and ignores
surrounding and repeated whitespace and label spelling such as '1' versus '1.0'. The index is a JSON
Lines file under FINETUNE_HOME/datasets/; every training run records its versions there too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from finetune_platform.atomic import locked, write_atomic
from finetune_platform.data.loading import iter_chunks, normalise_label, rows_text
from finetune_platform.data.validation import (
    FileReport,
    ValidationOptions,
    as_text,
    normalised_text,
    validate_file,
)
from finetune_platform.errors import DatasetError, NotFoundError

INDEX_NAME = "versions.jsonl"


@dataclass(frozen=True)
class DatasetVersion:
    version: str
    content_hash: str
    file: str
    format: str | None
    rows: int
    label_counts: dict[str, int]
    text_column: str
    label_column: str
    created_at: str
    source: str = "cli"  # cli, train, api

    @classmethod
    def from_report(cls, report: FileReport, options: ValidationOptions, source: str) -> DatasetVersion:
        if report.content_hash is None:
            raise DatasetError(f"{report.path}: cannot version a file that could not be read")
        return cls(
            version=report.content_hash[:12],
            content_hash=report.content_hash,
            file=str(Path(report.path).resolve()),
            format=report.format,
            rows=report.rows_read,
            label_counts=report.label_counts,
            text_column=options.text_column,
            label_column=options.label_column,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=source,
        )


class VersionIndex:
    """Append-only index of dataset versions (one JSON object per line)."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "datasets" / INDEX_NAME

    def all(self) -> list[DatasetVersion]:
        if not self.path.is_file():
            return []
        return [
            DatasetVersion(**json.loads(line)) for line in self.path.read_text().splitlines() if line.strip()
        ]

    def record(self, version: DatasetVersion) -> tuple[DatasetVersion, bool]:
        """Add a version unless the same content from the same file is already there; (entry, added)."""
        with locked(self.path.with_name(self.path.name + ".lock")):
            existing = self.all()
            for entry in existing:
                if entry.content_hash == version.content_hash and entry.file == version.file:
                    return entry, False
            lines = [json.dumps(asdict(entry)) for entry in [*existing, version]]
            write_atomic(self.path, "\n".join(lines) + "\n")
        return version, True

    def get(self, reference: str) -> DatasetVersion:
        """A version by id or hash prefix (at least 6 characters), the newest entry if recorded twice."""
        if len(reference) < 6:
            raise NotFoundError(
                f"dataset version {reference!r}: give at least 6 characters of the version id"
            )
        matches = [entry for entry in self.all() if entry.content_hash.startswith(reference)]
        hashes = {entry.content_hash for entry in matches}
        if not matches:
            raise NotFoundError(f"no dataset version {reference!r} in {self.path}")
        if len(hashes) > 1:
            raise NotFoundError(f"dataset version {reference!r} is ambiguous: {', '.join(sorted(hashes))}")
        return matches[-1]


def version_file(
    path: Path, options: ValidationOptions, index: VersionIndex, source: str = "cli"
) -> tuple[DatasetVersion, bool, FileReport]:
    report = validate_file(path, options)
    version, added = index.record(DatasetVersion.from_report(report, options, source))
    return version, added, report


@dataclass
class DatasetDiff:
    old: str
    new: str
    old_rows: int = 0
    new_rows: int = 0
    added: list[int] = field(default_factory=list)  # row numbers in new
    removed: list[int] = field(default_factory=list)  # row numbers in old
    relabelled: list[dict[str, Any]] = field(default_factory=list)  # text, old/new label and rows
    unchanged: int = 0

    def to_json(self, examples: int = 10) -> dict[str, Any]:
        return {
            "old": self.old,
            "new": self.new,
            "old_rows": self.old_rows,
            "new_rows": self.new_rows,
            "added": len(self.added),
            "removed": len(self.removed),
            "relabelled": len(self.relabelled),
            "unchanged": self.unchanged,
            "added_rows": self.added[:examples],
            "removed_rows": self.removed[:examples],
            "relabelled_examples": self.relabelled[:examples],
        }

    def summary(self) -> str:
        lines = [
            f"{self.old} ({self.old_rows} rows) -> {self.new} ({self.new_rows} rows)",
            f"  added      {len(self.added)}" + (f"  (new {rows_text(self.added)})" if self.added else ""),
            f"  removed    {len(self.removed)}"
            + (f"  (old {rows_text(self.removed)})" if self.removed else ""),
            f"  relabelled {len(self.relabelled)}",
        ]
        for change in self.relabelled[:10]:
            lines.append(
                f"    {change['text'][:60]!r}: {change['old_label']} -> {change['new_label']} "
                f"(old row {change['old_row']}, new row {change['new_row']})"
            )
        lines.append(f"  unchanged  {self.unchanged}")
        return "\n".join(lines)


def _keyed_rows(path: Path, text_column: str, label_column: str) -> pd.DataFrame:
    parts = []
    for chunk in iter_chunks(path, text_column, label_column):
        frame = chunk.frame.dropna(subset=["text", "label"])
        frame = frame.assign(
            key=normalised_text(as_text(frame["text"])),
            label=frame["label"].astype(str).str.strip().map(lambda v: str(normalise_label(v))),
        )
        parts.append(frame[["row", "key", "text", "label"]])
    return (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["row", "key", "text", "label"])
    )


def diff_files(old: Path, new: Path, text_column: str = "text", label_column: str = "label") -> DatasetDiff:
    """Rows added, removed and relabelled from ``old`` to ``new``, matching rows by normalised text."""
    before = _keyed_rows(old, text_column, label_column)
    after = _keyed_rows(new, text_column, label_column)
    result = DatasetDiff(old=str(old), new=str(new), old_rows=len(before), new_rows=len(after))
    first_before = before.drop_duplicates("key")
    first_after = after.drop_duplicates("key")
    merged = first_before.merge(first_after, on="key", how="outer", suffixes=("_old", "_new"), indicator=True)
    result.removed = sorted(merged.loc[merged["_merge"] == "left_only", "row_old"].astype(int).tolist())
    result.added = sorted(merged.loc[merged["_merge"] == "right_only", "row_new"].astype(int).tolist())
    both = merged[merged["_merge"] == "both"]
    changed = both[both["label_old"] != both["label_new"]].sort_values("row_new")
    result.relabelled = [
        {
            "text": row.text_new,
            "old_label": row.label_old,
            "new_label": row.label_new,
            "old_row": int(row.row_old),
            "new_row": int(row.row_new),
        }
        for row in changed.itertuples()
    ]
    result.unchanged = len(both) - len(changed)
    return result


def resolve_reference(reference: str, index: VersionIndex) -> tuple[Path, DatasetVersion | None]:
    """A file path, or a version id from the index (whose file must still hold that content)."""
    path = Path(reference)
    if path.is_file():
        return path, None
    version = index.get(reference)
    stored = Path(version.file)
    if not stored.is_file():
        raise NotFoundError(f"dataset version {version.version}: its file {stored} no longer exists")
    options = ValidationOptions(text_column=version.text_column, label_column=version.label_column)
    current = validate_file(stored, options)
    if current.content_hash != version.content_hash:
        raise DatasetError(
            f"dataset version {version.version}: {stored} has changed since it was recorded "
            f"(now version {current.version}); diff the files directly"
        )
    return stored, version
