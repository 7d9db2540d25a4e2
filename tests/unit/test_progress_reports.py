"""What a run reports while it trains: history.jsonl in its run folder (ProgressCallback) and the job row's
progress (JobCallback), driven through the callbacks' own hooks."""

from __future__ import annotations

import json
import math

from finetune_platform.training.callbacks import Control, RunState
from finetune_platform.training.progress import ProgressCallback
from finetune_platform.training.run_folder import append_history, read_history
from finetune_platform.worker.control import JobCallback, JobControl


def test_history_jsonl_holds_every_logging_and_evaluation_step_and_a_resume_drops_what_it_retrains(tmp_path):
    path = tmp_path / "history.jsonl"
    first = ProgressCallback(8, show_bar=False, history_path=path)
    state = RunState(step=0, max_steps=10, samples_per_step=8)
    first.on_train_begin(state)
    assert read_history(path) == []  # nothing yet, and no file made for it
    for step in (2, 4, 6):
        state.step, state.epoch = step, step / 10
        logs = {"loss": round(0.7 - step / 100, 2), "learning_rate": 1e-3, "grad_norm": 0.5}
        first.on_log(state, Control(), logs)
        if step == 4:
            scores = {"eval_loss": 0.65, "eval_accuracy": 0.75, "eval_macro_f1": 0.7}
            first.on_evaluate(state, Control(), scores)
    entries = read_history(path)
    training = ["epoch", "eta_seconds", "grad_norm", "learning_rate", "loss", "samples_per_second", "step"]
    assert [(e["step"], sorted(e)) for e in entries] == [
        (2, training), (4, training), (4, ["epoch", "eval_accuracy", "eval_loss", "eval_macro_f1", "step"]),
        (6, training),
    ]  # fmt: skip
    assert [e.get("loss") for e in entries] == [0.68, 0.66, None, 0.64]
    assert entries[2] == {
        "step": 4,
        "epoch": 0.4,
        "eval_loss": 0.65,
        "eval_accuracy": 0.75,
        "eval_macro_f1": 0.7,
    }
    assert all(e["samples_per_second"] > 0 and e["eta_seconds"] >= 0 for e in entries if "loss" in e)

    # The worker died after step 6; the next attempt resumes from checkpoint-4 and trains 5 and 6 again.
    resumed = ProgressCallback(8, show_bar=False, history_path=path)
    resumed.on_train_begin(RunState(step=4, max_steps=10, samples_per_step=8))
    assert [e["step"] for e in read_history(path)] == [2, 4, 4]
    state = RunState(step=6, max_steps=10, epoch=0.6, samples_per_step=8)
    resumed.on_log(state, Control(), {"loss": 0.5, "learning_rate": 1e-3})
    assert [(e["step"], e.get("loss")) for e in read_history(path)] == [
        (2, 0.68),
        (4, 0.66),
        (4, None),
        (6, 0.5),
    ]


def test_a_half_written_line_is_skipped_and_a_diverged_loss_reads_as_null(tmp_path):
    path = tmp_path / "history.jsonl"
    append_history(path, {"step": 1, "loss": math.nan, "grad_norm": math.inf, "learning_rate": 1e-3})
    with path.open("a") as handle:
        handle.write('{"step": 2, "loss": 0.6')  # the writer is mid-line
    assert json.loads(path.read_text().splitlines()[0]) == {
        "step": 1, "loss": None, "grad_norm": None, "learning_rate": 1e-3
    }  # fmt: skip
    assert read_history(path) == [{"step": 1, "loss": None, "grad_norm": None, "learning_rate": 1e-3}]


def test_a_job_shows_its_step_when_training_begins_at_the_first_step_and_every_interval():
    reports: list[dict] = []
    callback = JobCallback(
        lambda **fields: reports.append(fields["progress"]), JobControl(), None, every_seconds=3600
    )
    state = RunState(step=0, max_steps=400, samples_per_step=8)
    callback.on_train_begin(state)
    for step in (1, 2, 3):  # long before the first logging step
        state.step = step
        callback.on_step(state, Control())
    assert reports == [
        {"step": 0, "max_steps": 400, "epoch": 0.0, "percent": 0.0},
        {"step": 1, "max_steps": 400, "epoch": 0.0, "percent": 0.2},
    ]  # then nothing until the interval has passed
    state.step = 50
    callback.on_log(state, Control(), {"loss": 0.69, "learning_rate": 1e-3})  # the first logging step writes
    assert reports[-1] == {"step": 50, "max_steps": 400, "epoch": 0.0, "percent": 12.5, "loss": 0.69,
                           "learning_rate": 1e-3}  # fmt: skip

    every_step = JobCallback(
        lambda **fields: reports.append(fields["progress"]), JobControl(), None, every_seconds=0
    )
    reports.clear()
    resumed = RunState(
        step=200, max_steps=400, samples_per_step=8
    )  # a resumed attempt: its first step is 201
    every_step.on_train_begin(resumed)
    for step in (201, 202):
        resumed.step = step
        every_step.on_step(resumed, Control())
    assert [report["step"] for report in reports] == [200, 201, 202]
