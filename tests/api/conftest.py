"""The API on SQLite and on the local PostgreSQL: one app with three users and alice's dataset per module
and backend (Argon2 hashing is deliberately slow), a fresh task of alice's per test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import ROOT, _postgres_database

SAMPLE = (ROOT / "data" / "sample" / "train.csv").read_bytes()
PASSWORD = "long enough"


@dataclass
class Api:
    app: object
    settings: object
    ids: dict[str, object]

    def token(self, who: str) -> str:
        """A fresh token for the user's current token version (what /login would give)."""
        from finetune_platform.db.session import session_scope
        from finetune_platform.services.users import token_subject

        with session_scope(self.settings) as session:
            subject = token_subject(session, self.ids[who])
        return self.app.state.tokens.issue(subject)[0]

    def as_(self, who: str | None, address: str = "testclient") -> TestClient:
        client = TestClient(self.app, client=(address, 50000))
        if who is not None:
            client.headers["Authorization"] = f"Bearer {self.token(who)}"
        return client


def login(client: TestClient, username: str, password: str = PASSWORD):
    return client.post("/login", data={"username": username, "password": password})


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api_world(request, tmp_path_factory):
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import engine_for, session_scope, upgrade
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp(f"api-{request.param}")
    database_url = None
    if request.param == "postgresql":
        database_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{_postgres_database()}"
    settings = Settings(
        FINETUNE_HOME=root / "home",
        DATABASE_URL=database_url,
        MODEL_REGISTRY_DIR=root / "cards",
        RESULTS_DIR=root / "results",
        MAX_UPLOAD_BYTES=64 * 1024,
        LOGIN_MAX_FAILURES=3,
        LOGIN_WINDOW_SECONDS=2,
        MLFLOW_ENABLED=False,
        # Every test queues a task of alice's and no worker runs them: the per-account limit is tested in
        # tests/api/test_quotas.py, with accounts of its own.
        MAX_QUEUED_JOBS_PER_USER=100_000,
    )
    upgrade(settings)
    with session_scope(settings) as session:
        ids = {
            name: create_user(session, name, PASSWORD, role).id
            for name, role in (("alice", "user"), ("bob", "user"), ("root", "admin"))
        }
    api = Api(create_app(settings), settings, dict(ids))
    dataset = api.as_("alice").post("/datasets?name=train.csv", content=SAMPLE)
    assert dataset.status_code == 201, dataset.text
    api.ids["dataset"] = dataset.json()["id"]
    yield api
    if database_url:
        import psycopg

        engine_for(database_url).dispose()
        with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')


@pytest.fixture
def api(api_world) -> Api:
    task = api_world.as_("alice").post(
        "/train", json={"config": {"experiment": "api-test"}, "dataset_id": api_world.ids["dataset"]}
    )
    assert task.status_code == 201, task.text
    api_world.ids["task"] = task.json()["id"]
    return api_world


def results_dir(api: Api) -> Path:
    return Path(api.settings.RESULTS_DIR)


@contextmanager
def running_api(root: Path, users: tuple[str, ...] = ("alice",), **settings: object) -> Iterator[tuple]:
    """`finetune api` as a real process on a free port (its log in ``root/api.log``), its database upgraded and
    ``users`` created with PASSWORD; yields (base URL, the server process, its QueueEnv)."""
    import httpx

    from tests.conftest import finetune_bin, free_port
    from tests.integration.queue_harness import queue_env, wait_for

    env = queue_env(root, **settings)
    env.cli("db", "upgrade")
    for name in users:
        created = subprocess.run(
            [finetune_bin(), "users", "create", name, "--password-stdin"],
            input=f"{PASSWORD}\n", env=env.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
    port = free_port()
    server = subprocess.Popen(
        [finetune_bin(), "api", "--port", str(port)],
        env=env.env(),
        stdout=(root / "api.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(answers, 60, "the API to answer /health")
        yield base, server, env
    finally:
        server.terminate()
        server.wait(timeout=30)
