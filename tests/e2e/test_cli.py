"""The real `finetune` executable: help, config commands, a full tiny training run, clear failures."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import ROOT, finetune_bin, sentiment_rows, tiny_config_dict, write_csv


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
    ["sweep"],
    ["sweep", "submit"],
    ["sweep", "list"],
    ["sweep", "show"],
    ["sweep", "cancel"],
    ["sweep", "best"],
    ["sweep", "schema"],
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
# under --extended (make test-all), to keep the default run under 20 minutes: the default run trains the same
# quickstart config on the bundled MiniLM and sample data, registers and predicts with it in
# tests/e2e/test_seed_readme.py (1 epoch); this 3-epoch run adds the accuracy floor
@pytest.mark.extended
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


def invalid_data_config(tmp_path, tiny_bert, experiment: str):
    """A config whose training file has an empty text on row 2 (and a validation file with other labels)."""
    train = write_csv(tmp_path / "data" / "train.csv", [("good text", 1), ("", 0), ("more", 0), ("x", 1)])
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(8, seed=2, labels=("a", "b")))
    raw = tiny_config_dict(tiny_bert, train, validation, tmp_path / "r")
    raw["experiment"] = experiment
    config_file = tmp_path / "invalid.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return config_file


def test_invalid_data_is_refused_before_a_run_folder_with_the_report_once(
    tmp_path, cli_env, settings, tiny_bert
):
    from mlflow import MlflowClient

    experiment = f"invalid-data-{tmp_path.name}"
    outcome = finetune("train", str(invalid_data_config(tmp_path, tiny_bert, experiment)), env=cli_env)
    assert outcome.returncode == 1
    assert outcome.stdout == ""
    lines = outcome.stderr.splitlines()
    assert lines[0] == "error: invalid dataset: column 'text' is empty or whitespace in 1 row(s): rows 2"
    assert lines[-1] == "result: INVALID (2 errors, 2 warnings)"
    # The report, once: every line of it appears a single time.
    assert sum(line.startswith("result: ") for line in lines) == 1
    assert sum("empty_text: column 'text' is empty" in line for line in lines) == 1
    assert (
        sum("unknown_label: 8 validation row(s) have labels never seen in training" in line for line in lines)
        == 1
    )
    assert not any(line.startswith("run ") for line in lines)  # no run was started, so none failed
    assert not (tmp_path / "r").exists(), "invalid data must leave no run folder"
    assert MlflowClient(tracking_uri=settings.mlflow_tracking_uri).get_experiment_by_name(experiment) is None


def test_invalid_data_is_refused_without_loading_a_model_library(tmp_path, cli_env, tiny_bert):
    """The check needs pandas and the data, not torch or transformers (whose import costs seconds)."""
    config_file = invalid_data_config(tmp_path, tiny_bert, "invalid-data")
    code = (
        "import sys\n"
        "from finetune_platform.cli import app\n"
        f"sys.argv = ['finetune', 'train', {str(config_file)!r}]\n"
        "try:\n"
        "    app()\n"
        "finally:\n"
        "    print(sorted(name for name in ('torch', 'transformers', 'peft') if name in sys.modules))\n"
    )
    outcome = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=cli_env, cwd=ROOT, timeout=120
    )
    assert outcome.returncode == 1
    assert outcome.stderr.startswith("error: invalid dataset: column 'text' is empty or whitespace")
    assert outcome.stdout.strip() == "[]"


@pytest.mark.slow
def test_ctrl_c_says_what_was_saved_and_the_printed_command_finishes_the_run(
    tmp_path, cli_env, sentiment_data
):
    """SIGINT after the first checkpoint: the message names the step and the checkpoint kept, and the command it
    prints (with the --set output_dir that finds the run) resumes from that checkpoint to the end."""
    train_file, validation_file = sentiment_data
    # The bundled MiniLM: slow enough per step that the run is still training when the signal arrives.
    raw = tiny_config_dict(
        "minilm", train_file, validation_file, tmp_path / "elsewhere", max_steps=16, eval_steps=4
    )
    raw["registry"] = {"enabled": False}  # registering is not what this test is about
    config_file = tmp_path / "minilm.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    output_dir = tmp_path / "runs"
    command = [
        finetune_bin(),
        "train",
        str(config_file),
        "--set",
        f"output_dir={output_dir}",
        "--no-progress",
    ]
    process = subprocess.Popen(
        command, env=cli_env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not list(output_dir.glob("tiny/*/artifacts/checkpoints/checkpoint-*/COMPLETE")):
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stdout == ""

    (folder,) = (output_dir / "tiny").iterdir()
    from finetune_platform.training.checkpoints import newest_checkpoint

    saved = newest_checkpoint(folder / "artifacts" / "checkpoints")
    interrupted, next_step = stderr.strip().splitlines()[-2:]
    stopped = re.fullmatch(rf"interrupted: run {folder.name} stopped at step (\d+) of 16; (.+)", interrupted)
    assert stopped, stderr
    assert stopped.group(2) == f"{saved.path.name} (step {saved.step}) is saved"
    assert saved.step <= int(stopped.group(1)) < 16
    printed = f"finetune train {config_file} --set output_dir={output_dir} --resume --run-id {folder.name}"
    assert next_step == f"continue it with: {printed}"
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "cancelled" and state["error"] == interrupted.split(f"run {folder.name} ")[1]

    resumed = subprocess.run(
        [finetune_bin(), *shlex.split(printed)[1:]],
        env=cli_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "--set is ignored" not in resumed.stderr  # --set output_dir finds the run: it applies
    assert f"run {folder.name} succeeded" in resumed.stdout
    assert f"resuming from {saved.path.name}" in (folder / "logs.txt").read_text()
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "succeeded" and state["attempts"] == 2
    assert json.loads((folder / "metrics.json").read_text())["train"]["global_step"] == 16
