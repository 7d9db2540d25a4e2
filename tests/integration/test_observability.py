"""A real Prometheus scraping a real `finetune api`, a `finetune worker` and a `finetune serve`: jobs run (two
succeed, one fails), predictions are made, and then every PromQL expression of the Grafana dashboard and of the
alert rules is evaluated through Prometheus' HTTP API, with results that match what happened."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import (
    ROOT,
    UNGATED,
    finetune_bin,
    free_port,
    sentiment_rows,
    tiny_config_dict,
    write_csv,
)
from tests.integration.queue_harness import http_answers, queue_env, stop_processes, submit, wait_for

pytestmark = pytest.mark.slow
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "finetune-platform.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# The seed README's five Grafana panels, expression for expression.
SEED_PANELS = [
    ["increase(task_success_total[5m])", "increase(task_failure_total[5m])"],
    ["task_queue_length"],
    ["rate(task_duration_seconds_sum[5m])/rate(task_duration_seconds_count[5m])"],
    ["max(system_cpu_percent)"],
    ["max(system_memory_usage_gigabytes)"],
]


def require_binary(name: str) -> str:
    import os

    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"{name} is not installed under CI=true (.ci/run installs the Debian package prometheus)"
            )
        pytest.skip(f"{name} is not installed (Debian package prometheus)")
    return found


def dashboard_expressions() -> list[str]:
    document = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def seed_panel_expressions() -> list[list[str]]:
    """The expressions of the dashboard's first five panels (the seed's), panel by panel."""
    document = json.loads(DASHBOARD.read_text())
    return [[target["expr"] for target in panel["targets"]] for panel in document["panels"][:5]]


def alert_expressions() -> dict[str, str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def with_metrics_token(root: Path) -> Path:
    """A copy of the shipped config beside the token file its scrapes send (compose writes it at start)."""
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", root / "prometheus.yml")
    shutil.copy(ALERTS, root / ALERTS.name)
    (root / "metrics-token").write_text("a-metrics-token-for-the-scrapes\n")
    return root / "prometheus.yml"


def test_promtool_accepts_the_shipped_config_and_rules(tmp_path):
    promtool = require_binary("promtool")
    config = subprocess.run(
        [promtool, "check", "config", str(with_metrics_token(tmp_path))],
        capture_output=True,
        text=True,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS" in config.stdout and "1 rule files found" in config.stdout
    rules = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True)
    assert rules.returncode == 0 and "SUCCESS: 5 rules found" in rules.stdout, rules.stdout + rules.stderr


def test_the_dashboard_has_the_seed_panels_and_grafana_provisioning():
    document = json.loads(DASHBOARD.read_text())
    titles = [panel["title"] for panel in document["panels"]]
    assert titles[:5] == [
        "Task success / failure counts",
        "Queue length",
        "Average task duration",
        "CPU",
        "Memory",
    ]
    assert seed_panel_expressions() == SEED_PANELS
    # what the seed panels showed before they took the seed's expressions: kept, in panels of their own
    expressions = dashboard_expressions()
    for kept in ("task_queued", "system_cpu_percent", "system_memory_usage_gigabytes"):
        assert expressions.count(kept) == 1, kept
    assert all(panel["datasource"]["uid"] == "prometheus" for panel in document["panels"])
    datasource = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == "prometheus"
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/finetune-platform.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


class Prometheus:
    def __init__(self, binary: str, root: Path, targets: dict[str, str]) -> None:
        config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS)]
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        (root / "metrics-token").write_text(
            "a-metrics-token-for-the-scrapes\n"
        )  # local-mode targets ignore it
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = root / "prometheus.log"
        self.process = subprocess.Popen(
            [binary, f"--config.file={root / 'prometheus.yml'}", f"--storage.tsdb.path={root / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self._ready, 60, "Prometheus to be ready")

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """Evaluated now, or at the Unix time ``at``."""
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        response = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        assert response["status"] == "success", (expr, response)
        return response["data"]["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        result = self.query(expr, at)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def start(command: list[str], env, log: Path, url: str) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env.env(), stdout=log.open("w"), stderr=subprocess.STDOUT)

    def answers():
        if process.poll() is not None:
            raise AssertionError(f"{command[:2]} exited:\n{log.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(answers, 120, f"{url} to answer")
    return process


def test_every_dashboard_and_alert_expression_matches_what_happened(tmp_path, tiny_bert):
    binary = require_binary("prometheus")
    env = queue_env(tmp_path / "q", RESULTS_DIR=str(tmp_path / "results"))
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, 1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, 2))
    config = tiny_config_dict(tiny_bert, train, validation, tmp_path / "runs", max_steps=8, eval_steps=4)
    config["registry"] = {"model_name": "observed", **UNGATED}  # 8 steps of a tiny model: near the baseline
    run_training(config_from_dict(config), settings=env.settings, show_progress=False)  # the model to serve
    api_port, worker_port, serve_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen] = []
    prometheus = None
    try:
        processes.append(start([finetune_bin(), "api", "--port", str(api_port)], env, tmp_path / "api.log",
                               f"http://127.0.0.1:{api_port}/health"))  # fmt: skip
        processes.append(start([finetune_bin(), "serve", "--model", "observed", "--port", str(serve_port)], env,
                               tmp_path / "serve.log", f"http://127.0.0.1:{serve_port}/health"))  # fmt: skip
        worker = env.start_worker(
            "observed-worker", "--metrics-port", str(worker_port), "--metrics-host", "127.0.0.1"
        )
        wait_for(
            lambda: http_answers(f"http://127.0.0.1:{worker_port}/metrics"), 120, "the worker's metrics port"
        )
        prometheus = Prometheus(binary, tmp_path, {
            "finetune-api": f"127.0.0.1:{api_port}",
            "finetune-worker": f"127.0.0.1:{worker_port}",
            "finetune-inference": f"127.0.0.1:{serve_port}",
        })  # fmt: skip
        wait_for(lambda: prometheus.value("count(up == 1)") == 3, 60, "three targets up")
        time.sleep(2)  # a few samples of every counter at zero before anything happens

        # what happens: two training jobs succeed, a prediction job fails (its input is gone), 8 predictions.
        # The worker is paused while they are submitted: once the two short trainings were done it could start the
        # prediction before its input was removed, and the job would succeed
        worker.signal(signal.SIGSTOP)
        try:
            succeed = [
                submit(env, {**config, "experiment": f"ok-{n}", "registry": {"enabled": False}})
                for n in range(2)
            ]
            texts = write_csv(tmp_path / "texts.csv", sentiment_rows(10, 3))
            failing = json.loads(
                env.cli("jobs", "predict", "--model", "observed", "--input", str(texts), "--json").stdout
            )["id"]
            texts.unlink()
        finally:
            worker.signal(signal.SIGCONT)
        for job_id in [*succeed, failing]:
            env.wait_status(job_id, {"succeeded", "failed"})
        assert [env.job(j).status for j in [*succeed, failing]] == ["succeeded", "succeeded", "failed"]
        for text in ["great film", "awful book", "fine", "boring game", "lovely", "bad", "superb"]:
            assert (
                httpx.post(f"http://127.0.0.1:{serve_port}/predict", json={"text": text}).status_code == 200
            )
        batch = httpx.post(f"http://127.0.0.1:{serve_port}/predict/batch", json={"texts": ["a", "b c", "d"]})
        assert batch.status_code == 200
        for _ in range(3):
            assert httpx.get(f"http://127.0.0.1:{api_port}/health").status_code == 200

        counts = {
            "task_success_total": 2,
            'sum(finetune_api_requests_total{job="finetune-inference", route="/predict"})': 7,
            # a message the reconciler sent again may also end as "skipped": only outcomes of work count here
            'sum(worker_jobs_total{job="finetune-worker", outcome=~"succeeded|failed"})': 3,
            'sum(finetune_api_requests_total{job="finetune-api", route="/health"})': 4,  # 3 + the start-up check
        }
        seen: dict[str, float | None] = {}

        def settled():
            seen.update({expr: prometheus.value(expr) for expr in counts})
            return seen == counts

        try:
            wait_for(settled, 60, "Prometheus to see every job and request")
        except AssertionError:
            raise AssertionError(f"Prometheus saw {seen}, expected {counts}") from None
        time.sleep(2)

        # every expression of the dashboard and the alert rules is valid PromQL over these metrics
        for expr in [*dashboard_expressions(), *alert_expressions().values()]:
            prometheus.query(expr)

        # the seed's five panels, their expressions read from the dashboard, evaluated at the newest scrape of
        # the job counters (increase() extrapolates nothing past a sample there: each window opens on zeros)
        (successes, failures), (queue,), (duration,), (cpu_max,), (memory_max,) = seed_panel_expressions()
        at = prometheus.value("timestamp(task_success_total)")
        assert prometheus.value("task_success_total", at) == 2
        assert prometheus.value(successes, at) == 2
        assert prometheus.value(failures, at) == 1
        assert prometheus.value(queue, at) == 0
        durations = [_duration(env.job(j)) for j in [*succeed, failing]]
        assert prometheus.value(duration, at) == pytest.approx(sum(durations) / 3, rel=0.01)
        assert prometheus.value("task_duration_seconds_count", at) == 3
        cpu = prometheus.query("system_cpu_percent", at)
        memory = prometheus.query("system_memory_usage_gigabytes", at)
        assert sorted(series["metric"]["job"] for series in cpu) == sorted(
            ["finetune-api", "finetune-inference", "finetune-worker"]
        )
        assert all(0 <= float(series["value"][1]) <= 100 for series in cpu)
        assert len(memory) == 3 and all(0 < float(series["value"][1]) < 10_000 for series in memory)
        assert prometheus.value(cpu_max, at) == max(float(series["value"][1]) for series in cpu)
        assert prometheus.value(memory_max, at) == max(float(series["value"][1]) for series in memory)

        # the operator's metrics
        assert prometheus.value("task_running") == 0
        assert prometheus.value('sum(up{job="finetune-worker"})') == 1
        assert prometheus.value('worker_jobs_total{outcome="succeeded"}') == 2
        assert prometheus.value('worker_jobs_total{outcome="failed"}') == 1
        assert (
            prometheus.value(
                'sum(finetune_api_requests_total{job="finetune-inference", route="/predict/batch"})'
            )
            == 1
        )
        assert prometheus.value("sum(inference_batch_size_count)") == 8  # one at a time: a batch each
        assert prometheus.value("sum(inference_batch_size_sum)") == 10  # 7 texts + 3
        assert prometheus.value("sum(inference_resident_adapters)") == 1
        assert (
            prometheus.value(
                'sum(finetune_api_requests_total{job="finetune-api", route="/health", status="200"})'
            )
            == 4
        )

        # the alerts: failure ratio 1/3 over 30 minutes fires; the others are quiet
        rules = alert_expressions()
        assert prometheus.value(rules["TaskFailureRatioHigh"]) == pytest.approx(1 / 3, rel=0.01)
        assert prometheus.query(rules["QueueBacklogGrowing"]) == []
        assert prometheus.query(rules["NoLiveWorker"]) == []
        assert prometheus.query(rules["InferenceP99High"]) == []
        free = prometheus.query("min by (instance, path) (system_disk_free_ratio)")
        assert len(free) == 3
        expected_disk_alerts = [s for s in free if float(s["value"][1]) < 0.1]
        assert len(prometheus.query(rules["DiskNearlyFull"])) == len(expected_disk_alerts)

        # the worker goes away: NoLiveWorker's expression answers
        worker.process.terminate()
        worker.process.wait(timeout=60)
        wait_for(lambda: prometheus.query(rules["NoLiveWorker"]) != [], 30, "NoLiveWorker to match")
        assert prometheus.value('sum(up{job="finetune-worker"})') == 0
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_processes(processes)
        env.stop_all()


def _duration(job) -> float:
    return (job.finished_at - job.started_at).total_seconds()


def test_metrics_can_be_turned_off(tmp_path):
    from fastapi.testclient import TestClient

    from finetune_platform.api.app import create_app
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.settings import Settings

    for enabled, status in ((True, 200), (False, 404)):
        settings = Settings(FINETUNE_HOME=tmp_path / f"home-{enabled}", METRICS_ENABLED=enabled)
        for app in (create_app(settings), create_serve_app(settings, "anything")):
            client = TestClient(app)
            assert client.get("/health").status_code == 200
            response = client.get("/metrics")
            assert response.status_code == status
            if enabled:
                assert (
                    'finetune_api_requests_total{method="GET",route="/health",status="200"} 1.0'
                    in response.text
                )
                assert "system_memory_usage_gigabytes" in response.text


def test_running_jobs_show_their_speed_loss_progress_and_heartbeat(tmp_path):
    from datetime import UTC, datetime

    from prometheus_client import CollectorRegistry, generate_latest

    from finetune_platform.broker import queue_size
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services.job_metrics import JobCollector
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings

    settings = Settings(FINETUNE_HOME=tmp_path / "home")
    upgrade(settings)
    beat = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
    with session_scope(settings) as session:
        user = create_user(session, "watcher", "long enough password")
        for job_id, status, progress in (
            ("job-a", "running", {"loss": 0.25, "samples_per_second": 123.5, "percent": 40.0}),
            ("job-b", "queued", {}),
            ("job-c", "succeeded", {}),
        ):
            session.add(Job(id=job_id, owner_id=user.id, kind="train", status=status, config={}, progress=progress,
                            lease_owner="gpu-1:77:abc" if status == "running" else None,
                            heartbeat_at=beat if status == "running" else None))  # fmt: skip
    registry = CollectorRegistry()
    registry.register(JobCollector(settings, queue_depth=lambda: queue_size(settings)))
    text = generate_latest(registry).decode()
    assert 'task_training_samples_per_second{job_id="job-a",worker="gpu-1"} 123.5' in text
    assert 'task_training_loss{job_id="job-a"} 0.25' in text
    assert 'task_progress_percent{job_id="job-a",kind="train"} 40.0' in text
    line = next(
        row
        for row in text.splitlines()
        if row.startswith('worker_last_heartbeat_timestamp_seconds{worker="gpu-1"}')
    )
    assert float(line.split()[-1]) == beat.timestamp()
    assert "task_running 1.0" in text and "task_queued 1.0" in text and "task_success_total 1.0" in text
    assert "task_queue_length 0.0" in text  # the filesystem broker holds no message for these rows


def _sweep_rows(settings, trials: dict[str, int]) -> None:
    """Two running sweeps whose trials are in the given states (7 in the first, the rest in the second), and
    two jobs of no sweep that the sweep metrics must not count."""
    from finetune_platform.db.models import Job, Sweep
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services.users import create_user

    upgrade(settings)
    states = [state for state, count in trials.items() for _ in range(count)]
    with session_scope(settings) as session:
        user = create_user(session, "sweeper", "long enough password")
        for sweep_id in ("sweep-a", "sweep-b"):
            session.add(Sweep(id=sweep_id, owner_id=user.id, name=sweep_id, status="running", spec={},
                              base_config={}, trials_started=0))  # fmt: skip
        session.flush()
        for number, state in enumerate(states):
            session.add(Job(id=f"trial-{number}", owner_id=user.id, kind="train", status=state, config={},
                            progress={}, sweep_id="sweep-a" if number < 7 else "sweep-b",
                            trial_number=number))  # fmt: skip
        for state in ("succeeded", "queued"):
            session.add(Job(id=f"plain-{state}", owner_id=user.id, kind="train", status=state, config={},
                            progress={}))  # fmt: skip


def _end_trials(settings, moves: dict[str, str], finished_sweep: str) -> None:
    from finetune_platform.db.models import Job, Sweep
    from finetune_platform.db.session import session_scope

    with session_scope(settings) as session:
        for job_id, state in moves.items():
            session.get(Job, job_id).status = state
        session.get(Sweep, finished_sweep).status = "succeeded"


def test_sweep_collector_counts_trials_by_state_on_both_databases(db_settings):
    from prometheus_client import CollectorRegistry, generate_latest

    from finetune_platform.services.sweep_metrics import SweepCollector

    _sweep_rows(
        db_settings, {"queued": 2, "running": 3, "succeeded": 4, "failed": 1, "cancelled": 5, "pruned": 6}
    )
    registry = CollectorRegistry()
    registry.register(SweepCollector(db_settings))
    lines = [line for line in generate_latest(registry).decode().splitlines() if not line.startswith("#")]
    assert lines == [
        'sweep_trials_total{state="succeeded"} 4.0',
        'sweep_trials_total{state="failed"} 1.0',
        'sweep_trials_total{state="cancelled"} 5.0',
        'sweep_trials_total{state="pruned"} 6.0',
        'sweep_trials_in_flight{state="queued"} 2.0',
        'sweep_trials_in_flight{state="running"} 3.0',
        "sweeps_running 2.0",
    ]


def test_prometheus_scrapes_sweep_trials_and_the_dashboard_panels_show_them(tmp_path):
    """The API's /metrics scraped by a real Prometheus while trials of two sweeps end in every way; the
    dashboard's sweep panels, read from its JSON, answer with what happened."""
    binary = require_binary("prometheus")
    env = queue_env(tmp_path / "q")
    # 13 trials in flight; then 10 of them end (4 succeed, 3 are pruned, 2 fail, 1 is cancelled) and sweep-b ends
    _sweep_rows(env.settings, {"queued": 8, "running": 5})
    ends = ["succeeded"] * 4 + ["pruned"] * 3 + ["failed"] * 2 + ["cancelled"]
    moves = {
        f"trial-{number}": state for number, state in zip([*range(1, 8), *range(8, 11)], ends, strict=True)
    }
    api_port = free_port()
    processes: list[subprocess.Popen] = []
    prometheus = None
    try:
        processes.append(start([finetune_bin(), "api", "--port", str(api_port)], env, tmp_path / "api.log",
                               f"http://127.0.0.1:{api_port}/health"))  # fmt: skip
        nobody = f"127.0.0.1:{free_port()}"  # the worker and inference jobs scrape nothing here
        prometheus = Prometheus(binary, tmp_path, {
            "finetune-api": f"127.0.0.1:{api_port}", "finetune-worker": nobody, "finetune-inference": nobody,
        })  # fmt: skip
        wait_for(lambda: prometheus.value("sweeps_running") == 2, 60, "Prometheus to see two running sweeps")
        assert prometheus.value('sweep_trials_in_flight{state="queued"}') == 8
        assert prometheus.value('sweep_trials_in_flight{state="running"}') == 5
        assert prometheus.value("sum(sweep_trials_total)") == 0
        time.sleep(2)  # a few samples of every counter at zero before any trial ends

        _end_trials(env.settings, moves, finished_sweep="sweep-b")
        wait_for(
            lambda: prometheus.value("sum(sweep_trials_total)") == 10, 60, "Prometheus to see 10 trials end"
        )
        at = prometheus.value("max(timestamp(sweep_trials_total))")
        ended = {"succeeded": 4, "pruned": 3, "failed": 2, "cancelled": 1}
        for state, count in ended.items():
            assert prometheus.value(f'sweep_trials_total{{state="{state}"}}', at) == count, state
        assert prometheus.value('sweep_trials_in_flight{state="queued"}', at) == 1
        assert prometheus.value('sweep_trials_in_flight{state="running"}', at) == 2
        assert prometheus.value("sweeps_running", at) == 1

        document = json.loads(DASHBOARD.read_text())
        panels = {
            panel["title"]: [target["expr"] for target in panel["targets"]] for panel in document["panels"]
        }
        (ended_expr,) = panels["Sweep trials ended by state (5m)"]
        (in_flight_expr,) = panels["Sweep trials in flight"]
        (running_expr,) = panels["Running sweeps"]

        def by_state(expr: str) -> dict[str, float]:
            return {
                series["metric"]["state"]: float(series["value"][1]) for series in prometheus.query(expr, at)
            }

        # the window opens on zeros and ends on the newest scrape: increase() is exact here
        assert by_state(ended_expr) == {state: float(count) for state, count in ended.items()}
        assert by_state(in_flight_expr) == {"queued": 1.0, "running": 2.0}
        assert prometheus.value(running_expr, at) == 1
    finally:
        if prometheus is not None:
            prometheus.stop()
        stop_processes(processes)
