"""The seed "Finetune-30-days" README followed as a new user would, on a fresh local install: its quick start
(`cp .env.example .env`, `make setup-conda`, `make run-local`, `make logs-local`, `make db-list`), its inference
targets (`make serve`, `make serve exp=NAME`, `make predict-*`) and its REST calls made over plain HTTP against a
real `finetune api` with a real `finetune worker` on the embedded filesystem queue (`/login`, `/train` →
`task_id`, `/task/{task_id}`, `/experiments`, `/mlflow`, `/audit/logs`, `/models/search`, `/models/recommend`,
`/models/transition`, `/experiments/mlflow/{run_id}`).

The commands run in a folder that looks like a checkout (the files they read are links into the repository), so
`.env`, `results/` and every other relative path land under tmp_path; the platform's state (database, MLflow
store, model cards, queue) lives in a platform home under tmp_path too."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml

from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import source_from_registry
from tests.api.conftest import PASSWORD, running_api
from tests.conftest import ROOT, UNGATED, finetune_bin, free_port
from tests.deploy.test_containers import require_tool
from tests.deploy.test_make_targets import CLEAN, MAKEFILE
from tests.integration.queue_harness import http_answers, wait_for

pytestmark = pytest.mark.slow

# What a clone holds that the README's commands read; linked, so nothing is written into the repository.
CHECKOUT_FILES = ("Makefile", ".env.example", "environment.yml", "pyproject.toml", "configs", ".venv")
# Paths a command run in the repository would create; none may appear there.
STATE_IN_REPOSITORY = ("results", "mlruns", "mlartifacts", ".finetune", ".env", "data/model_registry")
# The routes of the README's tables that answer nobody without a token (/login and /mlflow are public).
SIGNED_IN_ONLY = [
    ("POST", "/train"), ("GET", "/task/x"), ("GET", "/experiments"), ("GET", "/audit/logs"),
    ("GET", "/models/search"), ("POST", "/models/recommend"), ("POST", "/models/transition"),
]  # fmt: skip
PREDICTION_FIELDS = {"label", "probability", "latency_ms", "base_model", "language"}


def checkout(folder: Path) -> Path:
    folder.mkdir()
    for name in CHECKOUT_FILES:
        (folder / name).symlink_to(ROOT / name)
    (folder / "data").mkdir()
    (folder / "data" / "sample").symlink_to(ROOT / "data" / "sample")
    return folder


def set_line(path: Path, name: str, value: object) -> None:
    """Edit one NAME=value line of a .env, as a user would in an editor."""
    lines = path.read_text(encoding="utf-8").splitlines()
    edited = [f"{name}={value}" if line.startswith(f"{name}=") else line for line in lines]
    assert edited != lines, f"{path} has no {name}= line"
    path.write_text("\n".join(edited) + "\n", encoding="utf-8")


@contextlib.contextmanager
def make_process(*arguments: str, env: dict[str, str], cwd: Path, **popen):
    """GNU make on the repository's Makefile as tests/deploy/test_make_targets.make runs it (the test's environment
    without make's own knobs, ``env`` over it, never reinstalling .venv), in a process group of its own that is
    killed on the way out while make still runs (a timeout, a failure, `make serve`)."""
    binary = require_tool("make", [], "GNU make")
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN} | env
    process = subprocess.Popen(
        [binary, "--no-print-directory", "-f", str(MAKEFILE), "-o", ".venv/.installed", *arguments],
        cwd=cwd, env=environment, start_new_session=True, **popen,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:  # make still runs, so the group is still its own
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def make(
    *arguments: str, env: dict[str, str], cwd: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    with make_process(
        *arguments, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as (process):
        stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def predicted(done: subprocess.CompletedProcess) -> dict:
    """The one line of JSON a `make predict-*` target printed: the README's fields, label a class id."""
    assert done.returncode == 0, done.stdout + done.stderr
    (line,) = done.stdout.splitlines()
    answer = json.loads(line)
    assert set(answer) >= PREDICTION_FIELDS, answer
    assert type(answer["label"]) is int, answer
    assert 0.5 <= answer["probability"] <= 1.0 and answer["latency_ms"] > 0, answer
    assert (answer["base_model"], answer["language"]) == ("minilm", "English"), answer
    # our extras beside them: the label's name (its index in the model's labels is the id), the model served
    assert answer["label"] == ["negative", "positive"].index(answer["label_name"]), answer
    assert (answer["model"], answer["version"]) == ("quickstart-sentiment", 1), answer
    return answer


@contextlib.contextmanager
def signed_in(base: str, username: str):
    """An HTTP client holding the token POST /login (the OAuth2 password form) gave ``username``."""
    with httpx.Client(base_url=base, timeout=30) as client:
        token = client.post("/login", data={"username": username, "password": PASSWORD})
        assert token.status_code == 200, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield client


def wait_for_task(client: httpx.Client, task_id: str, timeout: float = 300) -> dict:
    def finished():
        task = client.get(f"/task/{task_id}").json()
        return task if task["status"] in {"succeeded", "failed", "cancelled"} else None

    return wait_for(finished, timeout, f"task {task_id} to finish", interval=0.5)


def test_a_new_user_follows_the_seed_readme(tmp_path, monkeypatch):
    absent_before = [name for name in STATE_IN_REPOSITORY if not (ROOT / name).exists()]
    work = checkout(tmp_path / "checkout")
    monkeypatch.chdir(work)  # every process below (make, finetune api, the worker) runs in the checkout
    # The platform home of a fresh install (what tests/api/conftest.running_api uses for the API below); the
    # embedded defaults: no Redis, no PostgreSQL, no MLflow server, whatever the test's environment says.
    state = {
        "FINETUNE_HOME": str(tmp_path / "home"),
        "MODEL_REGISTRY_DIR": str(tmp_path / "cards"),
        "RESULTS_DIR": str(work / "results"),
        "REDIS_URL": "",
        "DATABASE_URL": "",
        "MLFLOW_TRACKING_URI": "",
        "HF_HUB_OFFLINE": "1",
    }

    # -- quick start ----------------------------------------------------------------------------------------
    shutil.copy(work / ".env.example", work / ".env")  # cp .env.example .env
    serve_port = free_port()
    set_line(work / ".env", "SERVE_PORT", serve_port)  # .env sets the ports make serve and make predict-* use
    if shutil.which("conda") is None:  # make setup-conda: without conda it says what to do, and stops
        done = make("setup-conda", env=state, cwd=work)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "make setup-conda: conda is not on PATH; install Miniforge" in done.stderr
        assert "or use make install (a .venv, no conda)" in done.stderr
    # (with conda installed it would create a real environment: that is tests/deploy/test_make_targets.py's)

    # configs/quickstart.yaml (bundled MiniLM, sample data), 1 of its 6 epochs: set= is our addition, for speed.
    # One epoch may not beat the majority baseline yet, so the registration gate is lifted for this run
    trained = make(
        "run-local", "set=training.epochs=1 registry.require_better_than_baseline=false", env=state, cwd=work
    )
    assert trained.returncode == 0, trained.stdout + trained.stderr
    assert "registered quickstart-sentiment version 1 (Staging)" in trained.stdout + trained.stderr
    (run_folder,) = (work / "results" / "quickstart").iterdir()  # results/<experiment>/<run>/
    for name in ("config.yaml", "metrics.json", "logs.txt", "artifacts/adapter_model.safetensors"):
        assert (run_folder / name).is_file(), name
    assert yaml.safe_load((run_folder / "config.yaml").read_text())["training"]["epochs"] == 1
    mlflow_run_id = json.loads((run_folder / "run.json").read_text())["mlflow_run_id"]

    logs = make("logs-local", env=state, cwd=work)  # make echoes its command line, then the newest run's logs
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines()[1:] == (run_folder / "logs.txt").read_text(encoding="utf-8").splitlines()
    assert f"run {run_folder.name} succeeded in" in logs.stdout
    listed = make("db-list", env=state, cwd=work)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[1][:2] == ["experiment", "runs"], listed.stdout
    assert [row[:2] for row in rows[2:] if row] == [["quickstart", "1"]], listed.stdout

    # -- inference: make serve (the newest model), then make serve exp=quickstart; make predict-* ask it -----
    # Which class each text gets is not asserted: a 1-epoch model is barely trained (the quickstart's accuracy
    # is tests/e2e/test_cli.py's); the README's contract here is the answer's shape.
    serve_url = f"http://127.0.0.1:{serve_port}"
    targets = [["predict-text", "text=Great!"], ["predict-positive"], ["predict-negative"]]
    for serve_arguments, predictions in (([], targets), (["exp=quickstart"], targets[:1])):
        log = tmp_path / f"serve{len(serve_arguments)}.log"
        with (
            log.open("w") as output,
            make_process(
                "serve", *serve_arguments, env=state, cwd=work, stdout=output, stderr=subprocess.STDOUT
            ),
        ):
            wait_for(lambda: http_answers(f"{serve_url}/health"), 180, f"make serve on port {serve_port}")
            health = make("predict-health", env=state, cwd=work)
            assert health.returncode == 0, health.stderr
            assert json.loads(health.stdout)["status"] == "ok", health.stdout
            for target in predictions:
                predicted(make(*target, env=state, cwd=work))
        if serve_arguments:
            assert "experiment 'quickstart': serving quickstart-sentiment@1" in log.read_text()

    # -- the REST API, as the README's curl calls: a real `finetune api` and `finetune worker` -------------------
    with contextlib.ExitStack() as stack:
        base, _, env = stack.enter_context(running_api(tmp_path, ("alice", "bob"), **state))  # users create
        assert (env.values["FINETUNE_HOME"], env.values["MODEL_REGISTRY_DIR"]) == (
            state["FINETUNE_HOME"],
            state["MODEL_REGISTRY_DIR"],
        )
        created = subprocess.run(
            [finetune_bin(), "users", "create", "root", "--role", "admin", "--password-stdin"],
            input=f"{PASSWORD}\n", env=env.env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        stack.callback(env.stop_all)
        env.start_worker("readme-worker")  # the embedded filesystem queue under the platform home

        anonymous = stack.enter_context(httpx.Client(base_url=base, timeout=30))
        alice, bob, root = (stack.enter_context(signed_in(base, name)) for name in ("alice", "bob", "root"))
        # the README's table: /login and /mlflow are public, the rest needs a token
        for method, path in SIGNED_IN_ONLY:
            assert anonymous.request(method, path).status_code == 401, path
        datasets = {}
        for name in ("train.csv", "validation.csv"):
            uploaded = alice.post(
                "/datasets", params={"name": name}, content=(ROOT / "data" / "sample" / name).read_bytes()
            )
            assert uploaded.status_code == 201, uploaded.text
            datasets[name] = uploaded.json()["id"]
        config = {  # a few steps: this run only has to exist
            "experiment": "readme-api",
            "model": {"max_length": 64},
            "training": {"max_steps": 4, "batch_size": 16, "eval_strategy": "steps", "eval_steps": 4},
            "registry": {"model_name": "readme-api-sentiment", **UNGATED},  # 4 steps need not learn
        }
        body = {"config": config, "dataset_id": datasets["train.csv"],
                "validation_dataset_id": datasets["validation.csv"]}  # fmt: skip
        submitted = alice.post("/train", json=body)
        assert submitted.status_code == 201, submitted.text
        task_id = submitted.json()["task_id"]  # what the README's client reads
        assert task_id == submitted.json()["id"] and submitted.json()["status"] == "queued"
        assert bob.get(f"/task/{task_id}").status_code == 404  # the task's owner only (and admins)
        task = wait_for_task(alice, task_id)  # the UI's polling
        assert (task["status"], task["model_name"], task["model_version"]) == (
            "succeeded",
            "readme-api-sentiment",
            1,
        ), task
        assert task["progress"]["step"] == 4
        assert set(task["progress"]["metrics"]) == {"accuracy", "macro_f1", "loss"}
        logs = alice.get(f"/task/{task_id}/logs").json()
        assert [event["kind"] for event in logs["events"]][-1] == "succeeded"
        assert any("training: 4 steps" in line for line in logs["log_lines"])

        # the registered model classifies an uploaded file as a queued prediction task (the UI's batch page)
        predicting = alice.post(
            "/predictions",
            json={"model": "readme-api-sentiment@staging", "dataset_id": datasets["validation.csv"]},
        )
        assert predicting.status_code == 201, predicting.text
        assert (predicting.json()["kind"], predicting.json()["status"]) == ("predict", "queued")
        predict_id = predicting.json()["task_id"]
        predicted_task = wait_for_task(alice, predict_id, timeout=120)
        assert (predicted_task["status"], predicted_task["model_name"], predicted_task["model_version"]) == (
            "succeeded",
            "readme-api-sentiment",
            1,
        ), predicted_task
        download = alice.get(f"/task/{predict_id}/predictions")
        assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
        written = list(csv.DictReader(io.StringIO(download.text)))
        validation_text = (ROOT / "data" / "sample" / "validation.csv").read_text(encoding="utf-8")
        texts = [row["text"] for row in csv.DictReader(io.StringIO(validation_text))]
        expected = open_one(
            env.settings, source_from_registry(env.settings, "readme-api-sentiment@1")
        ).predict(texts)
        assert [(int(row["label"]), row["label_name"]) for row in written] == [
            (p.label, p.label_name) for p in expected
        ]
        assert predicted_task["progress"]["rows"] == len(texts) == 80
        refused = alice.get(f"/task/{task_id}/predictions")
        assert refused.status_code == 409
        assert (
            refused.json()["detail"]
            == f"task {task_id} is a train task: only prediction tasks have predictions"
        )

        # GET /experiments: admins see every run; a user only their own (our deliberate widening)
        everything = root.get("/experiments")
        assert everything.status_code == 200, everything.text
        assert sorted((e["name"], e["runs"]) for e in everything.json()) == [
            ("quickstart", 1),
            ("readme-api", 1),
        ]
        assert [(e["name"], e["runs"]) for e in alice.get("/experiments").json()] == [("readme-api", 1)]

        # GET /mlflow: public, a summary and nothing about a run itself
        status = anonymous.get("/mlflow")
        assert status.status_code == 200, status.text
        assert (status.json()["backend"], status.json()["reachable"]) == ("embedded", True)
        summary = status.json()["summary"]
        assert sorted((e["name"], e["runs"]) for e in summary["experiments"]) == [
            ("quickstart", 1),
            ("readme-api", 1),
        ]
        assert (summary["experiment_count"], summary["run_count"]) == (2, 2)
        for private in (mlflow_run_id, task["run_id"], str(tmp_path), "accuracy", "learning_rate", "minilm"):
            assert private not in status.text, private

        # GET /experiments/mlflow/{run_id}: the params and metrics the README names, under our names (the
        # training config's field paths; final_* are the evaluation of the model kept)
        run = root.get(f"/experiments/mlflow/{mlflow_run_id}")
        assert run.status_code == 200, run.text
        assert (run.json()["experiment"], run.json()["status"]) == ("quickstart", "FINISHED")
        params, metrics = run.json()["params"], run.json()["metrics"]
        readme_params = {
            "training.batch_size": "16",
            "training.learning_rate": "0.002",
            "training.epochs": "1.0",
        }
        assert params.items() >= readme_params.items(), params
        assert {"final_accuracy", "final_loss", "final_train_runtime"} <= set(metrics), metrics
        own = alice.get(f"/experiments/mlflow/{task['run_id']}")
        assert (own.status_code, own.json()["experiment"]) == (200, "readme-api"), own.text
        assert alice.get(f"/experiments/mlflow/{mlflow_run_id}").status_code == 404  # not hers

        # GET /models/search by base_model, language, task and tags
        found = alice.get(
            "/models/search",
            params={
                "base_model": "minilm",
                "language": "English",
                "task": "sentiment-analysis",
                "tag": "reviews",
            },
        )
        assert found.status_code == 200, found.text
        assert [(c["name"], c["version"], c["stage"]) for c in found.json()] == [
            ("quickstart-sentiment", 1, "Staging")
        ]

        # POST /models/recommend by words, by an embedding (a card's own) and like another version
        by_query = alice.post("/models/recommend", json={"query": "English movie review sentiment"})
        assert by_query.status_code == 200, by_query.text
        assert {item["card"]["name"] for item in by_query.json()} == {
            "quickstart-sentiment",
            "readme-api-sentiment",
        }
        card = json.loads((tmp_path / "cards" / "quickstart-sentiment-v1.json").read_text())
        by_embedding = alice.post("/models/recommend", json={"embedding": card["embedding"], "top_k": 1})
        assert by_embedding.status_code == 200, by_embedding.text
        (best,) = by_embedding.json()
        assert (best["card"]["name"], best["card"]["version"]) == ("quickstart-sentiment", 1)
        assert best["score"] == pytest.approx(1.0, abs=1e-3)
        wrong_size = alice.post("/models/recommend", json={"embedding": [0.5, 0.5]})
        assert (
            wrong_size.status_code == 422 and f"expected {len(card['embedding'])} numbers" in wrong_size.text
        )
        like = alice.post("/models/recommend", json={"like": "quickstart-sentiment@1"})
        assert like.status_code == 200, like.text
        assert [(i["card"]["name"], i["card"]["version"]) for i in like.json()] == [
            ("readme-api-sentiment", 1)
        ]

        # POST /models/transition Staging -> Production (admin); cards and MLflow's registry move with it
        transition = {"name": "quickstart-sentiment", "version": 1, "stage": "Production"}
        assert alice.post("/models/transition", json=transition).status_code == 403
        moved = root.post("/models/transition", json=transition)
        assert moved.status_code == 200, moved.text
        assert moved.json() == {
            "name": "quickstart-sentiment",
            "version": 1,
            "stage": "Production",
            "archived": [],
        }
        production = alice.get("/models/search", params={"stage": "Production"}).json()
        assert [(c["name"], c["version"]) for c in production] == [("quickstart-sentiment", 1)]
        from finetune_platform.settings import Settings
        from finetune_platform.tracking.client import mlflow_client

        client = mlflow_client(
            Settings(FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards")
        )
        (latest,) = client.get_latest_versions("quickstart-sentiment", stages=["Production"])
        assert (int(latest.version), latest.current_stage, latest.run_id) == (1, "Production", mlflow_run_id)

        # GET /audit/logs: admins only; the submit and the transition are there
        assert (alice.get("/audit/logs").status_code, bob.get("/audit/logs").status_code) == (403, 403)
        for action, target, detail in [
            ("train.submit", f"task:{task_id}", {"dataset": datasets["train.csv"]}),
            ("model.transition", "model:quickstart-sentiment@1", {"stage": "Production", "archived": []}),
        ]:
            audit = root.get("/audit/logs", params={"action": action})
            assert audit.status_code == 200, audit.text
            entries = [(e["target"], e["outcome"], e["detail"]) for e in audit.json()["data"]]
            assert entries == [(target, "ok", detail)], audit.text

    assert [name for name in absent_before if (ROOT / name).exists()] == []
