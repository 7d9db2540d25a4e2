"""API benchmark: authenticated GET /task/{id} and POST /train under 32 concurrent clients, beside a bare
FastAPI no-op route served with the same uvicorn settings (one process), measured with wrk on loopback.

    .venv/bin/python -m bench.api [--seconds 10] [--connections 32]

The platform runs on PostgreSQL with a Redis broker (no worker: POST /train only queues). Needs `wrk`
(Debian package). Writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.common import ROOT, print_table, write_result
from bench.queue import drop_pg_database, make_pg_database

BIN = Path(sys.executable).parent
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def serve(target: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    command = [
        str(BIN / "uvicorn"), target, "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    if target.endswith(":create_app"):
        command.append("--factory")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"server {target} did not start; see {log}")


def wrk(
    url: str, seconds: int, connections: int, headers: dict[str, str], script: Path | None = None
) -> dict:
    command = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for key, value in headers.items():
        command += ["-H", f"{key}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    output = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout

    def latency(label: str) -> float:
        value, unit = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.M).groups()
        return float(value) * UNITS[unit]

    statuses = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "p50_ms": latency("50%"),
        "p99_ms": latency("99%"),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "non_2xx": int(statuses.group(1)) if statuses else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def platform_values(work: Path, database: str) -> dict[str, str]:
    """The environment of a platform on PostgreSQL with a Redis broker (no worker: jobs only queue)."""
    return {
        "FINETUNE_HOME": str(work / "home"),
        "DATABASE_URL": database,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "QUEUE_NAME": f"bench-api-{secrets.token_hex(3)}",
        "RESULTS_DIR": str(work / "results"),
        "MODEL_REGISTRY_DIR": str(work / "cards"),
        "MLFLOW_ENABLED": "false",
        "PYTHONPATH": str(ROOT),
    }


def prepare(values: dict[str, str], work: Path) -> tuple[str, str, str]:
    """A user with an uploaded dataset and one queued task: (dataset id, task id, the user's token)."""
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.security import Tokens
    from finetune_platform.services.datasets import register_upload
    from finetune_platform.services.jobs import submit_job
    from finetune_platform.services.users import create_user, token_subject
    from finetune_platform.settings import Settings

    settings = Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})
    upgrade(settings)
    with session_scope(settings) as session:
        user = create_user(session, "bench", "long enough password")
        sample = work / "incoming.csv"
        shutil.copy(ROOT / "data/sample/train.csv", sample)
        dataset = register_upload(session, settings, user, "train.csv", sample, sample.stat().st_size)
    with session_scope(settings) as session:
        train_file = Path(settings.uploads_dir, str(user.id)).resolve() / f"{dataset.id}.csv"
        config = {
            "experiment": "bench-api",
            "data": {"train_file": str(train_file)},
            "output_dir": str(work / "results"),
        }
        task = submit_job(session, user, config).job
        subject = token_subject(session, user.id)
    return dataset.id, task.id, Tokens(settings).issue(subject)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")

    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    database = make_pg_database()
    servers: list[subprocess.Popen] = []
    values = platform_values(work, database)
    try:
        dataset_id, task_id, token = prepare(values, work)
        env = {**os.environ, **values}
        from tests.conftest import free_port

        bare_port, platform_port = free_port(), free_port()
        servers.append(serve("bench.api_bare:app", bare_port, env, work / "bare.log"))
        servers.append(serve("finetune_platform.api.app:create_app", platform_port, env, work / "api.log"))
        script = work / "train.lua"
        body = json.dumps({"config": {"experiment": "bench-api"}, "dataset_id": dataset_id})
        script.write_text(
            f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n'
        )
        auth = {"Authorization": f"Bearer {token}"}
        results: dict[str, Any] = {"connections": args.connections, "seconds": args.seconds}
        wrk(f"http://127.0.0.1:{bare_port}/noop", 2, args.connections, {})  # warm-up
        wrk(f"http://127.0.0.1:{platform_port}/task/{task_id}", 2, args.connections, auth)
        results["bare GET /noop"] = wrk(
            f"http://127.0.0.1:{bare_port}/noop", args.seconds, args.connections, {}
        )
        results["GET /task/{id}"] = wrk(
            f"http://127.0.0.1:{platform_port}/task/{task_id}", args.seconds, args.connections, auth
        )
        results["POST /train"] = wrk(
            f"http://127.0.0.1:{platform_port}/train", args.seconds, args.connections, auth, script
        )
        bare = results["bare GET /noop"]["requests_per_s"]
        rows = []
        for name in ("bare GET /noop", "GET /task/{id}", "POST /train"):
            r = results[name]
            r["share_of_bare"] = r["requests_per_s"] / bare
            rows.append([
                name, f"{r['requests_per_s']:.0f}", f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}",
                f"{100 * r['share_of_bare']:.0f}%", r["non_2xx"],
            ])  # fmt: skip
        print_table(["route (32 clients)", "req/s", "p50 ms", "p99 ms", "of bare", "non-2xx"], rows)
        status = results["GET /task/{id}"]
        results["goals"] = {
            "status_reads_ge_50pct_of_bare": status["share_of_bare"] >= 0.5,
            "status_p99_le_50ms": status["p99_ms"] <= 50,
        }
        print("goals:", results["goals"])
        print(f"wrote {write_result('api', results)}")
    finally:
        for server in servers:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
        import redis

        redis.Redis.from_url(values["REDIS_URL"]).delete(values["QUEUE_NAME"])
        drop_pg_database(database)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
