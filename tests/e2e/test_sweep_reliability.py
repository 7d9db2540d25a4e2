"""Sweeps with real `finetune worker` processes: a worker killed mid-trial, a trial that fails, a cancel, the
parallelism across several workers, the API restarted mid-sweep. Each on Redis + PostgreSQL and on the embedded
defaults (SQLite and the filesystem queue).

Nothing holds a sweep in memory: its state is the Sweep row, its trials' job rows and its Optuna study, and every
worker's reconciler moves it on. These tests kill, cancel and restart around that claim.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import psycopg
import pytest
from sqlalchemy import func, select

from finetune_platform.db import session as db
from finetune_platform.db.models import Job, Sweep
from finetune_platform.db.session import engine_for, session_scope
from finetune_platform.services import sweep_study, sweeps
from finetune_platform.services.users import create_user
from finetune_platform.training.sweep_config import parse_spec
from finetune_platform.worker.reconciler import reconcile_once
from tests.conftest import _postgres_database, finetune_bin, sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import QueueEnv, http_answers, queue_env, require_redis, wait_for

pytestmark = pytest.mark.slow

REDIS_DB = "redis://127.0.0.1:6379/11"  # this file's Redis database (queues are named per test besides)
API_PORTS = range(18300, 18400)
PASSWORD = "long enough"
BACKENDS = ["embedded", "redis-postgres"]
EXPECTED_STUDY_STATE = {"succeeded": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL", "cancelled": "FAIL"}


@pytest.fixture(params=BACKENDS)
def sweep_env(request, tmp_path):
    """A QueueEnv on SQLite + the filesystem queue, or on Redis + a fresh PostgreSQL database; migrated, with a
    user alice; its workers killed and its database dropped afterwards."""
    database = None
    values = {}
    if request.param == "redis-postgres":
        values["REDIS_URL"] = require_redis(REDIS_DB)
        database = _postgres_database()
        values["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
    env = queue_env(tmp_path / "q", **values)
    db.upgrade(env.settings)
    with session_scope(env.settings) as session:
        env.alice = create_user(session, "alice", PASSWORD)
    yield env
    env.stop_all()
    if database is not None:
        _drop(database, values["DATABASE_URL"])


def _drop(database: str, url: str) -> None:
    engine_for(url).dispose()  # the study's connections (Optuna's engine) are closed by FORCE
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture
def base_config(tmp_path, tiny_bert):
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, seed=2))

    def make(steps: int, **training) -> dict:
        config = tiny_config_dict(
            tiny_bert,
            train,
            validation,
            tmp_path / "results",
            max_steps=steps,
            logging_steps=1,
            eval_steps=10,
            **training,
        )
        config["experiment"] = "swept"
        return config

    return make


def spec_of(**values):
    raw = {
        "objective": "loss",
        "sampler": "random",
        "pruner": "none",
        "seed": 5,
        "space": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
        **values,
    }
    return parse_spec(raw)


def submit(env: QueueEnv, base: dict, spec, **options) -> str:
    with session_scope(env.settings) as session:
        return sweeps.submit_sweep(session, env.alice, base, spec, settings=env.settings, **options).id


def detail(env: QueueEnv, sweep_id: str):
    with session_scope(env.settings) as session:
        return sweeps.get_sweep(session, env.alice, sweep_id)


def trial_jobs(env: QueueEnv, sweep_id: str) -> list:
    with session_scope(env.settings) as session:
        return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_number)))


def study_states(env: QueueEnv, sweep_id: str) -> dict[int, str]:
    return {trial.number: trial.state.name for trial in sweep_study.trials(env.settings, sweep_id)}


def wait_finished(env: QueueEnv, sweep_id: str, timeout: float = 400):
    """The sweep once it is finished and has recorded its end (a cancelled one: once its trials ended)."""

    def finished():
        found = detail(env, sweep_id)
        return found if found.status != "running" and found.finished_at is not None else None

    try:
        return wait_for(finished, timeout, f"sweep {sweep_id} to finish", interval=0.5)
    except AssertionError:
        env.dump()
        raise


def assert_study_matches_jobs(env: QueueEnv, sweep_id: str) -> None:
    jobs = trial_jobs(env, sweep_id)
    states = study_states(env, sweep_id)
    assert {job.trial_number: EXPECTED_STUDY_STATE[job.status] for job in jobs} == states


def running_trial(env: QueueEnv, sweep_id: str, min_step: int = 1):
    def found():
        for job in trial_jobs(env, sweep_id):
            if (
                job.status == "running"
                and job.lease_owner
                and (job.progress or {}).get("step", 0) >= min_step
            ):
                return job
        return None

    return wait_for(found, 240, f"a trial of sweep {sweep_id} running past step {min_step}")


def only_in_default_run(backend: str):
    """The test on both backends, the other one marked extended (a test over a minute: the default run covers the
    behaviour once, on ``backend``)."""
    params = [pytest.param(b, marks=() if b == backend else pytest.mark.extended) for b in BACKENDS]
    return pytest.mark.parametrize("sweep_env", params, indirect=True)


def extended_on_both(covered_by: str):
    """The test on both backends, both extended: ``covered_by`` (in tests/integration/test_sweeps.py, real sweeps
    and trials in one process) covers the behaviour in the default run, which must stay under 20 minutes."""
    assert covered_by.startswith("test_"), covered_by
    params = [pytest.param(b, marks=pytest.mark.extended) for b in BACKENDS]
    return pytest.mark.parametrize("sweep_env", params, indirect=True)


# -- 1 ---------------------------------------------------------------------------------------------------------
@only_in_default_run("redis-postgres")
def test_a_worker_killed_mid_trial_loses_nothing(sweep_env, base_config):
    env = sweep_env
    sweep_id = submit(env, base_config(60), spec_of(max_trials=2, parallelism=1))
    env.start_worker("a")
    env.start_worker("b")
    victim_job = running_trial(env, sweep_id, min_step=5)
    victim = env.worker_of(victim_job.id)
    victim.signal(signal.SIGKILL)
    victim.process.wait(timeout=10)

    sweep = wait_finished(env, sweep_id)
    assert (sweep.status, sweep.error) == ("succeeded", None)
    jobs = trial_jobs(env, sweep_id)
    assert [job.status for job in jobs] == ["succeeded", "succeeded"]
    assert [job.trial_number for job in jobs] == [0, 1]
    assert detail(env, sweep_id).trials["succeeded"] == 2
    resumed = next(job for job in jobs if job.id == victim_job.id)
    assert resumed.attempts == 2  # the lease expired and another worker ran it again
    assert any(kind == "worker_lost" for kind, _ in env.events(victim_job.id))

    with session_scope(env.settings) as session:
        assert session.get(Sweep, sweep_id).trials_started == 2
    assert_study_matches_jobs(env, sweep_id)


# -- 2 ---------------------------------------------------------------------------------------------------------
@extended_on_both(covered_by="test_a_failing_trial_is_counted_and_the_sweep_goes_on")
def test_a_failing_trial_does_not_stop_the_sweep(sweep_env, base_config):
    env = sweep_env
    spec = spec_of(
        max_trials=2,
        parallelism=1,
        space={"lora.target_modules": {"type": "choice", "values": [["query", "value"], ["no_such_layer"]]}},
        start_with=[{"lora.target_modules": ["no_such_layer"]}, {"lora.target_modules": ["query", "value"]}],
    )
    sweep_id = submit(env, base_config(12), spec, max_attempts=1)
    env.start_worker("a")

    sweep = wait_finished(env, sweep_id)
    assert (sweep.status, sweep.error) == ("succeeded", None)
    assert (sweep.trials["failed"], sweep.trials["succeeded"]) == (1, 1)
    failed, succeeded = trial_jobs(env, sweep_id)
    assert (failed.status, failed.trial_params) == ("failed", {"lora.target_modules": ["no_such_layer"]})
    assert (failed.error or "").startswith("lora.target_modules: No modules were targeted"), failed.error
    assert succeeded.status == "succeeded" and sweep.best_task_id == succeeded.id
    assert_study_matches_jobs(env, sweep_id)


# -- 3 ---------------------------------------------------------------------------------------------------------
@extended_on_both(covered_by="test_cancel_stops_queued_trials_and_starts_no_more")
def test_cancel_stops_queued_and_running_trials(sweep_env, base_config):
    env = sweep_env
    sweep_id = submit(env, base_config(400), spec_of(max_trials=6, parallelism=2))
    env.start_worker("a")
    running = running_trial(env, sweep_id)
    before = trial_jobs(env, sweep_id)
    assert sorted(job.status for job in before) == ["queued", "running"]  # one waits: one worker

    with session_scope(env.settings) as session:
        cancelled = sweeps.cancel_sweep(session, env.alice, sweep_id)
    assert cancelled.status == "cancelled"

    sweep = wait_finished(env, sweep_id)
    assert sweep.status == "cancelled"
    jobs = trial_jobs(env, sweep_id)
    assert {job.id for job in jobs} == {job.id for job in before}  # no trial started after the cancel
    assert [job.status for job in jobs] == ["cancelled", "cancelled"]
    assert env.job(running.id).attempts == 1
    reconcile_once(env.settings)  # a reconciler pass after the end starts nothing either
    assert len(trial_jobs(env, sweep_id)) == 2
    with session_scope(env.settings) as session:
        assert session.get(Sweep, sweep_id).trials_started == 2
    assert_study_matches_jobs(env, sweep_id)


# -- 4 ---------------------------------------------------------------------------------------------------------
@extended_on_both(covered_by="test_concurrent_advances_never_exceed_the_budget_or_the_parallelism")
def test_parallelism_holds_across_three_workers(sweep_env, base_config):
    env = sweep_env
    sweep_id = submit(env, base_config(10), spec_of(max_trials=5, parallelism=2))
    seen: list[int] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            with session_scope(env.settings) as session:
                seen.append(
                    session.scalar(
                        select(func.count()).where(
                            Job.sweep_id == sweep_id, Job.status.in_(["queued", "running"])
                        )
                    )
                )
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for name in ("a", "b", "c"):
        env.start_worker(name)
    try:
        sweep = wait_finished(env, sweep_id)
    finally:
        done.set()
        sampler.join(timeout=30)
    assert sweep.status == "succeeded"
    assert max(seen) == 2, sorted(set(seen))  # the parallelism reached, never passed
    jobs = trial_jobs(env, sweep_id)
    assert [job.trial_number for job in jobs] == [0, 1, 2, 3, 4]
    assert [job.status for job in jobs] == ["succeeded"] * 5
    assert {job.lease_owner for job in jobs} == {None}  # leases released
    assert_study_matches_jobs(env, sweep_id)


# -- 5 ---------------------------------------------------------------------------------------------------------
def _api(env: QueueEnv, port: int) -> subprocess.Popen:
    log = (env.root / "api.log").open("a")
    process = subprocess.Popen(
        [finetune_bin(), "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_for(lambda: http_answers(f"http://127.0.0.1:{port}/health"), 90, "the API to answer /health")
    return process


def _free_api_port() -> int:
    for port in API_PORTS:
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind(("127.0.0.1", port))
            return port
    raise AssertionError("no free port in 18300-18399")


# both backends under --extended (make test-all), to keep the default run under 20 minutes: the default run
# restarts nothing mid-sweep, but test_a_worker_killed_mid_trial_loses_nothing loses a process mid-sweep
@pytest.mark.parametrize(
    "sweep_env", [pytest.param(b, marks=pytest.mark.extended) for b in BACKENDS], indirect=True
)
def test_the_api_restarted_mid_sweep_loses_nothing(sweep_env, base_config):
    env = sweep_env
    port = _free_api_port()
    api = _api(env, port)
    try:
        sweep_id = submit(env, base_config(30), spec_of(max_trials=2, parallelism=1))
        env.start_worker("a")
        first = running_trial(env, sweep_id)
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
        api = _api(env, port)
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(f"{base}/login", data={"username": "alice", "password": PASSWORD}, timeout=30)
        assert token.status_code == 200, token.text
        headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
        shown = httpx.get(f"{base}/task/{first.id}", headers=headers, timeout=30)
        assert shown.status_code == 200, shown.text
        assert shown.json()["id"] == first.id
        sweep = wait_finished(env, sweep_id)
        assert sweep.status == "succeeded"
        jobs = trial_jobs(env, sweep_id)
        assert [job.status for job in jobs] == ["succeeded"] * 2
        for job in jobs:
            answer = httpx.get(f"{base}/task/{job.id}", headers=headers, timeout=30)
            assert (answer.status_code, answer.json()["status"]) == (200, "succeeded")
        assert_study_matches_jobs(env, sweep_id)
    finally:
        if api.poll() is None:
            os.killpg(api.pid, signal.SIGKILL)
            api.wait(timeout=10)
