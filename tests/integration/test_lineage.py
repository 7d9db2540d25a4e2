"""One dataset-lineage store, the app database, on SQLite and PostgreSQL: what `finetune data version`, a
training run, an upload and a job record, what `finetune data versions` and the API list, the one-time import
of an earlier release's versions.jsonl, and migration 0007's backfill."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text
from typer.testing import CliRunner

from finetune_platform.cli import app as cli
from finetune_platform.data.versioning import DatasetVersion, VersionIndex
from finetune_platform.db import session as db
from finetune_platform.db.models import DatasetVersionRecord
from finetune_platform.settings import Settings, get_settings
from tests.conftest import ROOT, sentiment_rows, tiny_config_dict, write_csv

SAMPLE = ROOT / "data" / "sample" / "train.csv"


@pytest.fixture
def lineage_settings(db_settings, tmp_path) -> Settings:
    """The backend under test without MLflow (lineage needs none of it)."""
    return Settings(
        FINETUNE_HOME=db_settings.FINETUNE_HOME,
        DATABASE_URL=db_settings.DATABASE_URL,
        MODEL_REGISTRY_DIR=tmp_path / "cards",
        RESULTS_DIR=tmp_path / "results",
        MLFLOW_ENABLED=False,
    )


@pytest.fixture
def cli_settings(lineage_settings, monkeypatch):
    """The `finetune` command line pointed at the same database."""
    monkeypatch.setenv("FINETUNE_HOME", str(lineage_settings.FINETUNE_HOME))
    monkeypatch.setenv("MLFLOW_ENABLED", "false")
    if lineage_settings.DATABASE_URL:
        monkeypatch.setenv("DATABASE_URL", lineage_settings.DATABASE_URL)
    get_settings.cache_clear()
    yield lineage_settings
    get_settings.cache_clear()


def rows_of(settings: Settings) -> list[DatasetVersionRecord]:
    with db.session_scope(settings) as session:
        return session.scalars(select(DatasetVersionRecord).order_by(DatasetVersionRecord.id)).all()


def listed(runner: CliRunner) -> list[dict]:
    result = runner.invoke(cli, ["data", "versions", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.slow
def test_cli_run_upload_and_job_each_record_one_row(cli_settings, tiny_bert, sentiment_data, tmp_path):
    from finetune_platform.api.app import create_app
    from finetune_platform.services.users import create_user, token_subject
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    settings, runner = cli_settings, CliRunner()
    mine = write_csv(tmp_path / "mine.csv", sentiment_rows(40, seed=3))

    # finetune data version: one row, source cli; again: still one
    recorded = runner.invoke(cli, ["data", "version", str(mine)])
    assert recorded.exit_code == 0 and " recorded: " in recorded.output, recorded.output
    assert " already recorded: " in runner.invoke(cli, ["data", "version", str(mine)]).output
    version = recorded.output.split()[0]
    assert [(r.version, r.source, r.file, r.dataset_id) for r in rows_of(settings)] == [
        (version, "cli", str(mine.resolve()), None)
    ]

    # a training run: its train and validation files, source train
    train_file, validation_file = sentiment_data
    raw = tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r", max_steps=2)
    result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    dataset = result.metrics["dataset"]
    assert [(r.version, r.source, r.file) for r in rows_of(settings)[1:]] == [
        (dataset["train_version"], "train", str(train_file.resolve())),
        (dataset["validation_version"], "train", str(validation_file.resolve())),
    ]

    # an upload through the API: source upload, with its dataset; a job on it adds nothing
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        bob = create_user(session, "bob", "long enough")
        subjects = {user.username: token_subject(session, user.id) for user in (alice, bob)}
    api = create_app(settings)

    def client(who: str) -> TestClient:
        issued = TestClient(api)
        issued.headers["Authorization"] = f"Bearer {api.state.tokens.issue(subjects[who])[0]}"
        return issued

    uploaded = client("alice").post("/datasets?name=train.csv", content=SAMPLE.read_bytes())
    assert uploaded.status_code == 201, uploaded.text
    upload = uploaded.json()
    (row,) = rows_of(settings)[3:]
    assert (row.version, row.source, row.dataset_id, row.owner_id) == (
        upload["version"],
        "upload",
        upload["id"],
        alice.id,
    )
    task = client("alice").post(
        "/train", json={"config": {"experiment": "lineage"}, "dataset_id": upload["id"]}
    )
    assert task.status_code == 201, task.text
    assert len(rows_of(settings)) == 4  # the job trains on the uploaded file: the same (content, file)

    versions = client("alice").get(f"/datasets/{upload['id']}/versions")
    assert versions.status_code == 200, versions.text
    body = versions.json()
    assert body["count"] == 1 and [(v["version"], v["source"], v["rows"]) for v in body["data"]] == [
        (upload["version"], "upload", upload["rows"])
    ]
    assert "file" not in body["data"][0]  # the server path stays private
    hidden = client("bob").get(f"/datasets/{upload['id']}/versions")
    assert (hidden.status_code, hidden.json()["detail"]) == (404, f"no dataset {upload['id']!r}")

    # finetune data versions lists every one, oldest first
    assert [(v["version"], v["source"], v["dataset_id"]) for v in listed(runner)] == [
        (version, "cli", None),
        (dataset["train_version"], "train", None),
        (dataset["validation_version"], "train", None),
        (upload["version"], "upload", upload["id"]),
    ]
    table = runner.invoke(cli, ["data", "versions"]).output
    assert f"{upload['version']} " in table and " upload " in table and " train " in table


def test_versions_jsonl_is_imported_once(cli_settings, tmp_path):
    settings, runner = cli_settings, CliRunner()
    mine = write_csv(tmp_path / "mine.csv", sentiment_rows(20, seed=4))
    recorded = runner.invoke(cli, ["data", "version", str(mine)])  # already in the database
    assert recorded.exit_code == 0, recorded.output
    (present,) = listed(runner)
    legacy = settings.FINETUNE_HOME / "datasets" / "versions.jsonl"
    legacy.parent.mkdir(parents=True, exist_ok=True)
    old = {
        "version": "0123456789ab",
        "content_hash": "0123456789ab" + "0" * 52,
        "file": "/data/old.csv",
        "format": "csv",
        "rows": 7,
        "label_counts": {"0": 3, "1": 4},
        "text_column": "text",
        "label_column": "label",
        "created_at": "2025-03-01T12:00:00+00:00",
        "source": "train",
    }
    legacy.write_text("\n".join(json.dumps(entry) for entry in (old, {**present, "rows": 999})) + "\n")

    index = VersionIndex(settings)
    assert [(v.version, v.rows, v.source, v.created_at) for v in index.all()] == [
        ("0123456789ab", 7, "train", "2025-03-01T12:00:00+00:00"),  # oldest first
        (present["version"], present["rows"], "cli", present["created_at"]),  # the database's row kept
    ]
    assert not legacy.exists() and legacy.with_name("versions.jsonl.imported").is_file()
    assert index.get("0123456789").file == "/data/old.csv"
    assert len(listed(runner)) == 2  # nothing imported twice
    legacy.with_name("versions.jsonl.imported").rename(legacy)  # put back: its rows are all there already
    assert len(VersionIndex(settings).all()) == 2 and not legacy.exists()


def test_concurrent_writers_of_one_version_leave_one_row(lineage_settings):
    import threading

    index = VersionIndex(lineage_settings)
    entry = DatasetVersion(
        "abcdef012345",
        "abcdef012345" + "1" * 52,
        "/d.csv",
        "csv",
        3,
        {},
        "text",
        "label",
        "2026-01-01T00:00:00+00:00",
    )
    added = []
    threads = [threading.Thread(target=lambda: added.append(index.record(entry)[1])) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == [False] * 5 + [True]
    assert [v.version for v in index.all()] == ["abcdef012345"]


def test_migration_0007_backfills_sources_and_uploads(db_settings):
    assert db.upgrade(db_settings, "0006") == "0006"
    engine = db.engine_for(db_settings.database_url)
    report = {"files": [{"content_hash": "f" * 64, "version": "f" * 12, "label_counts": {"a": 2}}]}
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO users (id, username, password_hash, role, is_active, token_version, token_key, "
                "created_at) VALUES (1, 'alice', 'x', 'user', true, 0, 'k', CURRENT_TIMESTAMP)"
            )
        )
        for dataset_id, path, content in (
            ("d1", "/up/d1.csv", report),
            ("d2", "/up/d2.csv", {"files": [{}]}),
        ):
            connection.execute(
                text(
                    "INSERT INTO datasets (id, owner_id, name, path, format, size_bytes, rows, valid, report, "
                    "created_at) VALUES (:id, 1, 'train.csv', :path, 'csv', 1, 2, true, :report, CURRENT_TIMESTAMP)"
                ),
                {"id": dataset_id, "path": path, "report": json.dumps(content)},
            )
        for content_hash, path in (("e" * 64, "/up/d2.csv"), ("c" * 64, "/elsewhere.csv")):
            connection.execute(
                text(
                    "INSERT INTO dataset_versions (version, content_hash, file, format, rows, label_counts, "
                    "text_column, label_column, owner_id, created_at) VALUES (:version, :hash, :path, 'csv', 2, "
                    "'{}', 'text', 'label', 1, CURRENT_TIMESTAMP)"
                ),
                {"version": content_hash[:12], "hash": content_hash, "path": path},
            )
    assert db.upgrade(db_settings) == db.head_revision()
    assert [(r.file, r.source, r.dataset_id, r.label_counts) for r in rows_of(db_settings)] == [
        ("/up/d2.csv", "api", "d2", {}),  # a job's row, of an upload
        ("/elsewhere.csv", "api", None, {}),
        ("/up/d1.csv", "upload", "d1", {"a": 2}),  # an upload had no row: it gets one
    ]
    assert db.downgrade(db_settings, "0006") == "0006"
    columns = {column["name"] for column in inspect(engine).get_columns("dataset_versions")}
    assert not columns & {"source", "dataset_id"} and len(rows_of_0006(db_settings)) == 3


def rows_of_0006(settings: Settings) -> list[tuple]:
    with db.engine_for(settings.database_url).connect() as connection:
        return connection.execute(text("SELECT file FROM dataset_versions")).all()


def test_find_refuses_what_is_no_hash_prefix(lineage_settings):
    from finetune_platform.errors import NotFoundError

    index = VersionIndex(lineage_settings)
    index.record(
        DatasetVersion(
            "abcdef012345",
            "abcdef012345" + "2" * 52,
            "/d.csv",
            "csv",
            3,
            {},
            "text",
            "label",
            "2026-01-01T00:00:00+00:00",
        )
    )
    for reference in ("abcd%_", "abcde_", "ABCDEF"):
        with pytest.raises(NotFoundError, match=f"no dataset version {reference!r} recorded"):
            index.get(reference)
    assert index.get("abcdef0").version == "abcdef012345"
    assert Path(index.get("abcdef0").file) == Path("/d.csv")
