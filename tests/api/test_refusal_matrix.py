"""Every refused request leaves exactly one audit entry, on SQLite and on PostgreSQL alike (PostgreSQL under
--extended: the same audit writes run on PostgreSQL in the default run through the other API tests).

The access matrix of test_access.py supplies the 401/403/404 cells; the other refusals (a bad token, an
oversized upload, an invalid config, a throttled login) are added here. Each request is made alone and
the entries it wrote are counted in the database.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from finetune_platform.db.models import AuditEvent
from finetune_platform.db.session import session_scope
from tests.api.conftest import login
from tests.api.test_access import MATRIX, ROLES, request_for

REFUSED = {401, 403, 404, 413, 422, 429}

# the whole matrix on SQLite in the default run; on PostgreSQL under --extended (make test-all)
EXTENDED_BACKEND = "postgresql"


def _written_by(api, call) -> tuple[object, list[AuditEvent]]:
    """The response of ``call()`` and the audit entries appended while it ran."""
    with session_scope(api.settings) as session:
        before = session.scalar(select(func.max(AuditEvent.id))) or 0
    response = call()
    with session_scope(api.settings) as session:
        return response, list(session.scalars(select(AuditEvent).where(AuditEvent.id > before)))


def _problem(name: str, response, rows: list[AuditEvent], status: int) -> str | None:
    """Why this refusal was not audited as exactly one entry naming its status, or None."""
    if response.status_code != status:
        return f"{name}: answered {response.status_code}, expected {status}"
    seen = [(row.action, row.outcome, row.detail) for row in rows]
    if len(rows) != 1:
        return f"{name} ({status}): {len(rows)} audit entries {seen}"
    row = rows[0]
    if row.outcome not in {"denied", "failed"} or row.detail.get("status") != status:
        return f"{name} ({status}): audited as {seen}"
    return None


def _limited_login_app(api):
    """The same database behind a second API process whose login window cannot elapse during the test."""
    from finetune_platform.api.app import create_app

    return create_app(api.settings.model_copy(update={"LOGIN_WINDOW_SECONDS": 3600}))


def test_every_refusal_is_audited_once(api):
    problems: list[str] = []
    for route in sorted(MATRIX):
        for role, status in zip(ROLES, MATRIX[route], strict=True):
            if status not in REFUSED:
                continue
            method, url, kwargs = request_for(route, api)
            client = api.as_(None if role == "anonymous" else role)
            response, rows = _written_by(api, lambda: client.request(method, url, **kwargs))  # noqa: B023
            problems.append(_problem(f"{role} {route}", response, rows, status))

    forged = api.as_(None)
    forged.headers["Authorization"] = "Bearer not-a-token"
    alice, dataset = api.as_("alice"), api.ids["dataset"]
    limit = api.settings.MAX_UPLOAD_BYTES
    oversized = b"text,label\n" + b"x" * limit

    def streamed():  # no Content-Length: the limit is found while reading
        yield oversized[: limit // 2]
        yield oversized[limit // 2 :]

    extra = {
        "bad token": (401, lambda: forged.get("/tasks")),
        "upload over the limit (declared)": (
            413,
            lambda: alice.post("/datasets?name=big.csv", content=oversized),
        ),
        "upload over the limit (streamed)": (
            413,
            lambda: alice.post("/datasets?name=big.csv", content=streamed()),
        ),
        "invalid config": (
            422,
            lambda: alice.post("/train", json={"config": {"training": {"epochs": 0}}, "dataset_id": dataset}),
        ),
        "invalid request body": (
            422,
            lambda: alice.post("/train", json={"config": {}, "dataset_id": dataset, "owner_id": 1}),
        ),
    }
    for name, (status, call) in extra.items():
        response, rows = _written_by(api, call)
        problems.append(_problem(name, response, rows, status))

    attacker = TestClient(_limited_login_app(api), client=("203.0.113.99", 1))
    for _ in range(api.settings.LOGIN_MAX_FAILURES):
        assert login(attacker, "carol-refused", "wrong password").status_code == 401
    response, rows = _written_by(api, lambda: login(attacker, "carol-refused", "wrong password"))
    problems.append(_problem("throttled login", response, rows, 429))

    assert [problem for problem in problems if problem] == []
