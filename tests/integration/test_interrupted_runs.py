"""Runs stopped by Ctrl-C: what they record, and `finetune predict` on them (their best complete checkpoint, a
named checkpoint, or a clear refusal when none is complete)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from finetune_platform.errors import NotFoundError
from finetune_platform.inference.predictor import Predictor, source_from_run
from finetune_platform.training.callbacks import Callback
from finetune_platform.training.checkpoints import list_checkpoints, select_retained
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import RunInterrupted, run_training
from tests.conftest import ROOT, finetune_bin, sentiment_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow

TEXTS = ["great film", "awful boring book", "a wonderful meal", "terrible service"]


class CtrlCAt(Callback):
    """Ctrl-C arriving at step ``step``: right after its checkpoint is committed (``after_save``), or as the
    step ends. KeyboardInterrupt is what Python's SIGINT handler raises in the training loop."""

    def __init__(self, step: int, after_save: bool) -> None:
        self.step, self.after_save = step, after_save

    def on_step(self, state, control):
        if not self.after_save and state.step == self.step:
            raise KeyboardInterrupt

    def on_save(self, state, checkpoint):
        if self.after_save and state.step == self.step:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("interrupted-data")
    train = write_csv(root / "train.csv", sentiment_rows(96, seed=1, labels=("pos", "neg")))
    validation = write_csv(root / "validation.csv", sentiment_rows(32, seed=2, labels=("pos", "neg")))
    return train, validation


def interrupt(tmp_path, tiny_bert, data, callback: CtrlCAt) -> tuple[RunInterrupted, object]:
    from finetune_platform.settings import Settings

    train, validation = data
    raw = tiny_config_dict(tiny_bert, train, validation, tmp_path / "results", eval_steps=12)
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False)
    with pytest.raises(RunInterrupted) as caught:
        run_training(config_from_dict(raw), settings=settings, show_progress=False, callbacks=[callback])
    (folder,) = (tmp_path / "results" / "tiny").iterdir()
    return caught.value, folder


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_bert, data):
    """A run stopped by Ctrl-C right after checkpoint-48 of 96 (an evaluation and a checkpoint every 12 steps).
    Accuracy reaches 1.0 at step 36 and stays: checkpoint-36 is the best, checkpoint-48 the last."""
    return interrupt(tmp_path_factory.mktemp("interrupted"), tiny_bert, data, CtrlCAt(48, after_save=True))


def predict(*args: str) -> subprocess.CompletedProcess:
    command = [finetune_bin(), "predict", *args]
    for text in TEXTS:
        command += ["--text", text]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def expected_probabilities(folder, checkpoint, base_model, tmp_path) -> list[dict[str, float]]:
    """The checkpoint's answers through the path of a finished run: its adapter in one folder with the run's
    tokenizer and labels."""
    standalone = tmp_path / f"standalone-{checkpoint.name}"
    shutil.copytree(folder / "artifacts", standalone, ignore=shutil.ignore_patterns("checkpoints"))
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(checkpoint / name, standalone / name)
    predictor = Predictor(standalone, str(base_model), name="expected", max_length=32)
    return flat([prediction.probabilities for prediction in predictor.predict(TEXTS)])


def flat(probabilities: list[dict[str, float]]) -> list[float]:
    return [row[label] for row in probabilities for label in ("neg", "pos")]


def test_ctrl_c_records_the_step_and_the_checkpoint_kept(interrupted):
    error, folder = interrupted
    assert str(error) == "stopped at step 48 of 96; checkpoint-48 (step 48) is saved"
    assert (error.run.root, error.step, error.saved.step) == (folder, 48, 48)
    state = json.loads((folder / "run.json").read_text())
    assert state["status"] == "cancelled" and state["error"] == str(error)
    logs = (folder / "logs.txt").read_text()
    assert f"run {folder.name} cancelled: stopped at step 48 of 96; checkpoint-48 (step 48) is saved" in logs
    assert not (folder / "artifacts" / "adapter_model.safetensors").exists()  # no final adapter
    assert [info.step for info in list_checkpoints(folder / "artifacts" / "checkpoints")] == [36, 48]


def test_predict_on_an_interrupted_run_uses_its_best_complete_checkpoint(interrupted, tiny_bert, tmp_path):
    _, folder = interrupted
    checkpoints = list_checkpoints(folder / "artifacts" / "checkpoints")
    best = select_retained(checkpoints, greater_is_better=True, tolerance=0.01)["best"]
    other = next(info for info in checkpoints if info != best)
    assert (best.step, other.step) == (36, 48)  # the best is not the newest
    expected = expected_probabilities(folder, best.path, tiny_bert, tmp_path)
    # The two checkpoints answer differently, so the answers below tell which one predicted.
    assert expected != pytest.approx(
        expected_probabilities(folder, other.path, tiny_bert, tmp_path), abs=1e-3
    )

    outcome = predict("--run", str(folder))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1] == (
        f"{folder}: no final adapter; predicting with its best complete checkpoint, {best.path.name} "
        f"(step {best.step}, eval_accuracy {best.metric:.4f})"
    )
    answers = json.loads(outcome.stdout)
    assert flat([answer["probabilities"] for answer in answers]) == pytest.approx(expected, abs=1e-4)
    assert {(answer["model"], answer["version"]) for answer in answers} == {("tiny", None)}


def test_predict_with_a_named_checkpoint_uses_that_one(interrupted, tiny_bert, tmp_path):
    _, folder = interrupted
    checkpoints = list_checkpoints(folder / "artifacts" / "checkpoints")
    best = select_retained(checkpoints, greater_is_better=True, tolerance=0.01)["best"]
    named = next(info for info in checkpoints if info != best)
    expected = expected_probabilities(folder, named.path, tiny_bert, tmp_path)

    outcome = predict("--checkpoint", str(named.path))
    assert outcome.returncode == 0, outcome.stderr
    assert outcome.stderr.strip().splitlines()[-1] == (
        f"predicting with {named.path.name} (step {named.step}, eval_accuracy {named.metric:.4f}) of run {folder}"
    )
    answers = json.loads(outcome.stdout)
    assert flat([answer["probabilities"] for answer in answers]) == pytest.approx(expected, abs=1e-4)


def test_a_checkpoint_that_is_incomplete_or_not_a_checkpoint_is_refused(interrupted, tmp_path):
    _, folder = interrupted
    checkpoints = folder / "artifacts" / "checkpoints"
    cut_off = checkpoints / "checkpoint-60"
    cut_off.mkdir()
    (cut_off / "adapter_model.safetensors").write_bytes(b"truncated")
    try:
        outcome = predict("--checkpoint", str(cut_off))
    finally:
        shutil.rmtree(cut_off)
    assert outcome.returncode == 1
    assert outcome.stderr.strip() == (
        f"error: {cut_off} is incomplete (its save was cut off); "
        "the run's complete checkpoints: checkpoint-36, checkpoint-48"
    )
    outcome = predict("--checkpoint", str(folder / "artifacts"))
    assert outcome.returncode == 1
    assert outcome.stderr.strip() == (
        f"error: {folder / 'artifacts'}: not a checkpoint of a run folder "
        "(RUN_FOLDER/artifacts/checkpoints/checkpoint-N)"
    )


def test_ctrl_c_before_the_first_checkpoint_leaves_nothing_to_predict_with(tmp_path, tiny_bert, data):
    error, folder = interrupt(tmp_path, tiny_bert, data, CtrlCAt(3, after_save=False))
    assert str(error) == "stopped at step 3 of 96; no checkpoint was saved yet"
    assert error.saved is None
    outcome = predict("--run", str(folder))
    assert outcome.returncode == 1
    assert outcome.stderr.strip() == (
        f"error: {folder}: nothing to predict with: the run (cancelled) has no final adapter in artifacts/ and "
        "no complete checkpoint in artifacts/checkpoints/ (the first is written at its first evaluation)"
    )


def test_an_interrupted_run_without_its_labels_is_refused_by_name(interrupted, tmp_path):
    """A run interrupted under an earlier version has no tokenizer or label_map.json in artifacts/."""
    _, folder = interrupted
    older = shutil.copytree(folder, tmp_path / "older-run")
    (older / "artifacts" / "label_map.json").unlink()
    with pytest.raises(NotFoundError) as caught:
        source_from_run(older)
    assert str(caught.value) == (
        f"{older}: no label_map.json in artifacts/: the run was interrupted before this version wrote its "
        "tokenizer and labels there, so its checkpoints cannot be used; train it to the end "
        "(finetune train CONFIG --resume)"
    )


def test_serve_on_an_interrupted_run_serves_its_best_checkpoint_and_says_so(
    interrupted, tiny_bert, tmp_path, caplog
):
    from fastapi.testclient import TestClient

    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.settings import Settings

    _, folder = interrupted
    checkpoints = list_checkpoints(folder / "artifacts" / "checkpoints")
    best = select_retained(checkpoints, greater_is_better=True, tolerance=0.01)["best"]
    expected = expected_probabilities(folder, best.path, tiny_bert, tmp_path)
    settings = Settings(FINETUNE_HOME=tmp_path / "home", SERVE_DEVICE="cpu", METRICS_ENABLED=False)
    with caplog.at_level("WARNING", logger="finetune_platform.inference"):
        app = create_serve_app(settings, run_folder=folder)
    assert (
        f"{folder} has no final adapter: serving its {best.path.name} (step {best.step})" in caplog.messages
    )
    with TestClient(app) as client:
        answers = [client.post("/predict", json={"text": text}).json() for text in TEXTS]
    assert flat([answer["probabilities"] for answer in answers]) == pytest.approx(expected, abs=1e-4)
