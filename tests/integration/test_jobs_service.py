"""The jobs service on SQLite and PostgreSQL: submit (validated), idempotency, ownership, cancel, retry."""

from __future__ import annotations

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
        and str(caught.value) == f"job {queued.id} is already cancelled"
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
