"""The make targets of the seed README as GNU make runs them: `make serve` (exp=, model=), `make api` and `make ui`
on the ports .env sets (and nothing else of .env in their environment), `make test-v`, and `make setup-conda`
with environment.yml (conda is not installed here: a stand-in `conda` on PATH records what the target asks of
it; the file it is given is checked against pyproject.toml and the Makefile)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_containers import ROOT, require_tool

MAKEFILE = ROOT / "Makefile"
ENVIRONMENT_FILE = ROOT / "environment.yml"
PORT_VARIABLES = ("API_PORT", "UI_PORT", "SERVE_PORT", "MLFLOW_PORT")
# make's own knobs that must not leak in from the environment running the tests
CLEAN = (*PORT_VARIABLES, "JWT_SECRET", "exp", "model", "args", "ENV_FILE", "TESTS", "MAKEFLAGS", "MFLAGS")


def make(*arguments: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """GNU make in the repository (``env``: variables set over the test's own environment), never reinstalling
    .venv for a newer pyproject.toml."""
    binary = require_tool("make", [], "GNU make")
    environment = {k: v for k, v in os.environ.items() if k not in CLEAN} | (env or {})
    return subprocess.run(
        [binary, "--no-print-directory", "-f", str(MAKEFILE), "-o", ".venv/.installed", *arguments],
        capture_output=True, text=True, cwd=cwd, env=environment, timeout=300,
    )  # fmt: skip


def recording_finetune(folder: Path) -> Path:
    """A `finetune` that writes its arguments and environment to files beside it (BIN=folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "finetune"
    script.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {folder}/args\nenv > {folder}/env\n')
    script.chmod(0o755)
    return folder


def recorded(folder: Path) -> tuple[list[str], dict[str, str]]:
    args = (folder / "args").read_text().splitlines()
    env = dict(line.split("=", 1) for line in (folder / "env").read_text().splitlines() if "=" in line)
    return args, env


@pytest.fixture
def dotenv(tmp_path) -> Path:
    """A .env with ports other than the defaults, and a secret."""
    path = tmp_path / ".env"
    path.write_text(
        "# comment\nJWT_SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n"
        'API_PORT=18001\nUI_PORT="18002"\nSERVE_PORT=18003\r\nMLFLOW_PORT=18004\n# API_PORT=1\n'
    )
    return path


# --- make serve / api / ui -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ([], ["serve", "--port", "8080"]),  # the newest model: Production first (finetune serve's default)
        (["exp=my_experiment"], ["serve", "--port", "8080", "--experiment", "my_experiment"]),
        (["model=sentiment@production"], ["serve", "--port", "8080", "--model", "sentiment@production"]),
        (["model=sentiment@3"], ["serve", "--port", "8080", "--model", "sentiment@3"]),
    ],
)
def test_make_serve_passes_the_experiment_or_the_model(tmp_path, arguments, expected):
    stub = recording_finetune(tmp_path / "bin")
    done = make("serve", f"BIN={stub}", f"ENV_FILE={tmp_path / 'none'}", *arguments)
    assert done.returncode == 0, done.stderr
    assert recorded(stub)[0] == expected


def test_make_api_ui_and_serve_listen_on_the_ports_of_dotenv_and_get_none_of_its_secrets(tmp_path, dotenv):
    for target, expected in [
        ("api", ["api", "--port", "18001"]),
        ("ui", ["ui", "--port", "18002", "--api-url", "http://127.0.0.1:18001"]),
        ("serve", ["serve", "--port", "18003"]),
    ]:
        stub = recording_finetune(tmp_path / target)
        done = make(target, f"BIN={stub}", f"ENV_FILE={dotenv}")
        assert done.returncode == 0, done.stderr
        args, env = recorded(stub)
        assert args == expected, target
        assert not {"JWT_SECRET", *PORT_VARIABLES} & set(env), target
        if target == "ui":  # the UI's playground asks the server `make serve` starts
            assert env["FINETUNE_SERVE_URL"] == "http://127.0.0.1:18003"
    dry = make("-n", "predict-health", "k8s-port-forward", f"ENV_FILE={dotenv}")
    assert dry.returncode == 0, dry.stderr
    assert "http://127.0.0.1:18003/health" in dry.stdout
    for service, ports in [("api", "18001:8000"), ("ui", "18002:8501"), ("inference", "18003:8080"),
                           ("mlflow", "18004:5000")]:  # fmt: skip
        assert f"svc/finetune-finetune-platform-{service} {ports}" in dry.stdout


def test_make_up_starts_finetune_up_with_its_args_and_make_demo_ends_with_that_line(tmp_path):
    stub = recording_finetune(tmp_path / "bin")
    done = make("up", f"BIN={stub}")
    assert done.returncode == 0, done.stderr
    assert recorded(stub)[0] == ["up"]
    done = make("up", f"BIN={stub}", "args=--detach --workers 2")
    assert done.returncode == 0, done.stderr
    assert recorded(stub)[0] == ["up", "--detach", "--workers", "2"]
    demo = make("demo", f"BIN={stub}")
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.splitlines()[-2:] == [
        "Next, the whole platform (API, worker, inference server, web UI, MLflow UI) from one command:",
        f"  {stub}/finetune up        (or: make up; Ctrl-C stops it, --detach runs it in the background)",
    ]


def test_a_port_on_the_command_line_or_in_the_environment_wins_over_dotenv(tmp_path, dotenv):
    stub = recording_finetune(tmp_path / "bin")
    done = make("api", f"BIN={stub}", f"ENV_FILE={dotenv}", "API_PORT=19000")
    assert done.returncode == 0, done.stderr
    assert recorded(stub)[0] == ["api", "--port", "19000"]
    done = make("api", f"BIN={stub}", f"ENV_FILE={dotenv}", env={"API_PORT": "19001"})
    assert done.returncode == 0, done.stderr
    assert recorded(stub)[0] == ["api", "--port", "19001"]


def test_a_port_of_dotenv_that_is_no_number_stops_make_with_its_line(tmp_path):
    bad = tmp_path / ".env"
    bad.write_text("SERVE_PORT=80a\n")
    done = make("-n", "serve", f"ENV_FILE={bad}")
    assert done.returncode == 2
    assert f"{bad}: SERVE_PORT=80a is not a port number.  Stop." in done.stderr


def test_without_dotenv_the_ports_are_the_defaults(tmp_path):
    done = make("-n", "api", "ui", "serve", f"ENV_FILE={tmp_path / 'missing'}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        ".venv/bin/finetune api --port 8000",
        "FINETUNE_SERVE_URL=http://127.0.0.1:8080 .venv/bin/finetune ui --port 8501 --api-url http://127.0.0.1:8000",
        ".venv/bin/finetune serve --port 8080",
    ]


# --- make test-v ------------------------------------------------------------------------------------------------


def test_make_test_v_lints_then_names_each_test_with_its_outcome(tmp_path):
    tests = tmp_path / "test_tiny.py"
    tests.write_text("def test_one():\n    pass\n\n\ndef test_two():\n    assert 1 + 1 == 2\n")
    dry = make("-n", "test-v", "-o", ".tools/bin/helm")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == [
        ".venv/bin/ruff check src tests bench docs/gen",
        ".venv/bin/lint-imports",
        ".venv/bin/python -m pytest -v ",
    ]
    # the lint step is left out here: other work in progress must not fail this test
    done = make("test-v", f"TESTS={tests}", "-o", "lint", "-o", ".tools/bin/helm")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"test_tiny\.py::test_one PASSED", done.stdout)
    assert re.search(r"test_tiny\.py::test_two PASSED", done.stdout)
    assert "2 passed" in done.stdout


# --- make setup-conda and environment.yml -----------------------------------------------------------------------

STUB_CONDA = """#!/bin/bash
# A stand-in for conda: records each call (and where it ran), answers `env list` from its own state.
printf '%s|%s\\n' "$PWD" "$*" >> "{log}"
if [[ "$1 $2" == "env list" ]]; then
  echo "# conda environments:"
  echo "#"
  echo "base                     /opt/conda"
  cat "{state}" 2>/dev/null
elif [[ "$1 $2" == "env create" ]]; then
  echo "finetune-platform        /opt/conda/envs/finetune-platform" >> "{state}"
fi
"""


def stub_conda(folder: Path) -> tuple[Path, Path]:
    folder.mkdir()
    log, state = folder / "calls.log", folder / "envs"
    script = folder / "conda"
    script.write_text(STUB_CONDA.format(log=log, state=state))
    script.chmod(0o755)
    return log, state


def calls(log: Path) -> list[tuple[str, str]]:
    return [tuple(line.split("|", 1)) for line in log.read_text().splitlines()]


def test_make_setup_conda_creates_the_env_then_updates_it(tmp_path):
    log, _ = stub_conda(tmp_path / "conda-bin")
    env = {"PATH": f"{tmp_path / 'conda-bin'}{os.pathsep}{os.environ['PATH']}"}
    first = make("setup-conda", env=env)
    assert first.returncode == 0, first.stderr
    assert calls(log) == [(str(ROOT), "env list"), (str(ROOT), "env create --file environment.yml")]
    assert first.stdout.splitlines()[-1] == (
        "make setup-conda: done; activate it with: conda activate finetune-platform"
    )
    second = make("setup-conda", env=env)
    assert second.returncode == 0, second.stderr
    assert calls(log)[2:] == [
        (str(ROOT), "env list"),
        (str(ROOT), "env update --name finetune-platform --file environment.yml"),
    ]
    assert "conda activate finetune-platform" in second.stdout


def test_make_setup_conda_without_conda_says_what_to_do(tmp_path):
    bare = tmp_path / "bin"
    bare.mkdir()
    for tool in ("bash", "sh", "make", "awk", "grep", "sed"):  # what make and the recipe need, and no conda
        found = shutil.which(tool)
        if found:
            (bare / tool).symlink_to(found)
    done = make("setup-conda", env={"PATH": str(bare)})
    assert done.returncode == 2
    assert (
        "make setup-conda: conda is not on PATH; install Miniforge (https://conda-forge.org/download/)"
        in (done.stderr)
    )
    assert "or use make install (a .venv, no conda)" in done.stderr


def test_environment_yml_installs_what_make_install_does():
    environment = yaml.safe_load(ENVIRONMENT_FILE.read_text())
    makefile = MAKEFILE.read_text()
    assert environment["name"] == re.search(r"^CONDA_ENV := (\S+)$", makefile, re.M).group(1)
    conda_packages = [item for item in environment["dependencies"] if isinstance(item, str)]
    assert conda_packages == ["python=3.11", "pip"]
    (pip,) = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    torch_version = re.search(r"^TORCH_VERSION \?= (\S+)$", makefile, re.M).group(1)
    # the CPU build of the Makefile's torch first, then the project with its dev tools, as `make install` does
    assert pip == [
        "--extra-index-url https://download.pytorch.org/whl/cpu",
        f"torch=={torch_version}",
        "-e .[dev]",
    ]
    assert '"torch==$(TORCH_VERSION)"' in makefile and '-e ".[dev]"' in makefile
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "dev" in project["optional-dependencies"]
    assert project["requires-python"] == ">=3.11"
    # conda runs pip in the environment file's folder: `-e .` is the project
    assert (ENVIRONMENT_FILE.parent / "pyproject.toml").is_file()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    assert workflow["jobs"]["test"]["env"]["PIP_EXTRA_INDEX_URL"] == pip[0].split()[-1]
