"""Several processes keep one sweep moving at once (every worker's reconciler, every worker whose trial ended):
what they do together must equal what one would do alone. Threads with their own sessions and connections
stand in for the processes; the databases are real (SQLite, PostgreSQL)."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import update

from finetune_platform.db import session as db
from finetune_platform.db.models import Job, Sweep
from finetune_platform.services import sweep_study, sweeps
from finetune_platform.services.users import create_user
from finetune_platform.training.sweep_config import parse_spec
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

SETTLERS = 6


@pytest.fixture
def sweep_base(tmp_path, tiny_bert) -> dict:
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(32, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(16, seed=2))
    return tiny_config_dict(tiny_bert, train, validation, tmp_path / "results", max_steps=4)


def _spec(trials: int):
    return parse_spec(
        {
            "objective": "loss",
            "sampler": "random",
            "seed": 11,
            "max_trials": trials,
            "parallelism": trials,
            "space": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        }
    )


def _submit(settings, base: dict, trials: int) -> tuple[object, str]:
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        return alice, sweeps.submit_sweep(session, alice, base, _spec(trials), settings=settings).id


def _end_every_trial(settings, sweep_id: str) -> None:
    """As the workers that ran them would: every trial succeeded with its loss."""
    with db.session_scope(settings) as session:
        session.execute(
            update(Job)
            .where(Job.sweep_id == sweep_id)
            .values(status="succeeded", progress={"metrics": {"loss": 0.25}}, lease_owner=None)
        )


def _at_once(count: int, work) -> list[BaseException]:
    """Run ``work`` in ``count`` threads released together; the exceptions they raised."""
    barrier, errors = threading.Barrier(count), []

    def run() -> None:
        barrier.wait()
        try:
            work()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_settle_by_several_processes_at_once_tells_each_trial_once_and_raises_nothing(
    db_settings, sweep_base
):
    _, sweep_id = _submit(db_settings, sweep_base, trials=12)
    _end_every_trial(db_settings, sweep_id)

    def settle() -> None:
        with db.session_scope(db_settings) as session:
            sweeps.settle(session, db_settings, sweep_id)

    errors = _at_once(SETTLERS, settle)
    assert [
        f"{type(e).__name__}: {e}" for e in errors
    ] == []  # was: ValueError: Cannot tell a COMPLETE trial.
    states = [trial.state.name for trial in sweep_study.trials(db_settings, sweep_id)]
    assert states == ["COMPLETE"] * 12
    with db.session_scope(db_settings) as session:
        sweep = session.get(Sweep, sweep_id)
        assert (sweep.status, sweep.trials_started) == ("succeeded", 12)


def test_tell_of_a_trial_another_process_told_first_is_a_no_op(db_settings, sweep_base):
    _, sweep_id = _submit(db_settings, sweep_base, trials=1)
    spec = _spec(1)
    told = _at_once(
        SETTLERS,
        lambda: sweep_study.tell(db_settings, sweep_id, spec, 0, value=0.5, outcome="complete"),
    )
    assert told == []
    assert sweep_study.tell(db_settings, sweep_id, spec, 0, value=0.5, outcome="complete") is False
    (trial,) = sweep_study.trials(db_settings, sweep_id)
    assert (trial.state.name, trial.value) == ("COMPLETE", 0.5)


def test_one_sweep_that_cannot_be_settled_does_not_hold_up_the_others(db_settings, sweep_base):
    _, broken = _submit(db_settings, sweep_base, trials=1)
    with db.session_scope(db_settings) as session:
        alice = sweeps.UserPublic.of(session.get(sweeps.User, 1))
        healthy = sweeps.submit_sweep(session, alice, sweep_base, _spec(1), settings=db_settings).id
    sweep_study.delete(db_settings, broken)  # its study is gone: settling it raises
    _end_every_trial(db_settings, broken)
    _end_every_trial(db_settings, healthy)

    assert sweeps.reconcile_sweeps(db_settings) == 2

    with db.session_scope(db_settings) as session:
        assert session.get(Sweep, healthy).status == "succeeded"
        assert session.get(Sweep, broken).status == "running"  # tried again on the next pass


def test_a_sweep_wider_than_the_queue_room_left_starts_what_fits_and_the_rest_later(db_settings, sweep_base):
    """Room for one more queued job and a parallelism of two: the submit starts one trial (it was refused whole,
    429, its Optuna study left behind), the reconciler the next once the first has left the queue."""
    settings = db_settings.model_copy(update={"MAX_QUEUED_JOBS_PER_USER": 1})
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        started = sweeps.submit_sweep(session, alice, sweep_base, _spec(2), settings=settings)
    assert (started.status, started.trials["queued"]) == ("running", 1)
    with db.session_scope(settings) as session:
        session.execute(update(Job).where(Job.sweep_id == started.id).values(status="running"))
    sweeps.reconcile_sweeps(settings)
    with db.session_scope(settings) as session:
        assert session.get(Sweep, started.id).trials_started == 2
        assert sweeps.get_sweep(session, alice, started.id).trials["queued"] == 1
