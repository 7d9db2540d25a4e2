"""Dataset versions made from others: ``parent_version`` (the version a fixed file was made from) and ``lineage``
(what ``finetune data fix`` removed from it and why). Rows written before this revision have neither.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.add_column(sa.Column("parent_version", sa.String(12), nullable=True))
        batch.add_column(sa.Column("lineage", sa.JSON, nullable=True))
        batch.create_index("ix_dataset_versions_parent_version", ["parent_version"])


def downgrade() -> None:
    with op.batch_alter_table("dataset_versions") as batch:
        batch.drop_index("ix_dataset_versions_parent_version")
        batch.drop_column("lineage")
        batch.drop_column("parent_version")
