"""Queue benchmark: enqueue-to-start latency and no-op throughput, platform vs bare Celery; then 20 tiny
training jobs through 2 workers, checked for lost or duplicated jobs.

Run from the repository root as a module (a file named queue.py must not shadow the standard library):
    .venv/bin/python -m bench.queue [--latency-jobs 100] [--throughput-jobs 200] [--training-jobs 20]

Pairs: Redis broker + PostgreSQL (production) and the filesystem transport + SQLite (local default).
Each pair runs the bare app and the platform app with the same worker flags, one worker each, side by
side in this run. Writes bench/results/queue.json.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, print_table, write_result

BIN = Path(sys.executable).parent
PG = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def make_pg_database() -> str:
    import psycopg

    name = f"bench_queue_{secrets.token_hex(4)}"
    with psycopg.connect(PG, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    from finetune_platform.db.session import engine_for

    engine_for(url).dispose()
    with psycopg.connect(PG, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


class Pair:
    """One broker + database pairing, with its own FINETUNE_HOME, queue name and record file."""

    def __init__(self, name: str, root: Path, redis_url: str | None, database_url: str | None) -> None:
        self.name, self.root = name, root
        self.values = {
            "FINETUNE_HOME": str(root / "home"),
            "MODEL_REGISTRY_DIR": str(root / "cards"),
            "QUEUE_NAME": f"bench-{secrets.token_hex(4)}",
            "MLFLOW_ENABLED": "false",
            "BENCH_RECORD": str(root / "record.txt"),
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            # one account submits every job of the benchmark: its quotas must not be what is measured
            "MAX_QUEUED_JOBS_PER_USER": "100000",
            "MAX_RUNNING_JOBS_PER_USER": "10000",
        }
        if redis_url:
            self.values["REDIS_URL"] = redis_url
        if database_url:
            self.values["DATABASE_URL"] = database_url
        self.record = root / "record.txt"

    def settings(self):
        from finetune_platform.settings import Settings

        return Settings(**{k: v for k, v in self.values.items() if k in Settings.model_fields})

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.values}

    def start_worker(self, app: str, name: str) -> subprocess.Popen:
        # The same flags `finetune worker` passes.
        command = [
            str(BIN / "celery"), "-A", f"bench.queue_apps:{app}", "worker", "--pool=solo", "--concurrency=1",
            f"--queues={self.values['QUEUE_NAME']}", f"--hostname={name}@%h", "--loglevel=WARNING",
            "--without-gossip", "--without-mingle",
        ]  # fmt: skip
        log = (self.root / f"{name}.log").open("a")
        return subprocess.Popen(command, cwd=ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT)

    def recorded(self) -> dict[str, float]:
        if not self.record.exists():
            return {}
        lines = self.record.read_text().splitlines()
        return {token: float(at) for token, at in (line.split() for line in lines if line.strip())}


def wait_ready(pair: Pair, send, timeout: float = 120) -> None:
    """Send one warm-up message and wait until the worker runs it."""
    token = send()
    deadline = time.monotonic() + timeout
    while token not in pair.recorded():
        if time.monotonic() > deadline:
            raise SystemExit(f"{pair.name}: worker did not start; see {pair.root}/*.log")
        time.sleep(0.05)


def measure(pair: Pair, kind: str, latency_jobs: int, throughput_jobs: int) -> dict[str, Any]:
    settings = pair.settings()
    if kind == "bare":
        from bench.queue_apps import make_bare_app

        app = make_bare_app(settings)

        def make_tokens(count: int) -> list[str]:
            return [secrets.token_hex(8) for _ in range(count)]

        def send_one(token: str) -> None:
            app.send_task("bench.bare_noop", args=[token], queue=settings.QUEUE_NAME)

        def finished(tokens: list[str]) -> float | None:
            seen = pair.recorded()
            return max(seen[t] for t in tokens) if all(t in seen for t in tokens) else None
    else:
        from sqlalchemy import func, select

        from finetune_platform.db.models import Job
        from finetune_platform.db.session import session_scope
        from finetune_platform.services.dispatch import enqueue

        def make_tokens(count: int) -> list[str]:
            return create_noop_jobs(settings, count)

        def send_one(token: str) -> None:  # as after `submit_job`, which marks the job sent as it creates it
            enqueue(settings, [token], task="bench.platform_noop", mark=False)

        def finished(tokens: list[str]) -> float | None:
            with session_scope(settings) as session:
                done, last = session.execute(
                    select(func.count(), func.max(Job.finished_at)).where(
                        Job.id.in_(tokens), Job.status == "succeeded"
                    )
                ).one()
            return last.timestamp() if done == len(tokens) else None

    worker = pair.start_worker(f"{kind}_app", f"{kind}-{secrets.token_hex(2)}")
    try:
        warm = make_tokens(1)[0]

        def warm_send() -> str:
            send_one(warm)
            return warm

        wait_ready(pair, warm_send)
        time.sleep(0.3)
        latencies = []
        for token in make_tokens(latency_jobs):
            sent = time.time()
            send_one(token)
            while token not in (seen := pair.recorded()):
                time.sleep(0.0005)
            latencies.append((seen[token] - sent) * 1000)
            time.sleep(0.05)  # let the worker finish the job before the next one
        tokens = make_tokens(throughput_jobs)
        time.sleep(0.3)
        started = time.time()
        for token in tokens:
            send_one(token)
        while (last := finished(tokens)) is None:
            time.sleep(0.05)
        throughput = throughput_jobs / (last - started)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return {
        "latency_ms_p50": statistics.median(latencies),
        "latency_ms_p95": percentile(latencies, 0.95),
        "throughput_jobs_per_s": throughput,
        "latency_jobs": latency_jobs,
        "throughput_jobs": throughput_jobs,
    }


def create_noop_jobs(settings, count: int) -> list[str]:
    """Queued job rows for the no-op task (no config validation: nothing is trained)."""
    import uuid

    from finetune_platform.db.models import Job, JobStatus, utcnow
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import local_user

    ids = [str(uuid.uuid4()) for _ in range(count)]
    with session_scope(settings) as session:
        owner = local_user(session)
        session.add_all(
            Job(id=job_id, owner_id=owner.id, status=JobStatus.QUEUED.value, config={}, progress={}, attempts=0,
                max_attempts=3, cancel_requested=False, preemptions=0, enqueued_at=utcnow())
            for job_id in ids
        )  # fmt: skip
    return ids


def tiny_model(root: Path) -> Path:
    import torch
    from transformers import AutoModel, AutoTokenizer, BertConfig

    from finetune_platform.catalogue import resolve_base_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm").source)
    torch.manual_seed(0)
    model = AutoModel.from_config(
        BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=128, max_position_embeddings=128,
        )
    )  # fmt: skip
    folder = root / "tiny-bert"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def training_jobs(pair: Pair, count: int) -> dict[str, Any]:
    """``count`` tiny-model jobs through 2 `finetune worker` processes: none lost, none run twice."""
    import csv

    from sqlalchemy import select

    from finetune_platform.db.models import Job, JobEvent
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.dispatch import enqueue
    from finetune_platform.services.jobs import submit_job
    from finetune_platform.services.users import local_user

    pair.values["MLFLOW_ENABLED"] = "true"  # registration included: each job becomes one model version
    settings = pair.settings()
    model = tiny_model(pair.root)
    data = pair.root / "train.csv"
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(64):
            writer.writerow([f"{'great' if i % 2 else 'awful'} film number {i}", i % 2])
    config = {
        "experiment": "bench-queue", "output_dir": str(pair.root / "results"), "device": "cpu",
        "model": {"base_model": str(model), "max_length": 32},
        "data": {"train_file": str(data), "validation_split": 0.25},
        "training": {"max_steps": 12, "batch_size": 8, "eval_strategy": "steps", "eval_steps": 6},
        "registry": {"model_name": "bench-queue"},
    }  # fmt: skip
    with session_scope(settings) as session:
        user = local_user(session)
        ids = [submit_job(session, user, config, settings=settings).job.id for _ in range(count)]
    started = time.time()
    enqueue(settings, ids, mark=False)
    workers = [
        subprocess.Popen(
            [str(BIN / "finetune"), "worker", "--name", f"trainer{i}", "--loglevel", "WARNING"],
            cwd=ROOT, env=pair.env(), stdout=(pair.root / f"trainer{i}.log").open("a"), stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while True:
            with session_scope(settings) as session:
                jobs = session.scalars(select(Job).where(Job.id.in_(ids))).all()
                if all(job.status in {"succeeded", "failed", "cancelled"} for job in jobs):
                    starts = session.scalars(
                        select(JobEvent.job_id).where(JobEvent.job_id.in_(ids), JobEvent.kind == "started")
                    ).all()
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"training jobs did not finish; see {pair.root}/trainer*.log")
            time.sleep(1)
        wall = time.time() - started
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)
    from finetune_platform.tracking.registry import ModelRegistry

    versions = sorted(v.version for v in ModelRegistry(settings).versions("bench-queue"))
    by_worker: dict[str, int] = {}
    with session_scope(settings) as session:
        for event in session.scalars(
            select(JobEvent).where(JobEvent.job_id.in_(ids), JobEvent.kind == "started")
        ):
            worker = event.data.get("worker", "?").split("@")[0]
            by_worker[worker] = by_worker.get(worker, 0) + 1
    return {
        "jobs": count,
        "succeeded": sum(job.status == "succeeded" for job in jobs),
        "lost": sum(job.status != "succeeded" for job in jobs),
        "duplicated": len(starts) - len(set(starts)),
        "model_versions": len(versions),
        "distinct_model_versions": len({job.model_version for job in jobs}),
        "jobs_per_worker": by_worker,
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--throughput-jobs", type=int, default=200)
    parser.add_argument("--training-jobs", type=int, default=20)
    parser.add_argument("--only-training", action="store_true", help="Skip the no-op measurements.")
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (worker logs, databases).")
    args = parser.parse_args()
    from finetune_platform.db.session import upgrade

    work = Path(tempfile.mkdtemp(prefix="bench-queue-"))
    databases = []
    results: dict[str, Any] = {}
    try:
        pairs = []
        postgres = make_pg_database()
        databases.append(postgres)
        pairs.append(Pair("redis+postgresql", work / "redis", "redis://127.0.0.1:6379/0", postgres))
        pairs.append(Pair("filesystem+sqlite", work / "fs", None, None))
        for pair in [] if args.only_training else pairs:
            pair.root.mkdir(parents=True)
            upgrade(pair.settings())
            results[pair.name] = {
                kind: measure(pair, kind, args.latency_jobs, args.throughput_jobs)
                for kind in ("bare", "platform")
            }
        rows = []
        for name, pair_results in results.items():
            bare, ours = pair_results["bare"], pair_results["platform"]
            pair_results["latency_ratio_p50"] = ours["latency_ms_p50"] / bare["latency_ms_p50"]
            pair_results["throughput_ratio"] = bare["throughput_jobs_per_s"] / ours["throughput_jobs_per_s"]
            for kind, values in (("bare Celery", bare), ("platform", ours)):
                rows.append([
                    name, kind, f"{values['latency_ms_p50']:.1f}", f"{values['latency_ms_p95']:.1f}",
                    f"{values['throughput_jobs_per_s']:.1f}",
                ])  # fmt: skip
            rows.append([
                name, "platform / bare", f"{pair_results['latency_ratio_p50']:.2f}x", "",
                f"{1 / pair_results['throughput_ratio']:.2f}x",
            ])  # fmt: skip
        if rows:
            print_table(["broker+db", "app", "start p50 ms", "start p95 ms", "no-op jobs/s (1 worker)"], rows)
        if not args.training_jobs:
            return
        redis_pg = Pair("training", work / "training", "redis://127.0.0.1:6379/0", make_pg_database())
        databases.append(redis_pg.values["DATABASE_URL"])
        redis_pg.root.mkdir(parents=True)
        upgrade(redis_pg.settings())
        results["training"] = training_jobs(redis_pg, args.training_jobs)
        print()
        print_table(["training jobs", "value"], [[k, v] for k, v in results["training"].items()])
        pairs_measured = [name for name in ("redis+postgresql", "filesystem+sqlite") if name in results]
        training = results["training"]
        results["goals"] = {
            "redis_p50_le_50ms": "redis+postgresql" in results
            and results["redis+postgresql"]["platform"]["latency_ms_p50"] <= 50,
            "latency_overhead_le_1.5x": all(results[n]["latency_ratio_p50"] <= 1.5 for n in pairs_measured),
            "throughput_overhead_le_1.5x": all(results[n]["throughput_ratio"] <= 1.5 for n in pairs_measured),
            "no_lost_or_duplicated": training["lost"] == 0 and training["duplicated"] == 0,
        }
        print("\ngoals:", results["goals"])
        print(f"wrote {write_result('queue', results)}")
    except BaseException:
        print(f"kept {work} for its worker logs")
        raise
    else:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep:
            for url in databases:
                drop_pg_database(url)


if __name__ == "__main__":
    main()
