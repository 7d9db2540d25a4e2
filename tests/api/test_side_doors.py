"""The side doors around the access rules, each tried for real against the API on SQLite and PostgreSQL:
taking over another user's model name, training from paths on the server, reading credentials from /mlflow,
guessing a password with a stolen token, accounts that differ only in case, bodies parsed before
authentication, scraping /metrics, and the headers browsers act on."""

from __future__ import annotations

import json
import re

from fastapi.testclient import TestClient
from pydantic import SecretStr

from tests.api.conftest import PASSWORD, SAMPLE, login


def dataset_of(api, who: str) -> str:
    """An uploaded dataset of the user's own (datasets are private, admins' included)."""
    key = f"dataset:{who}"
    if key not in api.ids:
        uploaded = api.as_(who).post("/datasets?name=train.csv", content=SAMPLE)
        assert uploaded.status_code == 201, uploaded.text
        api.ids[key] = uploaded.json()["id"]
    return api.ids[key]


def train(api, who: str, **config):
    body = {"config": {"experiment": "side-doors", **config}, "dataset_id": dataset_of(api, who)}
    return api.as_(who).post("/train", json=body)


def test_model_names_are_owned_and_admins_transfer_them(api):
    from finetune_platform.db.session import session_scope
    from finetune_platform.tracking.ownership import owner_of

    name = f"alice-sentiment-{api.ids['task'][:8]}"
    assert train(api, "alice", registry={"model_name": name}).status_code == 201
    taken = train(api, "bob", registry={"model_name": name})
    assert taken.status_code == 403
    assert taken.json()["detail"] == (
        f"model name {name!r} belongs to another user; choose another name (an admin can transfer it)"
    )
    unregistered = train(api, "bob", registry={"model_name": name, "enabled": False})
    assert unregistered.status_code == 201  # a job that registers nothing claims no name
    for lookalike in (name.upper(), f"{name}_", name.replace("-", ".")):
        refused = train(api, "bob", registry={"model_name": lookalike})
        assert (refused.status_code, refused.json()["detail"]) == (
            403,
            f"model name {lookalike!r} reads like {name!r}, which belongs to another user; choose another name",
        )
    assert train(api, "root", registry={"model_name": name}).status_code == 201  # an admin registers for her
    with session_scope(api.settings) as session:
        assert owner_of(session, name) == api.ids["alice"]
    owners = {row["name"]: row["owner"] for row in api.as_("bob").get("/models/owners").json()}
    assert owners[name] == "alice"
    assert api.as_("bob").put(f"/models/{name}/owner", json={"owner": "bob"}).status_code == 403
    moved = api.as_("root").put(f"/models/{name}/owner", json={"owner": "bob"})
    assert moved.status_code == 200 and moved.json() == {"name": name, "owner": "bob"}
    assert train(api, "bob", registry={"model_name": name}).status_code == 201
    assert train(api, "alice", registry={"model_name": name}).status_code == 403
    missing = api.as_("root").put(f"/models/{name}/owner", json={"owner": "nobody"})
    assert (missing.status_code, missing.json()["detail"]) == (404, "no user 'nobody'")


def test_base_models_come_from_the_admins_allow_list(api, tmp_path):
    model_dir = tmp_path / "server-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        "{}"
    )  # a real folder on the server: never reachable through the API
    for base_model in (str(model_dir), "results/x", "tiny/../../etc", "org/unlisted"):
        refused = train(api, "alice", model={"base_model": base_model})
        assert refused.status_code == 422
        assert refused.json()["detail"] == (
            f"config.model.base_model {base_model!r}: not an allowed base model (allowed: minilm); an admin "
            "adds models with POST /base-models"
        )
    assert train(api, "alice", model={"base_model": "minilm"}).status_code == 201
    assert [row["name"] for row in api.as_("alice").get("/base-models").json()] == ["minilm"]
    assert api.as_("alice").post("/base-models", json={"name": "org/unlisted"}).status_code == 403
    bad = api.as_("root").post("/base-models", json={"name": "../up"})
    assert bad.status_code == 422 and bad.json()["problems"][0]["field"] == "body.name"
    assert api.as_("root").post("/base-models", json={"name": "org/unlisted"}).status_code == 201
    assert api.as_("root").post("/base-models", json={"name": "org/unlisted"}).status_code == 409
    assert train(api, "alice", model={"base_model": "org/unlisted"}).status_code == 201
    assert api.as_("root").delete("/base-models/org/unlisted").status_code == 204
    assert train(api, "alice", model={"base_model": "org/unlisted"}).status_code == 422


def test_mlflow_status_never_hands_out_credentials(api):
    from finetune_platform.api.app import create_app

    settings = api.settings.model_copy(
        update={"MLFLOW_TRACKING_URI": "http://tracker:s3cr3t-pass@127.0.0.1:9/mlflow?token=abc"}
    )
    answer = TestClient(create_app(settings)).get("/mlflow").json()
    assert answer["ui_url"] == "http://127.0.0.1:9/mlflow"
    assert "s3cr3t" not in json.dumps(answer) and "abc" not in json.dumps(answer)


def test_password_changes_are_throttled_like_logins(api):
    bob = api.as_("bob")
    for _ in range(3):  # LOGIN_MAX_FAILURES = 3 in these tests
        wrong = bob.post(
            "/users/me/password", json={"current_password": "guess", "new_password": "a new passphrase"}
        )
        assert wrong.status_code == 403
    throttled = bob.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": "a new passphrase"}
    )
    assert throttled.status_code == 429
    assert re.fullmatch(r"too many wrong current passwords; try again in \d+ s", throttled.json()["detail"])


def test_usernames_are_one_account_in_any_case(api):
    anywhere = TestClient(api.app, client=("192.0.2.10", 1))
    assert login(anywhere, "ALICE").status_code == 200
    taken = api.as_("root").post("/users", json={"username": "Alice", "password": "a long passphrase"})
    assert (taken.status_code, taken.json()["detail"]) == (409, "user 'Alice' already exists")
    common = api.as_("root").post("/users", json={"username": "carol2", "password": "password123"})
    assert (common.status_code, common.json()["detail"]) == (
        422,
        "password: too common; choose one that is not on lists of leaked passwords",
    )


def test_bodies_are_refused_before_they_are_read(api):
    """The attack: a big JSON body to POST /train without (or with a bad) token was read and parsed before
    the 401. Now the guard answers from the headers; the body is never consumed."""
    anonymous = api.as_(None)
    consumed = []

    def body():
        for _ in range(64):
            consumed.append(1)
            yield b" " * 65536

    response = anonymous.post("/train", content=body(), headers={"Content-Type": "application/json"})
    assert (response.status_code, response.json()["detail"]) == (
        401,
        "not authenticated: send Authorization: Bearer <token> (POST /login gives one)",
    )
    assert len(consumed) <= 1
    forged = anonymous.post(
        "/train", content=b"{}" + b" " * 10_000, headers={"Authorization": "Bearer x.y.z"}
    )
    assert forged.status_code == 401 and forged.json()["detail"].startswith("invalid token")
    big = api.as_("alice").post(
        "/train", content=b'{"config": {}, "dataset_id": "' + b"x" * 2_000_000 + b'"}',
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert (big.status_code, big.json()["detail"]) == (
        413,
        f"request body larger than the limit of {api.settings.MAX_JSON_BODY_BYTES} bytes for POST /train",
    )
    huge_name = TestClient(api.app, client=("192.0.2.11", 1)).post(
        "/login", data={"username": "x" * 1_000_000, "password": "whatever1"}
    )
    assert huge_name.status_code == 413


def test_metrics_outside_local_mode_need_the_token_and_show_no_paths(api):
    from finetune_platform.api.app import create_app

    token = "Qm9vc3RlZC1tZXRyaWNzLXRva2VuLWZvci10ZXN0cy0xMjM0NTY3ODk"
    production = api.settings.model_copy(
        update={
            "ENVIRONMENT": "production",
            "JWT_SECRET": SecretStr("3f9a1c7e5b2d8046af13c9e7d5b1a3f8e6c4d2b0a9f7e5c3d1b8a6f4e2c0d9b7"),
            "METRICS_TOKEN": SecretStr(token),
        }
    )
    client = TestClient(create_app(production))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    scraped = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert scraped.status_code == 200 and "finetune_api_requests_total" in scraped.text
    assert str(api.settings.FINETUNE_HOME) not in scraped.text and 'path="finetune_home"' in scraped.text
    unset = TestClient(create_app(production.model_copy(update={"METRICS_TOKEN": None})))
    assert unset.get("/metrics").status_code == 404
    assert TestClient(api.app).get("/metrics").status_code == 200  # local mode: open


def test_security_headers_and_docs_without_third_parties(api):
    client = api.as_(None)
    docs = client.get("/docs")
    assert docs.status_code == 200
    sources = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", docs.text) + re.findall(
        r"""url:\s*['"]([^'"]+)['"]""", docs.text
    )
    assert sources and all(source.startswith("/") for source in sources), sources
    assert "cdn." not in docs.text and "https://" not in docs.text
    for source in sources:
        if source.startswith("/docs-assets/"):
            assert client.get(source).status_code == 200, source
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "fonts.googleapis" not in redoc.text and "https://" not in redoc.text
    for response in (docs, client.get("/health"), login(client, "alice")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"] == "frame-ancestors 'none'"
        assert "strict-transport-security" not in response.headers  # local mode: no TLS promised
    assert login(client, "alice").headers["cache-control"] == "no-store"


NOT_A_VERSION = "is not a version number, 'production' or 'staging'"
CRAFTED = [
    # (method, url, body, status, detail): inputs that answered 500 (an MLflow filter built from `a'b`,
    # int("²"), a config section that is not an object)
    ("POST", "/predictions", {"model": "a'b"}, 404, "no registered model \"a'b\""),
    ("POST", "/predictions", {"model": "name@²"}, 404, f"model 'name': '²' {NOT_A_VERSION}"),
    ("POST", "/predictions", {"model": "name@" + "9" * 20}, 404, f"model 'name': '{'9' * 20}' {NOT_A_VERSION}"),
    ("POST", "/models/transition", {"name": "a'b", "version": 1, "stage": "Production"}, 404,
     "model \"a'b\" has no version 1"),
    ("POST", "/train", {"config": {"model": []}}, 422, "config.model: expected an object of fields, got list"),
    ("POST", "/train", {"config": {"data": "x"}}, 422, "config.data: expected an object of fields, got str"),
    ("POST", "/train", {"config": {"model": {"base_model": 5}}}, 422,
     "config.model.base_model: expected a name, got int"),
    ("GET", "/experiments/runs?experiment=a'b", None, 404, "no experiment \"a'b\" in the tracking store"),
    # NUL characters, which PostgreSQL cannot store or compare (they gave 500 there, even anonymously)
    ("GET", "/task/ab%00cd", None, 404, "no job 'ab\\x00cd'"),
    ("GET", "/datasets/ab%00cd/report", None, 404, "no dataset 'ab\\x00cd'"),
    ("DELETE", "/base-models/a%00b", None, 404, "no allowed base model 'a\\x00b'"),
    ("POST", "/base-models", {"name": "x\n"}, 422, "invalid request"),
    ("POST", "/base-models", {"name": "/" + "b" * 200}, 201, None),  # the longest name allowed
    ("GET", "/no-such-route", None, 404, "Not Found"),
    ("POST", "/train", {"config": {"registry": {"model_name": "m" * 129}}}, 422,
     "invalid training config:\n  registry.model_name: String should have at most 128 characters (got '" + "m" * 116
     + "...)"),  # the value shown is cut: an error never grows with the input
]  # fmt: skip


def test_crafted_inputs_are_answered_4xx(api):
    root = api.as_("root")
    for method, url, body, status, detail in CRAFTED:
        if body is not None and url in ("/predictions", "/train"):
            body = {**body, "dataset_id": dataset_of(api, "root")}
        response = root.request(method, url, json=body)
        if detail is None:
            assert response.status_code == status, (method, url, response.text)
            continue
        assert (response.status_code, response.json()["detail"]) == (status, detail), (method, url, body)


def test_nul_characters_and_unknown_paths_are_refused_and_audited(api):
    """An anonymous login with a NUL in the name answered 500 on PostgreSQL and wrote nothing; unknown paths
    and bodies the parser refuses were not audited either."""
    from sqlalchemy import func, select

    from finetune_platform.db.models import AuditEvent
    from finetune_platform.db.session import session_scope

    def entries() -> int:
        with session_scope(api.settings) as session:
            return session.scalar(select(func.count()).select_from(AuditEvent))

    anonymous = TestClient(api.app, client=("192.0.2.77", 1))
    for send in (
        lambda: anonymous.post("/login", data={"username": "al\x00ice", "password": "whatever1"}),
        lambda: anonymous.get("/.env"),
        lambda: anonymous.put("/users/me"),
        lambda: api.as_("alice").post(
            "/train", content=b"[" * 5000, headers={"Content-Type": "application/json"}
        ),
    ):
        before = entries()
        response = send()
        assert response.status_code in (400, 401, 404, 405, 422), response.text
        assert entries() == before + 1, response.text
