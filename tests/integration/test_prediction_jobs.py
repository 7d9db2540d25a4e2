"""Prediction over a file as a queued job: submitted with `finetune jobs predict`, run by a real worker
(filesystem transport), written to results/predictions/<job-id>/predictions.csv with the same answers as a
direct model call; bad submissions refused with the reason; a queued job cancelled."""

from __future__ import annotations

import csv
import json

import pytest

from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import source_from_registry
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import UNGATED, sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import queue_env

pytestmark = pytest.mark.slow
LABELS = ("pos", "neg")  # words, so that a class id and a label differ


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_bert):
    """A queue on the filesystem transport with one registered model, pj-model version 1 (labels neg, pos)."""
    root = tmp_path_factory.mktemp("prediction-jobs")
    env = queue_env(root, RESULTS_DIR=str(root / "results"))
    train = write_csv(root / "train.csv", sentiment_rows(96, 1, LABELS))
    validation = write_csv(root / "validation.csv", sentiment_rows(32, 2, LABELS))
    raw = tiny_config_dict(tiny_bert, train, validation, root / "runs", max_steps=24, eval_steps=12)
    raw["registry"] = {"model_name": "pj-model", **UNGATED}  # predicting is under test
    run_training(config_from_dict(raw), settings=env.settings, show_progress=False)
    yield env
    env.stop_all()


@pytest.fixture(scope="module")
def texts_file(env):
    rows = sentiment_rows(150, 9, LABELS)
    rows[7] = ("   ", "pos")  # an empty text: a row with an error, not a failed job
    return write_csv(
        env.root / "to-predict.csv", [(text, label) for text, label in rows], ("review", "label")
    )


def test_a_prediction_job_writes_every_row_with_the_models_own_answers(env, texts_file):
    submitted = json.loads(
        env.cli("jobs", "predict", "--model", "pj-model", "--input", str(texts_file), "--text-column",
                "review", "--json").stdout
    )  # fmt: skip
    assert (submitted["kind"], submitted["status"], submitted["created"]) == ("predict", "queued", True)
    assert submitted["config"]["model"] == "pj-model@1"  # pinned at submission
    env.start_worker("predictor")
    job = env.wait_status(submitted["id"], {"succeeded", "failed"})
    assert (job.status, job.kind, job.model_name, job.model_version) == (
        "succeeded",
        "predict",
        "pj-model",
        1,
    )
    output = env.root / "results" / "predictions" / job.id / "predictions.csv"
    with output.open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 150
    assert list(written[0]) == [
        "row",
        "label",
        "label_name",
        "probability",
        "truncated",
        "p_neg",
        "p_pos",
        "error",
    ]
    assert written[7]["error"] == "empty text" and written[7]["label"] == written[7]["label_name"] == ""
    with texts_file.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    predictor = open_one(env.settings, source_from_registry(env.settings, "pj-model@1"))
    kept = [i for i in range(150) if i != 7]
    expected = predictor.predict([rows[i]["review"] for i in kept])
    assert [written[i]["label_name"] for i in kept] == [p.label_name for p in expected]
    # label: the class id, the index of label_name in the model's labels (id2label)
    assert predictor.info.labels == ("neg", "pos")
    assert [written[i]["label"] for i in kept] == [
        str(predictor.info.labels.index(p.label_name)) for p in expected
    ]
    assert [float(written[i]["probability"]) for i in kept] == [p.probability for p in expected]
    correct = sum(written[i]["label_name"] == rows[i]["label"] for i in kept)
    progress = job.progress
    assert (progress["rows"], progress["predicted"], progress["empty"], progress["percent"]) == (
        150,
        149,
        1,
        100.0,
    )
    assert progress["accuracy"] == pytest.approx(correct / 149)
    assert progress["output"] == str(output.resolve())
    kinds = [kind for kind, _ in env.events(job.id)]
    assert kinds == ["submitted", "started", "stage", "succeeded"]
    assert [m for k, m in env.events(job.id) if k == "stage"] == ["predicting"]
    logs = env.cli("jobs", "logs", job.id).stdout
    assert "predicting 150 rows of to-predict.csv with pj-model@1" in logs
    assert "wrote 150 rows" in logs
    shown = env.cli("jobs", "show", job.id).stdout
    assert "predict" in shown and "succeeded" in shown


def prediction_jobs(env) -> int:
    """The prediction job rows in the queue's database."""
    from sqlalchemy import func, select

    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    with session_scope(env.settings) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.kind == "predict"))


@pytest.mark.parametrize(
    ("arguments", "code", "message"),
    [
        (["--model", "no-such-model"], 1, "no registered model 'no-such-model'"),
        (["--model", "pj-model@9"], 1, "model 'pj-model' has no version 9"),
        (["--model", "pj-model", "--text-column", "body"], 2,
         "input to-predict.csv: no column 'body' (columns: review, label); choose the text column"),
        (["--model", "pj-model", "--text-column", "review", "--text-pair-column", "hypothesis"], 2,
         "input to-predict.csv: no column 'hypothesis' (columns: review, label); choose the text pair column"),
    ],
)  # fmt: skip
def test_a_bad_prediction_submission_says_why_and_queues_nothing(env, texts_file, arguments, code, message):
    before = prediction_jobs(env)
    result = env.cli("jobs", "predict", "--input", str(texts_file), *arguments, check=False)
    assert result.returncode == code  # 1: not found, 2: bad input
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert prediction_jobs(env) == before  # no row written (the database, not a listing of it)


def test_a_missing_input_file_is_named(env, tmp_path):
    result = env.cli(
        "jobs", "predict", "--model", "pj-model", "--input", str(tmp_path / "gone.csv"), check=False
    )
    assert result.returncode == 2
    assert "input gone.csv: no such file" in result.stderr


def test_a_queued_prediction_job_can_be_cancelled(env, texts_file):
    env.stop_all()  # no worker: the job stays queued
    submitted = json.loads(
        env.cli("jobs", "predict", "--model", "pj-model", "--input", str(texts_file), "--text-column",
                "review", "--json").stdout
    )  # fmt: skip
    env.cli("jobs", "cancel", submitted["id"])
    job = env.job(submitted["id"])
    assert job.status == "cancelled"
    assert not (env.root / "results" / "predictions" / job.id).exists()
