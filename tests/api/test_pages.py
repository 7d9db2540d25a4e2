"""Every list answers a page (`data`, `count`, `limit`, `offset`): the lists that always paged do so with the window
they were asked for, and those that answered a bare list (the Finetune-30-days README's shape for /experiments and
/models/search; /users, /base-models, /models/owners, /experiments/runs) still do, and answer a page with
`paged=true`. Users are paged by the database. On SQLite and PostgreSQL, through the HTTP client."""

from __future__ import annotations

import secrets

import pytest

from tests.api.conftest import Api

PAGE_FIELDS = ["data", "count", "limit", "offset"]


def walk(client, url: str, limit: int) -> tuple[list, set[int]]:
    """Every entry of a paged list, page by page, and the counts the pages reported."""
    found, counts, offset = [], set(), 0
    while True:
        page = client.get(url, params={"paged": "true", "limit": limit, "offset": offset})
        assert page.status_code == 200, page.text
        body = page.json()
        assert list(body) == PAGE_FIELDS and (body["limit"], body["offset"]) == (limit, offset)
        assert len(body["data"]) <= limit
        found += body["data"]
        counts.add(body["count"])
        offset += limit
        if offset >= body["count"]:
            return found, counts


def add_users(api: Api, how_many: int) -> None:
    root = api.as_("root")
    for _ in range(how_many):
        made = root.post(
            "/users", json={"username": f"pager{secrets.token_hex(4)}", "password": "long enough"}
        )
        assert made.status_code == 201, made.text


def test_users_stay_a_bare_list_and_answer_a_page_when_asked(api_world):
    add_users(api_world, 3)
    root = api_world.as_("root")
    bare = root.get("/users", params={"limit": 100})
    assert bare.status_code == 200 and isinstance(bare.json(), list)
    everyone = bare.json()
    assert [user["id"] for user in everyone] == sorted(user["id"] for user in everyone)
    assert root.get("/users", params={"limit": 2, "offset": 1}).json() == everyone[1:3]  # as before: a window

    found, counts = walk(root, "/users", limit=2)
    assert found == everyone and counts == {len(everyone)}
    first = root.get("/users", params={"paged": "true", "limit": 2}).json()
    assert first == {"data": everyone[:2], "count": len(everyone), "limit": 2, "offset": 0}
    past = root.get("/users", params={"paged": "true", "offset": len(everyone)}).json()
    assert past == {"data": [], "count": len(everyone), "limit": 50, "offset": len(everyone)}


def test_the_users_page_is_counted_by_the_database(api_world):
    from sqlalchemy import func, select

    from finetune_platform.db.models import User
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import page_users

    with session_scope(api_world.settings) as session:
        rows = session.scalar(select(func.count()).select_from(User))
        page = page_users(session, offset=1, limit=1)
    assert (page.count, len(page.data), page.limit, page.offset) == (rows, 1, 1, 1)


def test_a_page_of_users_is_for_admins_only(api_world):
    for who, status in ((None, 401), ("alice", 403)):
        assert api_world.as_(who).get("/users", params={"paged": "true"}).status_code == status


def test_base_models_and_model_owners_answer_a_page_when_asked(api_world):
    root = api_world.as_("root")
    for index in range(3):
        assert (
            root.post("/base-models", json={"name": f"org/pager-{secrets.token_hex(3)}-{index}"}).status_code
            == 201
        )
    bare = root.get("/base-models").json()
    assert isinstance(bare, list) and len(bare) >= 4  # minilm and the three
    found, counts = walk(root, "/base-models", limit=2)
    assert found == bare and counts == {len(bare)}

    owners = root.get("/models/owners")
    assert owners.status_code == 200 and isinstance(owners.json(), list)
    found, counts = walk(root, "/models/owners", limit=1)
    assert found == owners.json() and counts == {len(owners.json())}


@pytest.mark.parametrize("url", ["/experiments", "/models/search"])
def test_readme_lists_keep_their_bare_shape(api_world, url):
    alice = api_world.as_("alice")
    bare = alice.get(url)
    assert bare.status_code == 200 and bare.json() == []  # nothing tracked or registered for alice
    paged = alice.get(url, params={"paged": "true", "limit": 10, "offset": 0})
    assert paged.json() == {"data": [], "count": 0, "limit": 10, "offset": 0}


def test_the_lists_that_always_paged_say_their_window(api):
    alice = api.as_("alice")
    for url in ("/tasks", "/datasets"):
        body = alice.get(url, params={"limit": 1, "offset": 0}).json()
        assert list(body) == PAGE_FIELDS and (body["limit"], body["offset"]) == (1, 0), url
        assert body["count"] >= 1 and len(body["data"]) == 1
    audit = api.as_("root").get("/audit/logs", params={"limit": 3, "offset": 2}).json()
    assert list(audit) == PAGE_FIELDS and (audit["limit"], audit["offset"]) == (3, 2)
    versions = alice.get(f"/datasets/{api.ids['dataset']}/versions").json()
    assert (versions["limit"], versions["offset"], versions["count"]) == (None, 0, len(versions["data"]))


def test_page_windows_are_bounded(api_world):
    root = api_world.as_("root")
    for url in ("/users", "/base-models", "/models/owners", "/experiments"):
        response = root.get(url, params={"paged": "true", "limit": 101})
        assert response.status_code == 422, url
        assert response.json()["problems"][0]["field"] == "query.limit"
