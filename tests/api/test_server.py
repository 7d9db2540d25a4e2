"""`finetune api` as a real server process, with a real worker: a dataset uploaded over HTTP becomes a
registered model, and the task's status, progress and logs are read back over HTTP."""

from __future__ import annotations

import os
import subprocess

import httpx
import pytest

from tests.api.conftest import PASSWORD, SAMPLE
from tests.conftest import ROOT, finetune_bin, free_port
from tests.integration.queue_harness import queue_env, require_redis, wait_for

pytestmark = pytest.mark.slow


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
            validation = client.post(
                "/datasets",
                params={"name": "validation.csv"},
                content=(ROOT / "data/sample/validation.csv").read_bytes(),
            ).json()
            config = {
                "experiment": "http",
                "training": {"max_steps": 6, "batch_size": 16, "eval_strategy": "steps", "eval_steps": 3},
                "registry": {"model_name": "http-sentiment"},
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
    finally:
        server.terminate()
        server.wait(timeout=30)
        env.stop_all()
        if os.environ.get("KEEP_LOGS"):
            print((tmp_path / "api.log").read_text())
