"""`finetune data audit` (files written, summary, exit codes) and the training config's data.audit gate (warn
trains and records the estimated noise; block refuses before a run folder exists), with the real MiniLM
embedder on tiny files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app as cli
from finetune_platform.data.audit import read_audit
from finetune_platform.errors import DatasetError
from finetune_platform.settings import Settings, get_settings
from finetune_platform.training.config import config_from_dict, load_config
from finetune_platform.training.data_check import audit_folder, check_audit
from finetune_platform.training.runner import run_training
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow

FLIPPED = (3, 10, 21, 40, 55, 70)  # 0-based indexes of the rows whose labels the tests flip


def flipped_rows(count: int = 80, seed: int = 3) -> list[tuple[str, object]]:
    """Sentiment rows, each text made unique (a flipped copy of a text would be a conflicting duplicate, which
    validation refuses), with the labels of FLIPPED flipped."""
    rows = [
        (f"{text} (review {i})", label) for i, (text, label) in enumerate(sentiment_rows(count, seed=seed))
    ]
    for i in FLIPPED:
        text, label = rows[i]
        rows[i] = (text, 1 - label)
    return rows


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_ENABLED", "false")
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def test_audit_writes_its_files_and_prints_the_summary(home, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    validation = write_csv(tmp_path / "validation.csv", [*sentiment_rows(20, seed=9), flipped_rows()[7]])
    result = CliRunner().invoke(
        cli, ["data", "audit", str(train), "--validation-file", str(validation), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "audit-train"  # the default: ./audit-<FILE's stem>
    assert sorted(p.name for p in out.iterdir()) == [
        "audit.json",
        "audit.md",
        "class_overlap.png",
        "label_quality.png",
        "outliers.png",
    ]
    document = read_audit(out / "audit.json")
    assert set(document["files"]) == {"train", "validation"}
    noise = document["summary"]["estimated_label_noise"]
    assert (
        f"likely label errors: {document['summary']['label_errors']} (estimated label noise {noise:.1%})"
        in (result.output)
    )
    assert "top label errors:" in result.output
    listed = [item for item in document["label_errors"]["rows"] if item.get("flagged", True)][:10]
    assert listed
    for item in listed:
        assert f"  {item['file']:<10} {item['row']:>7}  " in result.output
    # The flipped rows rank first: every flagged label error of train is a flipped row.
    assert {item["row"] for item in listed if item["file"] == "train"} <= {i + 1 for i in FLIPPED}
    assert document["summary"]["cross_split_groups"] >= 1
    assert "(leak)" in result.output or "(leak, labels differ)" in result.output


def test_audit_json_goes_to_stdout_and_options_reach_the_engine(home, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    result = CliRunner().invoke(
        cli,
        ["data", "audit", str(train), "--out", str(tmp_path / "a"), "--json", "--folds", "3",
         "--near-duplicate-cosine", "0.99", "--outlier-z", "4"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == json.loads((tmp_path / "a" / "audit.json").read_text())
    assert (document["options"]["folds"], document["options"]["near_duplicate_cosine"]) == (3, 0.99)
    assert document["options"]["outlier_z"] == 4.0


def test_audit_takes_columns_and_task_from_a_config(home, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows(), header=("review", "stars"))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model: {{base_model: minilm}}\ndata: {{train_file: {train}, text_column: review, label_column: stars}}\n"
    )
    result = CliRunner().invoke(cli, ["data", "audit", "--config", str(config), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert read_audit(tmp_path / "audit-train" / "audit.json")["files"]["train"]["rows_audited"] == 80


def test_audit_refuses_bad_input_like_data_validate(home, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows(), header=("review", "label"))
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "audit", str(train), "--no-progress"])
    assert result.exit_code == 1  # as data validate: the data is not usable
    assert "error: invalid dataset:" in result.output and "'text'" in result.output
    assert not (tmp_path / "audit-train").exists()
    result = runner.invoke(cli, ["data", "audit", str(train), "--text-column", "review", "--folds", "1"])
    assert result.exit_code == 2  # a bad option
    assert "error: audit option folds: 1 is not an integer from 2 to 20" in result.output
    result = runner.invoke(cli, ["data", "audit", str(train), "--text-column", "review", "--task", "ranking"])
    assert result.exit_code == 2
    assert "error: --task 'ranking' is not one of" in result.output
    result = runner.invoke(cli, ["data", "audit", str(train), "--text-column", "review", "--from-run", "r1"])
    assert result.exit_code == 2
    assert "error: --from-run r1: not a run folder (give results/<experiment>/<run>)" in result.output
    result = runner.invoke(
        cli, ["data", "audit", str(train), "--text-column", "review", "--from-run", str(tmp_path)]
    )
    assert result.exit_code == 1  # a folder that is no run: the data cannot be audited that way
    assert f"error: run {tmp_path} kept no held-out predictions (eval_predictions.npz" in result.output


def test_an_audit_past_audit_max_rows_is_refused_before_anything_is_embedded(home, tmp_path, monkeypatch):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    validation = write_csv(tmp_path / "validation.csv", sentiment_rows(12, seed=9))
    monkeypatch.setenv("AUDIT_MAX_ROWS", "91")  # 80 + 12 rows: one too many
    get_settings.cache_clear()
    result = CliRunner().invoke(
        cli, ["data", "audit", str(train), "--validation-file", str(validation), "--no-progress"]
    )
    assert result.exit_code == 1, result.output
    assert (
        f"error: {train} and {validation}: 92 rows to audit, more than the 91 one audit takes "
        "(AUDIT_MAX_ROWS): audit a sample of the rows, or raise AUDIT_MAX_ROWS where the machine has the memory "
        "and time (about 32 KB and 7 ms a row on 2 CPU cores)"
    ) in " ".join(result.output.split())
    assert not (tmp_path / "audit-train").exists()
    monkeypatch.setenv("AUDIT_MAX_ROWS", "92")
    get_settings.cache_clear()
    result = CliRunner().invoke(
        cli, ["data", "audit", str(train), "--validation-file", str(validation), "--no-progress", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["options"]["max_rows"] == 92


# -- data.audit in a training config ------------------------------------------------------------------------------
@pytest.fixture
def quiet_settings(tmp_path) -> Settings:
    return Settings(
        FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards", MLFLOW_ENABLED=False
    )


def test_yaml_off_is_off_and_the_default(tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    config = tmp_path / "config.yaml"
    config.write_text(f"model: {{base_model: minilm}}\ndata: {{train_file: {train}, audit: off}}\n")
    loaded = load_config(config, [])
    assert (loaded.data.audit, loaded.data.max_label_noise) == ("off", 0.1)


def test_block_refuses_noisy_data_before_a_run_folder(quiet_settings, tiny_bert, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    raw = tiny_config_dict(tiny_bert, train, None, tmp_path / "results")
    raw["data"].update(audit="block", max_label_noise=0.01)
    config = config_from_dict(raw)
    with pytest.raises(DatasetError) as caught:
        run_training(config, settings=quiet_settings, show_progress=False, check_data_first=True)
    path = audit_folder(config, quiet_settings) / "audit.json"
    noise = read_audit(path)["summary"]["estimated_label_noise"]
    assert noise > 0.01
    assert caught.value.message == (
        f"data.audit: block: estimated label noise {noise:.1%} is above data.max_label_noise 1.0% (audit: {path}); "
        "fix the data with finetune data fix or raise data.max_label_noise"
    )
    assert not (tmp_path / "results").exists()
    assert path.parent.parent == quiet_settings.FINETUNE_HOME / "audits"


def test_warn_trains_records_the_noise_and_the_next_run_reuses_the_audit(
    quiet_settings, tiny_bert, tmp_path, caplog
):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    validation = write_csv(tmp_path / "validation.csv", sentiment_rows(24, seed=5))
    raw = tiny_config_dict(tiny_bert, train, validation, tmp_path / "results", epochs=1)
    raw["data"].update(audit="warn", max_label_noise=0.0)
    config = config_from_dict(raw)
    result = run_training(config, settings=quiet_settings, show_progress=False)
    folder = audit_folder(config, quiet_settings)
    assert "-" in folder.name  # training and validation content
    document = read_audit(folder / "audit.json")
    metrics = json.loads(result.run.metrics_path.read_text())
    assert metrics["data_audit"]["mode"] == "warn"
    assert metrics["data_audit"]["estimated_label_noise"] == document["summary"]["estimated_label_noise"] > 0
    assert metrics["data_audit"]["audit"] == str(folder / "audit.json")
    assert "data audit (warn): estimated label noise" in (result.run.logs_path.read_text())
    written = (folder / "audit.json").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="finetune_platform.training"):
        again = check_audit(config, quiet_settings)
    assert (folder / "audit.json").stat().st_mtime_ns == written
    assert f"data audit: reusing {folder / 'audit.json'}" in caplog.text
    assert again["estimated_label_noise"] == metrics["data_audit"]["estimated_label_noise"]


def test_fix_after_a_real_audit_removes_the_flagged_rows(home, tmp_path):
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    runner = CliRunner()
    assert runner.invoke(cli, ["data", "audit", str(train), "--no-progress"]).exit_code == 0
    document = read_audit(tmp_path / "audit-train" / "audit.json")
    flagged = {item["row"] for item in document["label_errors"]["rows"] if item["score"] >= 0.5}
    assert flagged
    result = runner.invoke(
        cli, ["data", "fix", str(train), "--audit", "audit-train/audit.json", "--drop", "label_errors:0.5"]
    )
    assert result.exit_code == 0, result.output
    kept = (tmp_path / "train-fixed.csv").read_text().splitlines()
    original = train.read_text().splitlines()
    assert kept == [line for number, line in enumerate(original) if number not in flagged]


def test_a_queued_job_goes_through_the_same_gate_in_the_worker(tiny_bert, tmp_path):
    from finetune_platform.db import session as db
    from finetune_platform.db.models import Job
    from finetune_platform.services import jobs
    from finetune_platform.services.users import local_user
    from finetune_platform.worker.executor import execute_job

    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False, JOB_LEASE_SECONDS=30)
    db.upgrade(settings)
    train = write_csv(tmp_path / "train.csv", flipped_rows())
    raw = tiny_config_dict(tiny_bert, train, None, tmp_path / "results")
    raw["data"].update(audit="block", max_label_noise=0.01)
    with db.session_scope(settings) as session:  # submission validates the data; the audit runs in the worker
        job_id = jobs.submit_job(session, local_user(session), raw).job.id
    assert not (settings.FINETUNE_HOME / "audits").exists()
    assert execute_job(settings, job_id) == "failed"
    path = audit_folder(config_from_dict(raw), settings) / "audit.json"
    noise = read_audit(path)["summary"]["estimated_label_noise"]
    with db.session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts) == ("failed", 1)
        assert job.error == (
            f"data.audit: block: estimated label noise {noise:.1%} is above data.max_label_noise 1.0% "
            f"(audit: {path}); fix the data with finetune data fix or raise data.max_label_noise"
        )
