"""Sweeps: the ``sweeps`` table, a job's sweep, trial number and trial values; on PostgreSQL the ``optuna``
schema that holds the sweeps' Optuna studies (its tables, including its own ``alembic_version``, would collide
with ours in ``public``).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

APP_ROLE = "finetune_app"
OPTUNA_SCHEMA = "optuna"

# Optuna creates and migrates its own tables on first use, as whichever role the platform connects as.
OPTUNA_SCHEMA_GRANTS = f"""
CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA};
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        EXECUTE 'GRANT USAGE, CREATE ON SCHEMA {OPTUNA_SCHEMA} TO {APP_ROLE}';
        EXECUTE 'GRANT ALL ON ALL TABLES IN SCHEMA {OPTUNA_SCHEMA} TO {APP_ROLE}';
        EXECUTE 'GRANT ALL ON ALL SEQUENCES IN SCHEMA {OPTUNA_SCHEMA} TO {APP_ROLE}';
        EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA {OPTUNA_SCHEMA} GRANT ALL ON TABLES TO {APP_ROLE}';
        EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA {OPTUNA_SCHEMA} GRANT ALL ON SEQUENCES TO {APP_ROLE}';
    END IF;
END
$$;
"""


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner_id", sa.Integer, sa.ForeignKey("users.id"), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("base_config", sa.JSON, nullable=False),
        sa.Column("dataset_version", sa.String(64), nullable=True),
        sa.Column("max_attempts", sa.Integer, nullable=False),
        sa.Column("trials_started", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("best_job_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(36), nullable=True))
        batch.add_column(sa.Column("trial_number", sa.Integer, nullable=True))
        batch.add_column(sa.Column("trial_params", sa.JSON, nullable=True))
        batch.create_foreign_key("fk_jobs_sweep_id", "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL")
        batch.create_index("ix_jobs_sweep_id", ["sweep_id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(OPTUNA_SCHEMA_GRANTS)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_sweep_id")
        batch.drop_constraint("fk_jobs_sweep_id", type_="foreignkey")
        batch.drop_column("trial_params")
        batch.drop_column("trial_number")
        batch.drop_column("sweep_id")
    op.drop_table("sweeps")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP SCHEMA IF EXISTS {OPTUNA_SCHEMA} CASCADE")
