"""The jobs service on SQLite and PostgreSQL: submit (validated), idempotency, ownership, cancel, retry."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_platform.data.validation import DatasetValidationError
from finetune_platform.db import session as db
from finetune_platform.db.models import Job, JobStatus
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.services import jobs
from finetune_platform.services.users import create_user
from tests.conftest import ROOT, write_csv


def quickstart_config(**training) -> dict:
    return {
        "experiment": "jobs",
        "data": {
            "train_file": str(ROOT / "data/sample/train.csv"),
            "validation_file": str(ROOT / "data/sample/validation.csv"),
        },
        "training": {"epochs": 1, **training},
    }


@pytest.fixture
def people(db_settings):
    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        return (
            create_user(session, "alice", "long enough"),
            create_user(session, "bob", "long enough"),
            create_user(session, "root", "long enough", "admin"),
        )


def test_submit_validates_and_queues_with_an_event(db_settings, people):
    alice, *_ = people
    with db.session_scope(db_settings) as session:
        submission = jobs.submit_job(session, alice, quickstart_config())
    job = submission.job
    assert submission.created and job.status == "queued" and job.attempts == 0 and job.owner_id == alice.id
    assert job.dataset_version and len(job.dataset_version) == 12
    assert job.config["training"]["epochs"] == 1 and job.config["lora"]["r"] == 8  # stored fully resolved
    with db.session_scope(db_settings) as session:
        events = jobs.job_events(session, alice, job.id)
    assert [(e["kind"], e["message"]) for e in events] == [("submitted", "queued by alice")]
    with db.session_scope(db_settings) as session:  # lineage: both files, once each however often used
        jobs.submit_job(session, alice, quickstart_config())
        from sqlalchemy import select

        from finetune_platform.db.models import DatasetVersionRecord

        rows = session.scalars(select(DatasetVersionRecord).order_by(DatasetVersionRecord.id)).all()
    assert [(Path(r.file).name, r.rows, r.owner_id) for r in rows] == [
        ("train.csv", 320, alice.id),
        ("validation.csv", 80, alice.id),
    ]
    assert rows[0].version == job.dataset_version and sum(rows[0].label_counts.values()) == 320


def test_invalid_config_or_data_is_refused_before_queueing(db_settings, people, tmp_path):
    alice, *_ = people
    with (
        pytest.raises(ConfigError, match=r"training\.learning_rate: Input should be greater than 0"),
        db.session_scope(db_settings) as session,
    ):
        jobs.submit_job(session, alice, quickstart_config(learning_rate=-1))
    bad = write_csv(tmp_path / "bad.csv", [("good", 1), ("", 0), ("bad", 0)])
    config = quickstart_config()
    config["data"] = {"train_file": str(bad)}
    with (
        pytest.raises(
            DatasetValidationError, match=r"column 'text' is empty or whitespace in 1 row\(s\): rows 2"
        ),
        db.session_scope(db_settings) as session,
    ):
        jobs.submit_job(session, alice, config)
    with db.session_scope(db_settings) as session:
        assert session.query(Job).count() == 0


def test_one_idempotency_key_makes_one_job(db_settings, people):
    alice, bob, _ = people
    with db.session_scope(db_settings) as session:
        first = jobs.submit_job(session, alice, quickstart_config(), idempotency_key="key-1")
    with db.session_scope(db_settings) as session:
        again = jobs.submit_job(session, alice, quickstart_config(), idempotency_key="key-1")
        other_user = jobs.submit_job(session, bob, quickstart_config(), idempotency_key="key-1")
    assert not again.created and again.job.id == first.job.id
    assert other_user.created and other_user.job.id != first.job.id  # keys are per user
    with db.session_scope(db_settings) as session:
        assert session.query(Job).count() == 2


def test_users_see_only_their_jobs_and_admins_see_all(db_settings, people):
    alice, bob, root = people
    with db.session_scope(db_settings) as session:
        mine = jobs.submit_job(session, alice, quickstart_config()).job
        jobs.submit_job(session, bob, quickstart_config())
    with db.session_scope(db_settings) as session:
        assert [j.id for j in jobs.list_jobs(session, alice).data] == [mine.id]
        assert jobs.list_jobs(session, root).count == 2
        assert jobs.list_jobs(session, root, status="running").count == 0
        with pytest.raises(NotFoundError, match=f"no job '{mine.id}'"):
            jobs.get_job(session, bob, mine.id)
        assert jobs.get_job(session, root, mine.id).id == mine.id


def test_cancel_queued_and_running_jobs_and_retry(db_settings, people):
    alice, bob, _ = people
    with db.session_scope(db_settings) as session:
        queued = jobs.submit_job(session, alice, quickstart_config()).job
        running = jobs.submit_job(session, alice, quickstart_config()).job
        session.get(Job, running.id).status = JobStatus.RUNNING.value
    with db.session_scope(db_settings) as session:
        cancelled = jobs.cancel_job(session, alice, queued.id)
        asked = jobs.cancel_job(session, alice, running.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert asked.status == "running" and asked.cancel_requested
    with pytest.raises(PlatformError) as caught, db.session_scope(db_settings) as session:
        jobs.cancel_job(session, alice, queued.id)
    assert (
        caught.value.code is ErrorCode.CONFLICT
        and str(caught.value)
        == f"job {queued.id} is already cancelled: only queued or running jobs can be cancelled"
    )
    with pytest.raises(NotFoundError), db.session_scope(db_settings) as session:
        jobs.cancel_job(session, bob, running.id)
    with db.session_scope(db_settings) as session:
        retried = jobs.retry_job(session, alice, queued.id)
        assert (retried.status, retried.attempts, retried.finished_at) == ("queued", 0, None)
        with pytest.raises(PlatformError, match="is running: only failed or cancelled jobs can be retried"):
            jobs.retry_job(session, alice, running.id)
        kinds = [e["kind"] for e in jobs.job_events(session, alice, queued.id)]
    assert kinds == ["submitted", "cancelled", "retried"]


def _submitted(db_settings, user, **kwargs) -> str:
    with db.session_scope(db_settings) as session:
        return jobs.submit_job(session, user, quickstart_config(), **kwargs).job.id


def _expire_lease(db_settings, job_id: str) -> None:
    from datetime import timedelta

    from finetune_platform.db.models import utcnow

    with db.session_scope(db_settings) as session:
        session.get(Job, job_id).lease_expires_at = utcnow() - timedelta(seconds=1)


def test_only_one_worker_claims_a_job_and_only_the_holder_writes(db_settings, people):
    alice, *_ = people
    job_id = _submitted(db_settings, alice)
    with db.session_scope(db_settings) as session:
        first = jobs.claim_job(session, job_id, "w1:1:a", 30)
    with db.session_scope(db_settings) as session:
        assert jobs.claim_job(session, job_id, "w2:2:b", 30) is None  # a duplicate message
    assert (first.job.status, first.job.stage, first.job.attempts) == ("running", "validating", 1)
    with db.session_scope(db_settings) as session:
        assert jobs.renew_lease(session, job_id, "w1:1:a", 30) is False  # no cancel asked
        assert jobs.renew_lease(session, job_id, "w2:2:b", 30) is None  # not the holder
        assert not jobs.record_progress(session, job_id, "w2:2:b", progress={"step": 99})
        assert jobs.record_progress(session, job_id, "w1:1:a", stage="training", progress={"step": 3})
        assert jobs.finish_job(session, job_id, "w2:2:b", JobStatus.SUCCEEDED, "done") is None
    with db.session_scope(db_settings) as session:
        jobs.cancel_job(session, alice, job_id)
        assert jobs.renew_lease(session, job_id, "w1:1:a", 30) is True  # the worker hears the cancel
        done = jobs.finish_job(session, job_id, "w1:1:a", JobStatus.CANCELLED, "cancelled by request")
    assert (done.status, done.stage, done.progress) == ("cancelled", "training", {"step": 3})
    with db.session_scope(db_settings) as session:
        kinds = [event["kind"] for event in jobs.job_events(session, alice, job_id)]
    assert kinds == ["submitted", "started", "stage", "cancel_requested", "cancelled"]


def test_a_succeeded_job_reads_stage_done_and_a_failed_one_keeps_where_it_stopped(db_settings, people):
    alice, *_ = people
    finished, failed = _submitted(db_settings, alice), _submitted(db_settings, alice)
    for job_id in (finished, failed):
        with db.session_scope(db_settings) as session:
            jobs.claim_job(session, job_id, "w1:1:a", 30)
            assert jobs.record_progress(session, job_id, "w1:1:a", stage="registering")
    with db.session_scope(db_settings) as session:
        done = jobs.finish_job(session, finished, "w1:1:a", JobStatus.SUCCEEDED, "registered m version 1")
        stopped = jobs.finish_job(session, failed, "w1:1:a", JobStatus.FAILED, "registry unreachable")
    assert (done.status, done.stage) == ("succeeded", "done")
    assert (stopped.status, stopped.stage, stopped.error) == ("failed", "registering", "registry unreachable")
    with db.session_scope(db_settings) as session:
        assert session.get(Job, finished).stage == "done"
        kinds = [event["kind"] for event in jobs.job_events(session, alice, finished)]
    assert kinds == ["submitted", "started", "stage", "succeeded"]  # done ends it: no stage event of its own


def test_release_counts_failed_attempts_but_not_preemptions(db_settings, people):
    alice, *_ = people
    job_id = _submitted(db_settings, alice, max_attempts=2)
    for attempt, (owner, count, expected) in enumerate(
        [("w1", False, "queued"), ("w2", True, "queued"), ("w3", True, "failed")], start=1
    ):
        with db.session_scope(db_settings) as session:
            assert jobs.claim_job(session, job_id, owner, 30) is not None, attempt
            job = jobs.release_job(session, job_id, owner, f"reason {attempt}", count_attempt=count)
        assert job.status == expected
    assert (job.attempts, job.error) == (2, "gave up after 2 attempts; last: reason 3")
    with db.session_scope(db_settings) as session:
        assert session.get(Job, job_id).preemptions == 1


def test_a_reconciler_that_read_a_stale_row_changes_nothing(tmp_path):
    """Two workers' reconcilers see the same silent worker; the second one's view is stale by the time it
    writes (the first requeued the job and a new attempt claimed it). SQLite has no row locks, so only the
    compare-and-set keeps the second from requeueing the new attempt (which then ran a third time). On
    PostgreSQL the select locks the row (FOR UPDATE SKIP LOCKED), so the stale read cannot happen there."""
    from finetune_platform.settings import Settings

    db_settings = Settings(FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards")
    db.upgrade(db_settings)
    with db.session_scope(db_settings) as session:
        alice = create_user(session, "alice", "long enough")
    job_id = _submitted(db_settings, alice, max_attempts=2)
    with db.session_scope(db_settings) as session:
        jobs.claim_job(session, job_id, "w1:10:a", 30)
    _expire_lease(db_settings, job_id)
    with db.session_scope(db_settings) as late:
        execute = late.execute

        def after_the_select(statement, *args, **kwargs):
            result = execute(statement, *args, **kwargs)
            if late.execute is after_the_select:  # once, right after the stale select
                late.execute = execute
                rows = result.all()
                with db.session_scope(db_settings) as first:
                    assert jobs.reconcile(first, requeue_after=0, broker_lost_messages=False).expired == [
                        job_id
                    ]
                with db.session_scope(db_settings) as session:
                    assert jobs.claim_job(session, job_id, "w2:11:b", 30) is not None
                return FrozenRows(rows)
            return result

        late.execute = after_the_select
        sweep = jobs.reconcile(late, requeue_after=0, broker_lost_messages=False)
    assert (sweep.expired, sweep.abandoned) == ([], [])
    with db.session_scope(db_settings) as session:
        job = session.get(Job, job_id)
        kinds = [e["kind"] for e in jobs.job_events(session, alice, job_id)]
    assert (job.status, job.attempts, job.lease_owner) == ("running", 2, "w2:11:b")
    assert kinds == ["submitted", "started", "worker_lost", "started"]


class FrozenRows:
    def __init__(self, rows):
        self.rows = rows

    def all(self):
        return self.rows


def test_reconciler_requeues_silent_workers_and_gives_up_after_the_budget(db_settings, people):
    alice, *_ = people
    job_id = _submitted(db_settings, alice, max_attempts=2)
    other = _submitted(db_settings, alice)
    with db.session_scope(db_settings) as session:
        jobs.mark_enqueued(session, [job_id, other])
        jobs.claim_job(session, job_id, "w1:10:a", 30)
    with db.session_scope(db_settings) as session:  # lease still valid, broker fine: nothing to do
        sweep = jobs.reconcile(session, requeue_after=0, broker_lost_messages=False)
    assert (sweep.expired, sweep.abandoned, sweep.to_enqueue, sweep.queued_total) == ([], [], [], 1)
    _expire_lease(db_settings, job_id)
    with db.session_scope(db_settings) as session:
        sweep = jobs.reconcile(session, requeue_after=0, broker_lost_messages=False)
    assert (sweep.expired, sweep.to_enqueue) == ([job_id], [job_id])  # never-sent again: enqueued_at reset
    with db.session_scope(db_settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 1, None)
        assert job.error.startswith("worker w1:10:a stopped renewing its lease")
        jobs.mark_enqueued(session, [job_id])
    with db.session_scope(db_settings) as session:  # the broker lost its messages: both are sent again
        sweep = jobs.reconcile(session, requeue_after=0, broker_lost_messages=True)
    assert sorted(sweep.to_enqueue) == sorted([job_id, other])
    with db.session_scope(db_settings) as session:
        jobs.claim_job(session, job_id, "w2:11:b", 30)
    _expire_lease(db_settings, job_id)
    with db.session_scope(db_settings) as session:
        sweep = jobs.reconcile(session, requeue_after=3600, broker_lost_messages=True)
    assert (sweep.expired, sweep.abandoned, sweep.to_enqueue) == ([], [job_id], [])
    with db.session_scope(db_settings) as session:
        job = jobs.get_job(session, alice, job_id)
    assert job.status == "failed"
    assert job.error.startswith("gave up after 2 attempts; last: worker w2:11:b stopped renewing its lease")
    assert job.error.endswith("killed (for example by the out-of-memory killer) or its host went away")
