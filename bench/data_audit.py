"""The data audit on SST-2 with planted label noise: does it find the flips, how fast, and does dropping what it
flags win back the accuracy the flips cost?

    python bench/data_audit.py [--flip-rate 0.02] [--seed 1] [--phase audit|train|all] [--epochs 1]
                               [--train-seeds 42 43 44]

1. Flips ``--flip-rate`` of SST-2 train's labels at random (``--seed``) and writes the flipped file.
2. **audit**: `finetune data audit` on the flipped file, in a fresh process (wall time and peak memory, the child's
   maximum resident set): precision and recall of the flagged rows against the planted flips, (a) at the flip rate
   (the top-ranked rows, as many as were flipped), (b) cleanlab's own flagged set, and (c) side by side the plain
   baseline a person would write without cleanlab: every row the same out-of-fold classifier labels differently.
3. **train**: `finetune data fix --drop label_errors` writes the fixed file; the platform then trains MiniLM (the
   sst2_minilm recipe, ``--epochs``, its last checkpoint, so no run picks its weights on dev) on the clean file, the
   flipped file and the fixed file, once per ``--train-seeds``, each scored on all of dev.tsv: the accuracy the flips
   cost and the share of it the fix wins back, from the medians over the seeds.
Writes bench/results/data_audit.json (each phase fills its part, with the machine it ran on: the train phase may run
on a GPU machine, the audit's time is a 2-core figure) and prints the tables. Goals (issue 24): recall
>= 0.7 at precision >= 0.7 at the flip rate, under 10 minutes on 2 CPU cores; the fix recovers at least half the
accuracy lost.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402  # after the path fix: bench/queue.py is not queue

from bench.common import RESULTS, SST2_DIR, machine, median, print_table, write_result  # noqa: E402

NAME = "data_audit"


def flip(source: Path, target: Path, rate: float, seed: int) -> set[int]:
    """Write ``source`` with ``rate`` of its labels flipped (0 <-> 1); the flipped data rows (1-based)."""
    with source.open(encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    header, body = lines[0], lines[1:]
    rng = random.Random(seed)
    flipped = set(rng.sample(range(len(body)), k=round(rate * len(body))))
    out = [header]
    for i, line in enumerate(body):
        text, label = line.rsplit("\t", 1)
        out.append(f"{text}\t{1 - int(label)}" if i in flipped else line)
    target.write_text("\n".join(out) + "\n", encoding="utf-8")
    return {i + 1 for i in flipped}


def scores(found: set[int], truth: set[int]) -> dict[str, float]:
    hit = len(found & truth)
    return {
        "flagged": len(found),
        "precision": round(hit / max(1, len(found)), 4),
        "recall": round(hit / max(1, len(truth)), 4),
    }


def run_audit(flipped: Path, out: Path) -> dict:
    """`finetune data audit` in a child process: its wall time and peak resident memory."""
    command = [sys.executable, "-m", "finetune_platform", "data", "audit", str(flipped), "--text-column", "sentence",
               "--out", str(out), "--json", "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"data audit failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"wall_seconds": round(wall, 1), "peak_rss_mib": round(peak_mib), "stages": None}


def audit_phase(args: argparse.Namespace, record: dict) -> None:
    flipped_file = args.work / "train_flipped.tsv"
    truth = flip(SST2_DIR / "train.tsv", flipped_file, args.flip_rate, args.seed)
    timing = run_audit(flipped_file, args.work / "audit")
    document = json.loads((args.work / "audit" / "audit.json").read_text())
    timing["stages"] = document["seconds"]
    ranked = [row["row"] for row in document["label_errors"]["rows"]]
    flagged = {row["row"] for row in document["label_errors"]["rows"] if row["flagged"]}
    disagree = set(ranked)  # the flagged rows and every row the classifier labels differently
    record["audit"] = {
        "rows": document["files"]["train"]["rows_audited"],
        "flips": len(truth),
        "flip_rate": args.flip_rate,
        "seed": args.seed,
        "oof_accuracy": document["model"]["oof_accuracy"],
        "at_flip_rate": scores(set(ranked[: len(truth)]), truth),
        "cleanlab_flagged": scores(flagged, truth),
        "baseline_disagree": scores(disagree, truth),
        "estimated_noise": document["label_errors"]["estimated_noise"],
        "near_duplicate_groups": document["near_duplicates"]["groups_total"],
        "outliers": document["outliers"]["count"],
        **timing,
        "machine": machine(),
    }
    (args.work / "flips.json").write_text(json.dumps(sorted(truth)))


def train(args: argparse.Namespace, train_file: Path, name: str, seed: int) -> dict:
    import yaml

    config = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "configs" / "sst2_minilm.yaml").read_text()
    )
    config["experiment"] = f"audit-{name}-{seed}"
    config["output_dir"] = str(args.work / "results")
    config["data"].update(train_file=str(train_file), validation_file=str(SST2_DIR / "dev.tsv"))
    config["training"].update(epochs=args.epochs, seed=seed, eval_strategy="epoch")
    config["training"].pop("eval_steps", None)
    config["training"].pop("early_stopping_patience", None)
    config["checkpoints"] = {"final_model": "last"}
    config["registry"] = {"enabled": False}
    path = args.work / f"config-{name}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "FINETUNE_HOME": str(args.work / f"home-{name}-{seed}"), "MLFLOW_ENABLED": "false"}
    if args.parallel > 1:  # runs share the machine: a few threads each
        env |= {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // args.parallel))}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "finetune_platform", "train", str(path), "--no-progress", "--json"],
                          capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"training on {name} failed:\n{done.stderr[-3000:]}")
    metrics = json.loads(done.stdout[done.stdout.index("{") :])
    rows = sum(1 for _ in train_file.open(encoding="utf-8")) - 1
    return {"rows": rows, "dev_accuracy": metrics["eval"]["accuracy"],
            "wall_seconds": round(time.perf_counter() - started, 1)}  # fmt: skip


def removed_rows(flipped_file: Path, fixed_file: Path) -> set[int]:
    """The 1-based data rows of the flipped file that the fixed file no longer holds (rows matched in order)."""
    kept = fixed_file.read_text(encoding="utf-8").splitlines()[1:]
    removed, at = set(), 0
    for number, line in enumerate(flipped_file.read_text(encoding="utf-8").splitlines()[1:], start=1):
        if at < len(kept) and kept[at] == line:
            at += 1
        else:
            removed.add(number)
    return removed


def train_phase(args: argparse.Namespace, record: dict) -> None:
    flipped_file, fixed_file = args.work / "train_flipped.tsv", args.work / "train_fixed.tsv"
    if not (args.work / "audit" / "audit.json").is_file():
        sys.exit("run --phase audit first (the train phase fixes the file its audit wrote)")
    fixed_file.unlink(missing_ok=True)
    command = [sys.executable, "-m", "finetune_platform", "data", "fix", str(flipped_file), "--audit",
               str(args.work / "audit" / "audit.json"), "--drop", args.drop, "--output", str(fixed_file),
               "--text-column", "sentence"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True,
                          env={**os.environ, "FINETUNE_HOME": str(args.work / "home")})  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"data fix failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    truth = set(json.loads((args.work / "flips.json").read_text()))
    files = {"clean": SST2_DIR / "train.tsv", "flipped": flipped_file, "fixed": fixed_file}
    jobs = [(name, seed) for name in files for seed in args.train_seeds]

    def one(job: tuple[str, int]) -> dict:
        name, seed = job
        result = train(args, files[name], name, seed)
        print(f"{name}, seed {seed}: dev accuracy {result['dev_accuracy']:.4f} ({result['wall_seconds']:.0f} s)",
              flush=True)  # fmt: skip
        return result

    with ThreadPoolExecutor(max_workers=args.parallel) as pool:  # a GPU has room for several MiniLM runs
        results = dict(zip(jobs, pool.map(one, jobs), strict=True))
    runs = {}
    for name in files:
        by_seed = [results[name, seed] for seed in args.train_seeds]
        runs[name] = {
            "rows": by_seed[0]["rows"],
            "dev_accuracy": round(median([run["dev_accuracy"] for run in by_seed]), 4),
            "dev_accuracy_by_seed": [run["dev_accuracy"] for run in by_seed],
            "wall_seconds": median([run["wall_seconds"] for run in by_seed]),
        }
    lines = sum(1 for _ in fixed_file.open(encoding="utf-8")) - 1
    flipped_lines = sum(1 for _ in flipped_file.open(encoding="utf-8")) - 1
    lost = runs["clean"]["dev_accuracy"] - runs["flipped"]["dev_accuracy"]
    won = runs["fixed"]["dev_accuracy"] - runs["flipped"]["dev_accuracy"]
    record["train"] = {
        "drop": args.drop,
        "rows_removed": flipped_lines - lines,
        "flips": len(truth),
        "epochs": args.epochs,
        "seeds": args.train_seeds,
        "flipped_rows_removed": len(truth & removed_rows(flipped_file, fixed_file)),
        "runs": runs,
        "accuracy_lost": round(lost, 4),
        "accuracy_won_back": round(won, 4),
        "share_recovered": round(won / lost, 3) if lost > 0 else None,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flip-rate", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1, help="Which labels are flipped.")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[42],
                        help="Training seeds: each file trains once per seed; the medians are compared.")  # fmt: skip
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--drop", default="label_errors", help="What data fix drops (its --drop).")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="Training runs at once (one GPU fits several; on 2 cores keep 1).",
    )
    parser.add_argument("--phase", choices=["audit", "train", "all"], default="all")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-data-audit"))
    args = parser.parse_args()
    if not (SST2_DIR / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {SST2_DIR} (set SST2_DIR)")
    args.work.mkdir(parents=True, exist_ok=True)
    existing = RESULTS / f"{NAME}.json"
    record = json.loads(existing.read_text()) if existing.is_file() and args.phase != "all" else {}
    record = {key: value for key, value in record.items() if key in ("audit", "train")}
    if args.phase in ("audit", "all"):
        audit_phase(args, record)
        audit = record["audit"]
        print_table(
            ["flagged rows", "flagged", "precision", "recall"],
            [[label, audit[key]["flagged"], audit[key]["precision"], audit[key]["recall"]]
             for key, label in (("at_flip_rate", "top-ranked, as many as flipped"),
                                ("cleanlab_flagged", "cleanlab's flagged set"),
                                ("baseline_disagree", "baseline: classifier disagrees"))],
        )  # fmt: skip
        print(f"{audit['rows']:,} rows, {audit['flips']:,} flipped; wall {audit['wall_seconds']} s, "
              f"peak memory {audit['peak_rss_mib']} MiB", flush=True)  # fmt: skip
    if args.phase in ("train", "all"):
        train_phase(args, record)
        t = record["train"]
        print_table(["training file", "rows removed", "dev accuracy"],
                    [[name, t["rows_removed"] if name == "fixed" else "", run["dev_accuracy"]]
                     for name, run in t["runs"].items()])  # fmt: skip
    print(f"wrote {write_result(NAME, record)}")


if __name__ == "__main__":
    main()
