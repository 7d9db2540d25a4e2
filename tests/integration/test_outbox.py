"""Dispatch after commit, on SQLite and PostgreSQL, over the filesystem queue and a real Redis: a queued job's
message is an outbox row of its own transaction, sent once that commits; a process that dies between the commit and
the send loses nothing (the reconciler drains the row, once)."""

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
from finetune_platform.worker.reconciler import reconcile_once
from tests.conftest import ROOT
from tests.integration.queue_harness import require_redis

CONFIG = {
    "experiment": "outbox",
    "data": {
        "train_file": str(ROOT / "data/sample/train.csv"),
        "validation_file": str(ROOT / "data/sample/validation.csv"),
    },
    "training": {"epochs": 1},
}


@pytest.fixture(params=["filesystem", "redis"])
def queued_settings(request, db_settings):
    """The app database (SQLite, PostgreSQL) with a queue of this test's own on the filesystem or on Redis."""
    values = {"QUEUE_NAME": f"outbox-{secrets.token_hex(4)}"}
    if request.param == "redis":
        values["REDIS_URL"] = require_redis()
    settings = db_settings.model_copy(update=values)
    db.upgrade(settings)
    yield settings
    if request.param == "redis":
        import redis

        redis.Redis.from_url(values["REDIS_URL"]).delete(values["QUEUE_NAME"])


def outbox_rows(settings) -> list[tuple[str, bool]]:
    with db.session_scope(settings) as session:
        rows = session.execute(select(JobOutbox.job_id, JobOutbox.sent_at).order_by(JobOutbox.id)).all()
    return [(job_id, sent_at is not None) for job_id, sent_at in rows]


def enqueued(settings, job_id: str) -> bool:
    with db.session_scope(settings) as session:
        return session.get(Job, job_id).enqueued_at is not None


def test_a_submitted_job_lands_one_message_once_committed(queued_settings):
    settings = queued_settings
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
    with db.session_scope(settings) as session:
        job = jobs.submit_job(session, alice, CONFIG, settings=settings).job
        session.flush()
        assert broker.queue_size(settings) == 0  # nothing goes out before the commit
    assert broker.queue_size(settings) == 1
    assert outbox_rows(settings) == [(job.id, True)] and enqueued(settings, job.id)
    # The same idempotency key twice: one job, one row, one message.
    with db.session_scope(settings) as session:
        first = jobs.submit_job(session, alice, CONFIG, idempotency_key="k", settings=settings)
    with db.session_scope(settings) as session:
        again = jobs.submit_job(session, alice, CONFIG, idempotency_key="k", settings=settings)
    assert first.created and not again.created and again.job.id == first.job.id
    assert broker.queue_size(settings) == 2
    assert outbox_rows(settings) == [(job.id, True), (first.job.id, True)]
    # A transaction rolled back takes its job and its message with it.
    with pytest.raises(RuntimeError), db.session_scope(settings) as session:
        jobs.submit_job(session, alice, CONFIG, settings=settings)
        raise RuntimeError("the caller failed after the submit")
    assert broker.queue_size(settings) == 2 and len(outbox_rows(settings)) == 2
    # A retried job is sent the same way: after the commit, once.
    with db.session_scope(settings) as session:
        jobs.cancel_job(session, alice, job.id)
    with db.session_scope(settings) as session:
        jobs.retry_job(session, alice, job.id, settings=settings)
    assert broker.queue_size(settings) == 3
    assert outbox_rows(settings) == [(job.id, True), (first.job.id, True), (job.id, True)]
    assert drain(settings, older_than=0) == []  # nothing was left unsent


DIE_AFTER_COMMIT = """
import json, os, sys
from sqlalchemy import event
from sqlalchemy.orm import Session
from finetune_platform.db.session import session_scope
from finetune_platform.services import jobs
from finetune_platform.services.users import create_user
from finetune_platform.settings import Settings

settings = Settings(**json.loads(sys.argv[1]))
with session_scope(settings) as session:
    user = create_user(session, "alice", "long enough")

def die(session):  # runs before the outbox's own after-commit hook: the process ends between commit and send
    print(next(iter(session.info["finetune_outbox_pending"])), flush=True)
    os._exit(9)

event.listen(Session, "after_commit", die, insert=True)
with session_scope(settings) as session:
    jobs.submit_job(session, user, json.loads(sys.argv[2]), settings=settings)
"""


def test_a_process_dead_between_commit_and_send_loses_no_job(queued_settings):
    settings = queued_settings
    fields = {"FINETUNE_HOME", "MODEL_REGISTRY_DIR", "DATABASE_URL", "REDIS_URL", "QUEUE_NAME"}
    values = json.dumps({k: str(v) for k, v in settings.model_dump(include=fields).items() if v is not None})
    died = subprocess.run(
        [sys.executable, "-c", DIE_AFTER_COMMIT, values, json.dumps(CONFIG)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert died.returncode == 9, died.stderr
    job_id = died.stdout.strip()
    # Committed, never sent: the job is queued with an unsent outbox row and no message.
    with db.session_scope(settings) as session:
        assert session.get(Job, job_id).status == "queued"
    assert outbox_rows(settings) == [(job_id, False)] and broker.queue_size(settings) == 0
    # A row younger than a few seconds may still be on its way: the reconciler leaves it to its writer.
    reconcile_once(settings)
    assert outbox_rows(settings) == [(job_id, False)] and broker.queue_size(settings) == 0
    with db.session_scope(settings) as session:  # a few seconds later
        session.execute(
            update(JobOutbox).values(created_at=utcnow() - timedelta(seconds=outbox.DRAIN_AFTER_SECONDS + 1))
        )
    reconcile_once(settings)
    assert outbox_rows(settings) == [(job_id, True)] and broker.queue_size(settings) == 1
    assert enqueued(settings, job_id)
    reconcile_once(settings)  # drained twice: nothing more is sent
    assert drain(settings, older_than=0) == []
    assert broker.queue_size(settings) == 1 and outbox_rows(settings) == [(job_id, True)]


def test_a_row_of_a_job_cancelled_before_the_drain_is_closed_unsent(db_settings):
    settings = db_settings.model_copy(update={"QUEUE_NAME": f"outbox-{secrets.token_hex(4)}"})
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        job = jobs.submit_job(session, alice, CONFIG, settings=settings).job
        session.info.pop("finetune_outbox_pending")  # as if the process died after its commit
    with db.session_scope(settings) as session:
        jobs.cancel_job(session, alice, job.id)
    assert outbox_rows(settings) == [(job.id, False)]
    assert drain(settings, older_than=0) == []  # a cancelled job needs no message
    assert outbox_rows(settings) == [(job.id, True)] and broker.queue_size(settings) == 0


def test_a_refused_send_leaves_the_row_for_the_reconciler(db_settings, free_redis_port):
    settings = db_settings.model_copy(
        update={
            "QUEUE_NAME": f"outbox-{secrets.token_hex(4)}",
            "REDIS_URL": f"redis://127.0.0.1:{free_redis_port}/0",
        }
    )
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
    with db.session_scope(settings) as session:
        job = jobs.submit_job(session, alice, CONFIG, settings=settings).job
    assert outbox.unsent(session) == [job.id]  # what the CLI tells its user
    assert outbox_rows(settings) == [(job.id, False)] and not enqueued(settings, job.id)
    # The broker answers again: the reconciler's pass sends the never-sent job once and closes its row.
    settings = settings.model_copy(update={"REDIS_URL": require_redis()})
    try:
        reconcile_once(settings)
        assert outbox_rows(settings) == [(job.id, True)] and broker.queue_size(settings) == 1
        reconcile_once(settings)
        assert broker.queue_size(settings) == 1
    finally:
        import redis

        redis.Redis.from_url(settings.REDIS_URL).delete(settings.QUEUE_NAME)


@pytest.fixture
def free_redis_port():
    from tests.conftest import free_port

    return free_port()  # nothing listens there
