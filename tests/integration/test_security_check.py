"""`finetune security-check` against real components: weak and strong secrets, a tracking server that answers
anonymous requests and one that refuses them, trusted proxies, and the PostgreSQL role the platform uses."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.conftest import _postgres_database, finetune_bin

STRONG = "7c1e9a3f5b2d4086e8f1a3c5d7b9e0f2a4c6e8d0b1f3a5c7e9d2b4f6a8c0e1d3"


def check(tmp_path, **variables: str) -> tuple[int, dict[str, dict]]:
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "METRICS_TOKEN", "SERVE_API_KEYS")},
        "FINETUNE_HOME": str(tmp_path / "home"),
        **variables,
    }
    done = subprocess.run(
        [finetune_bin(), "security-check", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    return done.returncode, {row["area"]: row for row in json.loads(done.stdout)}


class Refusing(BaseHTTPRequestHandler):
    def do_GET(self):  # a tracking server behind basic auth answers anonymous requests 401
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.end_headers()

    def log_message(self, *args):
        pass


def test_local_mode_never_fails(tmp_path):
    code, rows = check(tmp_path)
    assert code == 0
    assert rows["environment"]["status"] == "warn"
    assert rows["mlflow"]["status"] == "ok" and rows["forwarded headers"]["status"] == "ok"


def test_weak_secrets_and_an_open_tracking_server_fail_production(tmp_path, mlflow_server):
    code, rows = check(
        tmp_path,
        ENVIRONMENT="production",
        JWT_SECRET="abcdefghijklmnopqrstuvwxyz012345",
        SERVE_API_KEYS='["changeme"]',
        MLFLOW_TRACKING_URI=mlflow_server[0],
        FORWARDED_ALLOW_IPS="0.0.0.0/0",
    )
    assert code == 1
    assert rows["secret JWT_SECRET"] == {
        "area": "secret JWT_SECRET",
        "status": "fail",
        "message": "looks like a placeholder (a run of neighbouring characters)",
    }
    assert rows["secret SERVE_API_KEYS[0]"]["status"] == "fail"
    assert (
        rows["mlflow"]["status"] == "fail" and "answers anonymous requests (200)" in rows["mlflow"]["message"]
    )
    assert rows["forwarded headers"]["status"] == "fail"  # 0.0.0.0/0: every client could spoof its address
    assert rows["metrics"]["message"].startswith("/metrics answers 404")
    assert (
        rows["audit anchors"]["status"] == "warn"
        and "no signed checkpoints" in rows["audit anchors"]["message"]
    )


def test_a_locked_tracking_server_and_strong_secrets_pass(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code, rows = check(
            tmp_path,
            ENVIRONMENT="production",
            JWT_SECRET=STRONG,
            METRICS_TOKEN=STRONG[::-1],
            MLFLOW_TRACKING_URI=f"http://platform:{STRONG[:12]}@127.0.0.1:{server.server_port}",
        )
    finally:
        server.shutdown()
    assert code == 0, rows
    assert rows["mlflow"] == {
        "area": "mlflow",
        "status": "ok",
        "message": f"tracking server http://127.0.0.1:{server.server_port} refuses anonymous requests (401)",
    }
    assert STRONG[:12] not in json.dumps(rows)  # credentials never printed
    assert rows["metrics"]["message"] == "/metrics needs Authorization: Bearer <METRICS_TOKEN>"


def test_the_database_role_that_owns_the_audit_log_fails(tmp_path):
    psycopg = pytest.importorskip("psycopg")
    name = _postgres_database()
    owner = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgraded = subprocess.run(
            [finetune_bin(), "db", "upgrade"],
            env={**os.environ, "FINETUNE_HOME": str(tmp_path / "home"), "DATABASE_URL": owner},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert upgraded.returncode == 0, upgraded.stderr
        code, rows = check(tmp_path, ENVIRONMENT="production", JWT_SECRET=STRONG, DATABASE_URL=owner)
        assert code == 1
        assert rows["database"]["status"] == "fail"
        assert rows["database"]["message"].startswith("connected as 'postgres', which is a superuser")
        # A role that merely inherits the owner's rights (no superuser, owns nothing itself) can disable the
        # triggers too; so can the database owner, through the schema it owns.
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={name}", autocommit=True) as c:
            c.execute("DROP ROLE IF EXISTS sc_member")
            c.execute("CREATE ROLE sc_member LOGIN IN ROLE postgres")
        try:
            member = f"postgresql+psycopg://sc_member@127.0.0.1:5432/{name}"
            code, rows = check(tmp_path, ENVIRONMENT="production", JWT_SECRET=STRONG, DATABASE_URL=member)
            assert code == 1 and rows["database"]["status"] == "fail"
            assert "owns audit_events, or has its owner's rights" in rows["database"]["message"]
        finally:
            with psycopg.connect(
                f"host=127.0.0.1 port=5432 user=postgres dbname={name}", autocommit=True
            ) as c:
                c.execute("DROP OWNED BY sc_member")
                c.execute("DROP ROLE sc_member")
        app = f"postgresql+psycopg://finetune_app@127.0.0.1:5432/{name}"
        code, rows = check(tmp_path, ENVIRONMENT="production", JWT_SECRET=STRONG, DATABASE_URL=app)
        assert rows["database"] == {
            "area": "database",
            "status": "ok",
            "message": "connected as 'finetune_app': does not own audit_events (owner 'postgres')",
        }
        assert code == 0, rows
    finally:
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
