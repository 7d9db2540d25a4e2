"""Multi-user hardening: per-account token keys and quotas, case-insensitive usernames, ids that never come
back (SQLite AUTOINCREMENT), shared login throttling, owned model names, the checksums the platform serves
against, the base-model allow-list, and on PostgreSQL a less privileged application role.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

APP_ROLE = "finetune_app"

# The application role may read and write the platform's tables, append to the audit log and nothing
# more: it owns no table, so it can neither disable the append-only triggers nor drop the log.
APP_ROLE_GRANTS = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;  -- created by a migration of another database at the same moment
END
$$;
DO $$
BEGIN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO {APP_ROLE}', current_database());
END
$$;
GRANT USAGE ON SCHEMA public TO {APP_ROLE};
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE};
REVOKE UPDATE, DELETE, TRUNCATE ON audit_events FROM {APP_ROLE};
REVOKE INSERT, UPDATE, DELETE ON alembic_version FROM {APP_ROLE};
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO {APP_ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {APP_ROLE};
"""

APP_ROLE_REVOKES = f"""
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT, INSERT, UPDATE, DELETE ON TABLES FROM {APP_ROLE};
ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE USAGE, SELECT ON SEQUENCES FROM {APP_ROLE};
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {APP_ROLE};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {APP_ROLE};
REVOKE USAGE ON SCHEMA public FROM {APP_ROLE};
"""


def upgrade() -> None:
    bind = op.get_bind()
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String))
    clash = bind.execute(
        sa.select(sa.func.lower(users.c.username))
        .group_by(sa.func.lower(users.c.username))
        .having(sa.func.count() > 1)
    ).first()
    if clash is not None:
        raise RuntimeError(
            f"usernames become case-insensitive: several accounts are named {clash[0]!r} in some case; "
            "rename all but one before upgrading"
        )
    # SQLite: rebuild the tables with AUTOINCREMENT; PostgreSQL sequences never hand an id out twice.
    rebuild = "always" if bind.dialect.name == "sqlite" else "auto"
    with op.batch_alter_table(
        "users", recreate=rebuild, table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.add_column(sa.Column("token_key", sa.String(32), nullable=True))
        batch.add_column(sa.Column("max_queued_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_running_jobs", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_job_hours", sa.Float(), nullable=True))
    keyed = sa.table("users", sa.column("id", sa.Integer), sa.column("token_key", sa.String))
    for (user_id,) in bind.execute(sa.select(keyed.c.id)).all():
        bind.execute(keyed.update().where(keyed.c.id == user_id).values(token_key=secrets.token_hex(16)))
    with op.batch_alter_table("users", table_kwargs={"sqlite_autoincrement": True}) as batch:
        batch.alter_column("token_key", existing_type=sa.String(32), nullable=False)
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    if bind.dialect.name == "sqlite":
        with op.batch_alter_table(
            "audit_events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
        ):
            pass

    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_login_failures_key_at", "login_failures", ["key", "at"])
    op.create_table(
        "registered_models",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_registered_models_owner_id", "registered_models", ["owner_id"])
    op.create_table(
        "model_versions",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("adapter_checksum", sa.String(80), nullable=False),
        sa.Column("artifact_checksums", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    allowed = op.create_table(
        "allowed_base_models",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("added_by", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.bulk_insert(allowed, [{"name": "minilm", "added_by": None, "created_at": datetime.now(UTC)}])
    if bind.dialect.name == "postgresql":
        op.execute(APP_ROLE_GRANTS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APP_ROLE_REVOKES)
    op.drop_table("allowed_base_models")
    op.drop_table("model_versions")
    op.drop_index("ix_registered_models_owner_id", "registered_models")
    op.drop_table("registered_models")
    op.drop_index("ix_login_failures_key_at", "login_failures")
    op.drop_table("login_failures")
    op.drop_index("uq_users_username_lower", "users")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("max_job_hours")
        batch.drop_column("max_running_jobs")
        batch.drop_column("max_queued_jobs")
        batch.drop_column("token_key")
