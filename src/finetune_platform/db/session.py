"""Engines, sessions and migrations. Transaction scope is written once: ``session_scope``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from finetune_platform.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


@lru_cache(maxsize=8)
def engine_for(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection, _record) -> None:  # foreign keys and concurrent readers
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        return engine
    # No pre-ping (a round trip per checkout); connections are recycled instead, and a connection the
    # server dropped fails one request, which the client retries.
    return create_engine(url, pool_recycle=300)


@lru_cache(maxsize=8)
def _session_factory(url: str) -> sessionmaker:
    return sessionmaker(engine_for(url), expire_on_commit=False)


@contextmanager
def session_scope(settings: Settings) -> Iterator[Session]:
    """Commit on success, roll back on any error, always close."""
    session = _session_factory(settings.database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@lru_cache(maxsize=8)
def read_engine(url: str) -> Engine:
    """The engine of ``url`` in autocommit mode (same pool): reads without BEGIN/COMMIT round trips."""
    return engine_for(url).execution_options(isolation_level="AUTOCOMMIT")


@lru_cache(maxsize=8)
def _read_factory(url: str) -> sessionmaker:
    return sessionmaker(read_engine(url), expire_on_commit=False)


@contextmanager
def read_scope(settings: Settings) -> Iterator[Session]:
    """A session for reads only, in autocommit mode: no BEGIN/COMMIT round trips (hot API reads)."""
    session = _read_factory(settings.database_url)()
    try:
        yield session
    finally:
        session.close()


def _migrate(settings: Settings, direction: str, revision: str) -> str:
    from alembic import command

    with engine_for(settings.database_url).begin() as connection:
        config = _alembic_config(settings.database_url)
        config.attributes["connection"] = connection  # one engine (and its SQLite settings) for everything
        getattr(command, direction)(config, revision)
    return current_revision(settings)


def upgrade(settings: Settings, revision: str = "head") -> str:
    """Apply migrations up to ``revision``; return the revision the database is at."""
    return _migrate(settings, "upgrade", revision)


def downgrade(settings: Settings, revision: str) -> str:
    return _migrate(settings, "downgrade", revision)


def current_revision(settings: Settings) -> str:
    from alembic.runtime.migration import MigrationContext

    with engine_for(settings.database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() or "base"


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def ensure_database(settings: Settings) -> None:
    """Local mode migrates the embedded database on first use; elsewhere a stale schema is an error."""
    from finetune_platform.errors import ConfigError

    current, head = current_revision(settings), head_revision()
    if current == head:
        return
    if settings.ENVIRONMENT == "local":
        upgrade(settings)
        return
    raise ConfigError(
        f"the database is at revision {current}, this version needs {head}: run `finetune db upgrade`"
    )
