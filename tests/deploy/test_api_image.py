"""The API as its image runs it: no PyTorch, transformers or PEFT importable, PostgreSQL, Redis and an MLflow
server behind it, the sentence embedder as the exported ONNX copy. Every route family answers, a model
recommendation scores like the PyTorch embedder, and every module the process imported comes from a
distribution that deploy/requirements/api.txt installs."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, _postgres_database, finetune_bin, free_port
from tests.integration.queue_harness import http_answers, require_redis, wait_for

pytestmark = pytest.mark.slow
REQUIREMENTS = ROOT / "deploy" / "requirements" / "api.txt"
NOT_IN_THE_IMAGE = {"torch", "transformers", "peft", "accelerate"}
PASSWORD = "long enough password"


# Imported when they happen to be installed (as in the test environment), never needed: the API runs without them.
OPTIONAL_IMPORTS = {
    "websockets": "uvicorn picks a websocket implementation if one is installed; the API has no websocket route",
    "sniffio": "anyio/httpx look for it to detect the async library; asyncio works without it",
    "socks": "urllib3 offers SOCKS proxies when PySocks is installed",
}


def requirements(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(listed: list[str]) -> set[str]:
    """The installed distributions that ``listed`` requirements pull in, extras included, recursively."""
    from packaging.requirements import Requirement

    seen: set[tuple[str, str]] = set()
    todo = [Requirement(text) for text in listed]
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        wanted = {(name, extra) for extra in ("", *requirement.extras)} - seen
        if not wanted:
            continue
        seen |= wanted
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # a platform-specific requirement not installed here
        for text in requires:
            child = Requirement(text)
            if child.marker is None or any(child.marker.evaluate({"extra": extra}) for _, extra in wanted):
                todo.append(child)
    return {name for name, _ in seen}


def card(name: str, description: str, tags: list[str], embedder):
    from finetune_platform.tracking.model_cards import ModelCard

    made = ModelCard(
        name, 1, "minilm", "English", "text-classification", description, {"accuracy": 0.9}, tags,
        None, None, None, "Production", "2026-11-26T00:00:00+00:00", "", ["negative", "positive"],
    )  # fmt: skip
    made.embedding = embedder.embed([made.text()])[0].round(6).tolist()
    return made


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("embedder")
    done = subprocess.run(
        [finetune_bin(), "models", "export-embedder", "--output", str(folder)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"set FINETUNE_EMBEDDER_DIR={folder.resolve()}")
    assert sorted(p.name for p in folder.iterdir()) == ["embedder.json", "model.onnx", "tokenizer.json"]
    return folder


def test_the_onnx_embedder_gives_the_pytorch_vectors(embedder_dir):
    from finetune_platform.tracking.embeddings import OnnxEmbedder, TextEmbedder

    texts = ["A wonderful, moving film.", "sentiment of movie reviews", "word " * 400, ""]
    np.testing.assert_allclose(
        OnnxEmbedder(embedder_dir).embed(texts), TextEmbedder().embed(texts), atol=1e-5
    )


def test_an_embedder_folder_without_the_model_is_a_clear_error(tmp_path):
    from finetune_platform.errors import ConfigError
    from finetune_platform.tracking.embeddings import OnnxEmbedder

    with pytest.raises(ConfigError) as caught:
        OnnxEmbedder(tmp_path)
    assert str(caught.value) == (
        f"FINETUNE_EMBEDDER_DIR: {str(tmp_path)!r} has no model.onnx, tokenizer.json; "
        "write one with `finetune models export-embedder --output DIR`"
    )


def test_the_api_runs_without_pytorch_on_what_its_image_installs(tmp_path, embedder_dir, mlflow_server):
    import httpx
    import redis

    from finetune_platform.tracking.embeddings import TextEmbedder
    from finetune_platform.tracking.model_cards import CardStore

    redis_url = require_redis()
    queue = f"image-{secrets.token_hex(4)}"
    metrics_token = secrets.token_hex(32)
    env = {
        "PATH": str(Path(sys.executable).parent),
        "HOME": str(tmp_path),
        "ENVIRONMENT": "production",
        "JWT_SECRET": secrets.token_hex(32),
        "METRICS_TOKEN": metrics_token,
        "FINETUNE_HOME": str(tmp_path / "data/home"),
        "RESULTS_DIR": str(tmp_path / "data/results"),
        "MODEL_REGISTRY_DIR": str(tmp_path / "data/registry"),
        "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{_postgres_database()}",
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue,
        "MLFLOW_TRACKING_URI": mlflow_server[0],
        "FINETUNE_EMBEDDER_DIR": str(embedder_dir),
    }
    for command in (["db", "upgrade"], ["users", "create", "root", "--role", "admin", "--password-stdin"]):
        done = subprocess.run([finetune_bin(), *command], input=f"{PASSWORD}\n", env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    torch_embedder = TextEmbedder()
    store = CardStore(tmp_path / "data/registry")
    for made in (
        card("reviews", "sentiment of movie reviews", ["sentiment"], torch_embedder),
        card("topics", "news topic classification", ["news"], torch_embedder),
    ):
        store.save(made)

    port, modules = free_port(), tmp_path / "modules.txt"
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("without_torch.py")), str(modules),
         "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=(tmp_path / "api.log").open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_answers(f"{url}/health") or process.poll() is not None, 120, "the API")
        assert process.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
        client = httpx.Client(base_url=url, timeout=60)
        token = client.post("/login", data={"username": "root", "password": PASSWORD}).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        uploaded = client.post("/datasets", params={"name": "train.csv"},
                               content=(ROOT / "data/sample/train.csv").read_bytes())  # fmt: skip
        assert (uploaded.status_code, uploaded.json()["valid"], uploaded.json()["rows"]) == (201, True, 320)
        task = client.post(
            "/train", json={"config": {"experiment": "image"}, "dataset_id": uploaded.json()["id"]}
        )
        assert (task.status_code, task.json()["status"]) == (201, "queued")
        assert redis.Redis.from_url(redis_url).llen(queue) == 1  # the message is in the broker
        assert [t["id"] for t in client.get("/tasks").json()["data"]] == [task.json()["id"]]
        assert client.get("/config/schema").json()["title"] == "TrainConfig"
        assert client.get("/experiments").status_code == 200
        tracking = client.get("/mlflow").json()
        assert {key: tracking[key] for key in ("backend", "reachable", "ui_url")} == {
            "backend": "server",
            "reachable": True,
            "ui_url": mlflow_server[0],
        }
        assert tracking["summary"] is None or isinstance(tracking["summary"]["experiments"], list)
        assert [c["name"] for c in client.get("/models/search").json()] == ["reviews", "topics"]
        ranked = client.post("/models/recommend", json={"query": "sentiment of film reviews"}).json()
        assert [r["card"]["name"] for r in ranked] == ["reviews", "topics"]
        query = torch_embedder.embed(["sentiment of film reviews"])[0]
        expected = float(query @ np.asarray(store.get("reviews", 1).embedding))
        assert ranked[0]["score"] == pytest.approx(expected, abs=1e-4)
        assert client.get("/audit/logs").json()["count"] >= 2
        anonymous = httpx.get(f"{url}/metrics", timeout=30)
        assert anonymous.status_code == 401  # production: Prometheus sends METRICS_TOKEN
        scraped = httpx.get(
            f"{url}/metrics", headers={"Authorization": f"Bearer {metrics_token}"}, timeout=30
        )
        assert "finetune_api_requests_total" in scraped.text
        wait_for(lambda: "psycopg" in modules.read_text(), 10, "the module list")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        redis.Redis.from_url(redis_url).delete(queue)

    imported = set(modules.read_text().split())
    assert not imported & NOT_IN_THE_IMAGE
    assert {"onnxruntime", "tokenizers", "mlflow", "psycopg", "celery"} <= imported
    listed = requirements(REQUIREMENTS)
    installed = closure(listed) | {"finetune-platform"}  # the image installs the project with --no-deps
    assert not installed & NOT_IN_THE_IMAGE, "a requirement of api.txt pulls in PyTorch"
    owners = metadata.packages_distributions()
    missing = {
        module: owners[module]
        for module in imported
        if module in owners
        and module not in OPTIONAL_IMPORTS
        and not {canonical(d) for d in owners[module]} & installed
    }
    assert not missing, f"imported by the API but not installed by api.txt: {missing}"
