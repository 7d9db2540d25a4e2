"""Real `finetune worker` processes against a real broker and database, for the queue tests and bench."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import finetune_bin, free_port


def redis_answers(url: str = "redis://127.0.0.1:6379/0") -> str | None:
    """None when Redis answers PING, else the reason."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"{exc.__class__.__name__}: {exc}"
    return None


def http_answers(url: str) -> bool:
    """Whether ``url`` answers 200 now."""
    import httpx

    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def require_redis(url: str = "redis://127.0.0.1:6379/0") -> str:
    problem = redis_answers(url)
    if problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} does not answer under CI=true: {problem}")
        pytest.skip(f"Redis at {url} does not answer: {problem}")
    return url


class PrivateRedis:
    """A redis-server of our own on a free port, so a test can kill and restart it (losing its data)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, free_port(), None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else "redis-server"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.folder,
            stdout=(self.folder / "redis.log").open("a"),
            stderr=subprocess.STDOUT,
        )
        wait_for(lambda: redis_answers(self.url) is None, 20, "private redis-server to answer")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


@dataclass
class QueueEnv:
    """Settings shared by the test process and its workers (through the environment)."""

    root: Path
    values: dict[str, str]
    workers: list[Worker] = field(default_factory=list)

    @property
    def settings(self):
        from finetune_platform.settings import Settings

        values = {key: value for key, value in self.values.items() if key in Settings.model_fields}
        if "BROKER_TRANSPORT_OPTIONS" in values:  # JSON in the environment, a dict for the constructor
            values["BROKER_TRANSPORT_OPTIONS"] = json.loads(values["BROKER_TRANSPORT_OPTIONS"])
        return Settings(**values)

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.values, "PYTHONUNBUFFERED": "1"}

    def start_worker(self, name: str, *extra: str) -> Worker:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            [finetune_bin(), "worker", "--name", name, *extra],
            env=self.env(),
            stdout=log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = Worker(name, process, log)
        self.workers.append(worker)
        return worker

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [finetune_bin(), *args], env=self.env(), capture_output=True, text=True, timeout=300
        )
        if check:
            assert result.returncode == 0, result.stderr + result.stdout
        return result

    def job(self, job_id: str):
        from finetune_platform.db.models import Job
        from finetune_platform.db.session import session_scope

        with session_scope(self.settings) as session:
            return session.get(Job, job_id)

    def events(self, job_id: str) -> list[tuple[str, str]]:
        from sqlalchemy import select

        from finetune_platform.db.models import JobEvent
        from finetune_platform.db.session import session_scope

        with session_scope(self.settings) as session:
            rows = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))
            return [(row.kind, row.message) for row in rows]

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 180) -> Any:
        def reached():
            job = self.job(job_id)
            return job if job.status in statuses else None

        try:
            return wait_for(reached, timeout, f"job {job_id} to become {statuses}")
        except AssertionError:
            self.dump()
            raise

    def worker_of(self, job_id: str) -> Worker:
        owner = self.job(job_id).lease_owner
        assert owner, f"job {job_id} is not leased"
        pid = int(owner.split(":")[-2])
        return next(w for w in self.workers if w.process.pid == pid)

    def dump(self) -> None:
        for worker in self.workers:
            print(f"----- {worker.name} (exit {worker.process.poll()}) -----\n{worker.output()[-6000:]}")

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                os.killpg(worker.process.pid, signal.SIGKILL)
                worker.process.wait(timeout=10)


def stop_processes(processes: list[subprocess.Popen]) -> None:
    """Terminate servers a test started and wait for each to exit."""
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def queue_env(root: Path, **values: Any) -> QueueEnv:
    root.mkdir(parents=True, exist_ok=True)
    base = {
        "FINETUNE_HOME": str(root / "home"),
        "MODEL_REGISTRY_DIR": str(root / "cards"),
        "QUEUE_NAME": f"test-{secrets.token_hex(4)}",
        "JOB_LEASE_SECONDS": "4",
        "JOB_HEARTBEAT_SECONDS": "0.5",
        "RECONCILE_SECONDS": "1",
        "REQUEUE_AFTER_SECONDS": "0",
        "HF_HUB_OFFLINE": "1",
    }
    base.update(
        {key: json.dumps(value) if isinstance(value, dict) else str(value) for key, value in values.items()}
    )
    return QueueEnv(root, base)


def submit(env: QueueEnv, config: dict, *args: str) -> str:
    """Submit through the CLI (as the local user); returns the job id."""
    import yaml

    path = env.root / f"config-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = env.cli("jobs", "submit", str(path), "--json", *args)
    return json.loads(result.stdout)["id"]


def python() -> str:
    return sys.executable
