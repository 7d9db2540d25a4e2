"""The app database on SQLite and on the local PostgreSQL: migrations, users, transaction scope."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, select

from finetune_platform.db import session as db
from finetune_platform.db.models import Base, User
from finetune_platform.errors import ConfigError, ErrorCode, PlatformError
from finetune_platform.security import verify_password
from finetune_platform.services.users import create_user, list_users


def test_migrations_create_exactly_the_models_and_go_back(db_settings):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert db.current_revision(db_settings) == "base"
    assert db.upgrade(db_settings) == "0011"
    engine = db.engine_for(db_settings.database_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    assert set(inspect(engine).get_table_names()) >= {
        "users",
        "jobs",
        "job_events",
        "dataset_versions",
        "audit_events",
        "job_outbox",
    }
    assert db.upgrade(db_settings) == "0011"  # running it again changes nothing
    assert "kind" in {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert db.downgrade(db_settings, "0005") == "0005"
    assert "job_outbox" not in set(inspect(engine).get_table_names())
    assert db.downgrade(db_settings, "0003") == "0003"
    assert "kind" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert db.downgrade(db_settings, "0001") == "0001"
    assert "enqueued_at" not in {column["name"] for column in inspect(engine).get_columns("jobs")}
    assert db.downgrade(db_settings, "base") == "base"
    assert not set(inspect(engine).get_table_names()) & {"users", "jobs"}
    assert db.upgrade(db_settings) == "0011"


def test_users_are_created_with_argon2id_hashes_and_checked(db_settings):
    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        admin = create_user(session, "alice", "correct horse", "admin")
        create_user(session, "bob", "battery staple")
    assert (admin.username, admin.role) == ("alice", "admin")
    with db.session_scope(db_settings) as session:
        stored = session.scalar(select(User).where(User.username == "alice"))
        assert stored.password_hash.startswith("$argon2id$")
        assert verify_password(stored.password_hash, "correct horse")
        assert not verify_password(stored.password_hash, "wrong")
        assert [(u.username, u.role) for u in list_users(session)] == [("alice", "admin"), ("bob", "user")]
    for taken in ("alice", "ALICE", "Alice"):  # usernames are case-insensitive unique
        with pytest.raises(PlatformError) as caught, db.session_scope(db_settings) as session:
            create_user(session, taken, "another password")
        assert (
            caught.value.code is ErrorCode.CONFLICT and str(caught.value) == f"user {taken!r} already exists"
        )
    for args, message in (
        (("x", "long enough"), "username 'x': 2-64 letters"),
        (("carol", "short"), "password: at least 10 characters"),
        (
            ("carol", "password123"),
            "password: too common; choose one that is not on lists of leaked passwords",
        ),
        (("carol", "carol-is-great"), "password: must not contain the username"),
        (("carol", "long enough", "root"), "role 'root': expected one of admin, user"),
    ):
        with pytest.raises(ConfigError, match=message), db.session_scope(db_settings) as session:
            create_user(session, *args)


def test_session_scope_rolls_back_on_error(db_settings):
    db.upgrade(db_settings)
    with pytest.raises(RuntimeError), db.session_scope(db_settings) as session:
        create_user(session, "dave", "long enough")
        raise RuntimeError("boom")
    with db.session_scope(db_settings) as session:
        assert list_users(session) == []


def test_cli_upgrade_and_users(db_settings, monkeypatch):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    monkeypatch.setenv("FINETUNE_HOME", str(db_settings.FINETUNE_HOME))
    if db_settings.DATABASE_URL:
        monkeypatch.setenv("DATABASE_URL", db_settings.DATABASE_URL)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        before = runner.invoke(app, ["users", "list"])  # migrates first: no `finetune db upgrade` needed
        assert before.exit_code == 0 and before.output.startswith("no accounts yet")
        upgraded = runner.invoke(app, ["db", "upgrade"])
        assert upgraded.exit_code == 0 and upgraded.output.strip().endswith("at revision 0011")
        created = runner.invoke(
            app, ["users", "create", "erin", "--role", "admin", "--password-stdin"], input="long enough\n"
        )
        assert created.output.strip() == "created admin erin (id 1)"
        again = runner.invoke(app, ["users", "create", "erin", "--password-stdin"], input="long enough\n")
        assert again.exit_code == 1 and "error: user 'erin' already exists" in again.output
        assert "erin" in runner.invoke(app, ["users", "list"]).output
    finally:
        get_settings.cache_clear()


def test_0005_migrates_a_database_with_data_both_ways(db_settings):
    """A 0004 database whose user owns a dataset, a job and audit entries: the users table is rebuilt on
    SQLite (AUTOINCREMENT) while rows point at it; the data and its links survive, in both directions."""
    from sqlalchemy import text

    assert db.upgrade(db_settings, "0004") == "0004"
    engine = db.engine_for(db_settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, is_active, token_version, created_at) "
                "VALUES (1, 'alice', 'x', 'user', true, 0, CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO datasets (id, owner_id, name, path, format, size_bytes, rows, valid, report, created_at) "
                "VALUES ('d1', 1, 'train.csv', '/x', 'csv', 1, 1, true, '{}', CURRENT_TIMESTAMP)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO jobs (id, owner_id, kind, status, config, attempts, max_attempts, progress, "
                "cancel_requested, preemptions, created_at, updated_at) VALUES ('j1', 1, 'train', 'queued', '{}', 0, "
                "3, '{}', false, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    assert db.upgrade(db_settings) == "0011"
    with db.session_scope(db_settings) as session:
        alice = session.scalar(select(User).where(User.username == "alice"))
        assert alice.id == 1 and len(alice.token_key) == 32
        owners = session.execute(
            text("SELECT owner_id FROM datasets UNION ALL SELECT owner_id FROM jobs")
        ).all()
        assert [row[0] for row in owners] == [1, 1]
    assert db.downgrade(db_settings, "0004") == "0004"
    assert db.upgrade(db_settings) == "0011"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs WHERE owner_id = 1")).scalar_one() == 1


def test_0009_gives_the_jobs_that_succeeded_before_it_the_stage_done(db_settings):
    """Before 0009 a succeeded job kept its last running stage (registering, evaluating, predicting)."""
    from sqlalchemy import text

    assert db.upgrade(db_settings, "0008") == "0008"
    engine = db.engine_for(db_settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, is_active, token_version, token_key, "
                "created_at) VALUES (1, 'alice', 'x', 'user', true, 0, :key, CURRENT_TIMESTAMP)"
            ),
            {"key": "k" * 32},
        )
        for job_id, kind, status, stage in (
            ("registered", "train", "succeeded", "registering"),
            ("unregistered", "train", "succeeded", "evaluating"),
            ("predicted", "predict", "succeeded", "predicting"),
            ("failed", "train", "failed", "training"),
            ("running", "train", "running", "evaluating"),
        ):
            connection.execute(
                text(
                    "INSERT INTO jobs (id, owner_id, kind, status, stage, config, attempts, max_attempts, progress, "
                    "cancel_requested, preemptions, created_at, updated_at) VALUES (:id, 1, :kind, :status, "
                    ":stage, '{}', 1, 3, '{}', false, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
                ),
                {"id": job_id, "kind": kind, "status": status, "stage": stage},
            )
    assert db.upgrade(db_settings) == "0011"
    with engine.connect() as connection:
        stages = dict(connection.execute(text("SELECT id, stage FROM jobs")).all())
    assert stages == {
        "registered": "done", "unregistered": "done", "predicted": "done",
        "failed": "training", "running": "evaluating",
    }  # fmt: skip
    assert db.downgrade(db_settings, "0008") == "0008"
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM jobs WHERE stage = 'done'")).scalar_one() == 3
