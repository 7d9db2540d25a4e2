"""Limits of a submit through the API, on SQLite and PostgreSQL: configs that would take a worker (422 naming the
field), more devices than a worker of the pool has (422), more queued jobs than the account may have (429);
every refusal writes no job row. Admins set an account's own limits with PATCH /users/{id}."""

from __future__ import annotations

import json
import math

import pytest
from sqlalchemy import func, select

from tests.api.conftest import SAMPLE, Api

PASSWORD = "quota-test-passphrase-7"


def jobs_of(api: Api, who: str) -> int:
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    with session_scope(api.settings) as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.owner_id == api.ids[who])) or 0


def new_account(api: Api, name: str) -> str:
    """A user of its own (with an uploaded dataset), so queued-job counts start at zero."""
    created = api.as_("root").post("/users", json={"username": name, "password": PASSWORD})
    assert created.status_code == 201, created.text
    api.ids[name] = created.json()["id"]
    dataset = api.as_(name).post("/datasets?name=train.csv", content=SAMPLE)
    assert dataset.status_code == 201, dataset.text
    api.ids[f"{name}-dataset"] = dataset.json()["id"]
    return name


def train(api: Api, who: str, config: dict | None = None, **headers: str):
    """POST /train as ``who``; the body is written by json.dumps, which sends inf as the literal Infinity
    (httpx would refuse to), as a hostile client can."""
    config = {"experiment": f"quota-{who}", **(config or {})}  # model names belong to their first user
    body = {"config": config, "dataset_id": api.ids[f"{who}-dataset"]}
    headers = {"Content-Type": "application/json", **headers}
    return api.as_(who).post("/train", content=json.dumps(body), headers=headers)


def other_app(api: Api, **settings) -> Api:
    """The same database and accounts behind an API started with other settings."""
    from finetune_platform.api.app import create_app

    changed = api.settings.model_copy(update={"METRICS_ENABLED": False, **settings})
    return Api(create_app(changed), changed, api.ids)


@pytest.fixture(scope="module")
def erin(api_world) -> str:
    return new_account(api_world, "erin")


@pytest.mark.parametrize(
    ("training", "detail"),
    [
        (
            {"training": {"devices": 64}},
            "training.devices: 64 requested, but a worker of the queue 'finetune-training' has at most 2 "
            "(POOL_MAX_DEVICES)",
        ),
        (
            {"training": {"epochs": 1e9}},
            "training.epochs: Input should be less than or equal to 1000 (got 1000000000.0)",
        ),
        (
            {"training": {"max_steps": 1e12}},
            "training.max_steps: Input should be less than or equal to 10000000 (got 1000000000000.0)",
        ),
        (
            {"training": {"batch_size": 1e9}},
            "training.batch_size: Input should be less than or equal to 4096 (got 1000000000.0)",
        ),
        (
            {"training": {"gradient_accumulation_steps": 1e9}},
            "training.gradient_accumulation_steps: Input should be less than or equal to 1024 (got 1000000000.0)",
        ),
        ({"lora": {"r": 1024}}, "lora.r: Input should be less than or equal to 256 (got 1024)"),
        (  # sent as the JSON literal Infinity, which the server's JSON parser reads as a float
            {"training": {"epochs": math.inf}},
            "training.epochs: Input should be a finite number (got inf)",
        ),
        (
            {"training": {"seed": 2**70}},
            "training.seed: Input should be less than or equal to 4294967295 (got 1180591620717411303424)",
        ),
    ],
)
def test_a_config_that_would_take_the_worker_is_refused_and_not_queued(api_world, erin, training, detail):
    before = jobs_of(api_world, erin)
    response = train(api_world, erin, training)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["code"] == "invalid_config"
    expected = detail if detail.startswith("training.devices") else f"invalid training config:\n  {detail}"
    assert body["detail"] == expected
    assert jobs_of(api_world, erin) == before


def test_devices_are_checked_against_the_pool_the_job_goes_to(api_world, erin):
    assert train(api_world, erin, {"training": {"devices": 2, "engine": "fast"}}).status_code == 201
    refused = train(api_world, erin, {"training": {"devices": 3, "engine": "fast"}})
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "training.devices: 3 requested, but a worker of the queue 'finetune-training' has at most 2 (POOL_MAX_DEVICES)"
    )
    pools = other_app(api_world, GPU_QUEUE_NAME="gpu-pool", GPU_POOL_MAX_DEVICES=4, POOL_MAX_DEVICES=1)
    before = jobs_of(api_world, erin)
    gpu = {"device": "cuda", "training": {"engine": "fast"}}
    assert train(pools, erin, {**gpu, "training": {"engine": "fast", "devices": 4}}).status_code == 201
    too_many = train(pools, erin, {**gpu, "training": {"engine": "fast", "devices": 5}})
    assert (too_many.status_code, too_many.json()["detail"]) == (
        422,
        "training.devices: 5 requested, but a worker of the queue 'gpu-pool' has at most 4 (GPU_POOL_MAX_DEVICES)",
    )
    cpu = train(pools, erin, {"device": "cpu", "training": {"engine": "fast", "devices": 2}})
    assert (cpu.status_code, cpu.json()["detail"]) == (
        422,
        "training.devices: 2 requested, but a worker of the queue 'finetune-training' has at most 1 (POOL_MAX_DEVICES)",
    )
    assert jobs_of(api_world, erin) == before + 1


def test_an_account_at_its_queued_limit_gets_429_and_no_job(api_world):
    carol = new_account(api_world, "carol")
    root = api_world.as_("root")
    patched = root.patch(f"/users/{api_world.ids[carol]}", json={"max_queued_jobs": 2})
    assert patched.status_code == 200, patched.text
    shown = patched.json()
    assert (shown["max_queued_jobs"], shown["max_running_jobs"], shown["max_job_hours"]) == (2, None, None)
    for read in (f"/users/{api_world.ids[carol]}", "/users"):  # every read of the account shows its limits
        found = root.get(read).json()
        found = found if isinstance(found, dict) else next(u for u in found if u["username"] == carol)
        assert (found["max_queued_jobs"], found["max_running_jobs"], found["max_job_hours"]) == (
            2,
            None,
            None,
        )
    first = train(api_world, carol, **{"Idempotency-Key": "first"})
    assert first.status_code == 201 and train(api_world, carol).status_code == 201
    refused = train(api_world, carol)
    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "too many queued jobs: 2 of the account's jobs are waiting to start, the most it may have queued "
        "is 2 (the account's max_queued_jobs); wait for one to start, or cancel one",
        "code": "quota_exceeded",
    }
    assert jobs_of(api_world, carol) == 2
    again = train(api_world, carol, **{"Idempotency-Key": "first"})  # a repeat is not a new job
    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
    cancel = api_world.as_(carol).post(f"/task/{first.json()['id']}/cancel")
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    assert train(api_world, carol).status_code == 201  # a slot is free again
    assert train(api_world, carol).status_code == 429
    reset = root.patch(f"/users/{api_world.ids[carol]}", json={"max_queued_jobs": None})
    assert reset.status_code == 200 and reset.json()["max_queued_jobs"] is None
    assert train(api_world, carol).status_code == 201  # the platform default again
    assert jobs_of(api_world, carol) == 4


def test_the_default_queued_limit_comes_from_settings(api_world):
    dave = new_account(api_world, "dave")
    strict = other_app(api_world, MAX_QUEUED_JOBS_PER_USER=1)
    assert train(strict, dave).status_code == 201
    refused = train(strict, dave)
    assert (refused.status_code, refused.json()["detail"]) == (
        429,
        "too many queued jobs: 1 of the account's jobs are waiting to start, the most it may have queued is 1 "
        "(MAX_QUEUED_JOBS_PER_USER); wait for one to start, or cancel one",
    )
    assert jobs_of(api_world, dave) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"max_queued_jobs": -1}, ("body.max_queued_jobs", "Input should be greater than or equal to 0")),
        ({"max_running_jobs": 0}, ("body.max_running_jobs", "Input should be greater than or equal to 1")),
        ({"max_job_hours": math.inf}, ("body.max_job_hours", "Input should be a finite number")),
        ({"max_job_hours": 10_000}, ("body.max_job_hours", "Input should be less than or equal to 8760")),
    ],
)
def test_limits_are_bounded(api_world, body, problem):
    response = api_world.as_("root").patch(
        f"/users/{api_world.ids['bob']}",
        content=json.dumps(body),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert [(p["field"], p["message"]) for p in response.json()["problems"]] == [problem]


def test_only_an_admin_sets_limits(api_world):
    from finetune_platform.db.models import User
    from finetune_platform.db.session import session_scope

    own = api_world.as_("bob").patch(f"/users/{api_world.ids['bob']}", json={"max_queued_jobs": 1000})
    assert own.status_code == 403
    set_by_admin = api_world.as_("root").patch(
        f"/users/{api_world.ids['bob']}", json={"max_running_jobs": 8, "max_job_hours": 48}
    )
    assert set_by_admin.status_code == 200
    with session_scope(api_world.settings) as session:
        bob = session.get(User, api_world.ids["bob"])
        assert (bob.max_queued_jobs, bob.max_running_jobs, bob.max_job_hours) == (None, 8, 48.0)
