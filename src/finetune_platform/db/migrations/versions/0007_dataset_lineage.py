"""One dataset-lineage store: a version's source (cli, train, api, upload) and the upload it came from.

Rows written before this revision came from job submissions only (source 'api'); those of an uploaded file get
its dataset id, and every earlier upload whose report has a content hash gets its own row (source 'upload').

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_versions = sa.table(
    "dataset_versions",
    sa.column("id", sa.Integer),
    sa.column("version", sa.String),
    sa.column("content_hash", sa.String),
    sa.column("file", sa.Text),
    sa.column("format", sa.String),
    sa.column("rows", sa.Integer),
    sa.column("label_counts", sa.JSON),
    sa.column("text_column", sa.String),
    sa.column("label_column", sa.String),
    sa.column("owner_id", sa.Integer),
    sa.column("source", sa.String),
    sa.column("dataset_id", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
_datasets = sa.table(
    "datasets",
    sa.column("id", sa.String),
    sa.column("owner_id", sa.Integer),
    sa.column("path", sa.Text),
    sa.column("format", sa.String),
    sa.column("rows", sa.Integer),
    sa.column("report", sa.JSON),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="cli"))
        batch.add_column(sa.Column("dataset_id", sa.String(36), nullable=True))
        batch.create_foreign_key(
            "fk_dataset_versions_dataset_id", "datasets", ["dataset_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_dataset_versions_dataset_id", ["dataset_id"])
    _backfill(op.get_bind())


def _backfill(connection: sa.Connection) -> None:
    connection.execute(sa.update(_versions).values(source="api"))
    for upload in connection.execute(sa.select(_datasets)).mappings().all():
        report = upload["report"]
        report = json.loads(report) if isinstance(report, str) else report or {}
        files = report.get("files") or [{}]
        content_hash = files[0].get("content_hash")
        of_upload = _versions.c.file == upload["path"]
        connection.execute(sa.update(_versions).where(of_upload).values(dataset_id=upload["id"]))
        if content_hash is None:
            continue
        if connection.execute(
            sa.select(_versions.c.id).where(of_upload, _versions.c.content_hash == content_hash)
        ).first():
            continue
        connection.execute(
            sa.insert(_versions).values(
                version=content_hash[:12],
                content_hash=content_hash,
                file=upload["path"],
                format=upload["format"],
                rows=upload["rows"],
                label_counts=files[0].get("label_counts") or {},
                # The upload's columns were not stored: these are the upload route's defaults.
                text_column="text",
                label_column="label",
                owner_id=upload["owner_id"],
                source="upload",
                dataset_id=upload["id"],
                created_at=upload["created_at"] or datetime.now(UTC),
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_index("ix_dataset_versions_dataset_id")
        batch.drop_constraint("fk_dataset_versions_dataset_id", type_="foreignkey")
        batch.drop_column("dataset_id")
        batch.drop_column("source")
