"""MLflow as the compose stack runs it, started here for real: the command, environment and auth config that
`docker compose config` resolves with a .env from `make env` start a real `mlflow server`. The platform's account
(the api/worker/inference environment) records a run with an adapter and moves a model's `production` alias;
then a client that reached the tracking server without that login tries what an attacker would: list every
user's runs, download the adapter, forge a metric, point `production` at another version. So does a second
MLflow account, which the auth config leaves without any permission.

Only the paths inside the containers are replaced by temporary ones (stores, the port, the auth database), and
one worker instead of the default four keeps the server light.
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.deploy.test_containers import compose_config, env_variables, make_env, volume_mounts
from tests.integration.queue_harness import wait_for

pytestmark = pytest.mark.slow
MODEL = "sentiment"


@contextmanager
def logged_in(environment: dict[str, str]) -> Iterator[None]:
    """MLflow's client as the platform's containers run it: credentials from MLFLOW_TRACKING_USERNAME/PASSWORD."""
    names = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: environment[name] for name in names if name in environment})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def local_command(service: dict, root: Path, port: int) -> list[str]:
    """The service's entrypoint and command, with the container's address, port and stores made local."""
    command = [str(Path(sys.executable).with_name("mlflow")), *service["entrypoint"][1:], *service["command"]]
    local = {
        "--host": "127.0.0.1",
        "--port": str(port),
        "--artifacts-destination": str(root / "artifacts"),
        "--backend-store-uri": f"sqlite:///{root / 'mlflow.db'}",
    }
    for flag, value in local.items():
        if flag in command:
            command[command.index(flag) + 1] = value
    return [*command, "--workers", "1"]


def local_environment(service: dict, root: Path, port: int) -> dict[str, str]:
    """The service's environment; the auth config is the mounted file with its database moved to ``root``."""
    environment = {**service.get("environment", {})}
    if "MLFLOW_BACKEND_STORE_URI" in environment:
        environment["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    if "MLFLOW_AUTH_CONFIG_PATH" in environment:
        mounted = dict((target, source) for source, target in volume_mounts(service))
        config = configparser.ConfigParser()
        config.read_string(Path(mounted[environment["MLFLOW_AUTH_CONFIG_PATH"]]).read_text())
        assert config["mlflow"]["database_uri"] == "sqlite:////mlflow/auth/basic_auth.db"
        config["mlflow"]["database_uri"] = f"sqlite:///{root / 'basic_auth.db'}"
        with (root / "basic_auth.ini").open("w") as handle:
            config.write(handle)
        environment["MLFLOW_AUTH_CONFIG_PATH"] = str(root / "basic_auth.ini")
    hosts = environment.get("MLFLOW_SERVER_ALLOWED_HOSTS")
    if hosts:
        environment["MLFLOW_SERVER_ALLOWED_HOSTS"] = f"{hosts},127.0.0.1:{port}"
    outside = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return {**outside, **{k: str(v) for k, v in environment.items()}, "HOME": str(root)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("mlflow-auth")
    env_file = root / ".env"
    assert make_env(env_file).returncode == 0
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    return {"root": root, "services": yaml.safe_load(done.stdout)["services"], "env": env_variables(env_file)}


@pytest.fixture(scope="module")
def tracking(stack) -> Iterator[dict]:
    """A running server, and what the platform's account recorded on it before anyone else came."""
    from mlflow import MlflowClient

    if importlib.util.find_spec("flask_wtf") is None:
        pytest.fail(
            "Flask-WTF is not installed: MLflow's basic-auth app needs it (mlflow[auth], as in the API image)"
        )
    root, service = stack["root"], stack["services"]["mlflow"]
    port = free_port()
    log = root / "server.log"
    process = subprocess.Popen(
        local_command(service, root, port),
        env=local_environment(service, root, port),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow server exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_for(healthy, 180, "the MLflow server")
        adapter = root / "adapter" / "adapter_model.safetensors"
        adapter.parent.mkdir()
        adapter.write_bytes(b"private adapter weights")
        with logged_in(stack["services"]["api"]["environment"]):
            client = MlflowClient(tracking_uri=url)
            experiment = client.create_experiment("alice-experiment")
            run = client.create_run(experiment)
            client.log_metric(run.info.run_id, "accuracy", 0.91)
            client.log_artifacts(run.info.run_id, str(adapter.parent), "adapter")
            client.set_terminated(run.info.run_id)
            client.create_registered_model(MODEL)
            for _ in range(2):
                client.create_model_version(MODEL, f"runs:/{run.info.run_id}/adapter", run.info.run_id)
            client.set_registered_model_alias(MODEL, "production", "1")
        yield {"url": url, "experiment": experiment, "run": run.info.run_id}
    finally:
        process.terminate()
        process.wait(timeout=60)


def attempts(tracking: dict) -> dict[str, tuple[str, str, dict]]:
    """What an attacker on the tracking server's network tries: (method, path, request), by name."""
    run, experiment = tracking["run"], tracking["experiment"]
    return {
        "list every run": ("POST", "/api/2.0/mlflow/runs/search", {"json": {"experiment_ids": [experiment]}}),
        "read the run": ("GET", "/api/2.0/mlflow/runs/get", {"params": {"run_id": run}}),
        "download the adapter": (
            "GET",
            f"/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run}/artifacts/adapter/adapter_model.safetensors",
            {},
        ),
        "forge a metric": (
            "POST",
            "/api/2.0/mlflow/runs/log-metric",
            {"json": {"run_id": run, "key": "accuracy", "value": 0.99, "timestamp": 0, "step": 0}},
        ),
        "move production": (
            "POST",
            "/api/2.0/mlflow/registered-models/alias",
            {"json": {"name": MODEL, "alias": "production", "version": "2"}},
        ),
    }


def current_state(tracking: dict, stack: dict) -> tuple:
    """The run's metric history and the alias, read as the platform."""
    from mlflow import MlflowClient

    with logged_in(stack["services"]["api"]["environment"]):
        client = MlflowClient(tracking_uri=tracking["url"])
        history = [m.value for m in client.get_metric_history(tracking["run"], "accuracy")]
        return history, client.get_model_version_by_alias(MODEL, "production").version


@pytest.mark.parametrize(
    "credentials",
    [None, ("admin", "password1234"), ("finetune-platform", "a-guessed-password")],
    ids=["no login", "mlflow's old default admin", "a guessed password"],
)
def test_a_client_without_the_platforms_login_is_refused_everything(tracking, stack, credentials):
    for name, (method, path, request) in attempts(tracking).items():
        response = httpx.request(method, tracking["url"] + path, auth=credentials, timeout=30, **request)
        assert response.status_code == 401, (name, response.status_code, response.text[:300])
        assert b"private adapter weights" not in response.content, name
    assert current_state(tracking, stack) == ([0.91], "1")


def test_another_mlflow_account_gets_no_permission(tracking, stack):
    """default_permission = NO_PERMISSIONS: an account the admin creates still sees nothing of the platform's."""
    platform = stack["services"]["api"]["environment"]
    admin = (platform["MLFLOW_TRACKING_USERNAME"], platform["MLFLOW_TRACKING_PASSWORD"])
    created = httpx.post(
        tracking["url"] + "/api/2.0/mlflow/users/create",
        json={"username": "mallory", "password": "mallory-password-123"},
        auth=admin,
        timeout=30,
    )
    assert created.status_code == 200, created.text
    for name, (method, path, request) in attempts(tracking).items():
        response = httpx.request(
            method, tracking["url"] + path, auth=("mallory", "mallory-password-123"), timeout=30, **request
        )
        if name == "list every run":  # a search answers with what the caller may read: nothing
            assert (response.status_code, response.json()) == (200, {}), response.text[:300]
        else:
            assert response.status_code == 403, (name, response.status_code, response.text[:300])
        assert b"private adapter weights" not in response.content, name
    assert current_state(tracking, stack) == ([0.91], "1")


def test_the_platforms_login_does_what_the_platform_needs(tracking, stack):
    platform = stack["services"]["api"]["environment"]
    admin = (platform["MLFLOW_TRACKING_USERNAME"], platform["MLFLOW_TRACKING_PASSWORD"])
    assert admin == ("finetune-platform", stack["env"]["MLFLOW_ADMIN_PASSWORD"])
    _, path, request = attempts(tracking)["download the adapter"]
    download = httpx.get(tracking["url"] + path, auth=admin, timeout=30, **request)
    assert (download.status_code, download.content) == (200, b"private adapter weights")
    assert httpx.get(f"{tracking['url']}/health", timeout=5).status_code == 200  # probes need no login
