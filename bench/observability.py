"""Cost of instrumentation: the API's GET /task/{id} and the inference server's POST /predict, each served with
metrics on (METRICS_ENABLED=true, the default) and off, side by side on the same machine, measured with wrk.

    .venv/bin/python -m bench.observability [--seconds 10] [--connections 32] [--rounds 3] [--work DIR]

Each server runs `rounds` times per setting, alternating on/off so drift hits both; the table reports medians.
The API runs on PostgreSQL with a Redis broker; the inference server serves the SST-2 adapter of
bench/inference.py (trained there, or reused from --work). Needs `wrk`. Writes bench/results/observability.json.
Goal: metrics cost at most 5% of throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.api import platform_values, prepare, serve, wrk
from bench.common import SST2_DIR, print_table, write_result
from bench.inference import lua_script, merged_model, serve_values, start, stop, train_adapters
from bench.queue import drop_pg_database, make_pg_database

BIN = Path(sys.executable).parent
GOAL = 0.05


def measure(run_once, rounds: int) -> dict[str, Any]:
    """Alternate metrics on and off; medians of requests/s and p99 for each."""
    samples: dict[str, list[dict]] = {"on": [], "off": []}
    for _ in range(rounds):
        for setting in ("on", "off"):
            samples[setting].append(run_once(setting == "on"))
    result = {}
    for setting, runs in samples.items():
        result[setting] = {
            "requests_per_s": statistics.median(r["requests_per_s"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "runs": runs,
        }
    result["overhead"] = 1 - result["on"]["requests_per_s"] / result["off"]["requests_per_s"]
    return result


def api_bench(args, work: Path) -> dict[str, Any]:
    from tests.conftest import free_port

    database = make_pg_database()
    values = platform_values(work / "api", database)
    (work / "api").mkdir(parents=True, exist_ok=True)
    try:
        _, task_id, token = prepare(values, work / "api")
        auth = {"Authorization": f"Bearer {token}"}

        def once(metrics: bool) -> dict:
            env = {**os.environ, **values, "METRICS_ENABLED": str(metrics).lower()}
            port = free_port()
            server = serve("finetune_platform.api.app:create_app", port, env, work / "api.log")
            try:
                url = f"http://127.0.0.1:{port}/task/{task_id}"
                wrk(url, 2, args.connections, auth)
                return wrk(url, args.seconds, args.connections, auth)
            finally:
                stop(server)

        return measure(once, args.rounds)
    finally:
        import redis

        redis.Redis.from_url(values["REDIS_URL"]).delete(values["QUEUE_NAME"])
        drop_pg_database(database)


def inference_bench(args, work: Path) -> dict[str, Any]:
    from tests.conftest import free_port

    from finetune_platform.settings import Settings

    values = serve_values(work)
    if not (work / "trained.json").is_file():
        settings = Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})
        trained = train_adapters(work, settings, 8000, 0)
        merged_model(trained["run"], work / "merged")
        (work / "trained.json").write_text(
            json.dumps({"run": str(trained["run"]), "accuracy": trained["eval"]["accuracy"]})
        )
    rows = (SST2_DIR / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:501]
    script = lua_script(work / "predict.lua", [row.split("\t")[0] for row in rows])

    def once(metrics: bool) -> dict:
        env = {**os.environ, **values, "METRICS_ENABLED": str(metrics).lower()}
        port = free_port()
        server = start(
            [str(BIN / "finetune"), "serve", "--model", "sst2-bench@1", "--port", str(port)],
            env, work / "serve.log", port,
        )  # fmt: skip
        try:
            url = f"http://127.0.0.1:{port}/predict"
            wrk(url, 2, args.connections, {}, script)
            return wrk(url, args.seconds, args.connections, {}, script)
        finally:
            stop(server)

    return measure(once, args.rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="Seconds per wrk measurement.")
    parser.add_argument("--connections", type=int, default=32, help="Concurrent clients.")
    parser.add_argument("--rounds", type=int, default=3, help="Measurements per setting (alternating).")
    parser.add_argument("--work", type=Path, help="bench/inference.py's --work folder, to reuse its adapter.")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="bench-observability-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        results = {
            "connections": args.connections,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "GET /task/{id} (API)": api_bench(
                args, Path(tempfile.mkdtemp(prefix="bench-observability-api-"))
            ),
            "POST /predict (inference)": inference_bench(args, work),
        }
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    rows = []
    for name in ("GET /task/{id} (API)", "POST /predict (inference)"):
        entry = results[name]
        rows.append([
            name, f"{entry['off']['requests_per_s']:.0f}", f"{entry['on']['requests_per_s']:.0f}",
            f"{100 * entry['overhead']:+.1f}%", f"{entry['off']['p99_ms']:.0f}", f"{entry['on']['p99_ms']:.0f}",
        ])  # fmt: skip
    print_table(["route", "req/s metrics off", "req/s metrics on", "cost", "p99 ms off", "p99 ms on"], rows)
    results["goal_le_5pct"] = all(results[name]["overhead"] <= GOAL for name, *_ in rows)
    print("goal (cost <= 5%):", results["goal_le_5pct"])
    print(f"wrote {write_result('observability', results)}")


if __name__ == "__main__":
    main()
