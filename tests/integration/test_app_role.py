"""On PostgreSQL the platform connects as finetune_app: `finetune db upgrade`, run as the owner, gives the role
its password, and the role runs the platform but can neither rewrite the audit log nor switch off its guards.

The role belongs to the whole server, so other test databases may have created it (or set its password)
before; each test works in its own database and checks the password right after setting it. The local
server trusts every local connection, so the role connects without its password here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from finetune_platform.db.models import AuditEvent
from finetune_platform.db.session import APP_ROLE, engine_for, session_scope
from finetune_platform.services.audit import verify_chain
from finetune_platform.settings import Settings
from tests.conftest import ROOT, _postgres_database

SERVER = "host=127.0.0.1 port=5432 dbname=postgres"
# Quotes, a backslash, dollar quoting and a statement separator: any pasting into SQL would show.
PASSWORD = f'it\'s a "quoted" pa$$word\\ ; DROP ROLE {APP_ROLE}; -- {secrets.token_hex(8)}'


@dataclass
class Database:
    name: str
    owner_url: str
    app_url: str


@pytest.fixture
def database(tmp_path):
    name = _postgres_database()
    found = Database(
        name,
        f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}",
        f"postgresql+psycopg://{APP_ROLE}@127.0.0.1:5432/{name}",
    )
    yield found
    for url in (found.owner_url, found.app_url):
        engine_for(url).dispose()
    with psycopg.connect(f"{SERVER} user=postgres", autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade_cli(database: Database, tmp_path, **env: str):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    get_settings.cache_clear()
    try:
        return CliRunner().invoke(
            app,
            ["db", "upgrade"],
            env={"FINETUNE_HOME": str(tmp_path / "home"), "DATABASE_URL": database.owner_url, **env},
        )
    finally:
        get_settings.cache_clear()


def stored_password() -> str | None:
    with psycopg.connect(f"{SERVER} user=postgres") as connection:
        row = connection.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (APP_ROLE,)
        ).fetchone()
    return row[0]


def verifies(stored: str, password: str) -> bool:
    """Does the server's stored verifier (SCRAM-SHA-256 or md5) accept ``password``? (RFC 5802, 7677)"""
    if stored.startswith("md5"):
        return stored == "md5" + hashlib.md5((password + APP_ROLE).encode()).hexdigest()
    method, rest = stored.split("$", 1)
    assert method == "SCRAM-SHA-256"
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(part) for part in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    return (
        hashlib.sha256(client_key).digest() == stored_key
        and hmac.new(salted, b"Server Key", "sha256").digest() == server_key
    )


def test_upgrade_sets_the_app_role_password_quoted_and_hashed(database, tmp_path):
    upgraded = upgrade_cli(database, tmp_path, DATABASE_APP_PASSWORD=PASSWORD)
    assert upgraded.exit_code == 0, upgraded.output
    assert upgraded.output.strip() == f"database {database.owner_url} at revision 0011"
    stored = stored_password()
    assert stored is not None and verifies(stored, PASSWORD) and not verifies(stored, "wrong")
    assert PASSWORD not in stored
    with psycopg.connect(f"{SERVER} user=postgres") as connection:  # the role survived its password
        assert connection.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = %s", (APP_ROLE,)
        ).fetchone() == (1,)

    weak = upgrade_cli(database, tmp_path, DATABASE_APP_PASSWORD="password123", ENVIRONMENT="production")
    assert weak.exit_code == 2
    assert "error: DATABASE_APP_PASSWORD: at least 32 bytes outside local mode (got 11)" in weak.output
    assert stored_password() == stored  # refused before anything changed


def test_the_app_role_runs_the_platform_but_cannot_touch_the_audit_log(database, tmp_path):
    from finetune_platform.api.app import create_app
    from finetune_platform.services.jobs import submit_job
    from finetune_platform.services.users import create_user

    upgraded = upgrade_cli(database, tmp_path, DATABASE_APP_PASSWORD=secrets.token_hex(24))
    assert upgraded.exit_code == 0, upgraded.output
    settings = Settings(
        FINETUNE_HOME=tmp_path / "home",
        DATABASE_URL=database.app_url,
        MODEL_REGISTRY_DIR=tmp_path / "cards",
        RESULTS_DIR=tmp_path / "results",
        MLFLOW_ENABLED=False,
    )
    with session_scope(settings) as session:  # services, as the app role
        assert session.scalar(select(AuditEvent.id).limit(1)) is None
        alice = create_user(session, "alice", "long enough")
        submission = submit_job(
            session,
            alice,
            {"experiment": "role", "data": {"train_file": str(ROOT / "data/sample/train.csv")}},
        )
    assert submission.created
    client = TestClient(create_app(settings), client=("192.0.2.80", 1))  # the API, as the app role
    assert client.post("/login", data={"username": "alice", "password": "wrong one"}).status_code == 401
    token = client.post("/login", data={"username": "alice", "password": "long enough"}).json()[
        "access_token"
    ]
    client.headers["Authorization"] = f"Bearer {token}"
    sample = (ROOT / "data/sample/train.csv").read_bytes()
    dataset = client.post("/datasets?name=train.csv", content=sample)
    assert dataset.status_code == 201, dataset.text
    task = client.post("/train", json={"config": {"experiment": "role"}, "dataset_id": dataset.json()["id"]})
    assert task.status_code == 201, task.text
    assert client.get("/users").status_code == 403
    with session_scope(settings) as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)).all()
        assert actions == ["login", "login", "dataset.upload", "train.submit", "denied"]
        assert verify_chain(session).ok

    attacks = (
        "UPDATE audit_events SET target = 'forged'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "ALTER TABLE audit_events DISABLE TRIGGER ALL",
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
        "DROP TRIGGER audit_events_no_update_delete ON audit_events",
        "CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$ BEGIN RETURN OLD; END $$ "
        "LANGUAGE plpgsql",
        "DROP TABLE audit_events",
        "ALTER TABLE audit_events OWNER TO finetune_app",
        "SET session_replication_role = replica",
    )
    with psycopg.connect(f"host=127.0.0.1 port=5432 dbname={database.name} user={APP_ROLE}") as connection:
        assert connection.execute("SELECT current_user").fetchone() == (APP_ROLE,)
        for statement in attacks:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                connection.execute(statement)
            connection.rollback()
        assert connection.execute("SELECT count(*) FROM audit_events").fetchone() == (5,)
    with session_scope(settings) as session:
        assert verify_chain(session).ok
