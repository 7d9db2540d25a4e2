"""MLFLOW_TRACKING_URI switches tracking from the embedded SQLite file to a real `mlflow server`."""

from __future__ import annotations

import pytest

from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.slow


def test_runs_are_tracked_on_the_server(mlflow_server, tiny_bert, sentiment_data, tmp_path):
    from mlflow import MlflowClient

    url, root = mlflow_server
    settings = Settings(
        FINETUNE_HOME=tmp_path / "home", MLFLOW_TRACKING_URI=url, MODEL_REGISTRY_DIR=tmp_path / "cards"
    )
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
