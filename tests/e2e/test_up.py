"""`finetune up`, `finetune status`, `finetune down` as a person runs them: real processes on real ports. In the
background on the embedded defaults (a taken port skipped, the admin created once with its password shown once, a
second `up` refused, a killed part restarted with its count, `down` closing every port and leaving no process),
in a terminal on Redis and PostgreSQL (SIGTERM: the worker checkpoints its running job and hands it back, then
the rest stops), and every bad option refused with a clear error."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess

import httpx
import pytest
import yaml

from finetune_platform.supervisor import group_running
from tests.conftest import ROOT, finetune_bin, free_port, sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import QueueEnv, queue_env, require_redis, wait_for
from tests.integration.test_supervisor import alive, port_open, processes_in_groups

PARTS = ["mlflow", "api", "worker-1", "inference", "ui"]


def up_env(tmp_path, **values) -> QueueEnv:
    return queue_env(tmp_path / "q", RESULTS_DIR=str(tmp_path / "results"), **values)


def finetune(env: QueueEnv, *args: str, timeout: float = 400, input: str | None = None):
    return subprocess.run([finetune_bin(), *args], env=env.env(), capture_output=True, text=True, timeout=timeout,
                          input=input, cwd=ROOT)  # fmt: skip


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def table(output: str) -> dict[str, str]:
    """The rows of the table `finetune up` prints once every part is up."""
    rows = re.findall(
        r"^  (web UI|API docs|inference|MLflow UI|login|database|queue|logs)\s+(.*)$", output, re.M
    )
    return dict(rows)


def status(env: QueueEnv) -> dict:
    shown = finetune(env, "status", "--json", timeout=60)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    return json.loads(shown.stdout)


def groups_of(state: dict) -> set[int]:
    """The process groups of the supervisor's parts (each part leads its own)."""
    return {part["pid"] for part in state["parts"] if part["pid"]}


def log_in(api: str, password: str) -> httpx.Response:
    return httpx.post(f"{api}/login", data={"username": "admin", "password": password}, timeout=30)


@pytest.mark.slow
def test_up_in_the_background_status_restart_down_and_the_admin_created_once(tmp_path):
    env = up_env(tmp_path)
    home = tmp_path / "q" / "home"
    ports = free_ports(7)
    with socket.socket() as taken:  # someone else's server on the first port of the range
        taken.bind(("127.0.0.1", ports[0]))
        taken.listen()
        started = finetune(env, "up", "--detach", "--ports", ",".join(map(str, ports)))
    assert started.returncode == 0, started.stdout + started.stderr
    shown = table(started.stdout)
    api = f"http://127.0.0.1:{ports[1]}"  # the taken port skipped
    assert shown["API docs"] == f"{api}/docs"
    assert shown["inference"].startswith(
        f"http://127.0.0.1:{ports[2]}  (the Production model, else the newest"
    )
    assert (shown["web UI"], shown["MLflow UI"]) == (
        f"http://127.0.0.1:{ports[3]}",
        f"http://127.0.0.1:{ports[4]}",
    )
    assert shown["database"] == f"sqlite:///{home / 'finetune.db'}"
    assert shown["queue"] == f"filesystem queue under {home / 'queue'}, 1 worker"
    password = re.fullmatch(
        r"admin / (\S+)   \(shown this once: keep it; to change it later: finetune users set-password admin\)",
        shown["login"],
    ).group(1)
    assert log_in(api, password).status_code == 200
    assert httpx.get(f"{shown['web UI']}/_stcore/health", timeout=10).status_code == 200
    assert httpx.get(f"{shown['MLflow UI']}/health", timeout=10).status_code == 200
    assert httpx.get(f"{api}/mlflow", timeout=30).json()["ui_url"] == shown["MLflow UI"]
    answer = httpx.post(f"http://127.0.0.1:{ports[2]}/predict", json={"text": "great"}, timeout=30)
    assert (answer.status_code, answer.json()["detail"]) == (
        404,
        "no registered model to serve yet: train one (it is served as soon as it is registered, without a restart), "
        "or name one with --model",
    )

    state = status(env)
    supervisor = state["pid"]
    assert [(p["name"], p["health"], p["restarts"]) for p in state["parts"]] == [(n, "ok", 0) for n in PARTS]
    assert [p["port"] for p in state["parts"]] == [ports[4], ports[1], ports[5], ports[2], ports[3]]
    assert (state["state"], state["detached"]) == ("running", True)
    readable = finetune(env, "status", timeout=60).stdout
    assert re.search(rf"^  inference\s+\d+\s+{ports[2]}\s+ok\s+0\s+\d+s$", readable, re.M), readable

    again = finetune(env, "up", "--ports", ",".join(map(str, free_ports(7))), timeout=60)
    assert again.returncode == 1
    assert re.fullmatch(
        rf"error: finetune up already runs for {re.escape(str(home))} \(pid {supervisor}, since [\d: -]+\): "
        r"`finetune status` shows it, `finetune down` stops it",
        again.stderr.strip(),
    ), again.stderr

    killed = next(p for p in state["parts"] if p["name"] == "inference")["pid"]
    os.kill(killed, signal.SIGKILL)

    def restarted() -> dict | None:
        part = next(p for p in status(env)["parts"] if p["name"] == "inference")
        return part if part["restarts"] == 1 and part["health"] == "ok" else None

    part = wait_for(restarted, 180, "the inference server to be restarted", interval=1)
    assert part["pid"] != killed
    log = (home / "logs" / "up.log").read_text()
    assert re.search(
        r"inference was killed by SIGKILL after \S+; restarting it in 1 s \(restart 1\)\. Last lines", log
    )
    assert "warning: no registered model to serve" in log  # the part's own last lines, shown with its crash

    groups = groups_of(status(env))
    stopped = finetune(env, "down", timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.stdout.splitlines() == [
        f"stopping finetune up (pid {supervisor}): the workers first, then the rest",
        f"stopped: {', '.join(PARTS)}",
    ]
    assert [port for port in ports[1:6] if port_open(port)] == []
    assert processes_in_groups(groups) == [] and not alive(supervisor)
    assert "stopping (SIGTERM): worker-1 first, then the rest" in (home / "logs" / "up.log").read_text()
    after = finetune(env, "status", timeout=60)
    assert (after.returncode, after.stdout.strip()) == (
        1, f"finetune up is not running for {home} (last run: stopped by SIGTERM)"
    )  # fmt: skip
    nothing = finetune(env, "down", timeout=60)
    assert (nothing.returncode, nothing.stderr.strip()) == (
        1, f"error: finetune up is not running for {home}: nothing to stop"
    )  # fmt: skip

    # The second start keeps the admin and its password, and shows no password.
    ports = free_ports(6)
    second = finetune(env, "up", "--detach", "--no-ui", "--ports", ",".join(map(str, ports)))
    try:
        assert second.returncode == 0, second.stdout + second.stderr
        shown = table(second.stdout)
        assert shown["login"] == (
            "admin   (password as set at its first start; forgotten? finetune users set-password admin)"
        )
        assert password not in second.stdout + second.stderr
        assert shown["web UI"] == "off (--no-ui)"
        assert log_in(shown["API docs"].removesuffix("/docs"), password).status_code == 200
        accounts = finetune(env, "users", "list", timeout=60).stdout
        assert sorted(line.split()[1:] for line in accounts.splitlines()) == [
            ["admin", "admin"],
            ["local", "admin"],
        ]
    finally:
        stopped = finetune(env, "down", timeout=300)
    assert stopped.returncode == 0, stopped.stderr


@pytest.fixture
def postgres_url():
    """A fresh database of the local PostgreSQL server, dropped afterwards."""
    import psycopg

    from tests.conftest import _postgres_database

    name = _postgres_database()
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
# default run: `finetune up` in test_up_in_the_background_status_restart_down_and_the_admin_created_once, the
# SIGTERM handover in tests/integration/test_worker.py (a preempted job finished by another worker)
@pytest.mark.extended
def test_up_on_redis_and_postgresql_sigterm_hands_the_running_job_back_then_stops_everything(
    tmp_path, tiny_bert, postgres_url
):
    database, redis = postgres_url, require_redis()
    env = up_env(tmp_path, MLFLOW_ENABLED="false")
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, seed=2))
    config = tiny_config_dict(tiny_bert, train, validation, tmp_path / "results", max_steps=600, logging_steps=1,
                              eval_steps=20, learning_rate=1e-3)  # fmt: skip
    config.update(experiment="up-preempted", registry={"model_name": "up-preempted"})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))

    output = tmp_path / "up.out"
    command = [finetune_bin(), "up", "--no-ui", "--database", database, "--redis", redis,
               "--ports", ",".join(map(str, free_ports(4)))]  # fmt: skip
    up = subprocess.Popen(command, env=env.env(), stdout=output.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for(lambda: "finetune-platform is up" in output.read_text() or up.poll() is not None, 300, "up")
        shown = table(output.read_text())
        assert (shown["database"], shown["queue"]) == (database, f"Redis {redis}, 1 worker"), (
            output.read_text()
        )
        assert shown["MLflow UI"] == "off (MLFLOW_ENABLED=false)"
        assert "mlflow" not in [p["name"] for p in status(env)["parts"]]
        # the job goes through the same database and Redis (the CLI reads them from the environment)
        job_env = QueueEnv(env.root, {**env.values, "DATABASE_URL": database, "REDIS_URL": redis})
        submitted = finetune(job_env, "jobs", "submit", str(tmp_path / "job.yaml"), "--json")
        assert submitted.returncode == 0, submitted.stderr
        job_id = json.loads(submitted.stdout)["id"]
        wait_for(lambda: job_env.job(job_id).progress.get("step", 0) >= 25, 180, "training past step 25")
        groups = groups_of(status(env))

        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=300) == 0, output.read_text()[-3000:]
    finally:
        if up.poll() is None:
            up.kill()
    printed = output.read_text()
    lines = printed[printed.index("stopping (SIGTERM)") :].splitlines()
    assert lines[0] == "stopping (SIGTERM): worker-1 first, then the rest"
    assert lines[1].startswith("worker-1: stopped (") and lines[-1] == "stopped by SIGTERM"
    assert sorted(line.split(":")[0] for line in lines[2:-1]) == ["api", "inference"]
    job = job_env.job(job_id)
    assert (job.status, job.attempts, job.preemptions) == ("queued", 0, 1)  # handed back, no attempt spent
    preempted = [message for kind, message in job_env.events(job_id) if kind == "preempted"]
    assert len(preempted) == 1 and "worker shut down (SIGTERM)" in preempted[0], preempted
    saved = int(preempted[0].split("saved checkpoint-")[1].split()[0])
    checkpoint = (
        tmp_path / "results" / "up-preempted" / job_id / "artifacts" / "checkpoints" / f"checkpoint-{saved}"
    )
    assert (checkpoint / "COMPLETE").is_file()
    assert processes_in_groups(groups) == []
    parts = json.loads((tmp_path / "q" / "home" / "up.json").read_text())["parts"]
    assert [part["port"] for part in parts if port_open(part["port"])] == []

    from sqlalchemy import create_engine, text

    engine = create_engine(database)
    with engine.connect() as connection:  # the admin went into PostgreSQL, not into SQLite
        admins = connection.execute(text("SELECT username FROM users WHERE role = 'admin' ORDER BY id")).all()
    engine.dispose()
    assert sorted(row[0] for row in admins) == ["admin", "local"]  # up's, and the command line's own account
    assert not (tmp_path / "q" / "home" / "finetune.db").exists()


def test_bad_options_and_commands_with_nothing_running_get_clear_errors(tmp_path):
    env = up_env(tmp_path)
    home = tmp_path / "q" / "home"
    closed = free_port()
    two = free_ports(2)
    cases = [
        (["up", "--ports", "99999"], 2,
         "error: --ports '99999': give START-END (e.g. 8700-8799) or a comma-separated list of ports 1-65535"),
        (["up", "--no-ui", "--ports", ",".join(map(str, two))], 1,
         f"error: no free port left in --ports {two[0]},{two[1]} for mlflow, worker-1: 4 needed, 0 of its 2 taken on "
         "127.0.0.1; give more with --ports START-END"),
        (["up", "--database", "not a url"], 2,
         "error: --database 'not a url' is not a database URL: give postgresql+psycopg://USER@HOST/DB or "
         "sqlite:////ABSOLUTE/PATH"),
        (["up", "--redis", "http://127.0.0.1:6379"], 2,
         "error: --redis 'http://127.0.0.1:6379' is not a Redis URL: give redis://HOST:6379/0"),
        (["up", "--admin-user", "local"], 2,
         "error: --admin-user 'local' is the command line's own account, which cannot log in: choose another name"),
        (["down"], 1, f"error: finetune up is not running for {home}: nothing to stop"),
    ]  # fmt: skip
    for args, code, message in cases:
        result = finetune(env, *args, timeout=120)
        assert (result.returncode, result.stderr.strip()) == (code, message), args
    unreachable = finetune(env, "up", "--redis", f"redis://127.0.0.1:{closed}/0", timeout=120)
    assert unreachable.returncode == 2
    assert unreachable.stderr.startswith(
        f"error: --redis redis://127.0.0.1:{closed}/0: no answer (ConnectionError: "
    )
    nothing = finetune(env, "status", timeout=60)
    assert (nothing.returncode, nothing.stdout.strip()) == (1, f"finetune up is not running for {home}")
    zero = finetune(env, "up", "--workers", "0", timeout=60)
    assert zero.returncode == 2 and "Invalid value for '--workers'" in zero.stderr
    # a refused start leaves nothing behind: no lock held, no state, no database made
    assert not group_running(home / "up.lock")
    assert not (home / "up.json").exists() and not (home / "finetune.db").exists()
