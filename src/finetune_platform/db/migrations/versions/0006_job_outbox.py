"""The dispatch outbox: a queued job's broker message, written in the job's transaction and marked sent once it
went, so a process that dies between its commit and the send loses no job (the reconciler sends the row).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_outbox",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("task", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_job_outbox_job_id", "job_outbox", ["job_id"])
    op.create_index("ix_job_outbox_unsent", "job_outbox", ["sent_at", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_job_outbox_unsent", table_name="job_outbox")
    op.drop_index("ix_job_outbox_job_id", table_name="job_outbox")
    op.drop_table("job_outbox")
