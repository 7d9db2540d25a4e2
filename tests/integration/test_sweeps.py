"""Sweeps through the service on SQLite and PostgreSQL: trials as jobs run by the real executor, pruning, the
grid, failures counted, cancel, the budget and parallelism under concurrent advances, ownership."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, update

from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.db import session as db
from finetune_platform.db.models import Job, Sweep
from finetune_platform.errors import NotFoundError, PlatformError
from finetune_platform.services import sweep_study, sweeps
from finetune_platform.services.users import create_user
from finetune_platform.training.sweep_config import parse_spec
from finetune_platform.worker.executor import execute_job
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

# The tests that train run on SQLite by default and on PostgreSQL with --extended (make test-all): the database-only
# behaviours (cancel, concurrent advances, ownership) run on both in every run.
TRAINS_ON = pytest.mark.parametrize(
    "db_settings", ["sqlite", pytest.param("postgresql", marks=pytest.mark.extended)], indirect=True
)


@pytest.fixture
def people(db_settings):
    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        return (
            create_user(session, "alice", "long enough"),
            create_user(session, "bob", "long enough"),
            create_user(session, "root", "long enough", "admin"),
        )


@pytest.fixture
def base(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(64, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(24, seed=2))
    return tiny_config_dict(tiny_bert, train, validation, tmp_path / "results", epochs=2, eval_steps=4)


def submit(settings, user, base, **spec):
    with db.session_scope(settings) as session:
        return sweeps.submit_sweep(session, user, base, parse_spec(spec), settings=settings, max_attempts=1)


def run_queued(settings) -> list[str]:
    """Run queued jobs with the real executor until none is left (a trial's end starts the next)."""
    outcomes = []
    while True:
        with db.session_scope(settings) as session:
            queued = session.scalars(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at)
            ).all()
        if not queued:
            return outcomes
        for job_id in queued:
            outcomes.append(execute_job(settings, job_id))


def show(settings, user, sweep_id):
    with db.session_scope(settings) as session:
        return sweeps.get_sweep(session, user, sweep_id)


@TRAINS_ON
def test_a_hopeless_trial_is_pruned_at_its_first_evaluation_and_the_winner_is_known(
    db_settings, people, base
):
    """The tiny model learns little in a few steps, but a learning rate far too high makes its loss worse than an
    untrained model's (ln 2) at once: the median pruner stops that trial at its first evaluation."""
    alice, *_ = people
    sweep = submit(
        db_settings, alice, base, objective="loss", sampler="random", pruner="median", startup_trials=1,
        max_trials=2, parallelism=1, seed=3,
        space={"training.learning_rate": {"type": "loguniform", "low": 1e-9, "high": 0.1}},
        start_with=[{"training.learning_rate": 1e-9}, {"training.learning_rate": 0.1}],
    )  # fmt: skip
    assert sweep.status == "running" and sweep.trials["queued"] == 1 and len(sweep.trial_list) == 1
    assert run_queued(db_settings) == ["succeeded", "pruned"]
    done = show(db_settings, alice, sweep.id)
    good, hopeless = done.trial_list
    assert done.status == "succeeded" and done.finished_at is not None
    assert (good.status, good.params, good.evaluations) == ("succeeded", {"training.learning_rate": 1e-9}, 4)
    assert (hopeless.status, hopeless.params, hopeless.evaluations) == (
        "pruned", {"training.learning_rate": 0.1}, 1,
    )  # fmt: skip
    assert hopeless.error.startswith("pruned at evaluation 1 (step 4): loss ")
    assert hopeless.value > good.value and done.best_task_id == good.task_id and done.best_value == good.value
    assert done.trials == {
        "queued": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 0,
        "cancelled": 0,
        "pruned": 1,
    }
    with db.session_scope(db_settings) as session:  # a pruned trial keeps its run folder and MLflow run
        row = session.get(Job, hopeless.task_id)
        assert row.run_id and (row.stage, row.error) == ("training", hopeless.error)
        from pathlib import Path

        assert (Path(row.run_folder) / "logs.txt").is_file()
        assert sweeps.best_trial(session, alice, sweep.id).task_id == good.task_id
    states = [trial.state.name for trial in sweep_study.trials(db_settings, sweep.id)]
    assert states == ["COMPLETE", "PRUNED"]
    assert [t.intermediate_values for t in sweep_study.trials(db_settings, sweep.id)][1].keys() == {1}


@TRAINS_ON
def test_a_grid_runs_each_combination_once_keeping_parallelism(db_settings, people, base):
    alice, *_ = people
    sweep = submit(
        db_settings, alice, base, sampler="grid", pruner="none", parallelism=3, seed=1,
        space={"lora.r": {"type": "choice", "values": [2, 4]},
               "lora.target_modules": {"type": "choice", "values": [["query"], ["query", "value"]]}},
    )  # fmt: skip
    assert sweep.max_trials == 4 and sweep.trials["queued"] == 3  # parallelism, not the budget
    with db.session_scope(db_settings) as session:
        assert session.get(Sweep, sweep.id).trials_started == 3
    assert run_queued(db_settings) == ["succeeded"] * 4
    done = show(db_settings, alice, sweep.id)
    tried = sorted((t.params["lora.r"], tuple(t.params["lora.target_modules"])) for t in done.trial_list)
    assert tried == [(2, ("query",)), (2, ("query", "value")), (4, ("query",)), (4, ("query", "value"))]
    assert done.status == "succeeded" and [t.number for t in done.trial_list] == [0, 1, 2, 3]
    with db.session_scope(db_settings) as session:  # trials register nothing; each trained what it says
        rows = session.scalars(select(Job).where(Job.sweep_id == sweep.id)).all()
        assert {row.model_name for row in rows} == {None}
        assert all(row.config["lora"]["r"] == row.trial_params["lora.r"] for row in rows)
        assert all(row.config["registry"]["enabled"] is False for row in rows)


@TRAINS_ON
def test_a_failing_trial_is_counted_and_the_sweep_goes_on(db_settings, people, base):
    alice, *_ = people
    sweep = submit(
        db_settings, alice, base, sampler="random", pruner="none", max_trials=2, seed=5,
        space={"lora.target_modules": {"type": "choice", "values": [["query"], ["no_such_module"]]}},
        start_with=[{"lora.target_modules": ["no_such_module"]}, {"lora.target_modules": ["query"]}],
    )  # fmt: skip
    assert run_queued(db_settings) == ["failed", "succeeded"]
    done = show(db_settings, alice, sweep.id)
    assert done.status == "succeeded" and done.trials["failed"] == 1 and done.trials["succeeded"] == 1
    assert done.trial_list[0].error.startswith("lora.target_modules: No modules were targeted for adaptation")
    assert [t.state.name for t in sweep_study.trials(db_settings, sweep.id)] == ["FAIL", "COMPLETE"]


@TRAINS_ON
def test_a_sweep_whose_trials_all_fail_fails_saying_so(db_settings, people, base):
    alice, *_ = people
    sweep = submit(
        db_settings, alice, base, sampler="grid", pruner="none",
        space={"lora.target_modules": {"type": "choice", "values": [["no_such_module"]]}},
    )  # fmt: skip
    assert run_queued(db_settings) == ["failed"]
    done = show(db_settings, alice, sweep.id)
    assert (done.status, done.error, done.best_task_id) == ("failed", "none of its 1 trials completed", None)
    with db.session_scope(db_settings) as session, pytest.raises(PlatformError) as caught:
        sweeps.best_trial(session, alice, sweep.id)
    assert str(caught.value) == f"sweep {sweep.id} has no completed trial yet (1 started)"


def test_cancel_stops_queued_trials_and_starts_no_more(db_settings, people, base):
    alice, bob, root = people
    sweep = submit(db_settings, alice, base, parallelism=2, max_trials=6, pruner="none",
                   space={"lora.r": {"type": "int", "low": 2, "high": 8}})  # fmt: skip
    with (
        db.session_scope(db_settings) as session,
        pytest.raises(NotFoundError, match=f"no sweep '{sweep.id}'"),
    ):
        sweeps.cancel_sweep(session, bob, sweep.id)
    with db.session_scope(db_settings) as session:
        cancelled = sweeps.cancel_sweep(session, root, sweep.id)  # an admin may
    assert cancelled.status == "cancelled" and cancelled.trials["cancelled"] == 2
    assert cancelled.finished_at is not None
    assert run_queued(db_settings) == []
    with db.session_scope(db_settings) as session:
        assert sweeps.advance(session, db_settings, sweep.id) == []
        assert session.get(Sweep, sweep.id).trials_started == 2
    with db.session_scope(db_settings) as session, pytest.raises(PlatformError) as caught:
        sweeps.cancel_sweep(session, alice, sweep.id)
    assert str(caught.value) == f"sweep {sweep.id} is already cancelled: only running sweeps can be cancelled"


def test_concurrent_advances_never_exceed_the_budget_or_the_parallelism(db_settings, people, base):
    alice, *_ = people
    sweep = submit(db_settings, alice, base, parallelism=3, max_trials=5, pruner="none", seed=9,
                   space={"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}})  # fmt: skip
    errors: list[BaseException] = []

    def advance_often() -> None:
        try:
            for _ in range(5):
                with db.session_scope(db_settings) as session:
                    sweeps.advance(session, db_settings, sweep.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=advance_often) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with db.session_scope(db_settings) as session:
        rows = session.scalars(select(Job).where(Job.sweep_id == sweep.id)).all()
        assert len(rows) == 3 and session.get(Sweep, sweep.id).trials_started == 3
        assert len({row.trial_number for row in rows}) == 3
        # two trials end: the advances start exactly two more, then the budget (5) is spent
        for row in rows[:2]:
            row.status = "cancelled"
    for _ in range(3):
        with db.session_scope(db_settings) as session:
            sweeps.advance(session, db_settings, sweep.id)
    with db.session_scope(db_settings) as session:
        assert session.scalar(select(Sweep.trials_started).where(Sweep.id == sweep.id)) == 5
        params = [row.trial_params["training.learning_rate"] for row in
                  session.scalars(select(Job).where(Job.sweep_id == sweep.id))]  # fmt: skip
    assert len(params) == 5 and len(set(params)) == 5  # each slot drew its own values


def test_a_trial_asked_by_a_process_that_died_is_failed_in_the_study(db_settings, people, base, monkeypatch):
    alice, *_ = people
    sweep = submit(db_settings, alice, base, max_trials=2, pruner="none",
                   space={"lora.r": {"type": "choice", "values": [2, 4]}})  # fmt: skip
    with db.session_scope(db_settings) as session:
        spec = sweeps.spec_of(session.get(Sweep, sweep.id))
    orphan = sweep_study.ask(db_settings, sweep.id, spec, slot=99)  # its job was never written
    monkeypatch.setattr(sweeps, "ORPHAN_SECONDS", 0.0)
    with db.session_scope(db_settings) as session:
        sweeps.settle(session, db_settings, sweep.id)
    states = {t.number: t.state.name for t in sweep_study.trials(db_settings, sweep.id)}
    assert states[orphan.number] == "FAIL" and states[0] == "RUNNING"  # the real trial is untouched


@TRAINS_ON
def test_no_trial_starts_after_max_hours(db_settings, people, base):
    alice, *_ = people
    sweep = submit(db_settings, alice, base, max_trials=3, max_hours=1, pruner="none",
                   space={"lora.r": {"type": "choice", "values": [2, 4, 8]}})  # fmt: skip
    from datetime import timedelta

    from finetune_platform.db.models import utcnow

    with db.session_scope(db_settings) as session:
        session.execute(
            update(Sweep).where(Sweep.id == sweep.id).values(created_at=utcnow() - timedelta(hours=2))
        )
    assert run_queued(db_settings) == ["succeeded"]
    done = show(db_settings, alice, sweep.id)
    assert done.status == "succeeded" and len(done.trial_list) == 1


def test_ownership_and_invalid_data_write_nothing(db_settings, people, base, tmp_path):
    alice, bob, root = people
    sweep = submit(db_settings, alice, base, space={"lora.r": {"type": "choice", "values": [2, 4]}})
    with db.session_scope(db_settings) as session:
        assert [s.id for s in sweeps.list_sweeps(session, alice).data] == [sweep.id]
        assert sweeps.list_sweeps(session, bob).count == 0
        assert [s.id for s in sweeps.list_sweeps(session, root).data] == [sweep.id]
        with pytest.raises(NotFoundError, match=f"no sweep '{sweep.id}'"):
            sweeps.get_sweep(session, bob, sweep.id)
        assert sweeps.get_sweep(session, root, sweep.id).owner_id == alice.id
    broken = write_csv(tmp_path / "broken.csv", [("fine text", "pos"), ("", "neg")])
    with db.session_scope(db_settings) as session, pytest.raises(DatasetValidationError):
        sweeps.submit_sweep(session, alice, {**base, "data": {**base["data"], "train_file": str(broken)}},
                            parse_spec({"space": {"lora.r": {"type": "choice", "values": [2]}}}),
                            settings=db_settings)  # fmt: skip
    with db.session_scope(db_settings) as session:
        assert session.scalar(select(Sweep.id).where(Sweep.id != sweep.id)) is None
