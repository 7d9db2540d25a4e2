"""`make serve exp=NAME` / `finetune serve --experiment NAME`: the newest successful run of the experiment is
served (its registered version, else its run folder); an experiment without one is refused, by name.

Runs that failed, are still running or finished long ago are written into the real tracking store with
MlflowClient (as a crashed or older training run leaves them); the runs that are served are real trainings."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from finetune_platform.inference.predictor import Predictor
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import ROOT, UNGATED, finetune_bin, free_port, sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow
TEXTS = ["great film", "awful book", "wonderful concert tonight"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert):
    """sentiment-exp: a registered run, then a newer failed one; folder-exp: an older finished run that left
    nothing to serve, then an unregistered run; failed-exp: a failed and a running run; gone-exp: a finished run
    whose folder is not on this machine."""
    from finetune_platform.tracking.client import mlflow_client

    root = tmp_path_factory.mktemp("serve-experiment")
    settings = Settings(
        FINETUNE_HOME=root / "home",
        MODEL_REGISTRY_DIR=root / "cards",
        SERVE_DEVICE="cpu",
        METRICS_ENABLED=False,
    )
    train = write_csv(root / "train.csv", sentiment_rows(64, 1))
    valid = write_csv(root / "validation.csv", sentiment_rows(16, 2))
    client = mlflow_client(settings)

    def recorded_run(experiment: str, status: str, start_time: int | None = None) -> None:
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found else client.create_experiment(experiment)
        run = client.create_run(experiment_id, start_time=start_time, run_name=f"{status.lower()}-run")
        if status != "RUNNING":
            client.set_terminated(run.info.run_id, status=status)

    def trained(experiment: str, registry: dict) -> object:
        raw = tiny_config_dict(tiny_bert, train, valid, root / "results", max_steps=8, eval_steps=4)
        raw["experiment"], raw["registry"] = experiment, registry
        return run_training(config_from_dict(raw), settings=settings, show_progress=False)

    trained("sentiment-exp", {"model_name": "exp-served", **UNGATED})  # 8 steps: serving is under test
    recorded_run("sentiment-exp", "FAILED")
    recorded_run("folder-exp", "FINISHED", start_time=int(time.time() * 1000) - 86_400_000)
    folder_run = trained("folder-exp", {"enabled": False})
    recorded_run("failed-exp", "FAILED")
    recorded_run("failed-exp", "RUNNING")
    recorded_run("gone-exp", "FINISHED")
    return settings, folder_run.run.root


def cli_environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "FINETUNE_HOME": str(settings.FINETUNE_HOME),
        "MODEL_REGISTRY_DIR": str(settings.MODEL_REGISTRY_DIR),
        "SERVE_DEVICE": "cpu",
        "PYTHONUNBUFFERED": "1",
    }


def test_the_newest_successful_run_is_chosen(store):
    from finetune_platform.cli.inference import experiment_default

    settings, folder = store
    # the failed run that came after is passed over; the registered version is served, not the folder
    assert experiment_default(settings, "sentiment-exp") == ("exp-served@1", None)
    # an unregistered run: its run folder, in preference to an older finished run
    assert experiment_default(settings, "folder-exp") == (None, folder.resolve())


def test_make_serve_exp_serves_the_experiment_newest_successful_run(store):
    """The seed README's `make serve exp=my_experiment`, for real: make, the CLI, the server, a prediction."""
    settings, _ = store
    port = free_port()
    make = subprocess.Popen(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "serve", "exp=sentiment-exp",
         f"SERVE_PORT={port}", f"ENV_FILE={settings.FINETUNE_HOME / 'no.env'}"],
        cwd=ROOT, env=cli_environment(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            assert make.poll() is None, make.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "make serve did not answer /health"
            time.sleep(0.25)
        answers = [
            httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": text}, timeout=60).json()
            for text in TEXTS
        ]
    finally:
        with contextlib.suppress(ProcessLookupError):  # gone already: make failed, and said why above
            os.killpg(make.pid, signal.SIGTERM)  # make and the server it started (their own process group)
        output, _ = make.communicate(timeout=60)
    assert {(a["model"], a["version"]) for a in answers} == {("exp-served", 1)}
    expected = Predictor.from_registry(settings, "exp-served@1").predict(TEXTS)
    np.testing.assert_allclose(
        [a["probability"] for a in answers], [p.probability for p in expected], atol=1e-4
    )
    assert f'finetune serve --port {port} --experiment "sentiment-exp"' in output
    assert "experiment 'sentiment-exp': serving exp-served@1" in output


def test_an_unregistered_run_is_served_from_its_run_folder(store):
    from finetune_platform.cli.inference import experiment_default
    from finetune_platform.serve.app import create_serve_app

    settings, folder = store
    model, run_folder = experiment_default(settings, "folder-exp")
    app = create_serve_app(settings, model, run_folder=run_folder)
    with TestClient(app) as client:
        answers = [client.post("/predict", json={"text": text}).json() for text in TEXTS]
    expected = Predictor.from_run(folder).predict(TEXTS)
    assert {a["version"] for a in answers} == {None}
    np.testing.assert_allclose(
        [a["probability"] for a in answers], [p.probability for p in expected], atol=1e-4
    )


@pytest.mark.parametrize(
    ("options", "code", "message"),
    [
        (["--experiment", "failed-exp"], 1, "error: experiment 'failed-exp' has no successful run (its runs: "
         "1 failed, 1 running)"),
        (["--experiment", "sentiment-exp", "--model", "exp-served"], 2,
         "error: give --experiment alone, without --model or --run"),
    ],
)  # fmt: skip
def test_serve_refuses_an_experiment_without_a_successful_run(store, options, code, message):
    settings, _ = store
    done = subprocess.run(
        [finetune_bin(), "serve", *options, "--port", str(free_port())],
        env=cli_environment(settings), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == code, done.stderr
    assert message in done.stderr


def test_an_experiment_that_is_missing_or_left_nothing_to_serve_is_named(store):
    from finetune_platform.cli.inference import experiment_default
    from finetune_platform.errors import ConfigError, NotFoundError

    settings, _ = store
    with pytest.raises(NotFoundError, match=r"^no experiment 'no-such-exp' in the tracking store$"):
        experiment_default(settings, "no-such-exp")
    with pytest.raises(NotFoundError, match=r"experiment 'gone-exp': its newest successful run finished-run \(\w+\) "
                       r"registered no model, and its run folder \(not recorded\) is not on this machine"):  # fmt: skip
        experiment_default(settings, "gone-exp")
    disabled = settings.model_copy(update={"MLFLOW_ENABLED": False})
    with pytest.raises(ConfigError, match="MLFLOW_ENABLED is false: serve a run folder with --run"):
        experiment_default(disabled, "sentiment-exp")
