"""`finetune sweep …`: submit a sweep file, list and show it, run its trials (in-process, a tiny model), read the
best and promote it; cancel another; every change audited once; and `finetune train` on a sweep file says what to
run instead."""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from tests.conftest import sentiment_rows, tiny_config_dict, write_csv
from tests.e2e.test_cli import finetune


@pytest.fixture
def cli(platform_home, tmp_path, monkeypatch):
    """The real `finetune` app through CliRunner, with an app database and model cards of this test's own."""
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
    monkeypatch.delenv("REDIS_URL", raising=False)  # the filesystem queue: trials run in-process here
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result

    invoke.settings = Settings(**values)
    yield invoke
    get_settings.cache_clear()


def sweep_file(tmp_path: Path, model: Path, **sweep) -> Path:
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, seed=2))
    config = tiny_config_dict(model, train, validation, tmp_path / "results", epochs=1, eval_steps=6)
    config["experiment"] = "cli-sweep"
    config["registry"] = {"model_name": "cli-sweep-model"}
    config["sweep"] = {
        "objective": "loss",
        "sampler": "random",
        "pruner": "none",
        "max_trials": 2,
        "parallelism": 1,
        "space": {"training.learning_rate": {"type": "choice", "values": [1e-2, 1e-9]}},
        # both values, whatever the sampler draws: a fast learning rate, and one that learns nothing
        "start_with": [{"training.learning_rate": 1e-2}, {"training.learning_rate": 1e-9}],
        **sweep,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def audit_entries(settings, action: str) -> list[tuple[str, str, dict]]:
    from finetune_platform.db.models import AuditEvent
    from finetune_platform.db.session import session_scope

    with session_scope(settings) as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        return [(row.target, row.address, dict(row.detail)) for row in rows]


def run_queued(settings) -> list[str]:
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope
    from finetune_platform.worker.executor import execute_job

    outcomes = []
    while True:
        with session_scope(settings) as session:
            queued = session.scalars(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at)
            ).all()
        if not queued:
            return outcomes
        outcomes += [execute_job(settings, job_id) for job_id in queued]


@pytest.mark.slow
def test_submit_list_show_run_best_and_promote(cli, tmp_path, tiny_bert):
    path = sweep_file(tmp_path, tiny_bert)
    submitted = json.loads(cli("sweep", "submit", str(path), "--json").stdout)
    sweep_id = submitted["id"]
    assert (submitted["status"], submitted["max_trials"], submitted["trials"]["queued"]) == ("running", 2, 1)
    assert audit_entries(cli.settings, "sweep.submit") == [
        (
            f"sweep:{sweep_id}",
            "local",
            {
                "actor": f"cli:{getpass.getuser()}",
                "config": str(path),
                "dataset_version": submitted["dataset_version"],
                "trials": [submitted["trial_list"][0]["task_id"]],
            },
        )
    ]
    [line] = cli("sweep", "list").stdout.splitlines()
    assert line.startswith(f"{sweep_id}  cli-sweep  running  1/2 trials (1 queued)  no best yet")
    assert cli("sweep", "list", "--status", "succeeded").stdout.strip() == "no sweeps with status succeeded"
    shown = cli("sweep", "show", sweep_id).stdout
    first = submitted["trial_list"][0]
    assert f"training.learning_rate={first['params']['training.learning_rate']:.4g}" in shown
    assert first["task_id"] in shown and "queued" in shown
    refused = cli("sweep", "best", sweep_id, code=1)
    assert f"error: sweep {sweep_id} has no completed trial yet (1 started)" in refused.output

    assert run_queued(cli.settings) == ["succeeded", "succeeded"]
    detail = json.loads(cli("sweep", "show", sweep_id, "--json").stdout)
    assert detail["status"] == "succeeded" and detail["trials"]["succeeded"] == 2
    best = min(detail["trial_list"], key=lambda trial: trial["value"])
    table = cli("sweep", "show", sweep_id).stdout
    assert f"{best['number']} *" in table  # the best trial is marked
    assert "training.learning_rate=1e-09" in table and "training.learning_rate=0.01" in table

    promoted = cli(
        "sweep", "best", sweep_id, "--promote", "--name", "cli-winner", "--stage", "Staging"
    ).stdout
    assert promoted.splitlines() == [
        f"trial {best['number']} (task {best['task_id']}): value {best['value']:.4f} with {best['params']}",
        "registered cli-winner version 1 in Staging",
    ]
    from finetune_platform.tracking.registry import ModelRegistry

    assert ModelRegistry(cli.settings).resolve("cli-winner@staging").version == 1
    [(target, _, detail)] = audit_entries(cli.settings, "sweep.promote")
    assert (target, detail["model"], detail["stage"], detail["task"]) == (
        f"sweep:{sweep_id}",
        "cli-winner@1",
        "Staging",
        best["task_id"],
    )
    finished = cli("sweep", "cancel", sweep_id, code=1)
    assert f"sweep {sweep_id} is already succeeded: only running sweeps can be cancelled" in finished.output


def test_cancel_set_overrides_and_a_bad_space(cli, tmp_path, tiny_bert):
    path = sweep_file(tmp_path, tiny_bert)
    submitted = json.loads(
        cli(
            "sweep", "submit", str(path), "--set", "sweep.parallelism=2", "--max-attempts", "1", "--json"
        ).stdout
    )
    assert submitted["parallelism"] == 2 and submitted["trials"]["queued"] == 2
    assert cli("sweep", "cancel", submitted["id"]).stdout.strip() == (
        f"sweep {submitted['id']}: cancelled (2 trials cancelled)"
    )
    [(target, _, detail)] = audit_entries(cli.settings, "sweep.cancel")
    assert (target, detail["status"]) == (f"sweep:{submitted['id']}", "cancelled")
    assert json.loads(cli("sweep", "list", "--json").stdout)["data"][0]["status"] == "cancelled"

    bad = cli(
        "sweep",
        "submit",
        str(path),
        "--set",
        "sweep.space={lora.r: {type: choice, values: [0]}}",
        "--set",
        "sweep.start_with=[]",
        code=2,
    )
    assert (
        "error: sweep.space.lora.r: 0 is not a valid value: lora.r: Input should be greater than or equal to 1"
        in (bad.output)
    )
    assert json.loads(cli("sweep", "list", "--json").stdout)["count"] == 1  # nothing new


def test_train_on_a_sweep_file_points_to_sweep_submit(tmp_path, cli_env, tiny_bert):
    path = sweep_file(tmp_path, tiny_bert)
    outcome = finetune("train", str(path), env=cli_env)
    assert outcome.returncode == 2
    assert outcome.stderr.strip() == (
        f"error: {path} has a sweep: section: it is a sweep, not a training config; run it with "
        f"`finetune sweep submit {path}` (or remove the sweep: section to train once)"
    )
    assert not (tmp_path / "results").exists()


def test_sweep_schema_prints_the_spec_schema():
    outcome = finetune("sweep", "schema")
    assert outcome.returncode == 0
    schema = json.loads(outcome.stdout)
    assert schema["title"] == "SweepSpec"
    assert {"objective", "space", "sampler", "pruner", "max_trials", "parallelism"} <= set(
        schema["properties"]
    )
