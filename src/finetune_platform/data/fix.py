"""Acting on an audit: ``finetune data fix`` writes a new file without the rows an audit.json names, in the
source's format, and the lineage that says what was removed and why.

The source is never edited: the new file keeps every column and, for CSV, TSV and JSONL, every kept row's
bytes as written (JSON is written again from its parsed records; Parquet keeps its schema). Rows are the
source's 1-based data rows as ``data.loading`` numbers them (CSV/TSV: records after the header, blank lines
skipped; JSON/JSONL: the objects read, blank and malformed lines skipped; Parquet: rows in file order), the
numbers validation and the audit use. An audit of another content of the file (it changed since) is refused.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from finetune_platform.data.audit import parse_drop, read_audit, rows_to_drop
from finetune_platform.data.formats import DatasetFormat
from finetune_platform.data.loading import DatasetLimits, _json_records, _JsonRows, detect_format
from finetune_platform.data.validation import MULTI_LABEL, ValidationOptions, validate_file
from finetune_platform.data.versioning import DatasetVersion, VersionIndex
from finetune_platform.errors import ConfigError, DatasetError

FIXED_SUFFIX = "-fixed"  # default output: FILE's stem + this + FILE's suffix, beside FILE
LINEAGE_SUFFIX = ".lineage.json"  # beside the new file: every removed row with its reason
MAX_LINEAGE_ROWS = 1000  # removed rows listed in the database's lineage (the .lineage.json lists them all)


def default_output(source: Path) -> Path:
    return source.with_name(f"{source.stem}{FIXED_SUFFIX}{source.suffix}")


def audited_options(options: ValidationOptions) -> ValidationOptions:
    """The options the audit read its files with (``audit._read``): the content hash it recorded is of these."""
    values = {name: getattr(options, name) for name in options.__dataclass_fields__}
    return ValidationOptions(**{**values, "drop_invalid": True, "min_rows_per_class": 1})


@dataclass
class FixResult:
    source: Path
    output: Path
    lineage_path: Path
    audit: Path
    drop: str
    role: str
    rows_read: int  # data rows of the source
    rows_written: int
    removed: dict[int, str]  # row -> why

    def removed_by_reason(self) -> dict[str, int]:
        """{kind: rows} with kind label_error, near_duplicate, leak or outlier, most first."""
        return dict(Counter(why.split(":", 1)[0] for why in self.removed.values()).most_common())

    def lineage(self, parent: str | None, capped: bool = True) -> dict[str, Any]:
        """The lineage a new version records (its rows capped at MAX_LINEAGE_ROWS) or, uncapped, .lineage.json."""
        rows = [{"row": row, "reason": why} for row, why in sorted(self.removed.items())]
        listed = rows[:MAX_LINEAGE_ROWS] if capped else rows
        return {
            "from": parent,
            "source": str(self.source.resolve()),
            "audit": str(self.audit.resolve()),
            "drop": self.drop,
            "role": self.role,
            "lineage_file": str(self.lineage_path.resolve()),
            "removed": self.removed_by_reason(),
            "rows_removed": len(rows),
            "rows_listed": len(listed),
            "rows_capped": len(listed) < len(rows),
            "rows": listed,
        }

    def summary(self) -> str:
        lines = [
            f"wrote {self.output}: {self.rows_written:,} of {self.rows_read:,} rows "
            f"({len(self.removed):,} removed; lineage in {self.lineage_path})"
        ]
        lines += [f"  {kind:<15} {count:>8,}" for kind, count in self.removed_by_reason().items()]
        return "\n".join(lines)


def fix_file(
    source: Path,
    audit_path: Path,
    drop_spec: str,
    options: ValidationOptions,
    *,
    output: Path | None = None,
    role: str = "train",
    force: bool = False,
) -> FixResult:
    """Write ``output`` (default: FILE-fixed.suffix) and its ``.lineage.json``: ``source`` without the rows of
    file ``role`` that ``drop_spec`` picks from the audit. ConfigError for a bad spec or output; DatasetError
    when the audit is not of this content of the file."""
    source = Path(source)
    drop = parse_drop(drop_spec)
    document = read_audit(audit_path)
    output = Path(output) if output is not None else default_output(source)
    if output.resolve() == source.resolve():
        raise ConfigError(f"--output {output} is FILE itself: data fix never edits a file in place")
    if not output.parent.is_dir():
        raise ConfigError(f"--output {output}: the folder {output.parent} does not exist")
    if output.exists() and not force:
        raise ConfigError(f"--output {output} exists: pass --force to replace it, or name another file")
    fmt = detect_format(source)
    if detect_format(output) is not fmt:
        raise ConfigError(f"--output {output}: write the fixed file in FILE's format ({fmt.suffixes[0]})")
    audited = document.get("files", {}).get(role)
    if audited is None:
        roles = ", ".join(document.get("files", {})) or "none"
        raise ConfigError(f"--role {role}: {audit_path} audited no {role} file (its files: {roles})")
    report = validate_file(source, audited_options(options), role=role)
    current = report.content_hash
    if current is None:  # not readable with these columns: say why, not that it changed
        first = report.errors[0].message if report.errors else "no rows could be read"
        raise DatasetError(
            f"{source}: cannot be read with these columns ({first}); give the columns and task the audit used "
            "(--text-column, --label-column, --task, ... or --config)"
        )
    if current != audited.get("content_hash"):
        raise DatasetError(
            f"{source} has changed since the audit {audit_path} (content {str(current)[:12]}, audited "
            f"{str(audited.get('content_hash'))[:12]}): audit it again with finetune data audit"
        )
    removed = rows_to_drop(document, drop, role)
    lineage_path = output.with_name(output.name + LINEAGE_SUFFIX)
    with _temporary_beside(output) as temporary:
        rows_read, rows_written = WRITERS[fmt](source, temporary, set(removed), options, fmt)
        missing = sorted(set(removed) - set(range(1, rows_read + 1)))
        if missing:
            raise DatasetError(f"{audit_path} names rows {missing[:5]} that {source} does not have")
        os.replace(temporary, output)
    return FixResult(source, output, lineage_path, Path(audit_path), drop_spec, role, rows_read, rows_written,
                     removed)  # fmt: skip


def record_fix(result: FixResult, options: ValidationOptions, index: VersionIndex) -> DatasetVersion:
    """Record the source's version and the new file's, whose lineage names the source's and what went; write
    the full ``.lineage.json`` beside the new file. Returns the new version."""
    parent, _ = index.record(
        DatasetVersion.from_report(validate_file(result.source, options), options, "cli")
    )
    full = result.lineage(parent.version, capped=False)
    _write_text(result.lineage_path, json.dumps(full, indent=2, ensure_ascii=False) + "\n")
    report = validate_file(result.output, options)
    made = DatasetVersion.from_report(report, options, "cli")
    version, _ = index.record(
        replace(made, parent_version=parent.version, lineage=result.lineage(parent.version))
    )
    return version


@contextmanager
def _temporary_beside(target: Path) -> Iterator[Path]:
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(handle)
    try:
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def _write_text(path: Path, text: str) -> None:
    with _temporary_beside(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)


# -- one writer per format: (source, target, rows to drop, options, format) -> (rows read, rows written) ------
@contextmanager
def _field_limit(chars: int) -> Iterator[None]:
    before = csv.field_size_limit()
    csv.field_size_limit(max(before, chars))
    try:
        yield
    finally:
        csv.field_size_limit(before)


def _write_delimited(source: Path, target: Path, drop: set[int], options: ValidationOptions,
                     fmt: DatasetFormat) -> tuple[int, int]:  # fmt: skip
    """Each record's lines copied as written; a record is numbered as pandas numbers it (blank lines are none)."""
    with source.open(encoding="utf-8", newline="") as handle:
        lines = list(handle)  # split at \n, \r\n and \r only, endings kept
    reader = csv.reader(iter(lines), delimiter=fmt.delimiter, quoting=fmt.quoting)
    rows = written = 0
    consumed = 0
    with (
        target.open("w", encoding="utf-8", newline="") as out,
        _field_limit(DatasetLimits.from_settings().max_text_chars * 4),
    ):
        header = True
        for record in reader:
            text = "".join(lines[consumed : reader.line_num])
            consumed = reader.line_num
            if header:
                out.write(text)
                header = False
                continue
            if not record:
                out.write(text)
                continue
            rows += 1
            if rows not in drop:
                out.write(text)
                written += 1
    return rows, written


def _json_rows(options: ValidationOptions) -> _JsonRows:
    return _JsonRows(options.text_column, options.label_column, DatasetLimits.from_settings(),
                     options.text_pair_column, options.task == MULTI_LABEL)  # fmt: skip


def _write_jsonl(source: Path, target: Path, drop: set[int], options: ValidationOptions,
                 fmt: DatasetFormat) -> tuple[int, int]:  # fmt: skip
    """Each line copied as written; only the objects the loader counts as rows have numbers."""
    counter = _json_rows(options)
    written = 0
    with (
        source.open(encoding="utf-8", newline="") as handle,
        target.open("w", encoding="utf-8", newline="") as out,
    ):
        for number, line in enumerate(handle, start=1):
            before = counter.row
            try:
                record = json.loads(line.removeprefix("\ufeff")) if line.strip() else None
            except ValueError:  # malformed: not a row, kept as written
                record = None
            if isinstance(record, dict):
                counter.add(record, number)
                counter.rows.clear()
            if counter.row > before and counter.row in drop:
                continue
            written += counter.row > before
            out.write(line)
    return counter.row, written


def _write_json(source: Path, target: Path, drop: set[int], options: ValidationOptions,
                fmt: DatasetFormat) -> tuple[int, int]:  # fmt: skip
    """The kept records written again, in the document's shape (an array, or {"data": [...]} with its other
    members)."""
    text = source.read_text(encoding="utf-8-sig")
    counter = _json_rows(options)
    kept = []
    for index, record in enumerate(_json_records(text), start=1):
        before = counter.row
        if isinstance(record, dict):
            counter.add(record, index)
            counter.rows.clear()
        if counter.row > before and counter.row in drop:
            continue
        kept.append(record)
    document = json.loads(text)
    document = {**document, "data": kept} if isinstance(document, dict) else kept
    target.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return counter.row, counter.row - len(drop & set(range(1, counter.row + 1)))


def _write_parquet(source: Path, target: Path, drop: set[int], options: ValidationOptions,
                   fmt: DatasetFormat) -> tuple[int, int]:  # fmt: skip
    """Every column and the schema kept; rows numbered 1.. in file order."""
    table = pq.read_table(source)
    keep = np.ones(table.num_rows, dtype=bool)
    numbers = np.fromiter((row - 1 for row in drop if 1 <= row <= table.num_rows), dtype=np.int64)
    keep[numbers] = False
    pq.write_table(table.filter(keep), target)
    return table.num_rows, int(keep.sum())


WRITERS = {
    DatasetFormat.CSV: _write_delimited,
    DatasetFormat.TSV: _write_delimited,
    DatasetFormat.JSONL: _write_jsonl,
    DatasetFormat.JSON: _write_json,
    DatasetFormat.PARQUET: _write_parquet,
}
