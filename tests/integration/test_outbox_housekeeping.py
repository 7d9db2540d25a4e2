"""The dispatch outbox's housekeeping and the worker's own dispatch, on SQLite and PostgreSQL over the filesystem
queue: sent rows past OUTBOX_RETENTION_SECONDS are pruned by the reconciler (unsent ones never); a job the worker
hands back is owed its next message by an outbox row of the release's own transaction, sent after the commit, or by
the reconciler when the worker died before sending it or when the job's retry backoff ends."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from finetune_platform import broker
from finetune_platform.db import session as db
from finetune_platform.db.models import Job, JobOutbox, utcnow
from finetune_platform.services import jobs, outbox
from finetune_platform.services.dispatch import drain
from finetune_platform.services.users import create_user
from finetune_platform.settings import Settings
from finetune_platform.worker.executor import execute_job
from finetune_platform.worker.reconciler import reconcile_once
from tests.conftest import ROOT

CONFIG = {
    "experiment": "outbox",
    "data": {"train_file": str(ROOT / "data/sample/train.csv")},
    "training": {"epochs": 1},
}


@pytest.fixture
def outbox_settings(db_settings) -> Settings:
    """The backend under test with a filesystem queue of the test's own; no retry backoff unless a test asks."""
    settings = db_settings.model_copy(
        update={
            "QUEUE_NAME": f"housekeeping-{secrets.token_hex(4)}",
            "MLFLOW_ENABLED": False,
            "RETRY_BACKOFF_SECONDS": 0,
        }
    )
    db.upgrade(settings)
    return settings


def alice(session):
    from finetune_platform.errors import NotFoundError
    from finetune_platform.services.users import get_user

    try:
        return get_user(session, "alice")
    except NotFoundError:
        return create_user(session, "alice", "long enough")


def submitted(settings: Settings) -> str:
    with db.session_scope(settings) as session:
        owner = alice(session)
    with db.session_scope(settings) as session:
        return jobs.submit_job(session, owner, CONFIG, settings=settings).job.id


def outbox_rows(settings: Settings) -> list[tuple[str, bool]]:
    with db.session_scope(settings) as session:
        rows = session.execute(select(JobOutbox.job_id, JobOutbox.sent_at).order_by(JobOutbox.id)).all()
    return [(job_id, sent_at is not None) for job_id, sent_at in rows]


def fails_retryably(context):
    raise ConnectionError("the dataset share went away")


def age_rows(settings: Settings, seconds: float, **where) -> None:
    """Move outbox rows back in time (their creation and, when sent, their sending)."""
    moment = utcnow() - timedelta(seconds=seconds)
    with db.session_scope(settings) as session:
        clauses = [getattr(JobOutbox, key) == value for key, value in where.items()]
        session.execute(update(JobOutbox).where(*clauses).values(created_at=moment))
        session.execute(
            update(JobOutbox).where(*clauses, JobOutbox.sent_at.is_not(None)).values(sent_at=moment)
        )


def test_the_reconciler_prunes_sent_rows_past_their_retention(outbox_settings):
    settings = outbox_settings.model_copy(update={"OUTBOX_RETENTION_SECONDS": 3600})
    old, recent = submitted(settings), submitted(settings)
    backing_off = submitted(settings)
    with db.session_scope(settings) as session:  # released into a long retry backoff: its row waits, unsent
        jobs.claim_job(session, backing_off, "w1", 30)
        jobs.release_job(
            session, backing_off, "w1", "flaky", count_attempt=True, backoff=jobs.job_states.Backoff(600, 600)
        )
        outbox.add(session, settings, backing_off, send=False)
    age_rows(settings, 2 * 86400, job_id=old)
    age_rows(settings, 1800, job_id=recent)
    age_rows(settings, 2 * 86400, job_id=backing_off)  # both of its rows: the sent one goes, the unsent stays
    assert outbox_rows(settings) == [(old, True), (recent, True), (backing_off, True), (backing_off, False)]
    reconcile_once(settings)
    assert outbox_rows(settings) == [(recent, True), (backing_off, False)]
    reconcile_once(settings)  # nothing more to prune
    assert outbox_rows(settings) == [(recent, True), (backing_off, False)]
    with db.session_scope(settings) as session:
        assert outbox.prune(session, 60) == 1  # a shorter retention takes the recent one too
    assert outbox_rows(settings) == [(backing_off, False)]


def test_a_released_job_is_sent_through_the_outbox_after_the_commit(outbox_settings):
    settings = outbox_settings
    job_id = submitted(settings)
    assert broker.queue_size(settings) == 1
    assert execute_job(settings, job_id, body=fails_retryably) == "requeued"
    assert outbox_rows(settings) == [(job_id, True), (job_id, True)]  # the submit's, the release's: both sent
    assert broker.queue_size(settings) == 2
    with db.session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.enqueued_at is not None) == ("queued", 1, True)
    assert drain(settings, older_than=0) == []  # nothing left unsent


DIE_AFTER_RELEASE = """
import json, os, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
from finetune_platform.settings import Settings
from finetune_platform.worker.executor import execute_job

settings = Settings(**json.loads(sys.argv[1]))

def die(session):  # before the outbox's own after-commit hook: the worker ends between the release and the send
    if "finetune_outbox_pending" in session.info:
        os._exit(9)

def fails(context):
    raise ConnectionError("the dataset share went away")

event.listen(Session, "after_commit", die, insert=True)
execute_job(settings, sys.argv[2], body=fails)
"""


def test_a_worker_dead_between_its_release_and_the_send_loses_nothing(outbox_settings):
    settings = outbox_settings
    job_id = submitted(settings)
    fields = {"FINETUNE_HOME", "DATABASE_URL", "QUEUE_NAME", "MLFLOW_ENABLED", "RETRY_BACKOFF_SECONDS"}
    values = json.dumps({k: str(v) for k, v in settings.model_dump(include=fields).items() if v is not None})
    died = subprocess.run(
        [sys.executable, "-c", DIE_AFTER_RELEASE, values, job_id],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert died.returncode == 9, died.stderr
    with db.session_scope(settings) as session:
        job = session.get(Job, job_id)
        assert (job.status, job.attempts, job.error) == (
            "queued",
            1,
            "ConnectionError: the dataset share went away",
        )
    assert outbox_rows(settings) == [(job_id, True), (job_id, False)] and broker.queue_size(settings) == 1
    age_rows(settings, outbox.DRAIN_AFTER_SECONDS + 1)
    reconcile_once(settings)
    assert outbox_rows(settings) == [(job_id, True), (job_id, True)] and broker.queue_size(settings) == 2
    reconcile_once(settings)  # once
    assert broker.queue_size(settings) == 2
    assert execute_job(settings, job_id, body=lambda context: {"message": "done"}) == "succeeded"


def test_a_release_into_a_backoff_is_drained_when_the_backoff_ends(outbox_settings):
    settings = outbox_settings.model_copy(
        update={"RETRY_BACKOFF_SECONDS": 600, "RETRY_BACKOFF_MAX_SECONDS": 600}
    )
    job_id = submitted(settings)
    assert execute_job(settings, job_id, body=fails_retryably) == "requeued"
    assert outbox_rows(settings) == [(job_id, True), (job_id, False)] and broker.queue_size(settings) == 1
    age_rows(settings, outbox.DRAIN_AFTER_SECONDS + 1)
    assert drain(settings, older_than=0) == []  # not due while the job backs off
    reconcile_once(settings)
    assert outbox_rows(settings)[1] == (job_id, False) and broker.queue_size(settings) == 1
    with db.session_scope(settings) as session:  # the backoff ends
        session.execute(
            update(Job).where(Job.id == job_id).values(not_before=utcnow() - timedelta(seconds=1))
        )
    reconcile_once(settings)
    assert outbox_rows(settings)[1] == (job_id, True) and broker.queue_size(settings) == 2
    reconcile_once(settings)
    assert broker.queue_size(settings) == 2


def test_a_savepoint_is_not_the_commit_the_outbox_waits_for(outbox_settings):
    settings = outbox_settings
    job_id = submitted(settings)
    assert broker.queue_size(settings) == 1
    with pytest.raises(RuntimeError), db.session_scope(settings) as session:
        with db.session_scope(
            settings
        ) as other:  # the job is cancelled and queued again, in a transaction...
            jobs.cancel_job(other, alice(other), job_id)
        jobs.retry_job(session, alice(session), job_id, settings=settings)
        with session.begin_nested():  # ...that releases a savepoint (the audit log writes through one)...
            session.get(Job, job_id)
        raise RuntimeError("...and then rolls back")
    assert broker.queue_size(settings) == 1  # the rolled-back retry sent nothing
    assert outbox_rows(settings) == [(job_id, True)]
