"""A run killed with SIGKILL after a checkpoint resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from finetune_platform.training.checkpoints import STAGING_DIR
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import finetune_bin, tiny_config_dict

pytestmark = pytest.mark.slow

# Runs the real CLI in a child process that SIGKILLs itself right after checkpoint-<step> is complete.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from finetune_platform.training.driver import Driver

    kill_at = int(sys.argv[1])
    original = Driver.save

    def save_then_die(self, loop):
        saved = original(self, loop)
        if self.state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return saved

    Driver.save = save_then_die
    from finetune_platform.cli import app
    sys.argv = ["finetune", *sys.argv[2:]]
    app()
""")


def test_resume_after_sigkill_matches_uninterrupted_run(
    settings, cli_env, tiny_bert, sentiment_data, tmp_path
):
    train_file, validation_file = sentiment_data
    raw = tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "straight", eval_steps=12)
    # Hidden-layer dropout stays on, so equality also needs the RNG state restored from the checkpoint.
    straight = run_training(config_from_dict(raw), settings=settings, show_progress=False)

    raw["output_dir"] = str(tmp_path / "killed")
    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, "36", "train", str(config_file), "--no-progress"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    (folder,) = (tmp_path / "killed" / "tiny").iterdir()
    checkpoints = folder / "artifacts" / "checkpoints"
    assert json.loads((folder / "run.json").read_text())["status"] == "running"
    assert (checkpoints / "checkpoint-36" / "COMPLETE").is_file()
    assert not (folder / "metrics.json").exists()
    # A save that was cut off half-way must be ignored and cleaned up, never resumed from.
    (checkpoints / STAGING_DIR / "checkpoint-48").mkdir(parents=True)
    (checkpoints / "checkpoint-60").mkdir()
    (checkpoints / "checkpoint-60" / "adapter_model.safetensors").write_bytes(b"truncated")

    resumed = subprocess.run(
        [finetune_bin(), "train", str(config_file), "--resume", "--no-progress", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["run_id"] == folder.name
    logs = (folder / "logs.txt").read_text()
    assert "resuming from checkpoint-36" in logs
    assert "removed incomplete checkpoints left by an interrupted save: checkpoint-60" in logs
    assert not (checkpoints / STAGING_DIR).exists()
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "succeeded" and state["attempts"] == 2

    assert result["train"]["global_step"] == straight.metrics["train"]["global_step"] == 96
    assert result["eval"]["accuracy"] == pytest.approx(straight.metrics["eval"]["accuracy"])
    assert result["eval"]["loss"] == pytest.approx(straight.metrics["eval"]["loss"], abs=1e-4)
    assert result["final_checkpoint"] == straight.metrics["final_checkpoint"]
    ours = load_file(folder / "artifacts" / "adapter_model.safetensors")
    theirs = load_file(straight.run.artifacts_dir / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-3)
    # Both attempts belong to one MLflow run.
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    assert client.get_run(result["mlflow_run_id"]).info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(result["mlflow_run_id"], "train_loss")]
    assert steps[-1] == 96 and 36 in steps


def test_resume_without_an_unfinished_run_is_a_clear_error(cli_env, tiny_bert, sentiment_data, tmp_path):
    train_file, validation_file = sentiment_data
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        yaml.safe_dump(tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r"))
    )
    outcome = subprocess.run(
        [finetune_bin(), "train", str(config_file), "--resume"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert outcome.returncode == 1
    assert (
        f"error: nothing to resume: no unfinished run of experiment 'tiny' in {tmp_path / 'r' / 'tiny'}"
        in (outcome.stderr)
    )
