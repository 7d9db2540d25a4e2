"""Rough edges a new user meets on a fresh local install, through the real command line: account commands
migrate the database first (no `finetune db upgrade` needed, no traceback), an unavailable device fails before
a run folder exists, and `finetune experiments compare` never writes into the working directory."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.conftest import finetune_bin, free_port, tiny_config_dict

PASSWORD = "long enough"


@pytest.fixture
def fresh_env(tmp_path) -> dict[str, str]:
    """A platform home nobody has used: no database, no MLflow store."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL", "MLFLOW_TRACKING_URI"}
    }
    env.update(FINETUNE_HOME=str(tmp_path / "home"), MODEL_REGISTRY_DIR=str(tmp_path / "cards"))
    return env


def run_cli(*args: str, env: dict[str, str], cwd, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [finetune_bin(), *args], input=stdin, env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_users_list_and_create_on_a_fresh_install_migrate_first(fresh_env, tmp_path):
    cwd = tmp_path / "work"
    cwd.mkdir()
    listed = run_cli("users", "list", env=fresh_env, cwd=cwd)
    assert (listed.returncode, listed.stderr) == (0, ""), listed.stderr
    assert listed.stdout.strip() == "no accounts yet (finetune users create NAME --role admin)"
    created = run_cli(
        "users", "create", "alice", "--role", "admin", "--password-stdin", env=fresh_env, cwd=cwd, stdin=f"{PASSWORD}\n"
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created admin alice (id 1)"

    from finetune_platform.db.session import current_revision, head_revision, session_scope
    from finetune_platform.services.users import list_users
    from finetune_platform.settings import Settings

    settings = Settings(FINETUNE_HOME=tmp_path / "home")
    with session_scope(settings) as session:
        assert [(u.username, u.role) for u in list_users(session) if u.username != "local"] == [
            ("alice", "admin")
        ]
    assert current_revision(settings) == head_revision()
    assert " alice " in run_cli("users", "list", env=fresh_env, cwd=cwd).stdout
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("command", [["jobs", "list"], ["audit", "verify"], ["users", "list"]])
def test_database_commands_on_a_fresh_home_migrate_first(command, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, command)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert result.exception is None


def test_an_unreachable_database_is_an_error_not_a_traceback(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    url = f"postgresql+psycopg://postgres:pw@127.0.0.1:{free_port()}/nowhere"
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        for command in (["users", "list"], ["jobs", "list"]):
            result = CliRunner().invoke(app, command)
            assert result.exit_code == 2, result.output
            assert result.stderr.startswith(
                "error: cannot open the app database postgresql+psycopg://postgres:***@127.0.0.1:"
            ), result.output
            assert "Traceback" not in result.output and ":pw@" not in result.output
    finally:
        get_settings.cache_clear()


# -- devices ----------------------------------------------------------------------------------------
UNAVAILABLE = [
    pytest.param(
        ["device=cuda"],
        "error: device: 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'",
        marks=pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has CUDA"),
        id="cuda",
    ),
    pytest.param(
        ["device=mps"],
        "error: device: 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'",
        marks=pytest.mark.skipif(
            "__import__('torch').backends.mps.is_available()", reason="this machine has Apple MPS"
        ),
        id="mps",
    ),
    pytest.param(
        ["device=cpu", "precision=fp16"],
        "error: precision: 'fp16' is not supported on the CPU; use 'bf16' or 'fp32'",
        id="fp16-on-cpu",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), UNAVAILABLE)
def test_an_unavailable_device_fails_before_a_run_folder_exists(
    overrides, message, tmp_path, sentiment_data, monkeypatch
):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    train, validation = sentiment_data
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict("minilm", train, validation, tmp_path / "results")))
    monkeypatch.setenv("FINETUNE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    try:
        args = ["train", str(config), "--no-progress"] + [x for o in overrides for x in ("--set", o)]
        result = CliRunner().invoke(app, args)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert not (tmp_path / "results").exists(), "no run folder (nor experiment folder) may be left behind"


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has CUDA")
def test_a_worker_job_asking_for_an_unavailable_device_leaves_no_run_folder(tmp_path, sentiment_data):
    """A worker trains a job as run_training(config, run_id=<job id>): the same check, before the folder."""
    from finetune_platform.errors import DeviceError
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    train, validation = sentiment_data
    raw = tiny_config_dict("minilm", train, validation, tmp_path / "results")
    config = config_from_dict({**raw, "device": "cuda"})
    settings = Settings(FINETUNE_HOME=tmp_path / "home")
    with pytest.raises(DeviceError, match="device: 'cuda' was requested but no CUDA device is available"):
        run_training(config, run_id="job-1", settings=settings, show_progress=False)
    assert not (tmp_path / "results").exists()


# -- experiments compare ----------------------------------------------------------------------------
def logged_run(settings, experiment: str, run_folder=None) -> str:
    """A finished MLflow run with a train_loss curve, tagged with its run folder as training tags it."""
    from finetune_platform.tracking.mlflow_runs import MlflowRunTracker

    tracker = MlflowRunTracker(settings, experiment)
    tags = {"finetune.run_folder": str(run_folder)} if run_folder else {}
    run_id = tracker.start("run", tags)
    for step, loss in enumerate((0.9, 0.6, 0.4), start=1):
        tracker.log_metrics({"train_loss": loss}, step)
    tracker.end("FINISHED")
    return run_id


def test_compare_writes_its_plot_beside_the_run_folders_never_into_the_cwd(
    platform_home, tmp_path, monkeypatch
):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import Settings, get_settings

    settings = Settings(FINETUNE_HOME=platform_home)
    results = tmp_path / "results"
    first = logged_run(settings, "compare-cwd", results / "compare-cwd" / "run-a")
    second = logged_run(settings, "compare-cwd", results / "compare-cwd" / "run-b")
    untagged = [logged_run(settings, "compare-cwd-other"), logged_run(settings, "compare-cwd-other")]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("FINETUNE_HOME", str(platform_home))
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        compared = runner.invoke(app, ["experiments", "compare", first, second])
        expected = results / "comparisons" / f"{first[:8]}-{second[:8]}" / "compare_loss.png"
        assert compared.exit_code == 0, compared.output
        assert compared.stdout.strip().endswith(f"loss curves: {expected}")
        assert expected.read_bytes()[:4] == b"\x89PNG"

        chosen = tmp_path / "plots"
        chosen.mkdir()
        into_folder = runner.invoke(
            app, ["experiments", "compare", first, second, "--out", str(chosen), "--json"]
        )
        assert into_folder.exit_code == 0, into_folder.output
        assert into_folder.stdout and (chosen / "compare_loss.png").read_bytes()[:4] == b"\x89PNG"
        named = runner.invoke(
            app, ["experiments", "compare", first, second, "--plot", str(tmp_path / "x/l.png")]
        )
        assert named.exit_code == 0 and (tmp_path / "x" / "l.png").is_file(), named.output

        # Runs logged without a run folder: under FINETUNE_HOME, still not the working directory.
        elsewhere = runner.invoke(app, ["experiments", "compare", *untagged])
        home_plot = (
            platform_home.resolve() / "comparisons" / "-".join(u[:8] for u in untagged) / "compare_loss.png"
        )
        assert elsewhere.exit_code == 0 and home_plot.is_file(), elsewhere.output
    finally:
        get_settings.cache_clear()
    assert list(cwd.iterdir()) == []
