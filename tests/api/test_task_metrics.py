"""GET /task/{id}/metrics on SQLite and PostgreSQL: a training task's curves and final metrics, read from the
records its run writes (a real tiny run in the task's own run folder), for its owner and admins only."""

from __future__ import annotations

import json
import uuid

import pytest

from tests.api.conftest import results_dir
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

NOTHING_YET = {"training": [], "evaluations": [], "eta_seconds": None, "final": None}


def train_the_task(api, task_id: str, model, root):
    """The run a worker would make of the task: its run folder is <results>/<experiment>/<task id>."""
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    train = write_csv(root / "train.csv", sentiment_rows(64, seed=1))
    validation = write_csv(root / "validation.csv", sentiment_rows(24, seed=2))
    raw = tiny_config_dict(
        model, train, validation, results_dir(api), max_steps=16, eval_steps=8, logging_steps=4
    )
    raw.update(experiment="api-test", registry={"enabled": False})
    return run_training(config_from_dict(raw), run_id=task_id, settings=api.settings, show_progress=False)


def set_status(api, task_id: str, status: str) -> None:
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    with session_scope(api.settings) as session:
        session.get(Job, task_id).status = status


def test_a_training_tasks_curves_and_final_metrics_come_from_its_run(api, tiny_bert, tmp_path):
    alice, task_id = api.as_("alice"), api.ids["task"]
    before = alice.get(f"/task/{task_id}/metrics")
    assert before.status_code == 200
    assert before.json() == {"task_id": task_id, "status": "queued", **NOTHING_YET}  # no run yet

    result = train_the_task(api, task_id, tiny_bert, tmp_path)
    set_status(api, task_id, "running")
    answer = alice.get(f"/task/{task_id}/metrics").json()
    checkpoint = json.loads((result.run.checkpoints_dir / "checkpoint-16" / "driver_state.json").read_text())
    logged = [entry for entry in checkpoint["history"] if "loss" in entry]  # the driver's own records
    assert [(p["step"], p["loss"], p["learning_rate"]) for p in answer["training"]] == [
        (e["step"], e["loss"], e["learning_rate"]) for e in logged
    ]
    assert [p["step"] for p in answer["training"]] == [4, 8, 12, 16]
    assert all(p["samples_per_second"] > 0 and p["epoch"] > 0 for p in answer["training"])
    assert [(p["step"], p["loss"], p["accuracy"], p["macro_f1"]) for p in answer["evaluations"]] == [
        (e["step"], pytest.approx(e["eval_loss"]), pytest.approx(e["eval_accuracy"]), pytest.approx(e["eval_macro_f1"]))
        for e in result.metrics["history"]
    ]  # fmt: skip
    assert [p["step"] for p in answer["evaluations"]] == [8, 16]
    assert answer["eta_seconds"] == 0.0  # running, at its last logging step
    evaluation, final = result.metrics["eval"], answer["final"]
    assert (final["accuracy"], final["macro_f1"], final["loss"], final["rows"]) == (
        evaluation["accuracy"], evaluation["macro_f1"], pytest.approx(evaluation["loss"]), 24,
    )  # fmt: skip
    assert final["confusion_matrix"] == evaluation["confusion_matrix"]
    assert final["confusion_matrix"]["labels"] == ["0", "1"]
    assert sum(map(sum, final["confusion_matrix"]["matrix"])) == 24
    assert (
        set(final["per_class"]) == {"0", "1"} and sum(c["support"] for c in final["per_class"].values()) == 24
    )
    assert final["checkpoint"] == result.metrics["final_checkpoint"]
    assert (
        final["calibration"] == result.metrics["calibration"]
    )  # temperature, ECE and log-loss before and after

    set_status(api, task_id, "succeeded")
    finished = api.as_("root").get(f"/task/{task_id}/metrics")  # an admin sees every task's
    assert finished.status_code == 200
    assert finished.json() == {**answer, "status": "succeeded", "eta_seconds": None}


def test_a_regression_tasks_final_metrics_are_its_own(api, tiny_bert, tmp_path):
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    alice, task_id = api.as_("alice"), str(uuid.uuid4())
    train = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=1))
    validation = write_csv(tmp_path / "validation.csv", sentiment_rows(24, seed=2))
    raw = tiny_config_dict(tiny_bert, train, validation, results_dir(api), max_steps=8, eval_steps=4)
    raw.update(experiment="api-regression", task="regression", registry={"enabled": False})
    with session_scope(api.settings) as session:  # the job a worker runs (the API's dataset is not numeric)
        session.add(Job(id=task_id, owner_id=api.ids["alice"], kind="train", status="running", config=raw))
    result = run_training(config_from_dict(raw), run_id=task_id, settings=api.settings, show_progress=False)
    answer = alice.get(f"/task/{task_id}/metrics")
    assert answer.status_code == 200, answer.text
    final, evaluation = answer.json()["final"], result.metrics["eval"]
    assert final["task"] == "regression"
    assert final["scores"] == pytest.approx(
        {key: evaluation[key] for key in ("rmse", "mae", "pearson", "spearman", "loss")}
    )
    assert (final["accuracy"], final["macro_f1"], final["confusion_matrix"], final["per_class"]) == (
        None, None, None, {},
    )  # fmt: skip
    assert final["target_scale"] == {"mean": 0.5, "std": 0.5} and final["thresholds"] is None
    assert final["calibration"] is None and final["rows"] == 24
    assert [sorted(point["scores"]) for point in answer.json()["evaluations"]] == [
        ["loss", "mae", "pearson", "rmse", "spearman"]
    ] * 2
    assert all(point["accuracy"] is None for point in answer.json()["evaluations"])


def test_another_users_task_is_not_found_and_a_prediction_task_has_no_training_metrics(api):
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    task_id = api.ids["task"]
    refused = api.as_("bob").get(f"/task/{task_id}/metrics")
    assert (refused.status_code, refused.json()["detail"]) == (404, f"no job {task_id!r}")
    unknown = api.as_("alice").get("/task/no-such-task/metrics")
    assert (unknown.status_code, unknown.json()["detail"]) == (404, "no job 'no-such-task'")
    predict_id = str(uuid.uuid4())
    with session_scope(api.settings) as session:
        session.add(
            Job(
                id=predict_id, owner_id=api.ids["alice"], kind="predict", status="queued",
                config={"model": "m@1", "output_dir": str(results_dir(api))},
            )
        )  # fmt: skip
    conflict = api.as_("alice").get(f"/task/{predict_id}/metrics")
    assert (conflict.status_code, conflict.json()["detail"]) == (
        409,
        f"task {predict_id} is a predict task: only training tasks have training metrics",
    )
