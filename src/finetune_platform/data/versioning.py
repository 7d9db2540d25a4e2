"""Dataset versions: a content hash of the normalised rows, the lineage store that records them, and diffs.

The hash is order-independent (the same rows in another order are the same version) and ignores
surrounding and repeated whitespace and label spelling such as '1' versus '1.0'. Versions live in one
place, the app database's ``dataset_versions`` table: ``finetune data version``, every training run, every
job submission and every upload record theirs there. The JSON Lines index earlier releases kept under
FINETUNE_HOME/datasets/ is imported once, then renamed so that nothing reads it again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy import or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from finetune_platform.atomic import locked
from finetune_platform.data.loading import iter_chunks, normalise_label, rows_text
from finetune_platform.data.validation import (
    FileReport,
    ValidationOptions,
    as_text,
    normalised_text,
    validate_file,
)
from finetune_platform.db.models import DatasetVersionRecord
from finetune_platform.db.session import ensure_database, session_scope
from finetune_platform.errors import ConfigError, DatasetError, NotFoundError
from finetune_platform.settings import Settings

LEGACY_INDEX_NAME = "versions.jsonl"  # the JSON Lines index of earlier releases, imported once
_INSERT = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}  # the app database's two backends
HEX_DIGITS = frozenset("0123456789abcdef")
SOURCES = ("cli", "train", "api", "upload")  # who recorded a version: data version, a run, a job, an upload


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
    source: str = "cli"  # one of SOURCES
    dataset_id: str | None = None  # the upload it is of
    parent_version: str | None = None  # a file `finetune data fix` made: the version it was made from
    lineage: dict[str, Any] | None = None  # ... and what was removed and why (see data.fix)

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

    @classmethod
    def of(cls, row: DatasetVersionRecord) -> DatasetVersion:
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)  # SQLite
        return cls(
            version=row.version,
            content_hash=row.content_hash,
            file=row.file,
            format=row.format,
            rows=row.rows,
            label_counts=dict(row.label_counts or {}),
            text_column=row.text_column,
            label_column=row.label_column,
            created_at=created.isoformat(timespec="seconds"),
            source=row.source,
            dataset_id=row.dataset_id,
            parent_version=row.parent_version,
            lineage=row.lineage,
        )


def _find(session: Session, content_hash: str, file: str) -> DatasetVersionRecord | None:
    return session.scalar(
        select(DatasetVersionRecord).where(
            DatasetVersionRecord.content_hash == content_hash, DatasetVersionRecord.file == file
        )
    )


def record_version(
    session: Session, version: DatasetVersion, *, owner_id: int | None = None, dataset_id: str | None = None
) -> tuple[DatasetVersion, bool]:
    """Add a version unless the same content from the same file is already there; (entry, added). Part of the
    caller's transaction; of writers racing for the same (content, file), one adds the row."""
    if version.source not in SOURCES:
        raise ConfigError(f"dataset version source {version.source!r}: expected one of {', '.join(SOURCES)}")
    existing = _find(session, version.content_hash, version.file)
    if existing is not None:
        return DatasetVersion.of(existing), False
    values = {
        "version": version.version,
        "content_hash": version.content_hash,
        "file": version.file,
        "format": version.format,
        "rows": version.rows,
        "label_counts": dict(version.label_counts),
        "text_column": version.text_column,
        "label_column": version.label_column,
        "owner_id": owner_id,
        "source": version.source,
        "dataset_id": dataset_id or version.dataset_id,
        "parent_version": version.parent_version,
        "lineage": version.lineage,
        "created_at": datetime.fromisoformat(version.created_at),
    }
    # INSERT … ON CONFLICT DO NOTHING, not a savepoint: a writer that raced this one leaves its row, and the
    # caller's transaction (which may carry a job and its outbox row) sees no inner commit.
    insert = _INSERT[session.get_bind().dialect.name](DatasetVersionRecord).values(**values)
    added = session.execute(
        insert.on_conflict_do_nothing(index_elements=["content_hash", "file"]).returning(
            DatasetVersionRecord.id
        )
    ).first()
    row = _find(session, version.content_hash, version.file)
    if row is None:  # pragma: no cover - the row was there or went in
        raise DatasetError(f"dataset version {version.version} of {version.file} could not be recorded")
    return DatasetVersion.of(row), added is not None


def list_versions(
    session: Session, *, dataset_id: str | None = None, file: str | None = None
) -> list[DatasetVersion]:
    """Recorded versions, oldest first; only those of one upload (its id, or its stored file) when given."""
    query = select(DatasetVersionRecord)
    if dataset_id is not None or file is not None:
        query = query.where(
            or_(DatasetVersionRecord.dataset_id == dataset_id, DatasetVersionRecord.file == file)
        )
    rows = session.scalars(query.order_by(DatasetVersionRecord.created_at, DatasetVersionRecord.id))
    return [DatasetVersion.of(row) for row in rows]


def find_version(session: Session, reference: str) -> DatasetVersion:
    """A version by id or hash prefix (at least 6 characters), the newest entry if recorded twice."""
    if len(reference) < 6:
        raise NotFoundError(f"dataset version {reference!r}: give at least 6 characters of the version id")
    rows = []
    if all(ch in HEX_DIGITS for ch in reference):  # anything else is no hash prefix (and no LIKE pattern)
        rows = session.scalars(
            select(DatasetVersionRecord)
            .where(DatasetVersionRecord.content_hash.startswith(reference))
            .order_by(DatasetVersionRecord.created_at, DatasetVersionRecord.id)
        ).all()
    if not rows:
        raise NotFoundError(f"no dataset version {reference!r} recorded")
    hashes = {row.content_hash for row in rows}
    if len(hashes) > 1:
        raise NotFoundError(f"dataset version {reference!r} is ambiguous: {', '.join(sorted(hashes))}")
    return DatasetVersion.of(rows[-1])


def import_legacy_index(settings: Settings) -> int:
    """Record the versions of an earlier release's FINETUNE_HOME/datasets/versions.jsonl that are not
    recorded yet, once: the file is renamed to versions.jsonl.imported after the rows are committed. Returns
    how many were added."""
    path = settings.FINETUNE_HOME / "datasets" / LEGACY_INDEX_NAME
    if not path.is_file():
        return 0
    known = {item.name for item in fields(DatasetVersion)}
    added = 0
    with locked(path.with_name(path.name + ".lock")):
        if not path.is_file():  # another process imported it while this one waited
            return 0
        with session_scope(settings) as session:
            for line in path.read_text().splitlines():
                if line.strip():
                    entry = {key: value for key, value in json.loads(line).items() if key in known}
                    added += record_version(session, DatasetVersion(**entry))[1]
        path.rename(path.with_name(path.name + ".imported"))
    return added


class VersionIndex:
    """The lineage store as the command line and training runs use it: each call its own transaction. The
    first call brings the app database to the current schema (local mode; elsewhere a stale schema is a
    ConfigError) and imports an earlier release's JSON Lines index."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._ready = False
        self._preparing = threading.Lock()  # threads sharing an index migrate and import once

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._preparing:
            if not self._ready:
                ensure_database(self.settings)
                import_legacy_index(self.settings)
                self._ready = True
        with session_scope(self.settings) as session:
            yield session

    def all(self) -> list[DatasetVersion]:
        with self._session() as session:
            return list_versions(session)

    def record(self, version: DatasetVersion, *, owner_id: int | None = None) -> tuple[DatasetVersion, bool]:
        with self._session() as session:
            return record_version(session, version, owner_id=owner_id)

    def get(self, reference: str) -> DatasetVersion:
        with self._session() as session:
            return find_version(session, reference)

    def of_file(self, content_hash: str, file: Path) -> DatasetVersion | None:
        """The version recorded for this content of this file, if any."""
        with self._session() as session:
            row = _find(session, content_hash, str(Path(file).resolve()))
            return DatasetVersion.of(row) if row is not None else None


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
