"""Per-account limits where they hold, on SQLite and PostgreSQL: a claim over the running-jobs limit leaves the job
queued (no attempt spent) until a slot frees; submit and retry stop at the queued-jobs limit; a real training that
runs past its time limit is stopped at a step and failed for good; `finetune users set-quota`."""

from __future__ import annotations

import re
import threading

import pytest

from finetune_platform.db import session as db
from finetune_platform.db.models import Job, JobEvent, JobStatus, User
from finetune_platform.errors import QuotaExceeded
from finetune_platform.services import jobs
from finetune_platform.services.users import create_user, update_user
from tests.conftest import ROOT, tiny_config_dict

PASSWORD = "quota-test-passphrase-7"
WAITING = (
    "waiting: its owner already runs the most jobs one account may run at once (1, MAX_RUNNING_JOBS_PER_USER); "
    "it starts after one of them ends"
)


def quickstart_config() -> dict:
    return {
        "experiment": "quotas",
        "data": {
            "train_file": str(ROOT / "data/sample/train.csv"),
            "validation_file": str(ROOT / "data/sample/validation.csv"),
        },
        "training": {"epochs": 1},
    }


@pytest.fixture
def people(db_settings):
    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        return create_user(session, "alice", PASSWORD), create_user(session, "bob", PASSWORD)


def submitted(settings, user, **kwargs) -> str:
    with db.session_scope(settings) as session:
        return jobs.submit_job(session, user, quickstart_config(), settings=settings, **kwargs).job.id


def claim(settings, job_id: str, worker: str, limit: int = 1):
    with db.session_scope(settings) as session:
        return jobs.claim_job(session, job_id, worker, 30, running_limit=limit)


def row(settings, job_id: str) -> Job:
    with db.session_scope(settings) as session:
        return session.get(Job, job_id)


def event_kinds(settings, job_id: str) -> list[str]:
    with db.session_scope(settings) as session:
        return list(session.scalars(select_events(job_id)))


def select_events(job_id: str):
    from sqlalchemy import select

    return select(JobEvent.kind).where(JobEvent.job_id == job_id).order_by(JobEvent.id)


def test_a_claim_over_the_running_limit_leaves_the_job_queued_without_spending_an_attempt(
    db_settings, people
):
    alice, bob = people
    first, second, bobs = (submitted(db_settings, user) for user in (alice, alice, bob))
    assert isinstance(claim(db_settings, first, "w1:1:a"), jobs.Claim)
    held = claim(db_settings, second, "w2:2:b")
    assert held == jobs.Held(WAITING)
    job = row(db_settings, second)
    assert (job.status, job.attempts, job.enqueued_at, job.error, job.lease_owner) == (
        "queued",
        0,
        None,
        WAITING,
        None,
    )
    assert claim(db_settings, second, "w3:3:c") == jobs.Held(WAITING)  # the message came again: still waiting
    assert row(db_settings, second).attempts == 0
    assert event_kinds(db_settings, second) == [
        "submitted",
        "waiting",
    ]  # one event per reason, not per message
    assert isinstance(claim(db_settings, bobs, "w4:4:d"), jobs.Claim)  # other accounts are not held up
    with db.session_scope(db_settings) as session:
        sweep = jobs.reconcile(session, requeue_after=120, broker_lost_messages=False)
        assert second in sweep.to_enqueue  # the reconciler sends it again
        assert jobs.count_queued(session) == 0  # and expects no broker message for it meanwhile
    with db.session_scope(db_settings) as session:
        jobs.finish_job(session, first, "w1:1:a", JobStatus.SUCCEEDED, "done")
    started = claim(db_settings, second, "w5:5:e")
    assert isinstance(started, jobs.Claim) and started.job.attempts == 1
    job = row(db_settings, second)
    assert (job.status, job.attempts, job.error, job.lease_owner) == ("running", 1, None, "w5:5:e")
    assert event_kinds(db_settings, second) == ["submitted", "waiting", "started"]


def test_an_accounts_own_running_limit_wins_over_the_default(db_settings, people):
    alice, _ = people
    first, second, third = (submitted(db_settings, alice) for _ in range(3))
    with db.session_scope(db_settings) as session:
        update_user(session, alice.id, limits={"max_running_jobs": 2})
    assert isinstance(claim(db_settings, first, "w1:1:a"), jobs.Claim)
    assert isinstance(claim(db_settings, second, "w2:2:b"), jobs.Claim)
    assert claim(db_settings, third, "w3:3:c") == jobs.Held(
        "waiting: its owner already runs the most jobs one account may run at once "
        "(2, the account's max_running_jobs); it starts after one of them ends"
    )


def test_two_workers_claiming_one_accounts_jobs_at_once_start_only_what_the_limit_allows(db_settings, people):
    alice, _ = people
    ids = [submitted(db_settings, alice) for _ in range(4)]
    barrier, outcomes = threading.Barrier(len(ids)), {}

    def work(job_id: str) -> None:
        barrier.wait()
        outcomes[job_id] = claim(db_settings, job_id, f"w:{job_id[:6]}", limit=2)

    threads = [threading.Thread(target=work, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(type(outcome).__name__ for outcome in outcomes.values()) == [
        "Claim",
        "Claim",
        "Held",
        "Held",
    ]
    with db.session_scope(db_settings) as session:
        statuses = sorted(session.get(Job, job_id).status for job_id in ids)
    assert statuses == ["queued", "queued", "running", "running"]


def test_submit_and_retry_stop_at_the_queued_limit(db_settings, people):
    alice, bob = people
    settings = db_settings.model_copy(update={"MAX_QUEUED_JOBS_PER_USER": 2})
    first = submitted(settings, alice, idempotency_key="k1")
    submitted(settings, alice)
    message = (
        "too many queued jobs: 2 of the account's jobs are waiting to start, the most it may have queued is 2 "
        "(MAX_QUEUED_JOBS_PER_USER); wait for one to start, or cancel one"
    )
    with pytest.raises(QuotaExceeded) as caught:
        submitted(settings, alice)
    assert str(caught.value) == message
    assert submitted(settings, alice, idempotency_key="k1") == first  # a repeat is no new job
    submitted(settings, bob)  # per account
    with db.session_scope(settings) as session:
        jobs.cancel_job(session, alice, first)
    submitted(settings, alice)  # the slot the cancel freed
    with pytest.raises(QuotaExceeded) as caught, db.session_scope(settings) as session:
        jobs.retry_job(session, alice, first, settings=settings)
    assert str(caught.value) == message
    assert row(settings, first).status == "cancelled"
    with db.session_scope(settings) as session:
        counts = {
            user.username: session.query(Job).filter(Job.owner_id == user.id).count() for user in (alice, bob)
        }
    assert counts == {"alice": 3, "bob": 1}


# -- the time limit, in a worker ----------------------------------------------------------------------------


def test_the_step_after_the_time_limit_saves_a_checkpoint_and_fails_the_job_for_good():
    from finetune_platform.training.callbacks import Control, RunState
    from finetune_platform.worker.control import JobCallback, JobControl, JobTimeLimit

    reason = "stopped: exceeded the job time limit of 0.5 h (JOB_MAX_HOURS)"
    within = JobControl(used_seconds=100.0, limit_seconds=1800.0, limit_reason=reason)
    callback, control = JobCallback(lambda **_: None, within, None), Control(evaluate=True)
    callback.on_step(RunState(step=6), control)
    assert (control.stop, control.evaluate, callback.stop_error) == (False, True, None)
    spent = JobControl(
        used_seconds=1800.0, limit_seconds=1800.0, limit_reason=reason
    )  # earlier attempts ran it
    callback, control = JobCallback(lambda **_: None, spent, None), Control()
    callback.on_step(RunState(step=7), control)
    assert control.stop and control.save and not control.evaluate
    assert isinstance(callback.stop_error, JobTimeLimit) and not callback.stop_error.retryable
    assert str(callback.stop_error) == f"{reason}; saved checkpoint-7"


STOPPED = re.compile(
    r"stopped: exceeded the job time limit of 0\.001 h \((?P<source>JOB_MAX_HOURS|the account's max_job_hours)\); "
    r"(saved checkpoint-(?P<step>\d+)|no checkpoint had been saved|the last good checkpoint, checkpoint-\d+, is kept)"
)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["setting", "account"])
def test_a_training_past_its_time_limit_is_stopped_and_not_retried(
    tmp_path, tiny_bert, sentiment_data, where
):
    """A real tiny training far longer than its 3.6 s (0.001 h): the worker stops it and fails it, attempt 1 of 3."""
    from finetune_platform.services.users import local_user
    from finetune_platform.settings import Settings
    from finetune_platform.worker.executor import execute_job

    limit = {"JOB_MAX_HOURS": 0.001} if where == "setting" else {}
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False, JOB_LEASE_SECONDS=30, **limit)
    db.upgrade(settings)
    config = tiny_config_dict(
        tiny_bert, *sentiment_data, tmp_path / "results", max_steps=20_000, logging_steps=1, eval_steps=10_000
    )
    with db.session_scope(settings) as session:
        user = local_user(session)
        if where == "account":
            update_user(session, user.id, limits={"max_job_hours": 0.001})
        job_id = jobs.submit_job(session, user, config, settings=settings).job.id
    assert execute_job(settings, job_id) == "failed"
    job = row(settings, job_id)
    assert (job.status, job.attempts, job.max_attempts) == ("failed", 1, 3)
    stopped = STOPPED.fullmatch(job.error)
    assert stopped, job.error
    assert stopped["source"] == ("JOB_MAX_HOURS" if where == "setting" else "the account's max_job_hours")
    assert job.progress["run_seconds"] >= 3.6
    assert "retrying" not in event_kinds(settings, job_id)
    if stopped["step"]:  # stopped mid-training (not while loading): the step's checkpoint is complete
        assert job.progress["step"] < 20_000
        checkpoint = (
            tmp_path
            / "results"
            / "tiny"
            / job_id
            / "artifacts"
            / "checkpoints"
            / f"checkpoint-{stopped['step']}"
        )
        assert (checkpoint / "COMPLETE").is_file()
    with db.session_scope(settings) as session:  # retried by hand, it has no time left: it fails at once
        jobs.retry_job(session, local_user(session), job_id, settings=settings)
    assert execute_job(settings, job_id) == "failed"
    assert STOPPED.fullmatch(row(settings, job_id).error)


def test_cli_set_quota(db_settings, monkeypatch):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        create_user(session, "erin", PASSWORD)
    monkeypatch.setenv("FINETUNE_HOME", str(db_settings.FINETUNE_HOME))
    if db_settings.DATABASE_URL:
        monkeypatch.setenv("DATABASE_URL", db_settings.DATABASE_URL)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        done = runner.invoke(app, ["users", "set-quota", "erin", "--queued", "5", "--hours", "2.5"])
        assert (done.exit_code, done.output.strip()) == (0, "erin: queued 5, running 4 (default), hours 2.5")
        with db.session_scope(db_settings) as session:
            erin = session.query(User).filter(User.username == "erin").one()
            assert (erin.max_queued_jobs, erin.max_running_jobs, erin.max_job_hours) == (5, None, 2.5)
        bad = runner.invoke(app, ["users", "set-quota", "erin", "--running", "0"])
        assert (
            bad.exit_code == 2
            and "error: max_running_jobs: a whole number from 1 to 10000 (got 0)" in bad.output
        )
        reset = runner.invoke(app, ["users", "set-quota", "erin", "--reset", "--running", "3"])
        assert reset.output.strip() == "erin: queued 20 (default), running 3, hours 24 (default)"
        missing = runner.invoke(app, ["users", "set-quota", "nobody", "--queued", "1"])
        assert missing.exit_code == 1 and "error: no user 'nobody'" in missing.output
    finally:
        get_settings.cache_clear()
