"""The audit log: what is recorded, the hash chain and its verification, append-only on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from finetune_platform.db.models import AuditEvent
from finetune_platform.db.session import engine_for, session_scope
from finetune_platform.services.audit import record, verify_chain
from tests.api.conftest import login


def entries(api, **filters) -> list[dict]:
    query = "&".join(f"{key}={value}" for key, value in filters.items())
    return api.as_("root").get(f"/audit/logs?limit=100&{query}").json()["data"]


def test_changes_and_denials_are_recorded_with_who_what_where(api):
    alice = api.as_("alice", address="192.0.2.10")
    task = api.ids["task"]
    assert alice.post(f"/task/{task}/cancel").status_code == 200
    assert alice.get("/users").status_code == 403
    assert api.as_(None, address="192.0.2.11").get("/tasks").status_code == 401
    assert api.as_("bob", address="192.0.2.12").get(f"/task/{task}").status_code == 404
    cancel = entries(api, action="task.cancel", target=f"task:{task}")[0]
    assert (cancel["actor_id"], cancel["outcome"], cancel["address"]) == (
        api.ids["alice"],
        "ok",
        "192.0.2.10",
    )
    assert cancel["detail"] == {"status": "cancelled"}
    denied = entries(api, action="denied", outcome="denied")
    forbidden = next(e for e in denied if e["target"] == "GET /users" and e["address"] == "192.0.2.10")
    assert forbidden["actor_id"] == api.ids["alice"] and forbidden["detail"] == {
        "status": 403,
        "reason": "admin role required",
    }
    anonymous = next(e for e in denied if e["target"] == "GET /tasks" and e["address"] == "192.0.2.11")
    assert anonymous["actor_id"] is None and anonymous["detail"]["status"] == 401
    hidden = next(e for e in denied if e["address"] == "192.0.2.12")
    assert (hidden["actor_id"], hidden["target"]) == (api.ids["bob"], "GET /task/{task_id}")
    assert hidden["detail"] == {"status": 404, "reason": f"no job {task!r}"}
    submitted = entries(api, action="train.submit", target=f"task:{task}")
    assert len(submitted) == 1 and submitted[0]["detail"] == {"dataset": api.ids["dataset"]}
    page = api.as_("root").get("/audit/logs?limit=2&offset=1").json()
    assert len(page["data"]) == 2 and page["count"] >= 5


def test_a_failed_login_is_recorded_once_whatever_the_database(api):
    """The failure is written in its own transaction: the request's is rolled back with the 401 (on
    PostgreSQL that used to take the entry with it)."""
    for username, address in (("alice", "192.0.2.41"), ("nobody-here", "192.0.2.42")):
        with session_scope(api.settings) as session:
            before = session.scalar(select(func.max(AuditEvent.id))) or 0
        response = login(TestClient(api.app, client=(address, 1)), username, "wrong password")
        assert response.status_code == 401
        with session_scope(api.settings) as session:
            written = session.scalars(select(AuditEvent).where(AuditEvent.id > before)).all()
            assert [(e.action, e.outcome, e.target, e.address, e.actor_id) for e in written] == [
                ("login", "failed", f"username:{username}", address, None)
            ]


def test_concurrent_writers_keep_one_valid_chain(api):
    errors: list[str] = []

    def write(worker: int) -> None:
        for number in range(10):
            try:
                with session_scope(api.settings) as session:
                    record(session, "test.concurrent", actor_id=None, target=f"w{worker}-{number}")
            except Exception as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=write, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with session_scope(api.settings) as session:
        report = verify_chain(session)
    assert report.ok, report.problem
    assert len(entries(api, action="test.concurrent")) == 60


def _verify_cli(api):
    from typer.testing import CliRunner

    from finetune_platform.cli import app
    from finetune_platform.settings import get_settings

    get_settings.cache_clear()  # the command reads the environment given here
    env = {"FINETUNE_HOME": str(api.settings.FINETUNE_HOME), "DATABASE_URL": api.settings.DATABASE_URL or ""}
    try:
        return CliRunner().invoke(app, ["audit", "verify"], env=env)
    finally:
        get_settings.cache_clear()


def test_verify_names_the_first_altered_or_deleted_entry(api):
    with session_scope(api.settings) as session:
        for number in range(3):
            record(session, "test.chain", actor_id=None, target=f"t{number}")
    intact = _verify_cli(api)
    assert intact.exit_code == 0 and intact.output.startswith("audit log intact: ")
    ids = [entry["id"] for entry in entries(api, action="test.chain")][::-1]  # oldest first
    engine = engine_for(api.settings.database_url)
    if engine.dialect.name == "postgresql":
        for statement in (
            f"UPDATE audit_events SET target = 'forged' WHERE id = {ids[1]}",
            f"DELETE FROM audit_events WHERE id = {ids[1]}",
            "TRUNCATE audit_events",
        ):
            with pytest.raises(DBAPIError, match="audit_events is append-only"), engine.begin() as connection:
                connection.execute(text(statement))
        return
    with engine.begin() as connection:
        connection.execute(text(f"UPDATE audit_events SET target = 'forged' WHERE id = {ids[1]}"))
    altered = _verify_cli(api)
    assert altered.exit_code == 1
    assert (
        f"audit log broken at entry {ids[1]}: altered (its content no longer matches its hash)"
        in altered.output
    )
    with engine.begin() as connection:
        connection.execute(text(f"DELETE FROM audit_events WHERE id = {ids[1]}"))
    deleted = _verify_cli(api)
    assert deleted.exit_code == 1
    assert f"entry {ids[2]}: the entry before it was deleted or altered (broken link)" in deleted.output
