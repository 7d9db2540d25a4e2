"""The retry backoff, on SQLite and PostgreSQL: a job released after a retryable failure is not claimed before its
backoff ends (by any worker: the claim refuses it), the reconciler sends it once it has, and a real executor run
then claims it, with attempts and events to match. Time passing is simulated by moving the row's ``not_before``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from finetune_platform.db import session as db
from finetune_platform.db.models import Job, JobOutbox, utcnow
from finetune_platform.services import jobs
from finetune_platform.services.job_states import Backoff
from finetune_platform.services.users import create_user
from finetune_platform.settings import Settings
from finetune_platform.worker.executor import execute_job
from finetune_platform.worker.reconciler import reconcile_once
from tests.conftest import ROOT


def test_backoff_doubles_per_failed_attempt_up_to_its_cap():
    backoff = Backoff(base_seconds=5, max_seconds=300)
    assert [backoff.after(attempt) for attempt in range(1, 9)] == [5, 10, 20, 40, 80, 160, 300, 300]
    assert backoff.after(10_000) == 300  # no overflow however many attempts
    assert Backoff().after(3) == Backoff(0, 300).after(3) == 0
    assert Backoff.of(Settings(RETRY_BACKOFF_SECONDS=2, RETRY_BACKOFF_MAX_SECONDS=7)) == Backoff(2, 7)
    assert Backoff.of(Settings()) == Backoff(5, 300)  # the defaults


@pytest.fixture
def backoff_settings(db_settings, tmp_path) -> Settings:
    """The backend under test, the filesystem broker, a backoff far longer than the test."""
    settings = Settings(
        FINETUNE_HOME=db_settings.FINETUNE_HOME,
        DATABASE_URL=db_settings.DATABASE_URL,
        MLFLOW_ENABLED=False,
        QUEUE_NAME=f"backoff-{tmp_path.name}"[:60],
        RETRY_BACKOFF_SECONDS=600,
        RETRY_BACKOFF_MAX_SECONDS=3600,
    )
    db.upgrade(settings)
    return settings


def submitted(settings: Settings, max_attempts: int = 3) -> tuple[object, str]:
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        config = {
            "experiment": "backoff",
            "data": {"train_file": str(ROOT / "data/sample/train.csv")},
            "training": {"epochs": 1},
        }
        return alice, jobs.submit_job(session, alice, config, max_attempts=max_attempts).job.id


def row(settings: Settings, job_id: str) -> Job:
    with db.session_scope(settings) as session:
        return session.get(Job, job_id)


def time_passes(settings: Settings, job_id: str) -> None:
    """The backoff ends: as if its seconds had gone by."""
    with db.session_scope(settings) as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(not_before=utcnow() - timedelta(seconds=1))
        )


def test_a_released_job_waits_out_its_backoff_then_runs(backoff_settings):
    settings = backoff_settings
    alice, job_id = submitted(settings)
    attempts_seen = []

    def flaky(context):  # fails the way a lost connection would (retryable), then succeeds
        attempts_seen.append(context.job.attempts)
        if context.job.attempts == 1:
            raise ConnectionError("the dataset share went away")
        return {"message": "done"}

    before = utcnow()
    assert execute_job(settings, job_id, body=flaky) == "requeued"
    job = row(settings, job_id)
    assert (job.status, job.attempts, job.enqueued_at) == ("queued", 1, None)
    assert job.error == "ConnectionError: the dataset share went away"
    wait = jobs._aware(job.not_before) - before
    assert timedelta(seconds=600) <= wait <= timedelta(seconds=700)

    # A message before the backoff ends (a duplicate, or another worker's): no worker claims the job.
    assert execute_job(settings, job_id, body=flaky) == "held"
    with db.session_scope(settings) as session:
        assert jobs.claim_job(session, job_id, "w9:9:z", 30, running_limit=None) == jobs.Held(
            f"retry backoff: not claimed before {jobs._aware(job.not_before):%Y-%m-%d %H:%M:%S} UTC"
        )
    job = row(settings, job_id)
    assert (job.status, job.attempts, job.enqueued_at) == ("queued", 1, None)
    # The reconciler does not send it yet, and says when it is due.
    sweep = reconcile_once(settings)
    assert sweep.to_enqueue == [] and jobs._aware(sweep.next_due) == jobs._aware(job.not_before)
    assert row(settings, job_id).enqueued_at is None

    time_passes(settings, job_id)
    sweep = reconcile_once(settings)
    assert (sweep.to_enqueue, sweep.next_due) == ([job_id], None)
    assert row(settings, job_id).enqueued_at is not None  # sent
    assert execute_job(settings, job_id, body=flaky) == "succeeded"
    job = row(settings, job_id)
    assert (job.status, job.attempts, job.not_before, attempts_seen) == ("succeeded", 2, None, [1, 2])
    with db.session_scope(settings) as session:
        events = jobs.job_events(session, alice, job_id)
    assert [(e["kind"], e["data"].get("backoff_seconds")) for e in events] == [
        ("submitted", None),
        ("started", None),
        ("retrying", 600.0),
        ("started", None),
        ("succeeded", None),
    ]
    assert events[2]["message"] == "attempt 1 of 3 failed: ConnectionError: the dataset share went away"


def test_the_backoff_doubles_and_the_budget_still_ends_the_job(backoff_settings):
    settings = backoff_settings
    _, job_id = submitted(settings, max_attempts=3)
    waits = []
    for attempt in (1, 2):
        assert (
            execute_job(settings, job_id, body=lambda c: (_ for _ in ()).throw(OSError("disk"))) == "requeued"
        )
        job = row(settings, job_id)
        waits.append(round((jobs._aware(job.not_before) - jobs._aware(job.updated_at)).total_seconds()))
        assert job.attempts == attempt
        time_passes(settings, job_id)
    assert waits == [600, 1200]
    assert execute_job(settings, job_id, body=lambda c: (_ for _ in ()).throw(OSError("disk"))) == "failed"
    job = row(settings, job_id)
    assert (job.status, job.attempts, job.error) == (
        "failed",
        3,
        "gave up after 3 attempts; last: OSError: disk",
    )


def test_preemption_and_retry_by_hand_wait_for_nothing(backoff_settings):
    settings = backoff_settings
    alice, job_id = submitted(settings)
    with db.session_scope(settings) as session:
        jobs.claim_job(session, job_id, "w1", 30)
        job = jobs.release_job(
            session, job_id, "w1", "shutting down", count_attempt=False, backoff=Backoff(600, 600)
        )
    assert job.not_before is None
    with db.session_scope(settings) as session:
        assert isinstance(jobs.claim_job(session, job_id, "w2", 30), jobs.Claim)
        job = jobs.release_job(session, job_id, "w2", "flaky", count_attempt=True, backoff=Backoff(600, 600))
    assert job.not_before is not None
    with db.session_scope(settings) as session:
        jobs.cancel_job(session, alice, job_id)
    with db.session_scope(settings) as session:
        retried = jobs.retry_job(session, alice, job_id, settings=settings)
    assert (retried.status, retried.not_before) == ("queued", None)
    with db.session_scope(settings) as session:
        assert isinstance(jobs.claim_job(session, job_id, "w3", 30), jobs.Claim)
        assert session.query(JobOutbox).filter_by(job_id=job_id).count() == 2  # submit and retry
