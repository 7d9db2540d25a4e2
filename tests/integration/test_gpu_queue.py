"""A GPU worker pool has its own queue: with GPU_QUEUE_NAME set, jobs with device: cuda are sent there and every
other job to QUEUE_NAME (real Redis; the queues are Redis lists named after them)."""

from __future__ import annotations

import secrets

from finetune_platform.db import session as db
from finetune_platform.services import jobs
from finetune_platform.services.dispatch import enqueue
from finetune_platform.services.users import create_user
from finetune_platform.settings import Settings
from tests.conftest import ROOT
from tests.integration.queue_harness import require_redis


def config(device: str) -> dict:
    data = {
        "train_file": str(ROOT / "data/sample/train.csv"),
        "validation_file": str(ROOT / "data/sample/validation.csv"),
    }
    return {"experiment": "pools", "device": device, "data": data, "training": {"epochs": 1}}


def test_cuda_jobs_go_to_the_gpu_queue_and_the_rest_to_the_main_queue(tmp_path):
    import redis

    url = require_redis()
    main, gpu = f"cpu-{secrets.token_hex(4)}", f"gpu-{secrets.token_hex(4)}"
    settings = Settings(FINETUNE_HOME=tmp_path, REDIS_URL=url, QUEUE_NAME=main, GPU_QUEUE_NAME=gpu)
    db.upgrade(settings)
    with db.session_scope(settings) as session:
        alice = create_user(session, "alice", "long enough")
        ids = {
            device: jobs.submit_job(session, alice, config(device)).job.id
            for device in ("cuda", "cpu", "auto")
        }
    client = redis.Redis.from_url(url)
    try:
        assert sorted(enqueue(settings, list(ids.values()))) == sorted(ids.values())
        assert (client.llen(main), client.llen(gpu)) == (2, 1)
        assert ids["cuda"] in client.lindex(gpu, 0).decode()
        without_pool = Settings(FINETUNE_HOME=tmp_path, REDIS_URL=url, QUEUE_NAME=main)
        enqueue(without_pool, [ids["cuda"]])  # no GPU pool configured: one queue for everything
        assert (client.llen(main), client.llen(gpu)) == (3, 1)
    finally:
        client.delete(main, gpu)
