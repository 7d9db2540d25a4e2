"""POST /task/{task_id}/retry: the CLI's `finetune jobs retry` over HTTP, with its rules and its audit entry. A failed
or cancelled task of the caller's (an admin: anyone's) is queued again with a fresh attempt budget (200); another
user's task reads as missing (404); a queued, running or succeeded one is refused (409); an account at its
queued-jobs limit gets 429 and its task stays as it was. On SQLite and PostgreSQL, through the HTTP client."""

from __future__ import annotations

from sqlalchemy import select, update

from finetune_platform.db.models import AuditEvent, Job, JobEvent, JobOutbox
from finetune_platform.db.session import session_scope
from tests.api.conftest import Api
from tests.api.test_quotas import new_account, train


def submitted(api: Api, who: str = "alice") -> str:
    response = api.as_(who).post(
        "/train", json={"config": {"experiment": "retry-test"}, "dataset_id": api.ids["dataset"]}
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def cancelled(api: Api, who: str = "alice") -> str:
    task = submitted(api, who)
    answer = api.as_(who).post(f"/task/{task}/cancel")
    assert (answer.status_code, answer.json()["status"]) == (200, "cancelled"), answer.text
    return task


def set_row(api: Api, task: str, **values: object) -> None:
    with session_scope(api.settings) as session:
        session.execute(update(Job).where(Job.id == task).values(**values))


def row(api: Api, task: str) -> Job:
    with session_scope(api.settings) as session:
        job = session.get(Job, task)
        session.expunge(job)
        return job


def last_audit(api: Api) -> AuditEvent:
    with session_scope(api.settings) as session:
        entry = session.scalars(select(AuditEvent).order_by(AuditEvent.id.desc()).limit(1)).one()
        session.expunge(entry)
        return entry


def events(api: Api, task: str) -> list[tuple[str, str]]:
    with session_scope(api.settings) as session:
        rows = session.execute(
            select(JobEvent.kind, JobEvent.message).where(JobEvent.job_id == task).order_by(JobEvent.id)
        )
        return [tuple(found) for found in rows]


def outbox_rows(api: Api, task: str) -> int:
    with session_scope(api.settings) as session:
        return len(session.scalars(select(JobOutbox.id).where(JobOutbox.job_id == task)).all())


def test_the_owner_retries_a_cancelled_task(api_world):
    task = cancelled(api_world)
    owed_before = outbox_rows(api_world, task)
    answer = api_world.as_("alice").post(f"/task/{task}/retry")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["id"], body["task_id"], body["status"], body["attempts"]) == (task, task, "queued", 0)
    assert (body["finished_at"], body["error"], body["cancel_requested"]) == (None, None, False)
    assert "config" not in body  # the server's paths stay on the server
    job = row(api_world, task)
    assert (job.status, job.attempts, job.finished_at) == ("queued", 0, None)
    assert events(api_world, task)[-1] == ("retried", "queued again by alice")
    entry = last_audit(api_world)
    assert (entry.action, entry.target, entry.outcome, entry.actor_id, entry.detail) == (
        "task.retry",
        f"task:{task}",
        "ok",
        api_world.ids["alice"],
        {"status": "queued"},
    )
    assert outbox_rows(api_world, task) == owed_before + 1  # a broker message is owed for it again


def test_an_admin_retries_another_users_failed_task(api_world):
    task = submitted(api_world)
    set_row(api_world, task, status="failed", attempts=3, error="worker lost")
    answer = api_world.as_("root").post(f"/task/{task}/retry")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["status"], answer.json()["attempts"], answer.json()["owner_id"]) == (
        "queued",
        0,
        api_world.ids["alice"],
    )
    assert events(api_world, task)[-1] == ("retried", "queued again by root")
    entry = last_audit(api_world)
    assert (entry.action, entry.actor_id) == ("task.retry", api_world.ids["root"])


def test_another_users_task_and_a_missing_one_are_not_found(api_world):
    task = cancelled(api_world)
    for who, asked in (("bob", task), ("alice", "no-such-task")):
        answer = api_world.as_(who).post(f"/task/{asked}/retry")
        assert (answer.status_code, answer.json()) == (
            404,
            {"detail": f"no job {asked!r}", "code": "not_found"},
        )
    assert row(api_world, task).status == "cancelled"  # bob changed nothing


def test_only_failed_or_cancelled_tasks_are_retried(api_world):
    queued = submitted(api_world)
    answer = api_world.as_("alice").post(f"/task/{queued}/retry")
    assert (answer.status_code, answer.json()) == (
        409,
        {
            "detail": f"job {queued} is queued: only failed or cancelled jobs can be retried",
            "code": "conflict",
        },
    )
    for state in ("running", "succeeded"):
        task = submitted(api_world)
        set_row(api_world, task, status=state)
        answer = api_world.as_("alice").post(f"/task/{task}/retry")
        already = "already " if state == "succeeded" else ""
        assert (answer.status_code, answer.json()["detail"]) == (
            409,
            f"job {task} is {already}{state}: only failed or cancelled jobs can be retried",
        )
        assert row(api_world, task).status == state


def test_retry_needs_a_token(api_world):
    task = cancelled(api_world)
    answer = api_world.as_(None).post(f"/task/{task}/retry")
    assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert row(api_world, task).status == "cancelled"


def test_an_account_at_its_queued_limit_cannot_retry(api_world):
    dana = new_account(api_world, "dana")
    limited = api_world.as_("root").patch(f"/users/{api_world.ids[dana]}", json={"max_queued_jobs": 1})
    assert limited.status_code == 200, limited.text
    first = train(api_world, dana)
    assert first.status_code == 201, first.text
    task = first.json()["id"]
    assert api_world.as_(dana).post(f"/task/{task}/cancel").json()["status"] == "cancelled"
    assert train(api_world, dana).status_code == 201  # the one queued slot is taken again
    answer = api_world.as_(dana).post(f"/task/{task}/retry")
    assert (answer.status_code, answer.json()) == (
        429,
        {
            "detail": "too many queued jobs: 1 of the account's jobs are waiting to start, the most it may have "
            "queued is 1 (the account's max_queued_jobs); wait for one to start, or cancel one",
            "code": "quota_exceeded",
        },
    )
    assert row(api_world, task).status == "cancelled"
