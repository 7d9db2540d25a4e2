"""Alembic environment: runs against the connection or URL the platform hands it."""

from __future__ import annotations

import warnings

from alembic import context
from sqlalchemy import create_engine

from finetune_platform.db.models import Base

# SQLite batch mode reflects users, whose lower(username) index it cannot reflect (and keeps anyway).
warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.begin() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    # SQLite cannot ALTER most things in place: batch mode rebuilds tables, so one migration serves both.
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=True, compare_type=True
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
