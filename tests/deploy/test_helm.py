"""The Helm chart, rendered and checked by the real tools: helm lint and template, kubernetes-validate's schemas
of Kubernetes 1.35 (strict), and a JSON schema of the Prometheus Operator's ServiceMonitor.

Each values variant is rendered once per module; the tests then read the objects.
"""

from __future__ import annotations

import base64
import configparser
import json
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "finetune-platform"
RELEASE = "finetune"
NAMESPACE = "finetune"
PREFIX = "finetune-finetune-platform"  # <release>-<chart>
KUBERNETES_VERSION = "1.35.0"

JWT_SECRET = secrets.token_hex(32)
DATABASE_URL = "postgresql+psycopg://finetune:db-Pass-7Qx2@db.internal:5432/finetune"
MLFLOW_URL = "postgresql+psycopg://mlflow:mlflow-Pass-9Wz4@db.internal:5432/mlflow"

PLACEHOLDER_MESSAGE = (
    "ENVIRONMENT=production needs a real JWT secret: secrets.jwtSecret is a placeholder. Generate one with "
    "`openssl rand -hex 32` and pass --set secrets.jwtSecret=<value>, or set secrets.existingSecret to a Secret "
    "holding JWT_SECRET."
)
SHORT_MESSAGE = PLACEHOLDER_MESSAGE.replace("is a placeholder", "is shorter than 32 characters")
NO_DATABASE_MESSAGE = (
    "ENVIRONMENT=production needs PostgreSQL: set postgresql.url (postgresql+psycopg://user:password@host:5432/"
    "finetune), or set secrets.existingSecret to a Secret holding DATABASE_URL. SQLite on the shared volume is for "
    "local mode only."
)

# deploy_conventions.md: the container command of each image, and its port and health endpoint. The UI's
# --api-url is the API's in-cluster address (http://api:8000 in compose).
CONVENTIONS = {
    "api": ("finetune api --host 0.0.0.0 --port 8000", 8000, "/health"),
    "worker": ("finetune worker --metrics-port 9100 --metrics-host 0.0.0.0", 9100, "/metrics"),
    "worker-gpu": ("finetune worker --metrics-port 9100 --metrics-host 0.0.0.0", 9100, "/metrics"),
    "inference": ("finetune serve --host 0.0.0.0 --port 8080", 8080, "/health"),
    "ui": (
        f"finetune ui --host 0.0.0.0 --port 8501 --api-url http://{PREFIX}-api:8000",
        8501,
        "/_stcore/health",
    ),
    "mlflow": (
        "mlflow server --app-name basic-auth --host 0.0.0.0 --port 5000 "
        "--artifacts-destination /mlflow/artifacts --serve-artifacts --allowed-hosts "
        f"{PREFIX}-mlflow,{PREFIX}-mlflow:5000,localhost,localhost:5000,127.0.0.1:5000",
        5000,
        "/health",
    ),
    "db-migrate": ("finetune db upgrade", None, None),
    "audit-checkpoint": ("finetune audit checkpoint", None, None),
    "audit-verify": ("finetune audit verify", None, None),
}

# The ServiceMonitor fields this chart uses, after the prometheus-operator CRD (monitoring.coreos.com/v1).
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string", "minLength": 1}, "labels": STRING_MAP},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string", "minLength": 1},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                            "authorization": {  # SafeAuthorization: a header from a Secret's key
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"type": "string"},
                                    "credentials": {
                                        "type": "object",
                                        "additionalProperties": False,
                                        "required": ["key"],
                                        "properties": {
                                            "name": {"type": "string"},
                                            "key": {"type": "string"},
                                            "optional": {"type": "boolean"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


def helm_binary() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if local.is_file() else shutil.which("helm")
    if found is None:
        reason = "helm is missing (.tools/bin/helm or helm on PATH)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} under CI=true")
        pytest.skip(reason)
    return found


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=60)


def template(*args: str) -> subprocess.CompletedProcess:
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)


def render(*args: str) -> tuple[list[dict], str]:
    result = template(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc], result.stdout


def sets(*assignments: str, flag: str = "--set") -> list[str]:
    return [arg for assignment in assignments for arg in (flag, assignment)]


PROD = [
    "-f",
    str(CHART / "values.prod.yaml"),
    *sets(
        f"secrets.jwtSecret={JWT_SECRET}",
        f"postgresql.url={DATABASE_URL}",
        f"postgresql.mlflowUrl={MLFLOW_URL}",
    ),
]


VARIANTS = {
    "default": [],
    "prod": PROD,
    "monitoring": ["-f", str(CHART / "values.monitoring.yaml"), *sets("serviceMonitor.enabled=true")],
    "gpu": [
        *sets("workers.gpu.enabled=true", "workers.gpu.gpusPerPod=2"),
        *sets(
            'workers.gpu.nodeSelector={"nvidia.com/gpu.present":null,"cloud.example.com/accelerator":"h100"}',
            'workers.gpu.tolerations=[{"key":"gpu-only","operator":"Equal","value":"yes","effect":"NoSchedule"}]',
            flag="--set-json",
        ),
    ],
    "existing-secret": sets(
        "secrets.existingSecret=platform-secrets",
        "env.ENVIRONMENT=production",
        "secrets.jwtSecret=jwt-VALUE-that-must-not-leak-0123456789abcdef",
        "postgresql.url=postgresql+psycopg://leak:DB-VALUE-must-not-leak@db:5432/finetune",
        "postgresql.mlflowUrl=postgresql+psycopg://leak:MLFLOW-VALUE-must-not-leak@db:5432/mlflow",
        "secrets.serveApiKeys={SERVE-KEY-must-not-leak}",
        "monitoring.enabled=true",
        "monitoring.grafana.adminPassword=GRAFANA-VALUE-must-not-leak",
        "secrets.mlflowAdminPassword=MLFLOW-ADMIN-must-not-leak",
        "secrets.redisPassword=REDIS-VALUE-must-not-leak",
        "secrets.metricsToken=METRICS-VALUE-must-not-leak-0123456789",
        "postgresql.appPassword=APP-VALUE-must-not-leak-0123456789",
        "audit.existingSecret=audit-key",
        "audit.existingSecretKey=anchor",
        "audit.anchorKey=AUDIT-VALUE-must-not-leak-0123456789abcdef",
        "audit.persistence.existingClaim=audit-anchors",
    ),
}
LEAK_MARKERS = [
    "jwt-VALUE", "DB-VALUE", "MLFLOW-VALUE", "SERVE-KEY", "GRAFANA-VALUE", "MLFLOW-ADMIN", "REDIS-VALUE",
    "METRICS-VALUE", "APP-VALUE", "AUDIT-VALUE", "must-not-leak",
]  # fmt: skip
# The keys the chart generates when their values are empty.
GENERATED = [
    "DATABASE_APP_PASSWORD",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "REDIS_PASSWORD",
    "METRICS_TOKEN",
]


@pytest.fixture(scope="module")
def rendered() -> dict[str, tuple[list[dict], str]]:
    return {name: render(*args) for name, args in VARIANTS.items()}


def objects(rendered, variant: str) -> list[dict]:
    return rendered[variant][0]


def find(docs: list[dict], kind: str, name: str) -> dict:
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} rendered"
    return matches[0]


WORKLOADS = {"Deployment", "StatefulSet", "Job", "CronJob"}


def pod_template(doc: dict) -> dict:
    """The pod template of a workload (a CronJob's is inside its Job template)."""
    spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
    return spec["template"]


def pod_specs(docs: list[dict]) -> list[tuple[str, dict]]:
    return [(doc["metadata"]["name"], pod_template(doc)["spec"]) for doc in docs if doc["kind"] in WORKLOADS]


def containers(docs: list[dict]) -> dict[str, dict]:
    return {
        name.removeprefix(f"{PREFIX}-"): container
        for name, spec in pod_specs(docs)
        for container in spec["containers"]
    }


def secret_value(docs: list[dict], ref: dict) -> str:
    secret = find(docs, "Secret", ref["name"])
    return base64.b64decode(secret["data"][ref["key"]]).decode()


def resolved_command(docs: list[dict], container: dict) -> str:
    """The command as the kubelet runs it: $(VAR) replaced by the variable's value (a Secret's, if it names one)."""
    env = {}
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
        else:
            env[entry["name"]] = secret_value(docs, entry["valueFrom"]["secretKeyRef"])
    return " ".join(
        re.sub(r"\$\((\w+)\)", lambda match: env[match.group(1)], part) for part in container["command"]
    )


def kinds_and_names(docs: list[dict]) -> set[tuple[str, str]]:
    found = [(doc["kind"], doc["metadata"]["name"]) for doc in docs]
    assert len(found) == len(set(found)), "an object is rendered twice"
    return set(found)


@pytest.mark.parametrize("variant", ["default", "prod", "monitoring", "gpu"])
def test_helm_lint_strict_passes(variant):
    result = helm("lint", "--strict", str(CHART), *VARIANTS[variant])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_helm_lint_passes_without_strict():
    result = helm("lint", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_object_is_valid_kubernetes(rendered, variant):
    problems = []
    for doc in objects(rendered, variant):
        try:
            if doc["kind"] == "ServiceMonitor":
                jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).validate(doc)
            else:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except jsonschema.ValidationError as error:  # kubernetes_validate's error is a subclass
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")
    assert problems == []


def test_service_monitor_schema_rejects_a_wrong_monitor(rendered):
    monitor = find(objects(rendered, "monitoring"), "ServiceMonitor", PREFIX)
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": 9100, "interval": "30 seconds"}]}}
    errors = sorted(
        error.message for error in jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(broken)
    )
    assert errors == ["'30 seconds' does not match '" + DURATION + "'", "9100 is not of type 'string'"]


DEFAULT_OBJECTS = {
    ("Secret", PREFIX),
    ("ConfigMap", f"{PREFIX}-mlflow-auth"),
    ("NetworkPolicy", f"{PREFIX}-mlflow"),
    ("NetworkPolicy", f"{PREFIX}-redis"),
    ("NetworkPolicy", f"{PREFIX}-worker"),
    ("PersistentVolumeClaim", f"{PREFIX}-data"),
    ("Deployment", f"{PREFIX}-api"),
    ("Deployment", f"{PREFIX}-worker"),
    ("Deployment", f"{PREFIX}-inference"),
    ("Deployment", f"{PREFIX}-ui"),
    ("Deployment", f"{PREFIX}-mlflow"),
    ("StatefulSet", f"{PREFIX}-redis"),
    ("Service", f"{PREFIX}-api"),
    ("Service", f"{PREFIX}-worker-metrics"),
    ("Service", f"{PREFIX}-inference"),
    ("Service", f"{PREFIX}-ui"),
    ("Service", f"{PREFIX}-mlflow"),
    ("Service", f"{PREFIX}-redis"),
    ("Secret", f"{PREFIX}-audit"),
    ("PersistentVolumeClaim", f"{PREFIX}-audit-anchors"),
    ("CronJob", f"{PREFIX}-audit-checkpoint"),
    ("CronJob", f"{PREFIX}-audit-verify"),
}


def test_default_objects(rendered):
    assert kinds_and_names(objects(rendered, "default")) == DEFAULT_OBJECTS


def test_prod_objects(rendered):
    assert kinds_and_names(objects(rendered, "prod")) == DEFAULT_OBJECTS | {
        ("Secret", f"{PREFIX}-db-migrate"),
        ("Job", f"{PREFIX}-db-migrate"),
        ("Ingress", PREFIX),
        ("HorizontalPodAutoscaler", f"{PREFIX}-worker"),
        ("HorizontalPodAutoscaler", f"{PREFIX}-inference"),
        ("PodDisruptionBudget", f"{PREFIX}-api"),
        ("PodDisruptionBudget", f"{PREFIX}-worker"),
        ("PodDisruptionBudget", f"{PREFIX}-inference"),
    }


def decoded_secret(docs: list[dict], name: str) -> dict[str, str]:
    return {
        key: base64.b64decode(value).decode() for key, value in find(docs, "Secret", name)["data"].items()
    }


def test_prod_secret_holds_the_values_and_only_there(rendered):
    docs, text = rendered["prod"]
    decoded = decoded_secret(docs, PREFIX)
    generated = {key: decoded.pop(key) for key in GENERATED}
    app_password = generated["DATABASE_APP_PASSWORD"]
    assert decoded == {
        "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": f"postgresql+psycopg://finetune_app:{app_password}@db.internal:5432/finetune",
        "MLFLOW_BACKEND_STORE_URI": MLFLOW_URL,
    }
    for key, value in generated.items():
        assert re.fullmatch("[A-Za-z0-9]{32}", value), key
    assert len(set(generated.values())) == len(GENERATED)
    for value in (JWT_SECRET, DATABASE_URL, MLFLOW_URL, "db-Pass-7Qx2", *generated.values()):
        assert value not in text
    # The owner's URL goes to the migration hook alone, with the password it gives finetune_app.
    migrate = find(docs, "Secret", f"{PREFIX}-db-migrate")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert decoded_secret(docs, f"{PREFIX}-db-migrate") == {
        "DATABASE_URL": DATABASE_URL,
        "DATABASE_APP_PASSWORD": app_password,
    }


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("change-me", PLACEHOLDER_MESSAGE),
        ("CHANGEME-please-0123456789abcdef0123", PLACEHOLDER_MESSAGE),
        ("Kx81-short", SHORT_MESSAGE),
    ],
)
def test_prod_refuses_a_weak_jwt_secret(secret, message):
    result = template(*PROD, "--set", f"secrets.jwtSecret={secret}")  # the last --set wins
    assert result.returncode == 1
    assert message in result.stderr
    assert secret not in result.stderr


def test_prod_values_alone_fail_on_the_placeholder():
    result = template("-f", str(CHART / "values.prod.yaml"))
    assert result.returncode == 1
    assert (
        f"execution error at (finetune-platform/templates/NOTES.txt:1:4): {PLACEHOLDER_MESSAGE}"
        in result.stderr
    )


def test_prod_refuses_sqlite():
    result = template("-f", str(CHART / "values.prod.yaml"), "--set", f"secrets.jwtSecret={JWT_SECRET}")
    assert result.returncode == 1
    assert NO_DATABASE_MESSAGE in result.stderr


def test_existing_secret_is_referenced_and_no_value_leaks(rendered):
    docs, text = rendered["existing-secret"]
    assert not [doc for doc in docs if doc["kind"] == "Secret"]
    for marker in LEAK_MARKERS:
        assert marker not in text
    references = {
        (name.removeprefix(f"{PREFIX}-"), entry["name"]): entry["valueFrom"]["secretKeyRef"]
        for name, spec in pod_specs(docs)
        for container in spec["containers"]
        for entry in container.get("env", [])
        if "valueFrom" in entry
    }
    assert {ref["name"] for ref in references.values()} == {"platform-secrets", "audit-key"}
    for job in ("audit-checkpoint", "audit-verify"):
        assert references[job, "AUDIT_ANCHOR_KEY"] == {"name": "audit-key", "key": "anchor"}
        assert references[job, "DATABASE_URL"] == {"name": "platform-secrets", "key": "DATABASE_URL"}
    for component in ("api", "worker", "inference"):
        for key in (
            "JWT_SECRET",
            "DATABASE_URL",
            "MLFLOW_TRACKING_PASSWORD",
            "REDIS_PASSWORD",
            "METRICS_TOKEN",
        ):
            assert references[component, key] == {"name": "platform-secrets", "key": key, "optional": False}
        assert references[component, "SERVE_API_KEYS"]["optional"] is True
    # The migration connects as the owner: DATABASE_MIGRATION_URL; the pods' DATABASE_URL is finetune_app's.
    assert references["db-migrate", "DATABASE_URL"] == {
        "name": "platform-secrets",
        "key": "DATABASE_MIGRATION_URL",
    }
    assert references["db-migrate", "DATABASE_APP_PASSWORD"] == {
        "name": "platform-secrets",
        "key": "DATABASE_APP_PASSWORD",
    }
    assert references["mlflow", "MLFLOW_BACKEND_STORE_URI"] == {
        "name": "platform-secrets",
        "key": "MLFLOW_BACKEND_STORE_URI",
    }
    assert references["mlflow", "MLFLOW_AUTH_ADMIN_PASSWORD"] == {
        "name": "platform-secrets",
        "key": "MLFLOW_TRACKING_PASSWORD",
    }
    assert references["mlflow", "MLFLOW_FLASK_SERVER_SECRET_KEY"]["key"] == "MLFLOW_FLASK_SERVER_SECRET_KEY"
    assert references["redis", "REDIS_PASSWORD"] == {"name": "platform-secrets", "key": "REDIS_PASSWORD"}
    prometheus = find(docs, "Deployment", f"{PREFIX}-prometheus")["spec"]["template"]["spec"]
    (token,) = [volume["secret"] for volume in prometheus["volumes"] if "secret" in volume]
    assert token["secretName"] == "platform-secrets" and token["items"][0]["key"] == "METRICS_TOKEN"
    assert references["grafana", "GF_SECURITY_ADMIN_PASSWORD"]["name"] == "platform-secrets"


def test_gpu_worker_pool_follows_its_values(rendered):
    docs = objects(rendered, "gpu")
    gpu = find(docs, "Deployment", f"{PREFIX}-worker-gpu")["spec"]["template"]["spec"]
    cpu = find(docs, "Deployment", f"{PREFIX}-worker")["spec"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert gpu["nodeSelector"] == {"cloud.example.com/accelerator": "h100"}
    assert gpu["tolerations"] == [
        {"key": "gpu-only", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}
    ]
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"]["limits"]
    assert "nodeSelector" not in cpu and "tolerations" not in cpu

    def queues(spec):
        env = {entry["name"]: entry.get("value") for entry in spec["containers"][0]["env"]}
        assert env["GPU_POOL_MAX_DEVICES"] == str(
            gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        )
        return env["QUEUE_NAME"], env["GPU_QUEUE_NAME"]

    assert queues(cpu) == ("finetune-training", "finetune-training-gpu")
    assert queues(gpu) == ("finetune-training-gpu", "finetune-training-gpu")
    # Whoever enqueues (the API) sends device: cuda jobs to the GPU pool's queue.
    assert queues(find(docs, "Deployment", f"{PREFIX}-api")["spec"]["template"]["spec"]) == queues(cpu)
    default_api = containers(objects(rendered, "default"))["api"]
    assert "GPU_QUEUE_NAME" not in {entry["name"] for entry in default_api["env"]}


def test_gpu_queue_must_differ():
    result = template("--set", "workers.gpu.enabled=true", "--set", "workers.gpu.queueName=finetune-training")
    assert result.returncode == 1
    assert (
        'workers.gpu.queueName must differ from workers.queueName (both "finetune-training")' in result.stderr
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_pod_is_locked_down(rendered, variant):
    for name, spec in pod_specs(objects(rendered, variant)):
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["securityContext"]["fsGroup"] == 10001, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        tmp_volumes = {volume["name"] for volume in spec["volumes"] if "emptyDir" in volume}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert mounts["/tmp"] in tmp_volumes, name
            assert container["resources"]["requests"] and container["resources"]["limits"], name
            if spec.get("restartPolicy") != "Never":
                assert "livenessProbe" in container and "readinessProbe" in container, name


def test_commands_ports_and_probes_follow_the_conventions(rendered):
    docs = objects(rendered, "prod") + [
        doc for doc in objects(rendered, "gpu") if doc["metadata"]["name"].endswith("worker-gpu")
    ]
    found = containers(docs)
    for component, (command, port, health) in CONVENTIONS.items():
        container = found[component]
        assert resolved_command(docs, container) == command, component
        if port is None:
            continue
        assert [p["containerPort"] for p in container["ports"]] == [port], component
        port_name = container["ports"][0]["name"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": health, "port": port_name}, (component, probe)


def test_ui_reaches_the_api_service(rendered):
    docs = objects(rendered, "default")
    env = {entry["name"]: entry.get("value") for entry in containers(docs)["ui"]["env"]}
    api = find(docs, "Service", f"{PREFIX}-api")
    assert env["FINETUNE_API_URL"] == f"http://{api['metadata']['name']}:{api['spec']['ports'][0]['port']}"
    assert env["FINETUNE_SERVE_URL"] == f"http://{PREFIX}-inference:8080"
    assert not [entry for entry in containers(docs)["ui"]["env"] if "valueFrom" in entry]


def test_shared_volume_and_settings(rendered):
    docs = objects(rendered, "default")
    claim = find(docs, "PersistentVolumeClaim", f"{PREFIX}-data")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    found = containers(docs)
    for component in ("api", "worker", "inference"):
        env = {entry["name"]: entry.get("value") for entry in found[component]["env"]}
        mounts = {mount["mountPath"]: mount["name"] for mount in found[component]["volumeMounts"]}
        assert mounts["/data"] == "data"
        assert env["FINETUNE_HOME"] == "/data/home"
        assert env["RESULTS_DIR"] == "/data/results"
        assert env["MODEL_REGISTRY_DIR"] == "/data/registry"
        assert env["REDIS_URL"] == f"redis://:$(REDIS_PASSWORD)@{PREFIX}-redis:6379/0"
        assert env["MLFLOW_TRACKING_URI"] == f"http://{PREFIX}-mlflow:5000"
        assert "JWT_SECRET" not in env  # local mode without a secret: the API generates one on /data
    storage_class = template("--set", "persistence.storageClass=nfs-csi")
    assert 'storageClassName: "nfs-csi"' in storage_class.stdout
    existing = template("--set", "persistence.existingClaim=shared-data")
    docs = [doc for doc in yaml.safe_load_all(existing.stdout) if doc]
    assert [doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"] == [
        f"{PREFIX}-audit-anchors"  # the audit Jobs' own volume
    ]
    claims = {
        volume["persistentVolumeClaim"]["claimName"]
        for _, spec in pod_specs(docs)
        for volume in spec["volumes"]
        if "persistentVolumeClaim" in volume
    }
    assert claims == {"shared-data", f"{PREFIX}-audit-anchors"}


def test_redis_keeps_every_queued_message(rendered):
    redis = find(objects(rendered, "default"), "StatefulSet", f"{PREFIX}-redis")
    command = " ".join(redis["spec"]["template"]["spec"]["containers"][0]["command"])
    assert command.startswith("redis-server ")
    assert "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    template_claim = redis["spec"]["volumeClaimTemplates"][0]
    assert template_claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert redis["spec"]["serviceName"] == f"{PREFIX}-redis"


def test_prod_scaling_ingress_and_budgets(rendered):
    docs = objects(rendered, "prod")
    for component, low in (("worker", 2), ("inference", 2)):
        hpa = find(docs, "HorizontalPodAutoscaler", f"{PREFIX}-{component}")
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"{PREFIX}-{component}",
        }
        assert hpa["spec"]["minReplicas"] == low and hpa["spec"]["maxReplicas"] > low
        assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["type"] == "Utilization"
        assert "replicas" not in find(docs, "Deployment", f"{PREFIX}-{component}")["spec"]  # the HPA owns it
    assert find(docs, "Deployment", f"{PREFIX}-api")["spec"]["replicas"] == 2
    for component in ("api", "worker", "inference"):
        budget = find(docs, "PodDisruptionBudget", f"{PREFIX}-{component}")
        labels = budget["spec"]["selector"]["matchLabels"]
        selected = [name for name, _ in pod_specs(docs) if labels.items() <= _pod_labels(docs, name).items()]
        assert selected == [f"{PREFIX}-{component}"]
    ingress = find(docs, "Ingress", PREFIX)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"][0]["secretName"] == "finetune-platform-tls"
    routes = {
        rule["host"]: (path["backend"]["service"]["name"], path["backend"]["service"]["port"]["number"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }
    assert routes == {
        "finetune.example.com": (f"{PREFIX}-ui", 8501),
        "api.finetune.example.com": (f"{PREFIX}-api", 8000),
        "inference.finetune.example.com": (f"{PREFIX}-inference", 8080),
    }
    assert set(ingress["spec"]["tls"][0]["hosts"]) == set(routes)
    for service, port in routes.values():
        assert port in [p["port"] for p in find(docs, "Service", service)["spec"]["ports"]]
    env = {entry["name"]: entry for entry in containers(docs)["api"]["env"]}
    assert env["ENVIRONMENT"]["value"] == "production"


def _pod_labels(docs: list[dict], name: str) -> dict:
    owner = next(doc for doc in docs if doc["kind"] in WORKLOADS and doc["metadata"]["name"] == name)
    return pod_template(owner)["metadata"]["labels"]


def test_db_migrate_hook(rendered):
    docs = objects(rendered, "prod")
    job = find(docs, "Job", f"{PREFIX}-db-migrate")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    secret_weight = find(docs, "Secret", f"{PREFIX}-db-migrate")["metadata"]["annotations"][
        "helm.sh/hook-weight"
    ]
    assert int(secret_weight) < int(job["metadata"]["annotations"]["helm.sh/hook-weight"])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["finetune", "db", "upgrade"]
    assert (
        container["image"]
        == find(docs, "Deployment", f"{PREFIX}-api")["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    assert not [
        doc for doc in objects(rendered, "default") if doc["kind"] == "Job"
    ]  # SQLite: migrated on first use


def test_service_monitor_selects_the_metrics_services(rendered):
    docs = objects(rendered, "monitoring")
    monitor = find(docs, "ServiceMonitor", PREFIX)
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = {
        doc["metadata"]["name"]: doc
        for doc in docs
        if doc["kind"] == "Service" and selector.items() <= doc["metadata"]["labels"].items()
    }
    assert set(selected) == {f"{PREFIX}-api", f"{PREFIX}-inference", f"{PREFIX}-worker-metrics"}
    ports = {endpoint["port"] for endpoint in monitor["spec"]["endpoints"]}
    for service in selected.values():
        assert {port["name"] for port in service["spec"]["ports"]} & ports
    jobs = {service["metadata"]["labels"][monitor["spec"]["jobLabel"]] for service in selected.values()}
    assert jobs == {"finetune-api", "finetune-inference", "finetune-worker"}  # the alert rules' job names
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert not [doc for doc in objects(rendered, "default") if doc["kind"] == "ServiceMonitor"]


def test_bundled_prometheus_and_grafana(rendered):
    docs = objects(rendered, "monitoring")
    assert {
        (kind, f"{PREFIX}-{name}")
        for kind in ("Deployment", "Service", "ConfigMap")
        for name in ("prometheus", "grafana")
    } <= kinds_and_names(docs)
    config = find(docs, "ConfigMap", f"{PREFIX}-prometheus")["data"]
    prometheus = yaml.safe_load(config["prometheus.yml"])
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    assert jobs["finetune-api"]["static_configs"][0]["targets"] == [f"{PREFIX}-api:8000"]
    assert jobs["finetune-inference"]["static_configs"][0]["targets"] == [f"{PREFIX}-inference:8080"]
    assert jobs["finetune-worker"]["dns_sd_configs"][0] == {
        "names": [f"{PREFIX}-worker-metrics.{NAMESPACE}.svc"],
        "type": "A",
        "port": 9100,
    }
    assert find(docs, "Service", f"{PREFIX}-worker-metrics")["spec"]["clusterIP"] == "None"
    assert config["alerts.yml"] == (ROOT / "deploy" / "prometheus" / "alerts.yml").read_text()
    grafana = find(docs, "ConfigMap", f"{PREFIX}-grafana")["data"]
    original = (ROOT / "deploy" / "grafana" / "dashboards" / "finetune-platform.json").read_text()
    assert json.loads(grafana["finetune-platform.json"]) == json.loads(original)
    datasource = yaml.safe_load(grafana["datasources.yml"])["datasources"][0]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == f"http://{PREFIX}-prometheus:9090"
    assert not [doc for doc in objects(rendered, "default") if "prometheus" in doc["metadata"]["name"]]


@pytest.mark.parametrize(
    ("copy", "original"),
    [
        ("dashboards/finetune-platform.json", "deploy/grafana/dashboards/finetune-platform.json"),
        ("files/prometheus/alerts.yml", "deploy/prometheus/alerts.yml"),
        ("files/mlflow/basic_auth.ini", "deploy/mlflow/basic_auth.ini"),
    ],
)
def test_copies_inside_the_chart_equal_the_originals(copy, original):
    assert (CHART / copy).read_bytes() == (ROOT / original).read_bytes()


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("api.replicas=-1", "- at '/api/replicas': minimum: got -1, want 0"),
        ("api.replicas=two", "- at '/api/replicas': got string, want integer"),
        (
            "env.ENVIRONMENT=prod",
            "- at '/env/ENVIRONMENT': value must be one of 'local', 'staging', 'production'",
        ),
        ("api.replicaz=2", "- at '/api': additional properties 'replicaz' not allowed"),
    ],
)
def test_values_schema_rejects_bad_values(setting, error):
    result = template("--set", setting)
    assert result.returncode == 1
    assert "values don't meet the specifications of the schema(s) in the following chart(s):" in result.stderr
    assert error in result.stderr


def _leaf_paths(value, prefix=""):
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaf_paths(child, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_documented():
    text = (CHART / "values.yaml").read_text()
    documented = set(re.findall(r"^\s*## @param (\S+) \S", text, flags=re.MULTILINE))
    values = yaml.safe_load(text)
    undocumented = [
        path
        for path in _leaf_paths(values)
        if not any(path == name or path.startswith(f"{name}.") for name in documented)
    ]
    assert undocumented == []
    leaves = set(_leaf_paths(values))
    stale = [
        name for name in documented if not any(leaf == name or leaf.startswith(f"{name}.") for leaf in leaves)
    ]
    assert stale == []


# --- issue 18: who reaches MLflow, Redis and the workers; where every secret comes from ------------------------

AUTH_INI = ROOT / "deploy" / "mlflow" / "basic_auth.ini"
PLATFORM_PODS = {f"{PREFIX}-{name}" for name in ("api", "worker", "worker-gpu", "inference")}
# Env variables that carry a secret: each must come from a Secret (secretKeyRef), never a literal.
SECRET_ENV = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|DATABASE_URL|MIGRATION_URL|REDISCLI_AUTH")
# Local mode's database: a file on the shared volume, no password in it (the audit Jobs name it directly).
LOCAL_DATABASE_URL = "sqlite:////data/home/finetune.db"
# A URL with a password in it that is not a $(VARIABLE) the kubelet substitutes.
URL_WITH_PASSWORD = re.compile(r"://[^/@\s:]*:(?!\$\()[^/@\s]+@")


def pod_labels(docs: list[dict]) -> dict[str, dict]:
    """Labels of each workload's pods, by workload name."""
    return {
        doc["metadata"]["name"]: pod_template(doc)["metadata"]["labels"]
        for doc in docs
        if doc["kind"] in WORKLOADS
    }


def selects(selector: dict, labels: dict) -> bool:
    """Whether a Kubernetes label selector (matchLabels and matchExpressions) matches ``labels``."""
    matches = {
        "In": lambda key, values: labels.get(key) in values,
        "NotIn": lambda key, values: labels.get(key) not in values,
        "Exists": lambda key, values: key in labels,
        "DoesNotExist": lambda key, values: key not in labels,
    }
    return selector.get("matchLabels", {}).items() <= labels.items() and all(
        matches[expression["operator"]](expression["key"], expression.get("values", []))
        for expression in selector.get("matchExpressions", [])
    )


def admitted_in_namespace(rule: dict, docs: list[dict]) -> set[str]:
    """The release's workloads whose pods a rule's same-namespace peers (podSelector alone) admit."""
    peers = [peer["podSelector"] for peer in rule["from"] if set(peer) == {"podSelector"}]
    return {name for name, labels in pod_labels(docs).items() if any(selects(peer, labels) for peer in peers)}


def env_of(container: dict) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container.get("env", [])}


@pytest.mark.parametrize("variant", ["default", "prod", "monitoring", "gpu"])
def test_mlflow_and_redis_admit_only_the_platforms_pods(rendered, variant):
    docs = objects(rendered, variant)
    platform = PLATFORM_PODS & set(pod_labels(docs))
    assert (f"{PREFIX}-worker-gpu" in platform) == (variant == "gpu")
    for component, port in (("mlflow", 5000), ("redis", 6379)):
        policy = find(docs, "NetworkPolicy", f"{PREFIX}-{component}")["spec"]
        selected = [
            name for name, labels in pod_labels(docs).items() if selects(policy["podSelector"], labels)
        ]
        assert selected == [f"{PREFIX}-{component}"]
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        assert rule["ports"] == [{"protocol": "TCP", "port": port}]
        assert all(
            set(peer) == {"podSelector"} for peer in rule["from"]
        )  # this namespace, these pods, nothing else
        assert admitted_in_namespace(rule, docs) == platform, (
            component
        )  # not ui, prometheus, grafana, db-migrate


@pytest.mark.parametrize("variant", ["default", "monitoring", "gpu"])
def test_worker_metrics_port_admits_prometheus_only(rendered, variant):
    docs = objects(rendered, variant)
    policy = find(docs, "NetworkPolicy", f"{PREFIX}-worker")["spec"]
    workers = {name for name, labels in pod_labels(docs).items() if selects(policy["podSelector"], labels)}
    assert workers == {f"{PREFIX}-worker", f"{PREFIX}-worker-gpu"} & set(pod_labels(docs))
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 9100}]
    bundled = {f"{PREFIX}-prometheus"} if variant == "monitoring" else set()
    assert admitted_in_namespace(rule, docs) == bundled
    # Besides: the Prometheus Operator's pods (app.kubernetes.io/name=prometheus) in any namespace, for the
    # ServiceMonitor; no pod of this release carries that label.
    others = [peer for peer in rule["from"] if set(peer) != {"podSelector"}]
    assert others == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]
    assert not [
        name for name, labels in pod_labels(docs).items() if selects(others[0]["podSelector"], labels)
    ]


def test_worker_metrics_port_admits_no_one_without_prometheus():
    docs, _ = render("--set-json", "networkPolicy.prometheusPeers=[]")
    policy = find(docs, "NetworkPolicy", f"{PREFIX}-worker")["spec"]
    assert policy["ingress"] == [] and policy["policyTypes"] == ["Ingress"]
    docs, _ = render("--set", "networkPolicy.enabled=false")
    assert not [doc for doc in docs if doc["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mlflow_is_a_cluster_ip_service_no_ingress_routes_to(rendered, variant):
    docs = objects(rendered, variant)
    service = find(docs, "Service", f"{PREFIX}-mlflow")
    assert service["spec"]["type"] == "ClusterIP"
    assert [port["port"] for port in service["spec"]["ports"]] == [5000]
    backends = [
        path["backend"]["service"]["name"]
        for doc in docs
        if doc["kind"] == "Ingress"
        for rule in doc["spec"]["rules"]
        for path in rule["http"]["paths"]
    ]
    assert f"{PREFIX}-mlflow" not in backends


def test_an_ingress_path_to_mlflow_is_refused():
    hosts = [
        {"host": "mlflow.example.com", "paths": [{"path": "/", "pathType": "Prefix", "service": "mlflow"}]}
    ]
    result = template("--set", "ingress.enabled=true", "--set-json", f"ingress.hosts={json.dumps(hosts)}")
    assert result.returncode == 1
    assert (
        "- at '/ingress/hosts/0/paths/0/service': value must be one of 'api', 'ui', 'inference'"
        in result.stderr
    )


def test_mlflow_asks_for_a_login_with_the_shipped_auth_config(rendered):
    docs = objects(rendered, "prod")
    found = containers(docs)
    mlflow = found["mlflow"]
    assert mlflow["command"][:4] == ["mlflow", "server", "--app-name", "basic-auth"]
    env = env_of(mlflow)
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"  # no idle GenAI job runners
    mounts = {mount["mountPath"]: mount for mount in mlflow["volumeMounts"]}
    volumes = {
        volume["name"]: volume
        for volume in find(docs, "Deployment", f"{PREFIX}-mlflow")["spec"]["template"]["spec"]["volumes"]
    }
    # The auth config is the ConfigMap copy of deploy/mlflow/basic_auth.ini, mounted where the variable points.
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    config_map = volumes[mounts[str(path.parent)]["name"]]["configMap"]["name"]
    assert find(docs, "ConfigMap", config_map)["data"][path.name] == AUTH_INI.read_text()
    ini = configparser.ConfigParser()
    ini.read_string(AUTH_INI.read_text())
    assert ini["mlflow"]["default_permission"] == "NO_PERMISSIONS"
    assert "admin_password" not in ini["mlflow"]  # the password is a secret: MLFLOW_AUTH_ADMIN_PASSWORD
    # The user database: on its own subPath of the shared volume, outside the artifact root MLflow serves.
    database = Path(ini["mlflow"]["database_uri"].removeprefix("sqlite:///"))
    assert mounts[str(database.parent)]["subPath"] == "mlflow-auth"
    assert not database.is_relative_to("/mlflow/artifacts")
    admin = env["MLFLOW_AUTH_ADMIN_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert admin == {"name": PREFIX, "key": "MLFLOW_TRACKING_PASSWORD"}
    assert (
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]["key"]
        == "MLFLOW_FLASK_SERVER_SECRET_KEY"
    )
    # The platform's pods log in as that admin, with the same Secret key.
    for component in ("api", "worker", "inference"):
        platform = env_of(found[component])
        assert platform["MLFLOW_TRACKING_USERNAME"]["value"] == ini["mlflow"]["admin_username"], component
        assert platform["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == admin, component
    assert len(secret_value(docs, admin)) >= 16  # MLflow refuses an admin password under 12 characters
    for component in ("ui", "db-migrate", "audit-checkpoint", "audit-verify"):
        assert not {"MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"} & set(env_of(found[component])), (
            component
        )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_secrets_come_from_secret_references_only(rendered, variant):
    docs, text = rendered[variant]
    for name, spec in pod_specs(docs):
        for container in spec["containers"]:
            names = [entry["name"] for entry in container.get("env", [])]
            for entry in container.get("env", []):
                if SECRET_ENV.search(entry["name"]) and entry.get("value") != LOCAL_DATABASE_URL:
                    assert "secretKeyRef" in entry.get("valueFrom", {}), (name, entry["name"])
                else:
                    assert not URL_WITH_PASSWORD.search(str(entry.get("value", ""))), (name, entry["name"])
                for variable in re.findall(r"\$\((\w+)\)", str(entry.get("value", ""))):
                    # the kubelet substitutes only variables defined earlier in the list
                    assert names.index(variable) < names.index(entry["name"]), (name, entry["name"])
            for part in container.get("command", []) + container.get("args", []):
                assert not URL_WITH_PASSWORD.search(part), name
    for secret in (doc for doc in docs if doc["kind"] == "Secret"):
        for key, value in secret["data"].items():
            plain = base64.b64decode(value).decode()
            for piece in (plain, *re.findall(r":([^:/@]+)@", plain)):
                assert piece not in text, (secret["metadata"]["name"], key)
    for known in ("password1234", "finetune-local", "admin-local", "change-me"):
        assert known not in text


def test_redis_asks_for_the_secrets_password(rendered):
    docs = objects(rendered, "default")
    redis = find(docs, "StatefulSet", f"{PREFIX}-redis")["spec"]["template"]["spec"]["containers"][0]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    env = env_of(redis)
    for name in ("REDIS_PASSWORD", "REDISCLI_AUTH"):  # redis-cli (the readiness probe) reads REDISCLI_AUTH
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": PREFIX, "key": "REDIS_PASSWORD"}
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    for component in ("api", "worker", "inference"):
        platform = env_of(containers(docs)[component])
        assert platform["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": PREFIX,
            "key": "REDIS_PASSWORD",
        }
        assert platform["REDIS_URL"]["value"] == f"redis://:$(REDIS_PASSWORD)@{PREFIX}-redis:6379/0"
    assert re.fullmatch("[A-Za-z0-9]{32}", decoded_secret(docs, PREFIX)["REDIS_PASSWORD"])


def test_generated_secrets_are_one_value_per_render_and_new_per_install(rendered):
    docs = objects(rendered, "prod")
    main, hook = decoded_secret(docs, PREFIX), decoded_secret(docs, f"{PREFIX}-db-migrate")
    assert hook["DATABASE_APP_PASSWORD"] == main["DATABASE_APP_PASSWORD"]
    assert main["DATABASE_URL"].startswith(
        f"postgresql+psycopg://finetune_app:{main['DATABASE_APP_PASSWORD']}@"
    )
    again = decoded_secret(render(*PROD)[0], PREFIX)
    for key in GENERATED:
        assert again[key] != main[key], key


def test_given_secret_values_are_kept():
    given = {
        "secrets.mlflowAdminPassword": "an admin password of mine",
        "secrets.redisPassword": "redis-Password-0123",
        "secrets.metricsToken": "metrics-token-0123456789abcdef0123456789",
        "postgresql.appPassword": "app.Password-0123456789abcdefghijk",
    }
    docs, _ = render(*PROD, *sets(*(f"{key}={value}" for key, value in given.items())))
    decoded = decoded_secret(docs, PREFIX)
    assert decoded["MLFLOW_TRACKING_PASSWORD"] == given["secrets.mlflowAdminPassword"]
    assert decoded["REDIS_PASSWORD"] == given["secrets.redisPassword"]
    assert decoded["METRICS_TOKEN"] == given["secrets.metricsToken"]
    assert decoded["DATABASE_APP_PASSWORD"] == given["postgresql.appPassword"]
    assert (
        decoded["DATABASE_URL"]
        == "postgresql+psycopg://finetune_app:app.Password-0123456789abcdefghijk@db.internal:5432/finetune"
    )


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        (
            "secrets.redisPassword=short",
            "- at '/secrets/redisPassword': 'short' does not match pattern '^([A-Za-z0-9._~-]{16,})?$'",
        ),
        (
            "postgresql.appPassword=has@an-at-sign-in-it-0123456789abcdef",
            "- at '/postgresql/appPassword': 'has@an-at-sign-in-it-0123456789abcdef' does not match pattern",
        ),
        (  # the secret policy outside local mode: >= 32 bytes
            "postgresql.appPassword=app.Password-0123456",
            "- at '/postgresql/appPassword': 'app.Password-0123456' does not match pattern "
            "'^([A-Za-z0-9._~-]{32,})?$'",
        ),
        ("secrets.mlflowAdminPassword=short", "- at '/secrets/mlflowAdminPassword': 'short' does not match"),
        ("forwardedAllowIps=*", "- at '/forwardedAllowIps': '*' does not match pattern"),
    ],
)
def test_values_schema_rejects_weak_secrets_and_trusting_everyone(setting, error):
    result = template("--set", setting)
    assert result.returncode == 1
    assert error in result.stderr


def test_db_migrate_runs_as_the_owner_and_the_pods_as_finetune_app(rendered):
    docs = objects(rendered, "prod")
    job = find(docs, "Job", f"{PREFIX}-db-migrate")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(job)
    assert secret_value(docs, env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]) == DATABASE_URL
    app_password = secret_value(docs, env["DATABASE_APP_PASSWORD"]["valueFrom"]["secretKeyRef"])
    for component in ("api", "worker", "inference"):
        url = secret_value(
            docs, env_of(containers(docs)[component])["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
        )
        assert url == f"postgresql+psycopg://finetune_app:{app_password}@db.internal:5432/finetune", component
    query = decoded_secret(
        render(*PROD, "--set", "postgresql.url=postgresql+psycopg://o:p-W0rd@db:6432/app?sslmode=require")[0],
        PREFIX,
    )
    assert query["DATABASE_URL"] == (
        f"postgresql+psycopg://finetune_app:{query['DATABASE_APP_PASSWORD']}@db:6432/app?sslmode=require"
    )


def test_forwarded_headers_are_trusted_only_from_the_configured_proxies(rendered):
    for variant, expected in (("default", ""), ("prod", "10.244.0.0/16")):
        found = containers(objects(rendered, variant))
        for component in ("api", "inference", "ui"):
            assert env_of(found[component])["FORWARDED_ALLOW_IPS"]["value"] == expected, (variant, component)
        assert "FORWARDED_ALLOW_IPS" not in env_of(found["worker"])


def test_prod_runs_in_production_mode(rendered):
    for component, container in containers(objects(rendered, "prod")).items():
        if "ENVIRONMENT" in env_of(container):
            assert env_of(container)["ENVIRONMENT"]["value"] == "production", component


def test_every_scrape_sends_the_metrics_token(rendered):
    docs = objects(rendered, "monitoring")
    monitor = find(docs, "ServiceMonitor", PREFIX)
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["authorization"] == {
            "type": "Bearer",
            "credentials": {"name": PREFIX, "key": "METRICS_TOKEN"},
        }
    prometheus = yaml.safe_load(find(docs, "ConfigMap", f"{PREFIX}-prometheus")["data"]["prometheus.yml"])
    files = {job["job_name"]: job["authorization"] for job in prometheus["scrape_configs"]}
    assert set(files) == {"finetune-api", "finetune-worker", "finetune-inference"}
    spec = find(docs, "Deployment", f"{PREFIX}-prometheus")["spec"]["template"]["spec"]
    mounts = {mount["name"]: mount for mount in spec["containers"][0]["volumeMounts"]}
    (volume,) = [volume for volume in spec["volumes"] if "secret" in volume]
    (item,) = volume["secret"]["items"]
    token_file = f"{mounts[volume['name']]['mountPath']}/{item['path']}"
    assert item["key"] == "METRICS_TOKEN" and volume["secret"]["secretName"] == PREFIX
    assert volume["secret"]["defaultMode"] == 0o440 and mounts[volume["name"]]["readOnly"] is True
    assert list(files.values()) == [{"type": "Bearer", "credentials_file": token_file}] * 3
    token = find(docs, "Secret", PREFIX)["data"]["METRICS_TOKEN"]
    for component in ("api", "worker", "inference"):
        ref = env_of(containers(docs)[component])["METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert find(docs, "Secret", ref["name"])["data"][ref["key"]] == token


# --- the audit log's anchors: two CronJobs, a key and a volume no other pod gets ---------------------------------

AUDIT_JOBS = {f"{PREFIX}-audit-checkpoint", f"{PREFIX}-audit-verify"}
AUDIT_SECRET = f"{PREFIX}-audit"
AUDIT_CLAIM = f"{PREFIX}-audit-anchors"


def secret_uses(spec: dict) -> set[tuple[str, str | None]]:
    """Every (Secret, key) a pod can read: env entries, envFrom (key None: all of it) and secret volumes."""
    used = set()
    for container in spec["containers"] + spec.get("initContainers", []):
        for entry in container.get("env", []):
            if ref := entry.get("valueFrom", {}).get("secretKeyRef"):
                used.add((ref["name"], ref["key"]))
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                used.add((source["secretRef"]["name"], None))
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            items = volume["secret"].get("items") or [{"key": None}]
            used |= {(volume["secret"]["secretName"], item["key"]) for item in items}
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                items = source["secret"].get("items") or [{"key": None}]
                used |= {(source["secret"]["name"], item["key"]) for item in items}
    return used


def audit_job(docs: list[dict], command: str) -> tuple[dict, dict, dict]:
    """The CronJob of `finetune audit <command>`, its pod spec and its container."""
    cron = find(docs, "CronJob", f"{PREFIX}-audit-{command}")
    spec = pod_template(cron)["spec"]
    (container,) = spec["containers"]
    return cron, spec, container


def test_audit_cronjobs_run_the_audit_commands_with_the_pods_database(rendered):
    docs = objects(rendered, "prod")
    api = containers(docs)["api"]
    app_url = secret_value(docs, env_of(api)["DATABASE_URL"]["valueFrom"]["secretKeyRef"])
    assert app_url.startswith("postgresql+psycopg://finetune_app:")
    for command, schedule, read_only in (
        ("checkpoint", "*/5 * * * *", False),
        ("verify", "17 3 * * *", True),
    ):
        cron, spec, container = audit_job(docs, command)
        assert cron["spec"]["schedule"] == schedule
        assert cron["spec"]["concurrencyPolicy"] == "Forbid"
        assert spec["restartPolicy"] == "Never"
        assert container["command"] == ["finetune", "audit", command]
        assert container["image"] == api["image"]  # the image with the CLI and the database drivers
        env = env_of(container)
        assert {name: entry.get("value") for name, entry in env.items() if "value" in entry} == {
            "ENVIRONMENT": "production",
            "LOG_LEVEL": "INFO",
            "HOME": "/tmp",
            "FINETUNE_HOME": "/tmp/finetune",
            "AUDIT_ANCHOR_FILE": "/anchors/audit-anchors.jsonl",
        }
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": PREFIX, "key": "DATABASE_URL"}
        assert secret_value(docs, env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]) == app_url
        assert env["AUDIT_ANCHOR_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": AUDIT_SECRET,
            "key": "AUDIT_ANCHOR_KEY",
        }
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert set(mounts) == {"/anchors", "/tmp"}  # PostgreSQL: nothing of the shared volume
        assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
        anchors = volumes[mounts["/anchors"]["name"]]["persistentVolumeClaim"]
        assert anchors["claimName"] == AUDIT_CLAIM
        assert mounts["/anchors"].get("readOnly", False) is read_only
        assert anchors.get("readOnly", False) is read_only
    claim = find(docs, "PersistentVolumeClaim", AUDIT_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}  # values.prod.yaml
    assert "storageClassName" not in claim["spec"]


def test_audit_schedules_and_volume_follow_their_values():
    docs, _ = render(
        *PROD,
        *sets(
            "audit.checkpoint.schedule=@hourly",
            "audit.verify.schedule=30 4 * * 1",
            "audit.persistence.size=5Gi",
            "audit.persistence.storageClass=fast-ssd",
        ),
    )
    assert audit_job(docs, "checkpoint")[0]["spec"]["schedule"] == "@hourly"
    assert audit_job(docs, "verify")[0]["spec"]["schedule"] == "30 4 * * 1"
    claim = find(docs, "PersistentVolumeClaim", AUDIT_CLAIM)["spec"]
    assert claim["resources"]["requests"]["storage"] == "5Gi" and claim["storageClassName"] == "fast-ssd"
    docs, _ = render(*sets("audit.checkpoint.enabled=false"))
    assert {name for name, _ in pod_specs(docs)} & AUDIT_JOBS == {f"{PREFIX}-audit-verify"}
    assert find(docs, "PersistentVolumeClaim", AUDIT_CLAIM) and find(docs, "Secret", AUDIT_SECRET)
    docs, _ = render(*sets("audit.checkpoint.enabled=false", "audit.verify.enabled=false"))
    assert not {name for name, _ in pod_specs(docs)} & AUDIT_JOBS
    assert not [doc for doc in docs if doc["metadata"]["name"] in {AUDIT_SECRET, AUDIT_CLAIM}]


def test_local_mode_audit_jobs_read_the_apis_sqlite_file(rendered):
    docs = objects(rendered, "default")
    api = containers(docs)["api"]
    api_home = env_of(api)["FINETUNE_HOME"]["value"]
    for command in ("checkpoint", "verify"):
        _, spec, container = audit_job(docs, command)
        env = env_of(container)
        assert env["ENVIRONMENT"]["value"] == "local"
        assert env["DATABASE_URL"]["value"] == f"sqlite:///{api_home}/finetune.db"  # the api's database_url
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        assert volumes[mounts["/data"]]["persistentVolumeClaim"]["claimName"] == f"{PREFIX}-data"
        assert env["AUDIT_ANCHOR_KEY"]["valueFrom"]["secretKeyRef"]["name"] == AUDIT_SECRET


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_anchor_key_reaches_the_audit_jobs_only(rendered, variant):
    docs, text = rendered[variant]
    key_secret = "audit-key" if variant == "existing-secret" else AUDIT_SECRET
    readers = {name for name, spec in pod_specs(docs) if any(s == key_secret for s, _ in secret_uses(spec))}
    assert readers == AUDIT_JOBS
    for name, spec in pod_specs(docs):
        for secret, key in secret_uses(spec):
            assert key not in {"AUDIT_ANCHOR_KEY", "anchor"} or name in AUDIT_JOBS, (name, secret, key)
        if name not in AUDIT_JOBS:
            names = {entry["name"] for container in spec["containers"] for entry in container.get("env", [])}
            assert not {"AUDIT_ANCHOR_KEY", "AUDIT_ANCHOR_FILE"} & names, name
    secrets_ = {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "Secret"}
    if variant == "existing-secret":
        assert secrets_ == {}  # the key is in audit-key, which the chart does not render
        return
    # Its own Secret, kept on uninstall; the platform's Secret (read by api, workers, inference) never holds it.
    assert list(secrets_[AUDIT_SECRET]["data"]) == ["AUDIT_ANCHOR_KEY"]
    assert secrets_[AUDIT_SECRET]["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    key = secret_value(docs, {"name": AUDIT_SECRET, "key": "AUDIT_ANCHOR_KEY"})
    assert re.fullmatch("[A-Za-z0-9]{64}", key)
    for name, secret in secrets_.items():
        if name != AUDIT_SECRET:
            assert "AUDIT_ANCHOR_KEY" not in secret["data"], name
            assert key not in {base64.b64decode(value).decode() for value in secret["data"].values()}, name
    assert key not in text


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_anchor_volume_is_mounted_by_the_audit_jobs_only(rendered, variant):
    docs = objects(rendered, variant)
    claim = "audit-anchors" if variant == "existing-secret" else AUDIT_CLAIM
    mounted_by = {
        name
        for name, spec in pod_specs(docs)
        for volume in spec["volumes"]
        if volume.get("persistentVolumeClaim", {}).get("claimName") == claim
    }
    assert mounted_by == AUDIT_JOBS
    claims = [doc["metadata"]["name"] for doc in docs if doc["kind"] == "PersistentVolumeClaim"]
    assert (claim in claims) == (variant != "existing-secret")


def test_anchor_key_is_generated_once_and_a_given_one_is_kept(rendered):
    docs = objects(rendered, "prod")
    first = decoded_secret(docs, AUDIT_SECRET)["AUDIT_ANCHOR_KEY"]
    again = decoded_secret(render(*PROD)[0], AUDIT_SECRET)["AUDIT_ANCHOR_KEY"]
    assert re.fullmatch("[A-Za-z0-9]{64}", first) and again != first
    given = secrets.token_hex(32)
    docs, text = render(*PROD, "--set", f"audit.anchorKey={given}")
    assert decoded_secret(docs, AUDIT_SECRET) == {"AUDIT_ANCHOR_KEY": given}
    assert given not in text


def test_audit_existing_secret_and_claim_are_referenced(rendered):
    docs, text = rendered["existing-secret"]
    assert not [doc for doc in docs if doc["metadata"]["name"] in {AUDIT_SECRET, AUDIT_CLAIM}]
    assert "AUDIT-VALUE" not in text
    for command in ("checkpoint", "verify"):
        _, spec, container = audit_job(docs, command)
        assert env_of(container)["AUDIT_ANCHOR_KEY"]["valueFrom"]["secretKeyRef"] == {
            "name": "audit-key",
            "key": "anchor",
        }
        claims = [
            volume["persistentVolumeClaim"]["claimName"]
            for volume in spec["volumes"]
            if "persistentVolumeClaim" in volume
        ]
        assert claims == ["audit-anchors"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["audit.anchorKey=change-me-0123456789abcdef0123456789"],
            "ENVIRONMENT=production: audit.anchorKey is a placeholder; every checkpoint run would fail on it.",
        ),
        (
            ["audit.anchorKey=abababababababababababababababab"],
            "ENVIRONMENT=production: audit.anchorKey repeats fewer than 8 distinct characters;",
        ),
        (
            ["secrets.existingSecret=platform", "audit.existingSecret=platform"],
            'audit.existingSecret must be a Secret of its own, not secrets.existingSecret ("platform")',
        ),
        (
            [f"audit.persistence.existingClaim={PREFIX}-data"],
            f'audit.persistence.existingClaim must not be the shared /data claim ("{PREFIX}-data")',
        ),
        (
            ["persistence.existingClaim=shared", "audit.persistence.existingClaim=shared"],
            'audit.persistence.existingClaim must not be the shared /data claim ("shared")',
        ),
    ],
)
def test_audit_refuses_a_weak_key_a_shared_secret_or_a_shared_volume(settings, message):
    result = template(*PROD, *sets(*settings))
    assert result.returncode == 1
    assert message in result.stderr
    assert "abababab" not in result.stderr and "0123456789abcdef0123456789" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("audit.anchorKey=short-key", "- at '/audit/anchorKey': 'short-key' does not match pattern"),
        ("audit.checkpoint.schedule=every five minutes", "- at '/audit/checkpoint/schedule':"),
        ("audit.verify.schedule=17 3 * *", "- at '/audit/verify/schedule':"),
        ("audit.persistence.accessMode=ReadOnlyMany", "- at '/audit/persistence/accessMode':"),
    ],
)
def test_values_schema_rejects_bad_audit_values(setting, error):
    result = template("--set", setting)
    assert result.returncode == 1
    assert error in result.stderr


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_no_network_policy_stands_between_the_audit_jobs_and_the_database(rendered, variant):
    """PostgreSQL is outside the chart, and its policies restrict ingress only, to MLflow, Redis and the workers:
    none selects the audit Jobs' pods, so their connections to the database are not filtered by the chart."""
    docs = objects(rendered, variant)
    labels = pod_labels(docs)
    for policy in (doc for doc in docs if doc["kind"] == "NetworkPolicy"):
        assert policy["spec"]["policyTypes"] == ["Ingress"], policy["metadata"]["name"]
        for job in AUDIT_JOBS:
            assert not selects(policy["spec"]["podSelector"], labels[job]), (policy["metadata"]["name"], job)
