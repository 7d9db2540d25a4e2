"""`finetune api` as a real server process, with a real worker: a dataset uploaded over HTTP becomes a
registered model, the task's status, progress and logs are read back over HTTP, and the model then
classifies an uploaded file as a prediction task."""

from __future__ import annotations

import csv
import io
import os
import subprocess

import httpx
import pytest

from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import source_from_registry
from tests.api.conftest import PASSWORD, SAMPLE
from tests.conftest import ROOT, UNGATED, finetune_bin, free_port
from tests.integration.queue_harness import queue_env, require_redis, wait_for

# Default run: tests/e2e/test_seed_readme.py makes the same trip (upload, train by a worker, logs, a prediction
# task whose CSV equals the model's answers) on the filesystem queue; this one on Redis.
pytestmark = [pytest.mark.slow, pytest.mark.extended]


def test_a_task_submitted_over_http_is_trained_by_a_worker(tmp_path):
    env = queue_env(tmp_path, REDIS_URL=require_redis(), RESULTS_DIR=str(tmp_path / "results"))
    env.cli("db", "upgrade")
    created = subprocess.run(
        [finetune_bin(), "users", "create", "alice", "--password-stdin"],
        input=f"{PASSWORD}\n",
        env=env.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    port = free_port()
    server = subprocess.Popen(
        [finetune_bin(), "api", "--port", str(port)],
        env=env.env(),
        stdout=(tmp_path / "api.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def answers():
            try:
                return httpx.get(f"{base}/health", timeout=2).json()["status"] == "ok"
            except httpx.HTTPError:
                return False

        wait_for(answers, 60, "the API to answer /health")
        assert httpx.get(f"{base}/docs").status_code == 200
        with httpx.Client(base_url=base, timeout=30) as client:
            token = client.post("/login", data={"username": "alice", "password": PASSWORD}).json()[
                "access_token"
            ]
            client.headers["Authorization"] = f"Bearer {token}"
            dataset = client.post("/datasets", params={"name": "reviews.csv"}, content=SAMPLE).json()
            validation_text = (ROOT / "data/sample/validation.csv").read_text(encoding="utf-8")
            validation = client.post(
                "/datasets", params={"name": "validation.csv"}, content=validation_text.encode()
            ).json()
            config = {
                "experiment": "http",
                "training": {"max_steps": 6, "batch_size": 16, "eval_strategy": "steps", "eval_steps": 3},
                "registry": {"model_name": "http-sentiment", **UNGATED},  # 6 steps need not learn
            }
            response = client.post(
                "/train",
                json={
                    "config": config,
                    "dataset_id": dataset["id"],
                    "validation_dataset_id": validation["id"],
                },
            )
            assert response.status_code == 201, response.text
            task_id = response.json()["id"]
            env.start_worker("http-worker")
            task = wait_for(
                lambda: (
                    (t := client.get(f"/task/{task_id}").json())["status"] in {"succeeded", "failed"} and t
                ),
                300,
                "the task to finish",
                interval=1,
            )
            assert (task["status"], task["model_name"], task["model_version"]) == (
                "succeeded",
                "http-sentiment",
                1,
            )
            assert task["progress"]["step"] == 6 and set(task["progress"]["metrics"]) == {
                "accuracy",
                "macro_f1",
                "loss",
            }
            logs = client.get(f"/task/{task_id}/logs").json()
            assert [event["kind"] for event in logs["events"]][-1] == "succeeded"
            assert any("training: 6 steps" in line for line in logs["log_lines"])
            found = client.get("/models/search", params={"stage": "Staging"}).json()
            assert [(card["name"], card["version"]) for card in found] == [("http-sentiment", 1)]

            # the registered model classifies an uploaded file as a queued prediction task
            response = client.post(
                "/predictions", json={"model": "http-sentiment@staging", "dataset_id": validation["id"]}
            )
            assert response.status_code == 201, response.text
            assert (response.json()["kind"], response.json()["status"]) == ("predict", "queued")
            predict_id = response.json()["id"]
            task = wait_for(
                lambda: (
                    (t := client.get(f"/task/{predict_id}").json())["status"] in {"succeeded", "failed"} and t
                ),
                120,
                "the prediction task to finish",
                interval=0.5,
            )
            assert (task["status"], task["model_name"], task["model_version"]) == (
                "succeeded",
                "http-sentiment",
                1,
            )
            download = client.get(f"/task/{predict_id}/predictions")
            assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
            written = list(csv.DictReader(io.StringIO(download.text)))
            texts = [row["text"] for row in csv.DictReader(io.StringIO(validation_text))]
            expected = open_one(env.settings, source_from_registry(env.settings, "http-sentiment@1")).predict(
                texts
            )
            assert [row["label_name"] for row in written] == [p.label_name for p in expected]
            assert task["progress"]["rows"] == len(texts) == 80
            refused = client.get(f"/task/{task_id}/predictions")
            assert refused.status_code == 409
            assert refused.json()["detail"] == (
                f"task {task_id} is a train task: only prediction tasks have predictions"
            )
    finally:
        server.terminate()
        server.wait(timeout=30)
        env.stop_all()
        if os.environ.get("KEEP_LOGS"):
            print((tmp_path / "api.log").read_text())
