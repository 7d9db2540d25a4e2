"""`finetune serve --run DIR`: a run folder's adapter served without the registry (and without MLflow), and the
merged PyTorch host that a GPU serves."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient

from finetune_platform.inference.predictor import Predictor, source_from_run
from finetune_platform.inference.torch_host import TorchHost
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import finetune_bin, sentiment_rows, tiny_config_dict, write_csv

TEXTS = ["great film", "awful book", "wonderful concert tonight", "boring game"]


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("serve-run")
    train = write_csv(root / "train.csv", sentiment_rows(96, 1))
    valid = write_csv(root / "validation.csv", sentiment_rows(32, 2))
    raw = tiny_config_dict(tiny_bert, train, valid, root / "results", max_steps=24, eval_steps=12)
    raw["experiment"], raw["registry"] = "local-run", {"enabled": False}
    settings = Settings(FINETUNE_HOME=root / "train-home", MLFLOW_ENABLED=False)
    return run_training(config_from_dict(raw), settings=settings, show_progress=False).run.root


def test_a_run_folder_is_served_without_a_registry(run_folder, tmp_path):
    from finetune_platform.serve.app import create_serve_app

    # a home with no model store at all: nothing may be looked up in the registry
    settings = Settings(FINETUNE_HOME=tmp_path / "empty-home", SERVE_DEVICE="cpu", METRICS_ENABLED=False)
    app = create_serve_app(settings, run_folder=run_folder)
    expected = Predictor.from_run(run_folder).predict(TEXTS)
    with TestClient(app) as client:
        answers = [client.post("/predict", json={"text": text}).json() for text in TEXTS]
        models = client.get("/models").json()
    loaded_labels = models["loaded"][0]["labels"]
    assert [a["label_name"] for a in answers] == [p.label_name for p in expected]
    np.testing.assert_allclose(
        [a["probability"] for a in answers], [p.probability for p in expected], atol=1e-4
    )
    assert {(a["model"], a["version"]) for a in answers} == {("local-run", None)}
    # the seed README's fields: label the class id, the language resolved from the base model ("auto")
    assert [a["label"] for a in answers] == [p.label for p in expected]
    assert all(type(a["label"]) is int and loaded_labels[a["label"]] == a["label_name"] for a in answers)
    assert {a["language"] for a in answers} == {"English"}
    (loaded,) = models["loaded"]
    assert (loaded["model"], loaded["runtime"], loaded["merged"]) == ("local-run", "onnx", True)
    assert not (tmp_path / "empty-home" / "mlflow.db").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--model", "other"], "error: give --model or --run, not both"),
        (["--device", "tpu"], "error: --device 'tpu': choose auto, cpu, cuda or mps"),
    ],
)
def test_serve_refuses_bad_options(run_folder, cli_env, options, message):
    done = subprocess.run(
        [finetune_bin(), "serve", "--run", str(run_folder), *options],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr


def test_the_merged_host_answers_as_the_merged_predictor(run_folder):
    source = source_from_run(run_folder)
    host = TorchHost(source, "cpu", merged=True)
    assert (host.runtime, host.merged, list(host.adapters)) == ("torch", True, [source.key])
    assert not host.accepts(source)  # a second adapter needs the shared (unmerged) host
    got = host.predict_with(source.key, TEXTS)
    want = Predictor.of(source, merge=True).predict(TEXTS)
    assert [p.label for p in got] == [p.label for p in want]
    np.testing.assert_allclose([p.probability for p in got], [p.probability for p in want], atol=1e-6)
