"""Jobs: a succeeded job's stage reads ``done`` (it kept its last running stage, e.g. registering, before).

No schema change (``stage`` is a free 16-character string); the jobs that succeeded before this version get the
stage that succeeding now writes.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE jobs SET stage = 'done' WHERE status = 'succeeded'")


def downgrade() -> None:
    # Nothing to undo: the stage a succeeded job had before is not recorded anywhere, and earlier versions read
    # a succeeded job as done whatever its stage says.
    pass
