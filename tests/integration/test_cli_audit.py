"""Changes made from the command line are audited on the API's hash chain: users created or changed, jobs
submitted, cancelled and retried, models moved between stages. Each writes exactly one entry (actor
``cli:<login name>`` in its detail, the local account as actor_id, address ``local``), and `finetune audit
verify` checks them with the rest: it passes after them and names a command-line entry edited afterwards."""

from __future__ import annotations

import getpass
import json
import secrets

import pytest
import yaml
from sqlalchemy import select, text

from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

PASSWORD = "long enough"


@pytest.fixture
def cli(platform_home, tmp_path, monkeypatch):
    """The real `finetune` app through CliRunner: the session's MLflow store, an app database and model cards
    of this test's own (its audit log is edited here), and the settings the commands read."""
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import Settings, get_settings

    values = {
        "FINETUNE_HOME": str(platform_home),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}",
        "MODEL_REGISTRY_DIR": str(tmp_path / "cards"),
        "RESULTS_DIR": str(tmp_path / "results"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("REDIS_URL", raising=False)  # the filesystem queue: no worker runs here
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, code: int = 0):
        result = runner.invoke(app, list(args), input=input)
        assert result.exit_code == code, result.output
        return result

    invoke.settings = Settings(**values)
    yield invoke
    get_settings.cache_clear()


def entries_after(settings, last_id: int) -> list:
    from finetune_platform.db.models import AuditEvent
    from finetune_platform.db.session import session_scope

    with session_scope(settings) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.id > last_id).order_by(AuditEvent.id))
        return [(r.id, r.actor_id, r.action, r.target, r.outcome, r.address, dict(r.detail)) for r in rows]


def last_id(settings) -> int:
    from finetune_platform.db.models import AuditEvent
    from finetune_platform.db.session import session_scope

    with session_scope(settings) as session:
        return session.scalar(select(AuditEvent.id).order_by(AuditEvent.id.desc()).limit(1)) or 0


def local_id(settings) -> int:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import local_user

    with session_scope(settings) as session:
        return local_user(session).id


def one_entry(cli, before: int, action: str, target: str, **detail) -> None:
    """Exactly one new entry since ``before``: this action on this target by the command line's user."""
    settings = cli.settings
    (entry,) = entries_after(settings, before)
    assert entry[1:] == (
        local_id(settings),
        action,
        target,
        "ok",
        "local",
        {"actor": f"cli:{getpass.getuser()}", **detail},
    )


def test_user_and_job_changes_from_the_cli_are_audited(cli, tmp_path, tiny_bert):
    from fastapi.testclient import TestClient

    from finetune_platform.api.app import create_app

    settings = cli.settings
    created = cli("users", "create", "erin", "--password-stdin", input=f"{PASSWORD}\n")  # the first entry
    erin = int(created.stdout.strip().rsplit("id ", 1)[1].rstrip(")"))
    one_entry(cli, 0, "user.create", f"user:{erin}", role="user")

    mark = last_id(settings)
    cli("users", "set-quota", "erin", "--queued", "5", "--hours", "2")
    one_entry(cli, mark, "user.update", f"user:{erin}", fields=["max_job_hours", "max_queued_jobs"])

    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(24, seed=1))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(tiny_bert, train, None, tmp_path / "results")))
    mark = last_id(settings)
    submitted = json.loads(cli("jobs", "submit", str(config), "--idempotency-key", "k1", "--json").stdout)
    one_entry(
        cli,
        mark,
        "train.submit",
        f"task:{submitted['id']}",
        config=str(config),
        dataset_version=submitted["dataset_version"],
    )
    mark = last_id(settings)  # the same key again returns the first job and changes nothing: no entry
    again = json.loads(cli("jobs", "submit", str(config), "--idempotency-key", "k1", "--json").stdout)
    assert (again["created"], again["id"]) == (False, submitted["id"])
    assert entries_after(settings, mark) == []

    cli("jobs", "cancel", submitted["id"])
    one_entry(cli, mark, "task.cancel", f"task:{submitted['id']}", status="cancelled")
    mark = last_id(settings)
    cli("jobs", "retry", submitted["id"])
    one_entry(cli, mark, "task.retry", f"task:{submitted['id']}", status="queued")

    # The API appends to the same chain: erin (made above) logs in between command-line entries.
    api = TestClient(create_app(settings), client=("10.1.2.3", 5000))
    assert api.post("/login", data={"username": "erin", "password": PASSWORD}).status_code == 200
    cli("jobs", "cancel", submitted["id"])
    actions = [(entry[2], entry[5]) for entry in entries_after(settings, mark)]
    assert actions == [("task.retry", "local"), ("login", "10.1.2.3"), ("task.cancel", "local")]

    verified = cli("audit", "verify")
    assert verified.stdout.startswith(f"audit log intact: {last_id(settings)} entries")


def register_version(settings, name: str) -> int:
    """A model version registered as training registers one, from a real (short) MLflow run."""
    from finetune_platform.tracking.client import mlflow_client
    from finetune_platform.tracking.mlflow_runs import MlflowRunTracker
    from finetune_platform.tracking.model_cards import ModelCard
    from finetune_platform.tracking.registry import ModelRegistry

    tracker = MlflowRunTracker(settings, "cli-audit")
    run_id = tracker.start(f"{name}-run", {})
    tracker.end("FINISHED")
    assert mlflow_client(settings).get_run(run_id).info.status == "FINISHED"
    card = ModelCard(
        name=name, version=0, base_model="minilm", language="English", task="text-classification",
        description="audit test", metrics={"accuracy": 0.9}, tags=[], dataset_version=None, run_id=run_id,
        run_folder=None, stage="None", created_at="", adapter_checksum="0" * 64, labels=["0", "1"],
    )  # fmt: skip
    info = ModelRegistry(settings).register(
        name=name, run_id=run_id, artifact_uri=f"runs:/{run_id}/artifacts", card=card
    )
    return info.version


def test_set_password_resets_a_forgotten_password_signs_the_account_out_and_is_audited(cli):
    """What `finetune up` tells a person who lost the admin password it showed once."""
    from fastapi.testclient import TestClient

    from finetune_platform.api.app import create_app

    settings, new = cli.settings, "a brand new passphrase"
    created = cli("users", "create", "root", "--role", "admin", "--password-stdin", input=f"{PASSWORD}\n")
    root = int(created.stdout.strip().rsplit("id ", 1)[1].rstrip(")"))
    api = TestClient(create_app(settings))
    token = api.post("/login", data={"username": "root", "password": PASSWORD}).json()["access_token"]
    signed_in = {"Authorization": f"Bearer {token}"}
    assert api.get("/users/me", headers=signed_in).status_code == 200

    mark = last_id(settings)
    changed = cli("users", "set-password", "root", "--password-stdin", input=f"{new}\n")
    assert changed.stdout == "new password set for root; its sessions are signed out\n"
    one_entry(cli, mark, "user.update", f"user:{root}", fields=["password"])
    assert api.get("/users/me", headers=signed_in).status_code == 401  # the old token stopped working
    assert api.post("/login", data={"username": "root", "password": PASSWORD}).status_code == 401
    assert api.post("/login", data={"username": "root", "password": new}).status_code == 200

    mark = last_id(settings)
    local = cli("users", "set-password", "local", "--password-stdin", input=f"{new}\n", code=2)
    assert local.output == "error: 'local' is the command line's own account: it has no password to set\n"
    ghost = cli("users", "set-password", "ghost", "--password-stdin", input=f"{new}\n", code=1)
    assert ghost.output == "error: no user 'ghost'\n"
    weak = cli("users", "set-password", "root", "--password-stdin", input="short\n", code=2)
    assert weak.output.startswith("error: password: at least ")
    assert entries_after(settings, mark) == []  # refused changes leave no entry


def test_model_transitions_and_prediction_jobs_from_the_cli_are_audited(cli, tmp_path):
    settings = cli.settings
    name = f"cli-audit-{secrets.token_hex(3)}"
    first, second = register_version(settings, name), register_version(settings, name)

    mark = last_id(settings)
    cli("models", "transition", name, str(first), "production")
    one_entry(cli, mark, "model.transition", f"model:{name}@{first}", stage="Production", archived=[])
    mark = last_id(settings)
    moved = cli("models", "transition", name, str(second), "Production")
    assert moved.stdout.splitlines() == [
        f"{name} version {second} -> Production",
        f"{name} version {first} -> Archived (was Production)",
    ]
    one_entry(cli, mark, "model.transition", f"model:{name}@{second}", stage="Production", archived=[first])

    texts = write_csv(tmp_path / "texts.csv", sentiment_rows(4, seed=3))
    mark = last_id(settings)
    queued = json.loads(
        cli("jobs", "predict", "--model", f"{name}@production", "--input", str(texts), "--json").stdout
    )
    one_entry(cli, mark, "predict.submit", f"task:{queued['id']}", input=str(texts), model=f"{name}@{second}")

    # A refused change writes nothing: an unknown stage, an unknown version.
    mark = last_id(settings)
    cli("models", "transition", name, str(first), "Live", code=2)
    cli("models", "transition", name, "99", "Staging", code=1)
    assert entries_after(settings, mark) == []


def test_verify_covers_cli_entries_and_names_one_edited_afterwards(cli):
    from finetune_platform.db.session import engine_for

    settings = cli.settings
    cli("users", "create", "fay", "--role", "admin", "--password-stdin", input=f"{PASSWORD}\n")
    cli("users", "set-quota", "fay", "--running", "2")
    assert cli("audit", "verify").stdout.startswith("audit log intact: 2 entries")
    (created, updated) = entries_after(settings, 0)
    assert (created[2], updated[2]) == ("user.create", "user.update")
    forged = {**created[6], "actor": "cli:someone-else"}
    with engine_for(settings.database_url).begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET detail = :detail WHERE id = :id"),
            {"detail": json.dumps(forged), "id": created[0]},
        )
    broken = cli("audit", "verify", code=1)
    assert broken.stdout.startswith("audit log NOT intact: 2 entries")
    assert (
        f"audit log broken at entry {created[0]}: altered (its content no longer matches its hash)"
        in broken.stderr
    )


def test_the_cli_actor_falls_back_to_the_uid_without_a_login_name(monkeypatch):
    import os

    from finetune_platform.cli.common import cli_actor

    assert cli_actor() == f"cli:{getpass.getuser()}"

    def no_login_name() -> str:
        raise OSError("No username set in the environment")

    monkeypatch.setattr(getpass, "getuser", no_login_name)
    assert cli_actor() == f"cli:uid-{os.getuid()}"
