"""The REST API as the Finetune-30-days README's clients call it, on SQLite and PostgreSQL: `task_id` in every
task answer, a public GET /mlflow summary that leaks nothing about runs (local store and a real `mlflow
server`), POST /models/recommend by `query`, `embedding` or `like`, and EXPERIMENTS_ADMIN_ONLY."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import Api


def variant(api: Api, **changes: object) -> Api:
    """The same database and users behind an app with other settings."""
    from finetune_platform.api.app import create_app

    settings = api.settings.model_copy(update=changes)
    return Api(create_app(settings), settings, dict(api.ids))


# -- task_id ---------------------------------------------------------------------------------------
def test_train_answers_with_the_task_id_the_readme_client_polls(api):
    client = api.as_("alice")
    submitted = client.post(
        "/train",
        json={"config": {"experiment": "readme"}, "dataset_id": api.ids["dataset"]},
        headers={"Idempotency-Key": f"readme-{api.ids['task']}"},
    )
    assert submitted.status_code == 201, submitted.text
    task_id = submitted.json()["task_id"]  # the README: r.json()["task_id"], then GET /task/{task_id}
    assert task_id == submitted.json()["id"]
    polled = client.get(f"/task/{task_id}")
    assert polled.status_code == 200
    assert (polled.json()["task_id"], polled.json()["id"], polled.json()["status"]) == (
        task_id,
        task_id,
        "queued",
    )
    again = client.post(
        "/train",
        json={"config": {"experiment": "readme"}, "dataset_id": api.ids["dataset"]},
        headers={"Idempotency-Key": f"readme-{api.ids['task']}"},
    )
    assert (again.status_code, again.json()["task_id"]) == (200, task_id)
    listed = {row["id"]: row["task_id"] for row in client.get("/tasks").json()["data"]}
    assert listed[task_id] == task_id
    cancelled = client.post(f"/task/{task_id}/cancel")
    assert (cancelled.status_code, cancelled.json()["task_id"], cancelled.json()["status"]) == (
        200,
        task_id,
        "cancelled",
    )


def test_prediction_tasks_answer_with_task_id_too(api, local_store):
    client = variant(api, MLFLOW_TRACKING_URI=local_store.uri).as_("alice")  # it holds readme-predict v1
    submitted = client.post(
        "/predictions", json={"model": "readme-predict@1", "dataset_id": api.ids["dataset"]}
    )
    assert submitted.status_code == 201, submitted.text
    assert submitted.json()["task_id"] == submitted.json()["id"]
    assert submitted.json()["kind"] == "predict"
    assert client.get(f"/task/{submitted.json()['task_id']}").json()["task_id"] == submitted.json()["id"]


# -- GET /mlflow -----------------------------------------------------------------------------------
@dataclass
class FilledStore:
    uri: str
    t0: int  # ms: the runs started at fixed offsets from it, so the summary's order and times are known
    experiments: dict[str, str]  # role -> experiment name
    private: list[str]  # strings no public answer may contain


def fill(client, tag: str, t0: int, artifact_root: Path | None) -> FilledStore:
    """Three live experiments (two runs, one run plus a deleted one, none) and a deleted one, every run with
    a distinctive param, metric, tag, owner, name and artifact path that must never reach the public."""
    from mlflow.entities import Metric, Param

    names = {role: f"readme-{role}-{tag}" for role in ("vision", "text", "empty", "deleted")}
    private = [
        f"leaky_param_key_{tag}",
        f"leaky-param-value-{tag}",
        f"leaky_metric_{tag}",
        "0.8765432",
        f"leaky.tag.{tag}",
        f"leaky-tag-value-{tag}",
        f"leaky-owner-{tag}",
        f"leaky-run-name-{tag}",
        f"leaky-artifact-dir-{tag}",
        f"leaky-artifact-location-{tag}",
        names["deleted"],
    ]
    ids = {}
    for role, name in names.items():
        location = str(artifact_root / f"leaky-artifact-location-{tag}" / role) if artifact_root else None
        ids[role] = client.create_experiment(name, artifact_location=location)

    def run(role: str, started: int) -> str:
        created = client.create_run(
            ids[role],
            start_time=t0 + started,
            tags={f"leaky.tag.{tag}": f"leaky-tag-value-{tag}", "mlflow.user": f"leaky-owner-{tag}"},
            run_name=f"leaky-run-name-{tag}-{role}-{started}",
        )
        run_id = created.info.run_id
        client.log_batch(
            run_id,
            metrics=[Metric(f"leaky_metric_{tag}", 0.8765432, t0 + started, 0)],
            params=[Param(f"leaky_param_key_{tag}", f"leaky-param-value-{tag}")],
        )
        if role == "vision":
            client.log_text(run_id, "private notes", f"leaky-artifact-dir-{tag}/notes.txt")
        client.set_terminated(run_id, end_time=t0 + started + 500)
        private.append(run_id)
        return run_id

    run("vision", 1000)
    run("vision", 3000)
    run("text", 2000)
    client.delete_run(run("text", 9000))  # newer, but deleted: neither counted nor the newest
    run("deleted", 8000)
    client.delete_experiment(ids["deleted"])
    return FilledStore("", t0, names, private)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> FilledStore:
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("public-summary")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    store = fill(client, secrets.token_hex(3), 1_700_000_000_000, root)
    store.uri = uri
    store.private.append(str(root))
    client.create_registered_model("readme-predict")  # registered models are no experiments
    (root / "adapter").mkdir()
    client.create_model_version("readme-predict", source=str(root / "adapter"))
    return store


def _moment(milliseconds: int) -> datetime:
    return datetime.fromtimestamp(milliseconds / 1000, UTC)


@pytest.fixture(scope="module")
def public(tmp_path_factory):
    """Settings of an API without accounts: GET /mlflow needs none, and its answer does not depend on the app
    database (the routes that do are tried on both backends above and below)."""
    from finetune_platform.db.session import upgrade
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("public-api")
    settings = Settings(FINETUNE_HOME=root / "home", MODEL_REGISTRY_DIR=root / "cards", MLFLOW_ENABLED=False)
    upgrade(settings)
    return settings


def read_summary(public, uri: str, *, prime: bool = True, **changes: object):
    """GET /mlflow without credentials; with ``prime``, the store read once beforehand (a loaded machine can
    take longer than the route waits for a first read)."""
    from finetune_platform.api.app import create_app
    from finetune_platform.tracking.summary import forget, public_summary

    settings = public.model_copy(update={"MLFLOW_TRACKING_URI": uri, **changes})
    forget()
    if prime:
        assert public_summary(settings, wait=120) is not None
    return TestClient(create_app(settings)).get("/mlflow")


def ours(summary: dict, store: FilledStore) -> list[tuple[str, int, datetime | None]]:
    mine = set(store.experiments.values())
    return [
        (item["name"], item["runs"], datetime.fromisoformat(item["last_run"]) if item["last_run"] else None)
        for item in summary["experiments"]
        if item["name"] in mine
    ]


def test_mlflow_is_public_and_summarises_experiments_without_a_private_word(public, local_store):
    answer = read_summary(public, local_store.uri)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["backend"], body["reachable"], body["ui_url"]) == ("embedded", True, None)
    summary = body["summary"]
    names = local_store.experiments
    assert [(e["name"], e["runs"]) for e in summary["experiments"]] == [
        (names["vision"], 2),
        (names["text"], 1),
        (names["empty"], 0),
    ]  # newest run first; MLflow's empty Default and the deleted experiment left out
    assert ours(summary, local_store) == [
        (names["vision"], 2, _moment(local_store.t0 + 3000)),
        (names["text"], 1, _moment(local_store.t0 + 2000)),
        (names["empty"], 0, None),
    ]
    assert (summary["experiment_count"], summary["run_count"], summary["complete"]) == (3, 3, True)
    assert set(summary) == {"experiments", "experiment_count", "run_count", "complete", "as_of"}
    assert all(set(item) == {"name", "runs", "last_run"} for item in summary["experiments"])
    leaked = [word for word in local_store.private if word in answer.text]
    assert leaked == []


def test_the_public_summary_is_bounded(public, local_store, monkeypatch):
    from finetune_platform.tracking import summary as summaries

    monkeypatch.setattr(summaries, "MAX_EXPERIMENTS", 2)
    monkeypatch.setattr(summaries, "MAX_RUNS_SCANNED", 2)
    try:
        summary = read_summary(public, local_store.uri).json()["summary"]
    finally:
        summaries.forget()
    names = local_store.experiments
    # Only the two newest runs counted: the counts are lower bounds, and the answer says so.
    assert [(e["name"], e["runs"]) for e in summary["experiments"]] == [
        (names["vision"], 1),
        (names["text"], 1),
    ]
    assert (summary["experiment_count"], summary["run_count"], summary["complete"]) == (3, 2, False)


def test_mlflow_public_summary_can_be_switched_off(public, local_store):
    answer = read_summary(public, local_store.uri, prime=False, MLFLOW_PUBLIC_SUMMARY=False)
    assert answer.status_code == 200
    assert answer.json() == {"backend": "embedded", "reachable": True, "ui_url": None, "summary": None}
    assert local_store.experiments["vision"] not in answer.text


def test_mlflow_summary_of_a_real_tracking_server(public, mlflow_server):
    from mlflow import MlflowClient

    url, _ = mlflow_server
    now = int(datetime.now(UTC).timestamp() * 1000)  # the shared server's newest 50 experiments include these
    store = fill(MlflowClient(tracking_uri=url, registry_uri=url), secrets.token_hex(3), now, None)
    answer = read_summary(public, url)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["backend"], body["reachable"], body["ui_url"]) == ("server", True, url)
    names = store.experiments
    assert ours(body["summary"], store) == [
        (names["vision"], 2, _moment(now + 3000)),
        (names["text"], 1, _moment(now + 2000)),
        (names["empty"], 0, None),
    ]
    leaked = [word for word in store.private if word in answer.text]
    assert leaked == []


def test_an_unreachable_tracking_server_has_no_summary(public):
    answer = read_summary(public, "http://127.0.0.1:9", prime=False)
    assert answer.json() == {
        "backend": "server",
        "reachable": False,
        "ui_url": "http://127.0.0.1:9",
        "summary": None,
    }


# -- POST /models/recommend ------------------------------------------------------------------------
def unit(*weights: tuple[int, float]) -> list[float]:
    vector = [0.0] * 384
    for index, weight in weights:
        vector[index] = weight
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector]


@pytest.fixture(scope="module")
def carded(api_world, tmp_path_factory) -> Api:
    """Three model cards with known embeddings: alpha along axis 0, beta along axis 1, mixed between them."""
    from finetune_platform.tracking.model_cards import CardStore, ModelCard

    cards = tmp_path_factory.mktemp("cards")
    store = CardStore(cards)
    for name, embedding in (("alpha", unit((0, 1))), ("beta", unit((1, 1))), ("mixed", unit((0, 1), (1, 1)))):
        store.save(
            ModelCard(
                name=name, version=1, base_model="minilm", language="English", task="text-classification",
                description=name, metrics={"accuracy": 0.9}, tags=[], dataset_version=None, run_id=None,
                run_folder=None, stage="Staging", created_at="2024-01-01T00:00:00+00:00", adapter_checksum="",
                embedding=embedding,
            )
        )  # fmt: skip
    return variant(api_world, MODEL_REGISTRY_DIR=cards)


def ranked(answer) -> list[tuple[str, float]]:
    assert answer.status_code == 200, answer.text
    return [(item["card"]["name"], item["score"]) for item in answer.json()]


def test_recommend_by_embedding(carded):
    client = carded.as_("bob")
    by_axis = ranked(client.post("/models/recommend", json={"embedding": unit((0, 1))}))
    assert by_axis == [("alpha", 1.0), ("mixed", 0.7071), ("beta", 0.0)]
    huge = [value * 1e300 for value in unit((1, 1))]  # finite, not normalised: the norm must not overflow
    assert ranked(client.post("/models/recommend", json={"embedding": huge, "top_k": 2})) == [
        ("beta", 1.0),
        ("mixed", 0.7071),
    ]


def test_recommend_like_a_registered_version(carded):
    client = carded.as_("bob")
    assert ranked(client.post("/models/recommend", json={"like": "alpha@1"})) == [
        ("mixed", 0.7071),
        ("beta", 0.0),
    ]
    missing = client.post("/models/recommend", json={"like": "alpha@7"})
    assert (missing.status_code, missing.json()["detail"]) == (404, "no model card for alpha@7")
    unversioned = client.post("/models/recommend", json={"like": "alpha"})
    assert unversioned.status_code == 422
    assert [p["field"] for p in unversioned.json()["problems"]] == ["body.like"]


def test_recommend_refuses_an_embedding_of_another_size_or_not_finite(carded):
    client = carded.as_("bob")
    short = client.post("/models/recommend", json={"embedding": [0.1, 0.2, 0.3]})
    assert (short.status_code, short.json()["detail"]) == (
        422,
        "embedding: expected 384 numbers, got 3 (the size of the model cards' embeddings)",
    )
    zero = client.post("/models/recommend", json={"embedding": [0.0] * 384})
    assert (zero.status_code, zero.json()["detail"]) == (422, "embedding: a zero vector has no direction")
    for text in ("NaN", "Infinity", "-Infinity", "1e999"):
        body = '{"embedding": [' + ", ".join([text] + ["0.5"] * 383) + "]}"
        answer = client.post("/models/recommend", content=body, headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, text
        assert answer.json()["problems"] == [
            {"field": "body.embedding.0", "message": "Input should be a finite number"}
        ]


@pytest.mark.parametrize(
    ("body", "given"),
    [
        ({}, "none"),
        ({"top_k": 3}, "none"),
        ({"query": "sentiment", "embedding": [1.0] * 384}, "query, embedding"),
        ({"embedding": [1.0] * 384, "like": "alpha@1"}, "embedding, like"),
        ({"query": "sentiment", "embedding": [1.0] * 384, "like": "alpha@1"}, "query, embedding, like"),
    ],
)
def test_recommend_takes_exactly_one_of_query_embedding_or_like(carded, body, given):
    answer = carded.as_("bob").post("/models/recommend", json=body)
    assert answer.status_code == 422
    assert answer.json() == {
        "detail": f"give exactly one of query, embedding or like (got {given})",
        "code": "invalid_config",
    }


# -- EXPERIMENTS_ADMIN_ONLY ------------------------------------------------------------------------
EXPERIMENT_ROUTES = (
    ("GET", "/experiments", None),
    ("GET", "/experiments/runs?experiment=readme", None),
    ("POST", "/experiments/compare", {"run_ids": ["a1", "b2"]}),
    ("GET", "/experiments/mlflow/a1b2", None),
)


def test_experiments_are_scoped_per_user_by_default(api_world, local_store):
    scoped = variant(api_world, MLFLOW_TRACKING_URI=local_store.uri)
    assert scoped.settings.EXPERIMENTS_ADMIN_ONLY is False
    for method, path, body in EXPERIMENT_ROUTES:
        answer = scoped.as_("alice").request(method, path, json=body)
        assert answer.status_code in (200, 404), (path, answer.text)  # her own runs, of which there are none
    assert scoped.as_("alice").get("/experiments").json() == []
    everything = {e["name"]: e["runs"] for e in scoped.as_("root").get("/experiments").json()}
    assert everything[local_store.experiments["vision"]] == 2


def test_experiments_admin_only_restores_the_readme_rule_on_every_experiments_route(api_world, local_store):
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import list_entries

    strict = variant(api_world, EXPERIMENTS_ADMIN_ONLY=True, MLFLOW_TRACKING_URI=local_store.uri)
    for method, path, body in EXPERIMENT_ROUTES:
        refused = strict.as_("alice").request(method, path, json=body)
        assert (refused.status_code, refused.json()) == (
            403,
            {
                "detail": "admin role required: experiments are for admins on this server (EXPERIMENTS_ADMIN_ONLY)"
            },
        ), path
        allowed = strict.as_("root").request(method, path, json=body)
        assert allowed.status_code in (200, 404), (path, allowed.text)
        assert strict.as_(None).request(method, path, json=body).status_code == 401
    everything = {e["name"]: e["runs"] for e in strict.as_("root").get("/experiments").json()}
    assert everything[local_store.experiments["vision"]] == 2
    with session_scope(strict.settings) as session:
        denied = list_entries(session, actor_id=api_world.ids["alice"], outcome="denied", limit=100).data
    assert {entry.detail.get("reason") for entry in denied} >= {
        "admin role required: experiments are for admins on this server (EXPERIMENTS_ADMIN_ONLY)"
    }
