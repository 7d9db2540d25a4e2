"""The job queue with real `finetune worker` processes, a real broker and a real database.

Each reliability promise of the queue is tested by doing the thing: SIGKILL and SIGTERM to workers,
a visibility timeout shorter than the job, a Redis server killed and restarted empty, a job whose
worker dies on every attempt, cancels of queued and running jobs.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import yaml

from tests.conftest import UNGATED, sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import PrivateRedis, queue_env, require_redis, submit, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def job_data(tmp_path):
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, seed=2))
    return train, validation


def job_config(tiny_bert, job_data, tmp_path, name: str, **training) -> dict:
    config = tiny_config_dict(tiny_bert, *job_data, tmp_path / "results", **training)
    config["experiment"] = name
    config["registry"] = {"model_name": name, **UNGATED}  # the queue is under test, not learning
    return config


def long_job(tiny_bert, job_data, tmp_path, name: str, steps: int = 400) -> dict:
    """Long enough to be interrupted mid-training: logs every step, checkpoints every 20."""
    return job_config(
        tiny_bert,
        job_data,
        tmp_path,
        name,
        max_steps=steps,
        logging_steps=1,
        eval_steps=20,
        learning_rate=1e-3,
    )


@pytest.fixture
def envs():
    made = []

    def make(root, **values):
        env = queue_env(root, **values)
        made.append(env)
        return env

    yield make
    for env in made:
        env.stop_all()


def registered_versions(env, name: str) -> list[int]:
    from finetune_platform.tracking.registry import ModelRegistry

    return sorted(v.version for v in ModelRegistry(env.settings).versions(name))


def test_filesystem_transport_runs_a_job_with_nothing_installed(envs, tmp_path, tiny_bert, job_data):
    env = envs(tmp_path / "q")  # no REDIS_URL: kombu's filesystem transport under FINETUNE_HOME/queue
    job_id = submit(
        env, job_config(tiny_bert, job_data, tmp_path, "fs-model", max_steps=24), "--idempotency-key", "k1"
    )
    again = json.loads(
        env.cli("jobs", "submit", *_same_config(env), "--json", "--idempotency-key", "k1").stdout
    )
    assert (again["id"], again["created"]) == (job_id, False)
    assert list((tmp_path / "q" / "home" / "queue" / "messages").iterdir())  # the message waits on disk
    env.start_worker("fs1")
    job = env.wait_status(job_id, {"succeeded", "failed"})
    assert (job.status, job.attempts, job.model_name, job.model_version) == ("succeeded", 1, "fs-model", 1)
    assert job.progress["step"] == 24 and job.progress["percent"] == 100.0
    assert set(job.progress["metrics"]) == {"accuracy", "macro_f1", "loss"}
    kinds = [kind for kind, _ in env.events(job_id)]
    assert kinds == ["submitted", "started", "stage", "stage", "stage", "succeeded"]  # claimed as validating
    assert [m for k, m in env.events(job_id) if k == "stage"] == ["training", "evaluating", "registering"]
    assert registered_versions(env, "fs-model") == [1]
    shown = json.loads(env.cli("jobs", "show", job_id, "--json").stdout)
    assert (shown["status"], shown["run_id"]) == ("succeeded", job.run_id)
    logs = env.cli("jobs", "logs", job_id).stdout
    assert "[succeeded] accuracy" in logs and "registered fs-model version 1" in logs
    assert "training: 24 steps" in logs  # the run's logs.txt follows the events
    listed = env.cli("jobs", "list").stdout
    assert job_id in listed and "succeeded" in listed


def _same_config(env) -> list[str]:
    return [str(next(env.root.glob("config-*.yaml")))]


# default run: tests/integration/test_resume.py (a SIGKILLed run resumes to the uninterrupted weights) and
# tests/e2e/test_sweep_reliability.py's killed worker (its trial's job run again by another worker, once)
@pytest.mark.extended
def test_sigkill_mid_training_resumes_from_the_last_checkpoint_and_registers_once(
    envs, tmp_path, tiny_bert, job_data
):
    from tests.conftest import _postgres_database

    database = _postgres_database()
    env = envs(
        tmp_path / "q",
        REDIS_URL=require_redis(),
        DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}",
    )
    job_id = submit(env, long_job(tiny_bert, job_data, tmp_path, "killed-model"))
    env.start_worker("a")
    env.start_worker("b")
    checkpoints = tmp_path / "results" / "killed-model" / job_id / "artifacts" / "checkpoints"
    wait_for(lambda: list(checkpoints.glob("checkpoint-*/COMPLETE")), 120, "a complete checkpoint")
    victim = env.worker_of(job_id)
    step_at_kill = env.job(job_id).progress.get("step", 0)
    victim.signal(signal.SIGKILL)
    victim.process.wait(timeout=10)
    job = env.wait_status(job_id, {"succeeded", "failed"})
    assert (job.status, job.attempts, job.model_version) == ("succeeded", 2, 1)
    events = env.events(job_id)
    assert [kind for kind, _ in events].count("started") == 2
    assert any(kind == "worker_lost" and "stopped renewing its lease" in message for kind, message in events)
    resumed = [message for kind, message in events if kind == "resumed"]
    assert len(resumed) == 1 and resumed[0].startswith("resuming from checkpoint-")
    resumed_step = int(resumed[0].rsplit("-", 1)[1])
    assert 20 <= resumed_step <= max(step_at_kill, 20)  # not from step 0
    logs = (checkpoints.parent.parent / "logs.txt").read_text()
    assert f"starting at step {resumed_step}" in logs
    assert registered_versions(env, "killed-model") == [1]


@pytest.mark.extended  # default run: the SIGTERM handover below (2 ranks)
def test_sigterm_checkpoints_the_running_job_and_hands_it_to_another_worker(
    envs, tmp_path, tiny_bert, job_data
):
    env = envs(tmp_path / "q", REDIS_URL=require_redis(), MLFLOW_ENABLED="false")
    job_id = submit(env, long_job(tiny_bert, job_data, tmp_path, "preempted", steps=600))
    first = env.start_worker("leaving")
    wait_for(lambda: env.job(job_id).progress.get("step", 0) >= 25, 120, "training past step 25")
    first.signal(signal.SIGTERM)
    assert first.process.wait(timeout=60) == 0  # a warm shutdown, not a crash
    job = env.job(job_id)
    assert (job.status, job.attempts, job.preemptions) == ("queued", 0, 1)
    preempted = [message for kind, message in env.events(job_id) if kind == "preempted"]
    assert len(preempted) == 1 and "worker shut down (SIGTERM)" in preempted[0]
    saved_step = int(preempted[0].split("saved checkpoint-")[1].split()[0])
    assert saved_step >= 25
    checkpoint = (
        tmp_path / "results" / "preempted" / job_id / "artifacts" / "checkpoints" / f"checkpoint-{saved_step}"
    )
    assert (checkpoint / "COMPLETE").is_file()
    env.start_worker("arriving")
    job = env.wait_status(job_id, {"succeeded", "failed"})
    assert (job.status, job.attempts, job.progress["step"]) == ("succeeded", 1, 600)
    assert [m for k, m in env.events(job_id) if k == "resumed"] == [f"resuming from checkpoint-{saved_step}"]


@pytest.mark.parametrize(
    "devices",
    [pytest.param(1, marks=pytest.mark.extended), 2],  # the default run: 2 ranks, the harder case
)
def test_a_training_job_is_preempted_and_finished_by_another_worker(
    envs, tmp_path, tiny_bert, job_data, devices
):
    """A job (one process, or ranks under torch's elastic launcher) under a worker: SIGTERM saves a checkpoint,
    the next worker resumes from it and finishes. The ranks run in a session of their own: the worker's signal
    reaches them as a stop request that rank 0 reads at its next sync point."""
    env = envs(tmp_path / "q", REDIS_URL=require_redis(), MLFLOW_ENABLED="false")
    config = long_job(tiny_bert, job_data, tmp_path, f"fast-{devices}", steps=300)
    config["training"].update(engine="fast", devices=devices)
    job_id = submit(env, config)
    first = env.start_worker("leaving")
    wait_for(lambda: env.job(job_id).progress.get("step", 0) >= 25, 180, "training past step 25")
    first.signal(signal.SIGTERM)
    assert first.process.wait(timeout=90) == 0
    preempted = [message for kind, message in env.events(job_id) if kind == "preempted"]
    assert len(preempted) == 1
    saved_step = int(preempted[0].split("saved checkpoint-")[1].split()[0])
    run = tmp_path / "results" / f"fast-{devices}" / job_id
    checkpoint = run / "artifacts" / "checkpoints" / f"checkpoint-{saved_step}"
    assert (checkpoint / "COMPLETE").is_file() and (checkpoint / "optimizer.pt").is_file()
    assert json.loads((checkpoint / "checkpoint_meta.json").read_text())["format"] == 2
    env.start_worker("arriving")
    job = env.wait_status(job_id, {"succeeded", "failed"}, timeout=300)
    assert (job.status, job.attempts, job.progress["step"]) == ("succeeded", 1, 300), job.error
    assert [m for k, m in env.events(job_id) if k == "resumed"] == [f"resuming from checkpoint-{saved_step}"]
    resolved = yaml.safe_load((run / "config.yaml").read_text())["resolved"]
    assert resolved["engine"] == "fast"
    assert (run / "ranks" / "agent.log").is_file() == (devices == 2)


# over a minute of training: under --extended (make test-all) to keep the default run under 20 minutes; the
# default run still sees a job run once when its message comes back (test_redis_restarted_empty_loses_no_job)
@pytest.mark.extended
def test_a_job_longer_than_the_visibility_timeout_runs_once(envs, tmp_path, tiny_bert, job_data):
    env = envs(
        tmp_path / "q",
        REDIS_URL=require_redis(),
        MLFLOW_ENABLED="false",
        # Redis hands the unacknowledged message to the idle worker after one second, again and again.
        BROKER_TRANSPORT_OPTIONS={
            "visibility_timeout": 1,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        },
    )
    job_id = submit(env, long_job(tiny_bert, job_data, tmp_path, "long", steps=500))
    busy = env.start_worker("busy")
    wait_for(lambda: env.job(job_id).status == "running", 120, "the job to start")
    idle = env.start_worker("idle")
    wait_for(lambda: "skipped" in idle.output(), 120, "the idle worker to receive the redelivered message")
    job = env.wait_status(job_id, {"succeeded", "failed"})
    assert (job.status, job.attempts) == ("succeeded", 1)
    assert [kind for kind, _ in env.events(job_id)].count("started") == 1
    assert busy.process.poll() is None and idle.process.poll() is None


def test_redis_restarted_empty_loses_no_job(envs, tmp_path, tiny_bert, job_data):
    redis = PrivateRedis(tmp_path / "redis")
    redis.start()
    try:
        env = envs(tmp_path / "q", REDIS_URL=redis.url, MLFLOW_ENABLED="false")
        running = submit(env, long_job(tiny_bert, job_data, tmp_path, "during", steps=300))
        queued = [
            submit(env, job_config(tiny_bert, job_data, tmp_path, f"after{i}", max_steps=12))
            for i in range(2)
        ]
        env.start_worker("survivor")
        wait_for(lambda: env.job(running).progress.get("step", 0) >= 10, 120, "the first job to train")
        redis.kill()  # everything in Redis is gone: the queued messages and the unacked one
        redis.start()
        for job_id in [running, *queued]:
            job = env.wait_status(job_id, {"succeeded", "failed"})
            assert (job.status, job.attempts) == ("succeeded", 1), job_id
        for job_id in queued:  # the reconciler sent them again after the restart
            assert [kind for kind, _ in env.events(job_id)].count("started") == 1
        assert (
            "sent 2 job(s) to the broker (2 queued in the database, 0 in the broker)"
            in env.workers[0].output()
        )
    finally:
        redis.kill()


def test_a_job_that_dies_on_every_attempt_stops_and_others_flow(envs, tmp_path, tiny_bert, job_data):
    env = envs(tmp_path / "q", REDIS_URL=require_redis(), MLFLOW_ENABLED="false")
    doomed = submit(env, long_job(tiny_bert, job_data, tmp_path, "doomed", steps=2000), "--max-attempts", "2")
    healthy = submit(env, job_config(tiny_bert, job_data, tmp_path, "healthy", max_steps=12))
    env.start_worker("w0")
    env.start_worker("w1")
    kills = 0
    deadline = time.monotonic() + 240
    while env.job(doomed).status != "failed" and time.monotonic() < deadline:
        job = env.job(doomed)
        if job.status == "running" and job.progress.get("step", 0) >= 5 and kills < job.attempts:
            env.worker_of(doomed).signal(signal.SIGKILL)  # as the out-of-memory killer would
            kills += 1
            env.start_worker(f"replacement{kills}")
        time.sleep(0.2)
    job = env.wait_status(doomed, {"failed"}, timeout=5)
    assert (job.attempts, kills) == (2, 2)
    assert job.error.startswith("gave up after 2 attempts; last: worker ")
    assert "killed (for example by the out-of-memory killer)" in job.error
    assert env.wait_status(healthy, {"succeeded", "failed"}).status == "succeeded"


# default run: test_a_job_shows_its_first_steps_before_its_first_logging_step cancels a running job,
# tests/integration/test_prediction_jobs.py a queued one
@pytest.mark.extended
def test_cancel_a_queued_and_a_running_job(envs, tmp_path, tiny_bert, job_data):
    env = envs(tmp_path / "q", REDIS_URL=require_redis(), MLFLOW_ENABLED="false")
    running = submit(env, long_job(tiny_bert, job_data, tmp_path, "running", steps=2000))
    waiting = submit(env, job_config(tiny_bert, job_data, tmp_path, "waiting", max_steps=12))
    worker = env.start_worker("only")
    wait_for(lambda: env.job(running).progress.get("step", 0) >= 5, 120, "training to start")
    assert env.cli("jobs", "cancel", waiting).stdout.strip() == f"job {waiting}: cancelled"
    assert env.cli("jobs", "cancel", running).stdout.strip() == f"job {running}: cancel requested"
    job = env.wait_status(running, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert job.status == "cancelled" and job.progress["step"] < 2000
    assert env.events(running)[-1][1].startswith("cancelled by request")
    again = env.cli("jobs", "cancel", running, check=False)
    assert again.returncode == 1 and f"job {running} is already cancelled" in again.stderr
    wait_for(lambda: "skipped" in worker.output(), 60, "the cancelled job's message to be dropped")
    assert env.job(waiting).started_at is None
    assert worker.process.poll() is None


def test_a_job_shows_its_first_steps_before_its_first_logging_step(envs, tmp_path, tiny_bert, job_data):
    """On CPU the first logging step can be minutes away: the job row shows the step (and the total) from the
    first step on. Here the only logging step is the last one, so a step under it can only come from the step
    reports."""
    env = envs(tmp_path / "q", MLFLOW_ENABLED="false")
    config = job_config(tiny_bert, job_data, tmp_path, "first-steps", max_steps=100_000)
    config["training"].update(logging_steps=100_000, eval_steps=100_000)
    job_id = submit(env, config)
    env.start_worker("steps")
    seen = wait_for(
        lambda: (progress := env.job(job_id).progress).get("step", 0) >= 1 and progress, 180, "a first step"
    )
    assert 1 <= seen["step"] < 100_000 and seen["max_steps"] == 100_000 and "loss" not in seen, seen
    assert seen["percent"] == round(100.0 * seen["step"] / 100_000, 1)
    job = env.job(job_id)
    assert (job.status, job.stage) == ("running", "training")
    env.cli("jobs", "cancel", job_id)
    job = env.wait_status(job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
    assert job.status == "cancelled" and "loss" not in job.progress  # it never reached a logging step


# a minute of two workers: under --extended (make test-all) to keep the default run under 20 minutes; the
# default run creates the store under the same lock in every worker and training test
@pytest.mark.extended
def test_two_workers_on_one_machine_share_a_fresh_tracking_store(envs, tmp_path, tiny_bert, job_data):
    """Local defaults (filesystem queue, SQLite database and MLflow store), two workers starting together.

    Both create MLflow's SQLite store on their first job; unguarded, MLflow's own migrations race
    ("table ... already exists") and jobs fail.
    """
    # A long lease: two workers training side by side on 2 cores can miss the 4 s lease of the other tests,
    # and a requeued job (attempt 2) is not what this test is about.
    env = envs(tmp_path / "q", JOB_LEASE_SECONDS=60)
    ids = [submit(env, job_config(tiny_bert, job_data, tmp_path, "shared", max_steps=12)) for _ in range(4)]
    env.start_worker("left")
    env.start_worker("right")
    jobs = [env.wait_status(job_id, {"succeeded", "failed"}) for job_id in ids]
    assert [(job.status, job.attempts) for job in jobs] == [("succeeded", 1)] * 4, "\n".join(
        f"{job.id}: {env.events(job.id)}" for job in jobs if (job.status, job.attempts) != ("succeeded", 1)
    )
    assert sorted(job.model_version for job in jobs) == [1, 2, 3, 4]
    assert registered_versions(env, "shared") == [1, 2, 3, 4]
    workers = {env.events(job_id)[1][1].split(" on ")[1].split("@")[0] for job_id in ids}
    assert workers == {"left", "right"}
