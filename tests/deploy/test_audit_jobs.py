"""The chart's audit CronJobs, run for real: their containers' commands and environment as `helm template`
renders them for production, against a database of the local PostgreSQL server.

What the kubelet would provide is mapped onto this machine and nothing else is added: the Secrets' values
(secretKeyRef), the mounts (/anchors on the anchors' volume, /tmp on the emptyDir) as folders under tmp_path, and
PATH to find the `finetune` of this environment. So the test shows that the rendered environment is all the jobs
need: finetune_app's URL reads the log, the generated key passes the secret policy outside local mode, verify works
from a read-only mount, and a database owner who rewrites an entry and recomputes the chain fails the verify Job.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select

from tests.conftest import _postgres_database
from tests.deploy.test_helm import (
    JWT_SECRET,
    PREFIX,
    env_of,
    find,
    pod_template,
    render,
    sets,
)

SERVER = "host=127.0.0.1 port=5432 dbname=postgres user=postgres"
MOUNTS = ("/anchors", "/tmp")


@pytest.fixture
def database():
    name = _postgres_database()
    yield name
    from finetune_platform.db.session import engine_for

    for user in ("postgres", "finetune_app"):
        engine_for(f"postgresql+psycopg://{user}@127.0.0.1:5432/{name}").dispose()
    with psycopg.connect(SERVER, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def container_of(docs: list[dict], kind: str, component: str) -> dict:
    (container,) = pod_template(find(docs, kind, f"{PREFIX}-{component}"))["spec"]["containers"]
    return container


def container_env(docs: list[dict], container: dict, root: Path) -> dict[str, str]:
    """The container's environment as the kubelet gives it (Secrets resolved), the mounts' paths under root."""

    def on_host(value: str) -> str:
        for mount in MOUNTS:
            if value == mount or value.startswith(f"{mount}/"):
                return str(root / mount.lstrip("/")) + value.removeprefix(mount)
        return value

    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name, entry in env_of(container).items():
        if "value" in entry:
            env[name] = on_host(entry["value"])
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            secret = find(docs, "Secret", ref["name"])
            env[name] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


def run_container(docs: list[dict], container: dict, root: Path) -> subprocess.CompletedProcess:
    """Run the container's command with that environment and nothing else."""
    env = container_env(docs, container, root)
    return subprocess.run(container["command"], env=env, capture_output=True, text=True, timeout=120)


def test_rendered_audit_jobs_checkpoint_verify_and_catch_a_recomputed_chain(database, tmp_path):
    from finetune_platform.db.models import AuditEvent
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import entry_hash, record, verify_chain
    from finetune_platform.settings import Settings

    owner_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    docs, _ = render(
        "-f",
        str(Path(__file__).resolve().parents[2] / "charts/finetune-platform/values.prod.yaml"),
        *sets(f"secrets.jwtSecret={JWT_SECRET}", f"postgresql.url={owner_url}"),
    )
    for mount in MOUNTS:
        (tmp_path / mount.lstrip("/")).mkdir()
    # The migration hook first (as the owner; it creates finetune_app), then entries written as the app role.
    migrated = run_container(docs, container_of(docs, "Job", "db-migrate"), tmp_path)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    checkpoint = container_of(docs, "CronJob", "audit-checkpoint")
    app_url = container_env(docs, checkpoint, tmp_path)["DATABASE_URL"]
    assert app_url.startswith("postgresql+psycopg://finetune_app:")  # the api's role, not the owner
    assert app_url.endswith(f"@127.0.0.1:5432/{database}")
    app = Settings(FINETUNE_HOME=tmp_path / "home", DATABASE_URL=app_url)
    with session_scope(app) as session:
        for action in ("login", "dataset.upload", "train.submit"):
            record(session, action, actor_id=None, target="alice")

    done = run_container(docs, checkpoint, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    anchors = tmp_path / "anchors" / "audit-anchors.jsonl"
    assert done.stdout.startswith("checkpoint: entry 3 (hash ")
    assert done.stdout.rstrip().endswith(f"3 entries, appended to {anchors}")
    assert len(anchors.read_text().splitlines()) == 1

    verify = container_of(docs, "CronJob", "audit-verify")
    (tmp_path / "anchors").chmod(0o555)  # mounted read-only in the verify Job
    anchors.chmod(0o444)
    try:
        intact = run_container(docs, verify, tmp_path)
        assert intact.returncode == 0, intact.stdout + intact.stderr
        assert intact.stdout.startswith(
            "audit log intact: 3 entries\nanchored: 3 entries, up to entry 3, by 1 "
        )

        # The owner (whom the API's role is not) rewrites entry 2 and recomputes the chain after it: the chain
        # alone holds again, the checkpoint signed with a key the database never saw does not.
        with psycopg.connect(f"host=127.0.0.1 port=5432 dbname={database} user=postgres") as connection:
            connection.execute("ALTER TABLE audit_events DISABLE TRIGGER USER")
            connection.execute("UPDATE audit_events SET target = 'mallory' WHERE id = 2")
        owner = Settings(FINETUNE_HOME=tmp_path / "home", DATABASE_URL=owner_url)
        with session_scope(owner) as session:
            previous = None
            for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)):
                if previous is not None:
                    event.prev_hash = previous
                event.hash = entry_hash(event)
                previous = event.hash
        with session_scope(owner) as session:
            assert verify_chain(session).ok  # the hash chain alone does not show it
        tampered = run_container(docs, verify, tmp_path)
    finally:
        (tmp_path / "anchors").chmod(0o755)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert tampered.stdout.startswith("audit log NOT intact: 3 entries")
    assert "audit log rewritten: entry 3 has hash " in tampered.stderr
    assert "an entry from the first entry up to entry 3 was altered or deleted and the chain recomputed" in (
        tampered.stderr
    )
    # And no new checkpoint is signed over the rewritten log.
    refused = run_container(docs, checkpoint, tmp_path)
    assert refused.returncode == 1
    assert "no checkpoint written: the audit log fails verification" in refused.stderr
    assert len(anchors.read_text().splitlines()) == 1
