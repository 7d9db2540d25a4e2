"""The UI's API client against the real API (SQLite and PostgreSQL): each call's answer, and every failure as a
readable ApiError with the API's own message — never a traceback."""

from __future__ import annotations

import httpx
import pytest

from finetune_platform.ui.client import ApiError, InferenceClient, PlatformClient
from tests.api.conftest import PASSWORD, SAMPLE


def client_for(api, who: str | None = None) -> PlatformClient:
    client = PlatformClient(http=api.as_(None))
    if who is not None:
        client.login(who, PASSWORD)
    return client


def test_login_keeps_the_token_and_logout_revokes_it(api):
    client = client_for(api)
    token = client.login("alice", PASSWORD)
    assert client.token == token and client.me()["username"] == "alice"
    client.logout()
    assert client.token is None
    stale = PlatformClient(http=api.as_(None), token=token)
    with pytest.raises(ApiError) as caught:
        stale.me()
    assert caught.value.status == 401


def test_a_wrong_password_reads_as_the_apis_message(api):
    with pytest.raises(ApiError) as caught:
        client_for(api).login("alice", "not the password")
    assert (caught.value.status, str(caught.value)) == (401, "incorrect username or password")


def test_upload_train_follow_and_cancel(api):
    alice = client_for(api, "alice")
    uploaded = alice.upload_dataset("reviews.csv", SAMPLE)
    assert uploaded["valid"] is True and uploaded["name"] == "reviews.csv"
    assert uploaded["id"] in {d["id"] for d in alice.datasets()}
    assert alice.dataset_report(uploaded["id"])["ok"] is True
    task = alice.train({"experiment": "ui-client"}, uploaded["id"], idempotency_key="ui-1")
    again = alice.train({"experiment": "ui-client"}, uploaded["id"], idempotency_key="ui-1")
    assert (task["status"], again["id"]) == ("queued", task["id"])
    assert alice.task(task["id"])["kind"] == "train"
    assert task["id"] in {t["id"] for t in alice.tasks(status="queued")["data"]}
    assert alice.task_logs(task["id"])["events"][0]["kind"] == "submitted"
    assert alice.cancel(task["id"])["status"] == "cancelled"
    with pytest.raises(ApiError) as caught:
        alice.cancel(task["id"])
    assert (caught.value.status, str(caught.value)) == (
        409,
        f"job {task['id']} is already cancelled: only queued or running jobs can be cancelled",
    )
    with pytest.raises(ApiError) as caught:
        alice.predictions_csv(task["id"])
    assert str(caught.value) == f"task {task['id']} is a train task: only prediction tasks have predictions"


def test_someone_elses_objects_and_admin_routes_read_as_not_found_and_forbidden(api):
    bob = client_for(api, "bob")
    with pytest.raises(ApiError) as caught:
        bob.task(api.ids["task"])
    assert caught.value.status == 404 and str(caught.value) == f"no job {api.ids['task']!r}"
    with pytest.raises(ApiError) as caught:
        bob.users()
    assert caught.value.status == 403
    root = client_for(api, "root")
    assert "alice" in {user["username"] for user in root.users()}
    assert root.audit(action="login")["count"] >= 1


def test_invalid_input_names_the_field(api):
    alice = client_for(api, "alice")
    with pytest.raises(ApiError) as caught:
        alice.predict_file("", api.ids["dataset"])
    assert caught.value.status == 422
    assert str(caught.value).startswith("body.model: ")


def test_an_unreachable_api_is_a_readable_error():
    client = PlatformClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ApiError) as caught:
        client.health()
    assert caught.value.status is None
    assert str(caught.value).startswith("the platform API cannot be reached: ")
    assert isinstance(client.http, httpx.Client)


def test_a_tasks_metrics_for_its_owner_only(api):
    task_id = api.ids["task"]
    assert client_for(api, "alice").task_metrics(task_id) == {
        "task_id": task_id, "status": "queued", "training": [], "evaluations": [], "eta_seconds": None, "final": None,
    }  # fmt: skip
    with pytest.raises(ApiError) as caught:
        client_for(api, "bob").task_metrics(task_id)
    assert (caught.value.status, str(caught.value)) == (404, f"no job {task_id!r}")


def test_an_unreachable_inference_server_is_named_with_how_to_set_its_address():
    client = InferenceClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(ApiError) as caught:
        client.predict("a fine film")
    assert caught.value.status is None
    message = str(caught.value)
    assert message.startswith("the inference server at http://127.0.0.1:9 cannot be reached (")
    assert (
        message.endswith("`finetune ui --serve-url URL` (FINETUNE_SERVE_URL)")
        and "platform API" not in message
    )
