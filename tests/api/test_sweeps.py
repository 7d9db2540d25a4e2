"""The sweeps API on SQLite and on PostgreSQL: submit, list, read, cancel, best and promote, who may do each, and
a sweep whose trials really train (in-process, a tiny model) before its winner is registered."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from finetune_platform.db.models import AuditEvent, Job
from finetune_platform.db.session import session_scope
from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

SPEC = {
    "objective": "accuracy",
    "sampler": "random",
    "max_trials": 4,
    "parallelism": 2,
    "seed": 1,
    "space": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
}


def sweep_body(api, **sweep) -> dict:
    return {
        "config": {"experiment": "api-sweep"},
        "sweep": {**SPEC, **sweep},
        "dataset_id": api.ids["dataset"],
    }


def submitted(api, who: str = "alice", **sweep) -> dict:
    response = api.as_(who).post("/sweeps", json=sweep_body(api, **sweep))
    assert response.status_code == 201, response.text
    return response.json()


def audited(api, action: str, target: str) -> list[AuditEvent]:
    with session_scope(api.settings) as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action, AuditEvent.target == target)
            )
        )


def test_a_sweep_queues_as_many_trials_as_its_parallelism(api_world):
    sweep = submitted(api_world)
    assert sweep["status"] == "running"
    assert sweep["owner_id"] == api_world.ids["alice"]
    assert (sweep["max_trials"], sweep["parallelism"], sweep["objective"]) == (4, 2, "accuracy")
    assert sweep["trials"]["queued"] == 2 and sum(sweep["trials"].values()) == 2
    assert [trial["number"] for trial in sweep["trial_list"]] == [0, 1]
    alice = api_world.as_("alice")
    for trial in sweep["trial_list"]:
        assert 1e-4 <= trial["params"]["training.learning_rate"] <= 1e-2
        task = alice.get(f"/task/{trial['task_id']}").json()
        assert task["status"] == "queued"
    with session_scope(api_world.settings) as session:
        jobs = session.scalars(select(Job).where(Job.sweep_id == sweep["id"])).all()
        assert {job.owner_id for job in jobs} == {api_world.ids["alice"]}
        assert all(
            not job.config["registry"]["enabled"] for job in jobs
        )  # the winner is registered on request
        assert all(
            job.config["data"]["train_file"].startswith(str(api_world.settings.FINETUNE_HOME)) for job in jobs
        )
    [entry] = audited(api_world, "sweep.submit", f"sweep:{sweep['id']}")
    assert entry.actor_id == api_world.ids["alice"]
    assert entry.detail["dataset"] == api_world.ids["dataset"]


@pytest.mark.parametrize(
    ("space", "detail"),
    [
        (
            {"lora.r": {"type": "choice", "values": [8, 0]}},
            "sweep.space.lora.r: 0 is not a valid value: lora.r: Input should be greater than or equal to 1 (got 0)",
        ),
        (
            {"training.learning_rte": {"type": "uniform", "low": 0.1, "high": 0.2}},
            "sweep.space.training.learning_rte: not a training-config field (check the spelling; "
            "`finetune config schema` lists them)",
        ),
        (
            {"data.train_file": {"type": "choice", "values": ["/etc/passwd"]}},
            "sweep.space.data.train_file: set by the server (use dataset_id / validation_dataset_id)",
        ),
        (
            {"output_dir": {"type": "choice", "values": ["/tmp"]}},
            "sweep.space.output_dir: set by the server (use dataset_id / validation_dataset_id)",
        ),
    ],
    ids=["bad-value", "unknown-field", "train-file", "output-dir"],
)
def test_an_invalid_space_is_refused_naming_the_field(api_world, space, detail):
    before = _sweep_count(api_world)
    response = api_world.as_("alice").post("/sweeps", json=sweep_body(api_world, space=space))
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == detail
    assert _sweep_count(api_world) == before


def test_an_invalid_spec_and_a_base_model_off_the_allow_list_are_refused(api_world):
    alice = api_world.as_("alice")
    response = alice.post("/sweeps", json=sweep_body(api_world, parallelism=0))
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "invalid sweep:\n  sweep.parallelism: Input should be greater than or equal to 1 (got 0)"
    )
    space = {"model.base_model": {"type": "choice", "values": ["minilm", "org/never-allowed"]}}
    response = alice.post("/sweeps", json=sweep_body(api_world, space=space))
    assert response.status_code == 422
    assert response.json()["detail"].startswith(
        "sweep.space.model.base_model 'org/never-allowed': not an allowed base model (allowed: "
    )


def _sweep_count(api) -> int:
    return api.as_("root").get("/sweeps").json()["count"]


def test_lists_and_reads_show_only_the_callers_sweeps(api_world):
    sweep = submitted(api_world)
    alice, bob, root = (api_world.as_(who) for who in ("alice", "bob", "root"))
    assert alice.get(f"/sweeps/{sweep['id']}").json()["trial_list"] == sweep["trial_list"]
    assert sweep["id"] in {row["id"] for row in alice.get("/sweeps?limit=100").json()["data"]}
    assert sweep["id"] in {row["id"] for row in root.get("/sweeps?limit=100").json()["data"]}
    assert sweep["id"] in {row["id"] for row in alice.get("/sweeps?status=running&limit=100").json()["data"]}
    assert alice.get("/sweeps?status=succeeded").json()["data"] == []
    assert bob.get("/sweeps").json() == {"data": [], "count": 0, "limit": 50, "offset": 0}
    assert root.get(f"/sweeps/{sweep['id']}").status_code == 200
    for method, url in (
        ("GET", f"/sweeps/{sweep['id']}"),
        ("GET", f"/sweeps/{sweep['id']}/best"),
        ("POST", f"/sweeps/{sweep['id']}/cancel"),
    ):
        response = bob.request(method, url)
        assert response.status_code == 404, (url, response.text)
        assert response.json()["detail"] == f"no sweep {sweep['id']!r}"
    assert alice.get(f"/sweeps/{sweep['id']}").json()["status"] == "running"  # bob's cancel changed nothing


def test_cancel_stops_the_queued_trials_once(api_world):
    sweep = submitted(api_world)
    alice = api_world.as_("alice")
    cancelled = alice.post(f"/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["trials"]["cancelled"] == 2 and cancelled.json()["trials"]["queued"] == 0
    for trial in sweep["trial_list"]:
        assert alice.get(f"/task/{trial['task_id']}").json()["status"] == "cancelled"
    again = alice.post(f"/sweeps/{sweep['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == (
        f"sweep {sweep['id']} is already cancelled: only running sweeps can be cancelled"
    )
    [entry] = audited(api_world, "sweep.cancel", f"sweep:{sweep['id']}")
    assert entry.detail["status"] == "cancelled"


def test_an_admin_cancels_anyones_sweep(api_world):
    sweep = submitted(api_world)
    response = api_world.as_("root").post(f"/sweeps/{sweep['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    [entry] = audited(api_world, "sweep.cancel", f"sweep:{sweep['id']}")
    assert entry.actor_id == api_world.ids["root"]


def test_best_and_promote_before_any_trial_completed(api_world):
    sweep = submitted(api_world)
    alice, root = api_world.as_("alice"), api_world.as_("root")
    best = alice.get(f"/sweeps/{sweep['id']}/best")
    assert best.status_code == 409
    assert best.json()["detail"] == f"sweep {sweep['id']} has no completed trial yet (2 started)"
    refused = alice.post(f"/sweeps/{sweep['id']}/promote", json={})
    assert refused.status_code == 403
    assert root.post(f"/sweeps/{sweep['id']}/promote", json={}).status_code == 409
    assert audited(api_world, "sweep.promote", f"sweep:{sweep['id']}") == []


# -- a sweep that trains -----------------------------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def tracked_api(request, tmp_path):
    """An API with MLflow tracking on (a winner is registered from its tracked run), alice's tiny datasets and
    the tiny model on the allow-list."""
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import upgrade
    from finetune_platform.services.users import create_user
    from tests.api.conftest import PASSWORD, Api
    from tests.conftest import database_settings

    with database_settings(request.param, tmp_path) as base:
        settings = base.model_copy(
            update={"RESULTS_DIR": tmp_path / "results", "MODEL_REGISTRY_DIR": tmp_path / "cards"}
        )
        upgrade(settings)
        with session_scope(settings) as session:
            ids = {
                name: create_user(session, name, PASSWORD, role).id
                for name, role in (("alice", "user"), ("root", "admin"))
            }
        api = Api(create_app(settings), settings, ids)
        for role, rows in (
            ("dataset", sentiment_rows(96, seed=1)),
            ("validation", sentiment_rows(32, seed=2)),
        ):
            path = write_csv(tmp_path / f"{role}.csv", rows)
            uploaded = api.as_("alice").post(f"/datasets?name={role}.csv", content=path.read_bytes())
            assert uploaded.status_code == 201, uploaded.text
            api.ids[role] = uploaded.json()["id"]
        yield api


def run_queued_trials(settings) -> list[str]:
    """Run every queued job in-process until none is left (each that ends queues the sweep's next)."""
    from finetune_platform.worker.executor import execute_job

    outcomes = []
    while True:
        with session_scope(settings) as session:
            queued = session.scalars(
                select(Job.id).where(Job.status == "queued").order_by(Job.created_at)
            ).all()
        if not queued:
            return outcomes
        outcomes += [execute_job(settings, job_id) for job_id in queued]


@pytest.mark.slow
def test_a_trained_sweeps_best_trial_is_promoted(tracked_api, tiny_bert: Path):
    alice, root = tracked_api.as_("alice"), tracked_api.as_("root")
    assert root.post("/base-models", json={"name": str(tiny_bert)}).status_code == 201
    config = tiny_config_dict(tiny_bert, Path("unused"), None, Path("unused"), epochs=1, eval_steps=6)
    del config["data"], config["output_dir"]
    body = {
        "config": {**config, "experiment": "sweep-promote", "registry": {"model_name": "sweep-winner"}},
        "sweep": {
            "objective": "loss",
            "sampler": "random",
            "pruner": "none",
            "max_trials": 2,
            "parallelism": 1,
            "space": {"training.learning_rate": {"type": "choice", "values": [1e-2, 1e-9]}},
            # both values, whatever the sampler draws: a fast learning rate, and one that learns nothing
            "start_with": [{"training.learning_rate": 1e-2}, {"training.learning_rate": 1e-9}],
        },
        "dataset_id": tracked_api.ids["dataset"],
        "validation_dataset_id": tracked_api.ids["validation"],
    }
    response = alice.post("/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    assert response.json()["trials"]["queued"] == 1

    assert run_queued_trials(tracked_api.settings) == ["succeeded", "succeeded"]
    sweep = alice.get(f"/sweeps/{sweep_id}").json()
    assert sweep["status"] == "succeeded" and sweep["trials"]["succeeded"] == 2
    assert sorted(trial["params"]["training.learning_rate"] for trial in sweep["trial_list"]) == [1e-9, 1e-2]
    lowest = min(sweep["trial_list"], key=lambda trial: trial["value"])
    best = alice.get(f"/sweeps/{sweep_id}/best").json()
    assert (best["task_id"], best["value"]) == (lowest["task_id"], lowest["value"])
    assert (sweep["best_task_id"], sweep["best_value"]) == (lowest["task_id"], lowest["value"])
    assert alice.post(f"/sweeps/{sweep_id}/cancel").status_code == 409  # finished

    assert alice.post(f"/sweeps/{sweep_id}/promote", json={}).status_code == 403
    promoted = root.post(f"/sweeps/{sweep_id}/promote", json={"stage": "Staging"})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json() == {
        "sweep_id": sweep_id,
        "task_id": lowest["task_id"],
        "model_name": "sweep-winner",
        "version": 1,
        "stage": "Staging",
        "value": lowest["value"],
    }
    again = root.post(f"/sweeps/{sweep_id}/promote", json={"model_name": "sweep-prod"}).json()
    assert (again["model_name"], again["version"], again["stage"]) == ("sweep-prod", 1, "Production")
    from finetune_platform.tracking.registry import ModelRegistry

    registry = ModelRegistry(tracked_api.settings)
    assert registry.resolve("sweep-prod@production").version == 1
    assert registry.resolve("sweep-winner@staging").version == 1
    [entry] = audited(tracked_api, "sweep.promote", f"sweep:{sweep_id}")[:1]
    assert entry.detail["model"] == "sweep-winner@1" and entry.actor_id == tracked_api.ids["root"]
