"""`--from-run`: a trained run keeps its final weights' logits on the validation rows (eval_predictions.npz), and the
audit ranks those rows by them instead of by the embedding classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from finetune_platform.data.audit import EVAL_PREDICTIONS, audit_files, load_run_predictions
from finetune_platform.data.validation import ValidationOptions
from finetune_platform.errors import DatasetError
from finetune_platform.inference.softmax import outputs
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.audit_data import planted_dataset
from tests.conftest import tiny_config_dict

pytestmark = pytest.mark.slow  # a real (tiny) training run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_factory):
    folder = tmp_path_factory.mktemp("from-run")
    data = planted_dataset(folder, per_label=15, flips=0, duplicates=0, leaks=0, outliers=False)
    raw = tiny_config_dict(
        tiny_model_factory("bert"), data.train, data.validation, folder / "results", max_steps=4
    )
    raw["registry"], raw["calibration"] = {"enabled": False}, "none"
    settings = Settings(FINETUNE_HOME=folder / "home", MLFLOW_ENABLED=False)
    outcome = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    return data, outcome.run.root


def test_a_run_keeps_its_logits_on_each_validation_row(trained):
    data, root = trained
    with np.load(root / EVAL_PREDICTIONS) as stored:
        assert stored["rows"].tolist() == list(range(1, 41))  # the validation file's 40 data rows
        assert stored["logits"].shape == (40, 4) and stored["given"].shape == (40,)
        assert (
            str(stored["source_file"]) == str(data.validation.resolve())
            and str(stored["task"]) == "single_label"
        )
        names = [str(name) for name in stored["names"]]
    predictions = load_run_predictions(root, outputs)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), np.ones(40), rtol=1e-5)
    assert predictions.names == names


def test_the_audit_ranks_the_run_s_held_out_rows_by_its_probabilities(trained):
    data, root = trained
    predictions = load_run_predictions(root, outputs)
    document = audit_files(
        data.train, ValidationOptions(), data.validation, run_predictions=predictions
    ).to_json()
    assert document["model"] == {
        "kind": "trained run", "run": str(root), "folds": 1, "oof_accuracy": document["model"]["oof_accuracy"]
    }  # fmt: skip
    assert document["label_errors"]["rows_ranked_from"] == 40
    assert {row["file"] for row in document["label_errors"]["rows"]} <= {"validation"}
    best = predictions.probabilities.argmax(axis=1)
    assert document["model"]["oof_accuracy"] == pytest.approx(
        float((best == predictions.given).mean()), abs=1e-6
    )


def test_a_run_on_other_rows_or_a_changed_file_is_refused(trained, tmp_path):
    data, root = trained
    predictions = load_run_predictions(root, outputs)
    with pytest.raises(DatasetError) as refused:
        audit_files(data.train, ValidationOptions(), run_predictions=predictions)
    assert str(refused.value) == (
        f"run {root} was evaluated on rows of {data.validation.resolve()}, which this audit does not read: "
        "audit that file (as FILE or --validation-file)"
    )
    changed = data.validation.read_text().splitlines()
    changed[1] = (
        changed[1].rsplit(",", 1)[0] + ",sports"
        if not changed[1].endswith(",sports")
        else (changed[1].rsplit(",", 1)[0] + ",finance")
    )
    data.validation.write_text("\n".join(changed) + "\n")
    try:
        with pytest.raises(
            DatasetError, match=r"differ from those run .* was evaluated on: the file changed"
        ):
            audit_files(data.train, ValidationOptions(), data.validation, run_predictions=predictions)
    finally:
        planted_dataset(data.train.parent, per_label=15, flips=0, duplicates=0, leaks=0, outliers=False)


def test_a_folder_without_held_out_predictions_says_so(tmp_path):
    with pytest.raises(DatasetError) as refused:
        load_run_predictions(tmp_path, outputs)
    assert str(refused.value).startswith(f"run {tmp_path} kept no held-out predictions (eval_predictions.npz")


def test_finetune_data_audit_from_run_writes_the_run_s_ranking(trained, tmp_path):
    from typer.testing import CliRunner

    from finetune_platform.cli import app as cli

    data, root = trained
    out = tmp_path / "audit"
    result = CliRunner().invoke(cli, [
        "data", "audit", str(data.train), "--validation-file", str(data.validation), "--from-run", str(root),
        "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert result.exit_code == 0, result.output
    document = json.loads((out / "audit.json").read_text())
    assert document["model"]["kind"] == "trained run" and document["model"]["run"] == str(root)
    assert document["label_errors"]["rows_ranked_from"] == 40
