"""`finetune serve`'s app over real HTTP: registered adapters on shared base models, per-request model choice,
each request its own answer under concurrency, promotion picked up without a restart, every bad request."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from finetune_platform.inference.predictor import Predictor, source_from_registry
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import UNGATED, free_port, sentiment_rows, three_class_rows, tiny_config_dict, write_csv

pytestmark = pytest.mark.slow
TEXTS = ["great film", "awful book", "wonderful concert tonight", "boring game", "okay meal", "terrible app"]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_bert):
    """served-a versions 1 and 2 (two labels), served-b version 1 (three labels), in a store of their own."""
    root = tmp_path_factory.mktemp("serve")
    settings = Settings(
        FINETUNE_HOME=root / "home",
        MODEL_REGISTRY_DIR=root / "cards",
        SERVE_RESOLVE_SECONDS=0,
        SERVE_MAX_ADAPTERS=2,
    )
    runs = [
        ("served-a", sentiment_rows(96, 1), sentiment_rows(32, 2), 7),
        ("served-a", sentiment_rows(96, 3), sentiment_rows(32, 4), 11),
        ("served-b", three_class_rows(96, 1), three_class_rows(30, 2), 7),
    ]
    for number, (name, rows, validation, seed) in enumerate(runs):
        train = write_csv(root / f"{number}" / "train.csv", rows)
        valid = write_csv(root / f"{number}" / "validation.csv", validation)
        raw = tiny_config_dict(
            tiny_bert, train, valid, root / "results", max_steps=24, eval_steps=12, seed=seed
        )
        raw["experiment"], raw["registry"] = f"serve-{number}", {"model_name": name, **UNGATED}
        run_training(config_from_dict(raw), settings=settings, show_progress=False)
    return settings


@pytest.fixture(scope="module")
def server(registry):
    import uvicorn

    from finetune_platform.serve.app import create_serve_app

    app = create_serve_app(registry, "served-a@2")
    port = free_port()
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", app
    instance.should_exit = True
    thread.join(timeout=10)


def direct(registry, reference: str, texts: list[str]):
    return Predictor.from_registry(registry, reference, merge=False).predict(texts)


def test_one_prediction_in_the_seed_format(server, registry):
    url, _ = server
    body = httpx.post(f"{url}/predict", json={"text": "great film"}, timeout=60).json()
    assert set(body) == {
        "label", "label_name", "probability", "probabilities", "truncated", "latency_ms", "base_model", "language",
        "model", "version",
    }  # fmt: skip
    assert (body["model"], body["version"], body["language"]) == ("served-a", 2, "English")
    expected = direct(registry, "served-a@2", ["great film"])[0]
    assert (body["label"], body["label_name"]) == (expected.label, expected.label_name)
    assert type(body["label"]) is int
    assert body["probability"] == pytest.approx(expected.probability, abs=1e-4)
    loaded = httpx.get(f"{url}/models", timeout=30).json()["loaded"]
    # the only adapter of its base model: merged into it
    assert [(m["model"], m["version"], m["runtime"], m["merged"]) for m in loaded] == [
        ("served-a", 2, "onnx", True)
    ]


SEED_FIELDS = ["label", "probability", "latency_ms", "base_model", "language"]  # the seed README's answer


def test_the_label_is_the_class_id_of_its_name(server, registry):
    """served-b's labels are words (negative, neutral, positive): ``label`` is the index of ``label_name`` in
    the model's labels (its id2label), first in the README's order, with our fields after."""
    url, _ = server
    source = source_from_registry(registry, "served-b@1")
    names = list(source.label_map.names)
    assert names == ["negative", "neutral", "positive"]
    expected = direct(registry, "served-b@1", TEXTS)
    for text, want in zip(TEXTS, expected, strict=True):
        body = httpx.post(f"{url}/predict", json={"text": text, "model": "served-b@1"}, timeout=60).json()
        assert list(body)[:5] == SEED_FIELDS
        assert type(body["label"]) is int and names[body["label"]] == body["label_name"] == want.label_name
        assert (body["base_model"], body["language"]) == (source.info.base_model, "English")
        assert body["probability"] == pytest.approx(body["probabilities"][body["label_name"]])
        assert isinstance(body["latency_ms"], float) and body["latency_ms"] > 0
    batch = httpx.post(
        f"{url}/predict/batch", json={"texts": TEXTS, "model": "served-b@1"}, timeout=60
    ).json()
    assert (batch["model"], batch["version"], batch["language"]) == ("served-b", 1, "English")
    assert [p["label"] for p in batch["predictions"]] == [names.index(p.label_name) for p in expected]
    assert [p["label_name"] for p in batch["predictions"]] == [p.label_name for p in expected]
    assert {type(p["label"]) for p in batch["predictions"]} == {int}
    assert list(batch["predictions"][0]) == [
        "label",
        "probability",
        "label_name",
        "probabilities",
        "truncated",
    ]


def test_every_response_field_is_described_in_the_openapi_schema(server):
    url, _ = server
    spec = httpx.get(f"{url}/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]

    def described(name: str, seen: set[str]) -> None:
        seen.add(name)
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
            for ref in _refs(prop):
                if ref not in seen:
                    described(ref, seen)

    answers = {
        ("/predict", "post"): "PredictResponse",
        ("/predict/batch", "post"): "BatchResponse",
        ("/models", "get"): "ModelsResponse",
        ("/health", "get"): "ServeHealth",
    }
    seen: set[str] = set()
    for (path, method), name in answers.items():
        responses = spec["paths"][path][method]["responses"]
        assert _refs(responses["200"]) == [name], path
        for response in responses.values():
            for ref in _refs(response):
                described(ref, seen)
    assert {"PredictResponse", "TextPrediction", "BatchResponse", "ResidentAdapter", "ServeError"} <= seen
    label = schemas["PredictResponse"]["properties"]["label"]
    assert label["type"] == "integer" and "Class id" in label["description"]
    assert list(schemas["PredictResponse"]["properties"])[:5] == SEED_FIELDS


def _refs(node) -> list[str]:
    """The schema names a part of an OpenAPI document refers to."""
    if isinstance(node, dict):
        own = [node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_each_adapter_answers_with_its_own_predictions(server, registry):
    url, _ = server
    for reference in ("served-a@1", "served-b@1", "served-a@2", "served-a@1"):
        body = httpx.post(
            f"{url}/predict/batch", json={"texts": TEXTS, "model": reference}, timeout=60
        ).json()
        expected = direct(registry, reference, TEXTS)
        assert [p["label_name"] for p in body["predictions"]] == [p.label_name for p in expected], reference
        got = [p["probabilities"] for p in body["predictions"]]
        for answer, want in zip(got, expected, strict=True):
            assert answer == pytest.approx(want.probabilities, abs=1e-4)
    models = httpx.get(f"{url}/models", timeout=30).json()
    resident = sorted((m["model"], m["version"]) for m in models["loaded"])
    # SERVE_MAX_ADAPTERS=2: the two most recently used stay, on one shared graph (two adapters of one base)
    assert resident == [("served-a", 1), ("served-a", 2)]
    assert {m["merged"] for m in models["loaded"]} == {False}


def test_concurrent_requests_each_get_their_own_answer(server, registry):
    url, app = server
    jobs = [(text, reference) for text in TEXTS * 4 for reference in ("served-a@1", "served-a@2")]
    expected = {
        reference: dict(zip(TEXTS, direct(registry, reference, TEXTS), strict=True))
        for reference in ("served-a@1", "served-a@2")
    }
    before = app.state.batcher.batches

    def call(job):
        text, reference = job
        return job, httpx.post(f"{url}/predict", json={"text": text, "model": reference}, timeout=60).json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(call, jobs))
    for (text, reference), body in answers:
        assert (body["model"], body["version"]) == ("served-a", int(reference[-1]))
        assert body["probabilities"] == pytest.approx(expected[reference][text].probabilities, abs=1e-4)
    assert app.state.batcher.batches - before < len(jobs)  # requests shared batches


def test_a_promotion_is_served_without_a_restart(registry):
    from fastapi.testclient import TestClient

    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.tracking.registry import ModelRegistry, Stage

    registry_client = ModelRegistry(registry)
    registry_client.transition("served-a", 1, Stage.PRODUCTION)
    client = TestClient(create_serve_app(registry, "served-a@production"))
    assert client.post("/predict", json={"text": "great film"}).json()["version"] == 1
    registry_client.transition("served-a", 2, Stage.PRODUCTION)
    assert client.post("/predict", json={"text": "great film"}).json()["version"] == 2
    # the new default took the old one's place in a merged graph; the old version is gone
    loaded = client.get("/models").json()["loaded"]
    assert [(m["version"], m["merged"]) for m in loaded] == [(2, True)]
    # a request naming another version moves the base model to the shared graph, both answered correctly
    assert client.post("/predict", json={"text": "great film", "model": "served-a@1"}).json()["version"] == 1
    loaded = client.get("/models").json()["loaded"]
    assert sorted((m["version"], m["merged"]) for m in loaded) == [(1, False), (2, False)]
    body = client.post("/predict/batch", json={"texts": TEXTS}).json()
    expected = direct(registry, "served-a@2", TEXTS)
    assert [p["label_name"] for p in body["predictions"]] == [p.label_name for p in expected]


def test_bad_requests_get_clear_answers(registry):
    from fastapi.testclient import TestClient

    from finetune_platform.serve.app import create_serve_app

    client = TestClient(create_serve_app(registry, "served-a@2"))
    for body, code, message in (
        ({"text": "   "}, 422, "text 0: empty; give the text to classify"),
        ({"text": "fine", "model": "nobody"}, 404, "no registered model 'nobody'"),
        ({"text": "fine", "model": "served-a@9"}, 404, "model 'served-a' has no version 9"),
    ):
        response = client.post("/predict", json=body)
        assert (response.status_code, response.json()["detail"]) == (code, message)
    assert client.post("/predict", json={"text": "fine", "owner": 1}).status_code == 422
    oversize = client.post("/predict/batch", json={"texts": ["fine"] * 65})
    assert (oversize.status_code, oversize.json()["detail"]) == (413, "65 texts: at most 64 per request")
    long = client.post("/predict", json={"text": "great " * 200}).json()
    assert long["truncated"] is True


def test_outside_local_mode_a_token_or_api_key_is_required(registry):
    from fastapi.testclient import TestClient

    from finetune_platform.serve.app import create_serve_app

    settings = registry.model_copy(
        update={
            "ENVIRONMENT": "production",
            "JWT_SECRET": None,
            "SERVE_API_KEYS": [_secret(SERVE_KEY)],
        }
    )
    client = TestClient(create_serve_app(settings, "served-a@2"))
    assert client.post("/predict", json={"text": "fine"}).status_code == 401
    assert client.post("/predict", json={"text": "fine"}, headers={"X-API-Key": "wrong"}).status_code == 401
    ok = client.post("/predict", json={"text": "fine"}, headers={"X-API-Key": SERVE_KEY})
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200


SERVE_KEY = (
    "5d0b7e3a91c4f6e2a8b05c7d3e9f1a4b6c8e0d2f"  # passes the secret policy (a weak key refuses the start)
)


def _secret(value: str):
    from pydantic import SecretStr

    return SecretStr(value)


def test_a_server_started_with_no_model_serves_the_first_one_registered_without_a_restart(
    tmp_path, tiny_bert
):
    """What `finetune up` starts on a fresh install: the inference server answers 404 with the reason until a job
    registers a model, then serves it (a failed lookup of the default is not cached)."""
    from fastapi.testclient import TestClient

    from finetune_platform.serve.app import create_serve_app

    settings = Settings(FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards")
    assert settings.SERVE_RESOLVE_SECONDS > 0  # the default: answers are cached, the lack of a model is not
    client = TestClient(create_serve_app(settings))
    empty = client.post("/predict", json={"text": "great film"})
    assert (empty.status_code, empty.json()["detail"]) == (
        404,
        "no registered model to serve yet: train one (it is served as soon as it is registered, without a "
        "restart), or name one with --model",
    )
    assert client.get("/health").json() == {"status": "ok", "resident_adapters": 0}
    train = write_csv(tmp_path / "train.csv", sentiment_rows(64, 1))
    valid = write_csv(tmp_path / "validation.csv", sentiment_rows(16, 2))
    raw = tiny_config_dict(tiny_bert, train, valid, tmp_path / "results", max_steps=8, eval_steps=8)
    raw["registry"] = {"model_name": "first-model", **UNGATED}
    run_training(config_from_dict(raw), settings=settings, show_progress=False)
    answer = client.post("/predict", json={"text": "great film"})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["model"], answer.json()["version"]) == ("first-model", 1)


def test_a_fresh_deployment_serves_before_any_model_is_registered(tmp_path):
    """`finetune serve` with an empty registry starts (a new stack must not crash-loop) and says why /predict
    cannot answer yet; a model named with --model must exist."""
    import os
    import subprocess

    from tests.conftest import finetune_bin
    from tests.integration.queue_harness import http_answers, wait_for

    env = {
        **os.environ,
        "FINETUNE_HOME": str(tmp_path / "home"),
        "MODEL_REGISTRY_DIR": str(tmp_path / "cards"),
    }
    named = subprocess.run([finetune_bin(), "serve", "--model", "nothing", "--port", str(free_port())],
                           env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (named.returncode, named.stderr.strip().splitlines()[-1]) == (
        1,
        "error: no registered model 'nothing'",
    )
    port = free_port()
    process = subprocess.Popen([finetune_bin(), "serve", "--port", str(port)], env=env,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_for(
            lambda: http_answers(f"http://127.0.0.1:{port}/health") or process.poll() is not None,
            120,
            "serve",
        )
        assert process.poll() is None
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"text": "great"})
        assert (answer.status_code, answer.json()["detail"]) == (
            404,
            "no registered model to serve yet: train one (it is served as soon as it is registered, without a "
            "restart), or name one with --model",
        )  # fmt: skip
    finally:
        process.terminate()
        warning = process.communicate(timeout=30)[1]
    assert (
        "warning: no registered model to serve yet: train one (it is served as soon as it is registered, without "
        "a restart), or name one with --model; "
        "/predict answers 404 until a model is registered"
    ) in warning
