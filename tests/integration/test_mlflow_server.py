"""MLFLOW_TRACKING_URI switches tracking from the embedded SQLite file to a real `mlflow server`."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "server.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield url, root
    process.terminate()
    process.wait(timeout=30)


def test_runs_are_tracked_on_the_server(mlflow_server, tiny_bert, sentiment_data, tmp_path):
    from mlflow import MlflowClient

    url, root = mlflow_server
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_TRACKING_URI=url)
    train_file, validation_file = sentiment_data
    raw = tiny_config_dict(tiny_bert, train_file, validation_file, tmp_path / "r", max_steps=8, eval_steps=4)
    result = run_training(config_from_dict(raw), settings=settings, show_progress=False)

    client = MlflowClient(tracking_uri=url)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")] == [4, 8]
    assert {item.path for item in client.list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.json"}
    # The server stored the artifacts; nothing went to the local embedded store.
    assert list((root / "art").rglob("adapter_model.safetensors"))
    assert not (tmp_path / "home" / "mlflow.db").exists()
