"""Engines, sessions and migrations. Transaction scope is written once: ``session_scope``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from finetune_platform.errors import ConfigError
from finetune_platform.settings import Settings, secret_problem

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
    from alembic.config import Config  # lazy: alembic, only when migrating or checking the schema

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
    """Run alembic on the platform's own engine (and its SQLite settings). On SQLite, batch mode rebuilds a
    table by dropping it, which foreign keys would refuse once other rows point at it: they are off while the
    migration runs (SQLite ignores the switch inside a transaction), checked before it commits, then on again."""
    from alembic import command  # lazy: alembic, only when migrating

    engine = engine_for(settings.database_url)
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.commit()
        try:
            with connection.begin():
                config = _alembic_config(settings.database_url)
                config.attributes["connection"] = connection
                getattr(command, direction)(config, revision)
                if sqlite:
                    broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                    if broken:
                        raise ConfigError(
                            f"migration left rows pointing nowhere (first: {tuple(broken[0])}); undone"
                        )
        finally:
            if sqlite:
                connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                connection.commit()
    return current_revision(settings)


def upgrade(settings: Settings, revision: str = "head") -> str:
    """Apply migrations up to ``revision``; return the revision the database is at. On PostgreSQL with
    DATABASE_APP_PASSWORD, also set the password of the application role."""
    password = app_password(settings)  # refused before anything changes
    current = _migrate(settings, "upgrade", revision)
    if password is not None:
        set_app_password(settings, password)
    return current


APP_ROLE = "finetune_app"  # created by migration 0005 (PostgreSQL): owns no table, appends to the audit log


def app_password(settings: Settings) -> str | None:
    """DATABASE_APP_PASSWORD when the database is PostgreSQL (None otherwise); outside local mode it must
    pass the secret policy."""
    if settings.DATABASE_APP_PASSWORD is None or not settings.database_url.startswith("postgresql"):
        return None
    password = settings.DATABASE_APP_PASSWORD.get_secret_value()
    if settings.ENVIRONMENT != "local" and (problem := secret_problem(password)):
        raise ConfigError(f"DATABASE_APP_PASSWORD: {problem}; generate one with `openssl rand -hex 32`")
    return password


def set_app_password(settings: Settings, password: str) -> None:
    """``ALTER ROLE finetune_app PASSWORD <verifier>``: libpq hashes the password here (SCRAM, as psql's
    \\password does), so the clear text reaches neither the server nor its statement log, and the verifier
    goes in as a quoted literal, never pasted into the statement."""
    from psycopg import sql  # lazy: psycopg, only on PostgreSQL

    with engine_for(settings.database_url).begin() as connection:
        role = text("SELECT 1 FROM pg_roles WHERE rolname = :role")
        if connection.execute(role, {"role": APP_ROLE}).first() is None:
            raise ConfigError(
                f"DATABASE_APP_PASSWORD is set but the role {APP_ROLE} does not exist yet: upgrade to revision "
                "0005 or later"
            )
        algorithm = connection.execute(text("SHOW password_encryption")).scalar_one()
        driver = connection.connection.driver_connection
        verifier = driver.pgconn.encrypt_password(
            password.encode("utf-8"), APP_ROLE.encode(), algorithm.encode()
        ).decode("ascii")
        statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(APP_ROLE), sql.Literal(verifier)
        )
        driver.cursor().execute(statement)


def downgrade(settings: Settings, revision: str) -> str:
    return _migrate(settings, "downgrade", revision)


def current_revision(settings: Settings) -> str:
    from alembic.runtime.migration import MigrationContext  # lazy: alembic, only when checking the schema

    with engine_for(settings.database_url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() or "base"


def head_revision() -> str:
    from alembic.script import ScriptDirectory  # lazy: alembic, only when checking the schema

    return ScriptDirectory.from_config(_alembic_config("sqlite://")).get_current_head()


def ensure_database(settings: Settings) -> None:
    """Local mode migrates the embedded database on first use; elsewhere a stale schema is an error."""
    current, head = current_revision(settings), head_revision()
    if current == head:
        return
    if settings.ENVIRONMENT == "local":
        upgrade(settings)
        return
    raise ConfigError(
        f"the database is at revision {current}, this version needs {head}: run `finetune db upgrade`"
    )
