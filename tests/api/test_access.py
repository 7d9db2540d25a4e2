"""Who may call what: a table of every route against anonymous, owner, another user and an admin."""

from __future__ import annotations

import pytest

from tests.api.conftest import SAMPLE

# the whole matrix on SQLite in the default run; on PostgreSQL under --extended (make test-all)
EXTENDED_BACKEND = "postgresql"
ROLES = ("anonymous", "alice", "bob", "root")  # alice owns the dataset and the task


def request_for(route: str, api):
    """(method, url, keyword arguments) of a valid request to ``route`` with alice's objects."""
    import secrets

    dataset, task = api.ids["dataset"], api.ids["task"]
    train_body = {"config": {"experiment": "matrix"}, "dataset_id": dataset}
    sweep_body = {
        "config": {"experiment": "matrix"},
        "sweep": {
            "sampler": "random",
            "max_trials": 2,
            "space": {"lora.r": {"type": "choice", "values": [4, 8]}},
        },
        "dataset_id": dataset,
    }
    if "/sweeps/" in route:  # a fresh running sweep of alice's (a cancel ends it)
        created = api.as_("alice").post("/sweeps", json=sweep_body)
        assert created.status_code == 201, created.text
        sweep = created.json()["id"]
    else:
        sweep = "not-needed"
    if "/audit" in route and route.startswith(("GET /datasets", "POST /datasets")):
        # a fresh dataset of alice's, so the answer does not hang on which audit route ran first; the GET
        # routes find one audit of hers queued (its task has not run)
        uploaded = api.as_("alice").post("/datasets?name=audited.csv", content=SAMPLE)
        assert uploaded.status_code == 201, uploaded.text
        audited = uploaded.json()["id"]
        if route.startswith("GET"):
            queued = api.as_("alice").post(f"/datasets/{audited}/audit")
            assert queued.status_code == 202, queued.text
    else:
        audited = "not-needed"
    return {
        "POST /logout": ("POST", "/logout", {}),
        "GET /users/me": ("GET", "/users/me", {}),
        "GET /users": ("GET", "/users", {}),
        "POST /users": (
            "POST",
            "/users",
            {"json": {"username": f"new{secrets.token_hex(4)}", "password": "long enough"}},
        ),
        "GET /users/{id}": ("GET", f"/users/{api.ids['alice']}", {}),
        "PATCH /users/{id}": ("PATCH", f"/users/{api.ids['bob']}", {"json": {"role": "user"}}),
        "POST /train": ("POST", "/train", {"json": train_body}),
        "GET /config/schema": ("GET", "/config/schema", {}),
        "POST /datasets": ("POST", "/datasets?name=more.csv", {"content": SAMPLE}),
        "POST /predictions": (
            "POST",
            "/predictions",
            {"json": {"model": "unregistered", "dataset_id": dataset}},
        ),
        "GET /task/{id}/predictions": ("GET", f"/task/{task}/predictions", {}),
        "GET /datasets": ("GET", "/datasets", {}),
        "GET /datasets/{id}/report": ("GET", f"/datasets/{dataset}/report", {}),
        "GET /datasets/{id}/versions": ("GET", f"/datasets/{dataset}/versions", {}),
        "POST /datasets/{id}/audit": ("POST", f"/datasets/{audited}/audit", {"json": {"folds": 3}}),
        "GET /datasets/{id}/audit": ("GET", f"/datasets/{audited}/audit", {}),
        "GET /datasets/{id}/audits": ("GET", f"/datasets/{audited}/audits", {}),
        "GET /datasets/{id}/audit/{name}": ("GET", f"/datasets/{audited}/audit/audit.json", {}),
        "GET /task/{id}": ("GET", f"/task/{task}", {}),
        "GET /tasks": ("GET", "/tasks", {}),
        "GET /task/{id}/logs": ("GET", f"/task/{task}/logs", {}),
        "GET /task/{id}/metrics": ("GET", f"/task/{task}/metrics", {}),
        "POST /task/{id}/cancel": ("POST", f"/task/{task}/cancel", {}),
        "POST /task/{id}/retry": ("POST", f"/task/{task}/retry", {}),
        "POST /sweeps": ("POST", "/sweeps", {"json": sweep_body}),
        "GET /sweeps": ("GET", "/sweeps", {}),
        "GET /sweeps/{id}": ("GET", f"/sweeps/{sweep}", {}),
        "GET /sweeps/{id}/best": ("GET", f"/sweeps/{sweep}/best", {}),
        "POST /sweeps/{id}/cancel": ("POST", f"/sweeps/{sweep}/cancel", {}),
        "POST /sweeps/{id}/promote": ("POST", f"/sweeps/{sweep}/promote", {"json": {}}),
        "GET /experiments": ("GET", "/experiments", {}),
        "GET /experiments/mlflow/{run_id}": ("GET", "/experiments/mlflow/0123456789abcdef", {}),
        "GET /mlflow": ("GET", "/mlflow", {}),
        "GET /experiments/runs": ("GET", "/experiments/runs?experiment=nothing", {}),
        "POST /experiments/compare": (
            "POST",
            "/experiments/compare",
            {"json": {"run_ids": ["ab12", "cd34"]}},
        ),
        "GET /models/search": ("GET", "/models/search", {}),
        "POST /models/recommend": ("POST", "/models/recommend", {"json": {"query": "sentiment of reviews"}}),
        "POST /models/transition": (
            "POST",
            "/models/transition",
            {"json": {"name": "nothing", "version": 1, "stage": "Production"}},
        ),
        "GET /models/owners": ("GET", "/models/owners", {}),
        "PUT /models/{name}/owner": ("PUT", "/models/nothing/owner", {"json": {"owner": "bob"}}),
        "GET /base-models": ("GET", "/base-models", {}),
        "POST /base-models": (
            "POST",
            "/base-models",
            {"json": {"name": f"org/model-{secrets.token_hex(4)}"}},
        ),
        "DELETE /base-models/{name}": ("DELETE", "/base-models/org/never-allowed", {}),
        "GET /audit/logs": ("GET", "/audit/logs", {}),
        "GET /health": ("GET", "/health", {}),
        "GET /metrics": ("GET", "/metrics", {}),
    }[route]


# route: expected status for (anonymous, alice = owner, bob = another user, root = admin)
MATRIX = {
    "POST /logout": (401, 204, 204, 204),
    "GET /users/me": (401, 200, 200, 200),
    "GET /users": (401, 403, 403, 200),
    "POST /users": (401, 403, 403, 201),
    "GET /users/{id}": (401, 403, 403, 200),
    "PATCH /users/{id}": (401, 403, 403, 200),
    "POST /train": (401, 201, 404, 404),  # the dataset is alice's: nobody else can train on it
    "POST /datasets": (401, 201, 201, 201),
    "GET /config/schema": (401, 200, 200, 200),
    # the dataset is alice's (others: 404); for her the model is unknown (404); submissions with a real
    # model: tests/integration/test_prediction_jobs.py
    "POST /predictions": (401, 404, 404, 404),
    "GET /task/{id}/predictions": (401, 409, 404, 409),  # alice's task trains: it has no predictions
    "GET /datasets": (401, 200, 200, 200),
    "GET /datasets/{id}/report": (401, 200, 404, 404),  # datasets are private, admins' included
    "GET /datasets/{id}/versions": (401, 200, 404, 404),
    "POST /datasets/{id}/audit": (401, 202, 404, 404),  # a queued audit task, like POST /train's
    "GET /datasets/{id}/audit": (401, 409, 404, 404),  # alice's only audit is still queued
    "GET /datasets/{id}/audits": (401, 200, 404, 404),
    "GET /datasets/{id}/audit/{name}": (401, 404, 404, 404),  # no audit of hers has finished: no files
    "GET /task/{id}": (401, 200, 404, 200),
    "GET /tasks": (401, 200, 200, 200),
    "GET /task/{id}/logs": (401, 200, 404, 200),
    "GET /task/{id}/metrics": (401, 200, 404, 200),
    "POST /task/{id}/cancel": (401, 200, 404, 200),
    "POST /task/{id}/retry": (
        401,
        409,
        404,
        409,
    ),  # alice's task is queued: only failed or cancelled ones retry
    "POST /sweeps": (401, 201, 404, 404),  # the dataset is alice's, as for POST /train
    "GET /sweeps": (401, 200, 200, 200),
    "GET /sweeps/{id}": (401, 200, 404, 200),
    "GET /sweeps/{id}/best": (401, 409, 404, 409),  # no trial of alice's sweep has run
    "POST /sweeps/{id}/cancel": (401, 200, 404, 200),
    "POST /sweeps/{id}/promote": (401, 403, 403, 409),  # admins only; none completed
    "GET /experiments": (401, 200, 200, 200),  # each sees the runs of their own jobs (admins: all)
    "GET /experiments/mlflow/{run_id}": (401, 404, 404, 404),
    "GET /mlflow": (200, 200, 200, 200),
    "GET /experiments/runs": (401, 404, 404, 404),  # no such experiment
    "POST /experiments/compare": (401, 404, 404, 404),  # no such runs
    "GET /models/search": (401, 200, 200, 200),
    "POST /models/recommend": (401, 200, 200, 200),
    "POST /models/transition": (401, 403, 403, 404),
    "GET /models/owners": (401, 200, 200, 200),
    "PUT /models/{name}/owner": (401, 403, 403, 404),  # no such model
    "GET /base-models": (401, 200, 200, 200),
    "POST /base-models": (401, 403, 403, 201),
    "DELETE /base-models/{name}": (401, 403, 403, 404),  # never allowed
    "GET /audit/logs": (401, 403, 403, 200),
    "GET /health": (200, 200, 200, 200),
    "GET /metrics": (200, 200, 200, 200),
}


def test_the_matrix_covers_every_route(api):
    documented = {
        f"{method.upper()} {path}".replace("{user_id}", "{id}")
        .replace("{task_id}", "{id}")
        .replace("{dataset_id}", "{id}")
        .replace("{sweep_id}", "{id}")
        for path, item in api.app.openapi()["paths"].items()
        for method in item
    }
    assert documented - {"POST /login", "POST /users/me/password"} == set(MATRIX)


@pytest.mark.parametrize("route", sorted(MATRIX))
@pytest.mark.parametrize("role", ROLES)
def test_access(api, route, role):
    expected = MATRIX[route][ROLES.index(role)]
    method, url, kwargs = request_for(route, api)
    response = api.as_(None if role == "anonymous" else role).request(method, url, **kwargs)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if expected == 404 and "{id}" in route:
        assert "no " in response.json()["detail"]  # the same answer as for an id that does not exist


def test_lists_never_show_other_users_objects(api):
    def ids(client, url):
        """Every id of the listing, page by page."""
        found, offset = set(), 0
        while True:
            page = client.get(url, params={"offset": offset}).json()
            found |= {row["id"] for row in page["data"]}
            offset += len(page["data"])
            if not page["data"] or offset >= page["count"]:
                assert len(found) == page["count"]
                return found

    bob, root = api.as_("bob"), api.as_("root")
    assert api.ids["task"] not in ids(bob, "/tasks?limit=100")
    assert all(row["owner_id"] == api.ids["bob"] for row in bob.get("/tasks").json()["data"])
    assert api.ids["dataset"] not in ids(bob, "/datasets?limit=100")
    assert api.ids["task"] in ids(root, "/tasks?limit=100")  # admins see every task
    assert api.ids["dataset"] not in ids(root, "/datasets?limit=100")  # but only their own datasets


def test_server_owned_fields_are_refused(api):
    alice = api.as_("alice")
    dataset = api.ids["dataset"]
    for body, field in (
        ({"config": {}, "dataset_id": dataset, "owner_id": api.ids["bob"]}, "body.owner_id"),
        ({"config": {}, "dataset_id": dataset, "status": "succeeded"}, "body.status"),
    ):
        response = alice.post("/train", json=body)
        assert response.status_code == 422
        assert response.json()["problems"][0]["field"] == field
    for config, message in (
        ({"output_dir": "/etc"}, "config.output_dir: set by the server"),
        ({"data": {"train_file": "/etc/passwd"}}, "config.data.train_file: set by the server"),
        ({"model": {"base_model": "../../secrets"}}, "'../../secrets': not an allowed base model"),
        ({"model": {"base_model": "results/alice-run"}}, "'results/alice-run': not an allowed base model"),
        ({"model": "minilm"}, "config.model: expected an object of fields, got str"),
        ({"data": ["a"]}, "config.data: expected an object of fields, got list"),
    ):
        response = alice.post("/train", json={"config": config, "dataset_id": dataset})
        assert response.status_code == 422 and message in response.json()["detail"], response.text
    root = api.as_("root")
    response = root.post("/users", json={"username": "x1", "password": "long enough", "id": 1})
    assert response.status_code == 422
    response = alice.post(
        "/users/me/password",
        json={"current_password": "long enough", "new_password": "x" * 9, "role": "admin"},
    )
    assert response.status_code == 422


def test_page_sizes_are_capped(api):
    alice = api.as_("alice")
    assert alice.get("/tasks?limit=100").status_code == 200
    response = alice.get("/tasks?limit=101")
    assert response.status_code == 422 and response.json()["problems"][0]["field"] == "query.limit"
    assert api.as_("root").get("/audit/logs?limit=1000").status_code == 422
