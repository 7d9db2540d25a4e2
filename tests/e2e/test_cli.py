"""The real `finetune` executable: help, config commands, a full tiny training run, clear failures."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.conftest import ROOT, finetune_bin, tiny_config_dict


def finetune(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [finetune_bin(), *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


COMMANDS = [
    [],
    ["train"],
    ["config"],
    ["config", "validate"],
    ["config", "show"],
    ["config", "schema"],
    ["runs"],
    ["runs", "list"],
    ["runs", "logs"],
    ["version"],
    ["data"],
    ["data", "validate"],
    ["data", "analyze"],
    ["data", "version"],
    ["data", "versions"],
    ["data", "diff"],
    ["experiments"],
    ["experiments", "list"],
    ["experiments", "show"],
    ["experiments", "compare"],
    ["models"],
    ["models", "list"],
    ["models", "show"],
    ["models", "search"],
    ["models", "recommend"],
    ["models", "transition"],
    ["models", "card"],
    ["models", "reconcile"],
    ["db"],
    ["db", "upgrade"],
    ["db", "current"],
    ["users"],
    ["users", "create"],
    ["users", "list"],
    ["users", "set-quota"],
    ["users", "set-password"],
    ["jobs"],
    ["jobs", "submit"],
    ["jobs", "list"],
    ["jobs", "show"],
    ["jobs", "cancel"],
    ["jobs", "retry"],
    ["jobs", "logs"],
    ["jobs", "reconcile"],
    ["jobs", "predict"],
    ["worker"],
    ["api"],
    ["ui"],
    ["predict"],
    ["serve"],
    ["audit"],
    ["audit", "verify"],
    ["audit", "checkpoint"],
    ["security-check"],
    ["up"],
    ["status"],
    ["down"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "finetune")
def test_every_command_has_help(command):
    outcome = finetune(*command, "--help")
    assert outcome.returncode == 0
    assert "Usage: finetune" in outcome.stdout
    assert len(outcome.stdout.strip().splitlines()) > 3


def test_cli_start_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; import finetune_platform.cli; print('torch' in sys.modules, 'mlflow' in sys.modules)"
    outcome = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert outcome.stdout.strip() == "False False"


def test_config_validate_show_and_schema():
    assert finetune("config", "validate", "configs/quickstart.yaml").stdout.strip() == (
        "configs/quickstart.yaml: valid"
    )
    shown = yaml.safe_load(
        finetune("config", "show", "configs/quickstart.yaml", "--set", "training.epochs=1").stdout
    )
    assert shown["training"]["epochs"] == 1 and shown["lora"]["r"] == 8
    schema = json.loads(finetune("config", "schema").stdout)
    assert schema["title"] == "TrainConfig"


def test_invalid_config_exits_2_naming_the_field(tmp_path, cli_env):
    outcome = finetune(
        "train",
        "configs/quickstart.yaml",
        "--set",
        "training.learning_rate=-1",
        "--set",
        "output_dir=" + str(tmp_path),
        env=cli_env,
    )
    assert outcome.returncode == 2
    assert outcome.stderr.strip() == (
        "error: invalid training config:\n  training.learning_rate: Input should be greater than 0 (got -1)"
    )
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid config"


@pytest.mark.parametrize("command", [["models", "list"], ["serve", "--model", "any"]])
def test_a_bad_setting_exits_2_naming_the_variable(cli_env, command):
    """A bad value in the environment (or .env) is an error that names the variable, not a traceback."""
    outcome = finetune(*command, env={**cli_env, "SERVE_RUNTIME": "tensorrt"})
    assert outcome.returncode == 2
    assert outcome.stderr.strip() == (
        "error: invalid setting: SERVE_RUNTIME: Input should be 'onnx', 'onnx-int8' or 'torch' (got 'tensorrt')"
    )


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has CUDA")
def test_unavailable_device_fails_before_loading_a_model(tmp_path, cli_env):
    outcome = finetune(
        "train",
        "configs/quickstart.yaml",
        "--set",
        "device=cuda",
        "--set",
        f"output_dir={tmp_path}",
        env=cli_env,
    )
    assert outcome.returncode == 1
    assert "error: device: 'cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'" in (
        outcome.stderr
    )
    assert "model:" not in outcome.stderr  # the model line is logged only after loading


@pytest.mark.slow
def test_train_through_the_cli_writes_a_run_folder(tmp_path, cli_env, tiny_bert, sentiment_data):
    train_file, validation_file = sentiment_data
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(
        yaml.safe_dump(tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r"))
    )
    outcome = finetune("train", str(config_file), "--set", "training.epochs=2", env=cli_env)
    assert outcome.returncode == 0, outcome.stderr
    assert "succeeded in" in outcome.stdout and "accuracy" in outcome.stdout
    assert "training: 100%" in outcome.stderr  # the live progress bar
    (folder,) = (tmp_path / "r" / "tiny").iterdir()
    for name in (
        "config.yaml",
        "metrics.json",
        "logs.txt",
        "run.json",
        "artifacts/adapter_model.safetensors",
        "artifacts/adapter_config.json",
        "artifacts/label_map.json",
        "artifacts/tokenizer.json",
        "artifacts/checkpoints/retention.json",
    ):
        assert (folder / name).is_file(), name
    assert yaml.safe_load((folder / "config.yaml").read_text())["training"]["epochs"] == 2
    assert json.loads((folder / "metrics.json").read_text())["train"]["global_step"] == 24

    listed = finetune("runs", "list", "--output-dir", str(tmp_path / "r"), env=cli_env)
    assert folder.name in listed.stdout and "succeeded" in listed.stdout
    logs = finetune("runs", "logs", "--output-dir", str(tmp_path / "r"), "-n", "1", env=cli_env)
    assert "succeeded" in logs.stdout


@pytest.mark.slow
def test_quickstart_on_minilm_and_the_sample_data(tmp_path, cli_env):
    """The real bundled model on the bundled data: the path `make demo` takes, shortened to 3 epochs."""
    outcome = finetune(
        "train",
        "configs/quickstart.yaml",
        "--set",
        "training.epochs=3",
        "--set",
        f"output_dir={tmp_path}",
        "--no-progress",
        "--json",
        env=cli_env,
        timeout=600,
    )
    assert outcome.returncode == 0, outcome.stderr
    result = json.loads(outcome.stdout)
    assert result["eval"]["confusion_matrix"]["labels"] == ["negative", "positive"]
    assert result["eval"]["num_rows"] == 80
    assert result["eval"]["accuracy"] >= 0.75
