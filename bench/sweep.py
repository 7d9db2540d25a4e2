"""Sweeps on SST-2: a TPE sweep with pruning against the same trials unpruned and against the default config.

    python -m bench.sweep [--trials 12] [--rows 4000] [--epochs 2] [--workers 2]

Everything runs through the platform on its embedded defaults (SQLite, the filesystem queue, local MLflow) with
``--workers`` real `finetune worker` processes on this machine, each on its share of the cores:

1. default: the default training config (TrainConfig's defaults, the same epochs and evaluations) as one job;
2. pruned: a ``--trials``-trial TPE sweep with the median pruner, ``parallelism`` = workers;
3. unpruned: the same trials (the pruned sweep's values, in ``start_with``) with no pruner.

Reports each one's best dev accuracy, wall time, trials pruned and compute (seconds the trials trained, summed),
prints a table and writes bench/results/sweep.json. Goal: the pruned sweep's best is >= 1 point above the default
config and it spends <= 60% of the unpruned sweep's wall time.
"""

from __future__ import annotations

import argparse
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"
]  # bench/queue.py shadows queue
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.common import SST2_DIR, machine, print_table, write_result  # noqa: E402

GOAL_POINTS = 1.0
GOAL_TIME_SHARE = 0.60

SPACE = {
    "training.learning_rate": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2},
    "lora.r": {"type": "choice", "values": [2, 4, 8, 16, 32]},
    "lora.dropout": {"type": "uniform", "low": 0.0, "high": 0.3},
    "training.warmup_ratio": {"type": "uniform", "low": 0.0, "high": 0.2},
    "training.weight_decay": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-1},
}


def write_rows(source: Path, target: Path, rows: int | None) -> Path:
    with source.open(encoding="utf-8") as handle:
        reader = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if rows is not None:
        reader = reader[:rows]
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for row in reader:
            writer.writerow([row["sentence"], row["label"]])
    return target


def base_config(train: Path, dev: Path, output: Path, epochs: float, eval_steps: int) -> dict[str, Any]:
    """The default config on this data: TrainConfig's defaults but for the budget every variant shares."""
    return {
        "experiment": "bench-sweep",
        "output_dir": str(output),
        "device": "cpu",
        "model": {"base_model": "minilm", "max_length": 64},
        "data": {
            "train_file": str(train),
            "validation_file": str(dev),
            "label_names": ["negative", "positive"],
        },
        "training": {
            "epochs": epochs,
            "eval_strategy": "steps",
            "eval_steps": eval_steps,
            "logging_steps": 50,
        },
        "registry": {"enabled": False},
    }


class Workers:
    def __init__(self, env: dict[str, str], count: int, logs: Path) -> None:
        self.env, self.count, self.logs, self.processes = env, count, logs, []

    def __enter__(self) -> Workers:
        finetune = Path(sys.executable).with_name("finetune")
        for index in range(self.count):
            log = (self.logs / f"worker-{index}.log").open("a")
            self.processes.append(
                subprocess.Popen(
                    [str(finetune), "worker", "--name", f"bench-{index}"],
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return self

    def __exit__(self, *exc: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


def wait_job(settings: Any, job_id: str, timeout: float) -> Any:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.job_states import FINISHED
    from finetune_platform.services.jobs import get_job
    from finetune_platform.services.users import local_user

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            job = get_job(session, local_user(session), job_id)
        if job.status in FINISHED:
            return job
        time.sleep(1.0)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f}s")


def wait_sweep(settings: Any, sweep_id: str, timeout: float) -> Any:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.sweeps import get_sweep
    from finetune_platform.services.users import local_user

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        with session_scope(settings) as session:
            sweep = get_sweep(session, local_user(session), sweep_id)
        line = f"  {sweep.name}: {sweep.status} {dict((k, v) for k, v in sweep.trials.items() if v)}"
        if line != last:
            print(line, flush=True)
            last = line
        if sweep.status != "running":
            return sweep
        time.sleep(2.0)
    raise TimeoutError(f"sweep {sweep_id} did not finish in {timeout:.0f}s")


def run_sweep(settings: Any, base: dict[str, Any], spec: dict[str, Any], timeout: float) -> tuple[Any, float]:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.sweeps import submit_sweep
    from finetune_platform.services.users import local_user
    from finetune_platform.training.sweep_config import parse_spec

    started = time.perf_counter()
    with session_scope(settings) as session:
        sweep = submit_sweep(session, local_user(session), base, parse_spec(spec), settings=settings)
    done = wait_sweep(settings, sweep.id, timeout)
    return done, time.perf_counter() - started


def summary(sweep: Any, wall: float) -> dict[str, Any]:
    counts = {state: count for state, count in sweep.trials.items() if count}
    return {
        "sweep_id": sweep.id,
        "status": sweep.status,
        "best_accuracy": sweep.best_value,
        "wall_seconds": round(wall, 1),
        "compute_seconds": sweep.compute_seconds,
        "trials": counts,
        "trial_list": [
            {
                "number": t.number, "status": t.status, "params": t.params, "accuracy": t.value,
                "evaluations": t.evaluations, "seconds": t.seconds,
            }
            for t in sweep.trial_list
        ],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--rows", type=int, default=4000, help="Training rows (the first N of train.tsv).")
    parser.add_argument("--dev-rows", type=int, default=None, help="Dev rows (default: all of dev.tsv).")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--evaluations", type=int, default=5, help="Evaluations per trial (pruning points).")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--startup-trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds per phase at most.")
    parser.add_argument("--out", default="sweep", help="Result name under bench/results/.")
    args = parser.parse_args()
    if not (SST2_DIR / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {SST2_DIR} (set SST2_DIR)")

    from finetune_platform.db.session import ensure_database
    from finetune_platform.settings import Settings

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as work:
        work_dir = Path(work)
        train = write_rows(SST2_DIR / "train.tsv", work_dir / "train.csv", args.rows)
        dev = write_rows(SST2_DIR / "dev.tsv", work_dir / "dev.csv", args.dev_rows)
        dev_rows = sum(1 for _ in dev.open(encoding="utf-8")) - 1  # a text never holds a newline here
        steps = int(args.rows / 32 * args.epochs)
        eval_steps = max(1, steps // args.evaluations)
        base = base_config(train, dev, work_dir / "results", args.epochs, eval_steps)
        home = work_dir / "home"
        env = {
            **os.environ,
            "FINETUNE_HOME": str(home),
            "MODEL_REGISTRY_DIR": str(work_dir / "cards"),
            "RECONCILE_SECONDS": "2",
            "REQUEUE_AFTER_SECONDS": "5",
            # each worker on its share of the cores, as one would run several workers on one host
            "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.workers)),
            "PYTHONUNBUFFERED": "1",
        }
        settings = Settings(FINETUNE_HOME=home, MODEL_REGISTRY_DIR=work_dir / "cards")
        ensure_database(settings)
        results: dict[str, Any] = {}
        with Workers(env, args.workers, work_dir):
            # 1. the default config, one job
            from finetune_platform.db.session import session_scope
            from finetune_platform.services.jobs import submit_job
            from finetune_platform.services.users import local_user

            print("default config ...", flush=True)
            started = time.perf_counter()
            with session_scope(settings) as session:
                job = submit_job(session, local_user(session), base, settings=settings).job
            job = wait_job(settings, job.id, args.timeout)
            results["default"] = {
                "status": job.status,
                "best_accuracy": (job.progress.get("metrics") or {}).get("accuracy"),
                "wall_seconds": round(time.perf_counter() - started, 1),
                "compute_seconds": job.progress.get("run_seconds"),
                "error": job.error,
            }
            print(f"  default: {results['default']}", flush=True)
            # 2. the pruned TPE sweep
            spec = {
                "name": "tpe-pruned", "objective": "accuracy", "sampler": "tpe", "pruner": "median",
                "startup_trials": args.startup_trials, "max_trials": args.trials, "parallelism": args.workers,
                "seed": args.seed, "space": SPACE,
            }  # fmt: skip
            print("pruned TPE sweep ...", flush=True)
            pruned, wall = run_sweep(settings, base, spec, args.timeout)
            results["pruned"] = summary(pruned, wall)
            # 3. the same trials, unpruned
            unpruned_spec = {
                **spec, "name": "same-trials-unpruned", "pruner": "none",
                "start_with": [trial.params for trial in pruned.trial_list],
            }  # fmt: skip
            print("the same trials without pruning ...", flush=True)
            unpruned, wall = run_sweep(settings, base, unpruned_spec, args.timeout)
            results["unpruned"] = summary(unpruned, wall)

    default_accuracy = results["default"]["best_accuracy"] or 0.0
    rows = []
    for name in ("default", "pruned", "unpruned"):
        entry = results[name]
        pruned_count = (entry.get("trials") or {}).get("pruned", 0)
        rows.append([
            name,
            f"{100 * (entry['best_accuracy'] or 0):.2f}",
            f"{entry['wall_seconds']:.0f}",
            f"{entry['compute_seconds'] or 0:.0f}",
            str(sum((entry.get("trials") or {"1": 1}).values())),
            str(pruned_count),
        ])  # fmt: skip
    print_table(["variant", "best dev acc %", "wall s", "compute s", "trials", "pruned"], rows)
    gain = 100 * ((results["pruned"]["best_accuracy"] or 0) - default_accuracy)
    share = results["pruned"]["wall_seconds"] / max(results["unpruned"]["wall_seconds"], 1e-9)
    compute_share = (results["pruned"]["compute_seconds"] or 0) / max(
        results["unpruned"]["compute_seconds"] or 0, 1e-9
    )
    goals = {
        "points_over_default": round(gain, 2),
        "points_goal": GOAL_POINTS,
        "wall_share_of_unpruned": round(share, 3),
        "compute_share_of_unpruned": round(compute_share, 3),
        "wall_share_goal": GOAL_TIME_SHARE,
        "met": gain >= GOAL_POINTS and share <= GOAL_TIME_SHARE,
    }
    print(
        f"pruned sweep: {gain:+.2f} points over the default config (goal >= {GOAL_POINTS}), "
        f"{100 * share:.0f}% of the unpruned sweep's wall time (goal <= {100 * GOAL_TIME_SHARE:.0f}%), "
        f"{100 * compute_share:.0f}% of its compute"
    )
    payload = {
        "machine": machine(),
        "setup": {
            "rows": args.rows, "dev_rows": dev_rows, "epochs": args.epochs,
            "eval_steps": eval_steps, "evaluations": args.evaluations,
            "workers": args.workers, "trials": args.trials, "startup_trials": args.startup_trials, "seed": args.seed,
            "space": SPACE, "model": "minilm", "max_length": 64,
        },
        "results": results,
        "goals": goals,
    }  # fmt: skip
    path = write_result(args.out, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
