"""`finetune train` itself on GPUs: SST-2 with MiniLM on the fast engine, on 1 and on N data-parallel GPUs.

Runs on a CUDA machine (the device tool): the platform's CLI, MLflow and the registry off (the device has no
MLflow), everything else as a user runs it:
    PYTHONPATH=src python bench/gpu_platform_train.py --devices 1 2 --out bench/results
Writes gpu_platform_train.json (accuracy, samples/s, steps, wall time per device count) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def config(args: argparse.Namespace, devices: int) -> dict:
    return {
        "experiment": f"sst2-gpu-{devices}",
        "output_dir": str(args.work / "results"),
        "device": args.device,
        "model": {"base_model": str(args.model_dir.resolve()), "max_length": 128},
        "data": {
            "train_file": str((args.data / "train.tsv").resolve()),
            "validation_file": str((args.data / "dev.tsv").resolve()),
            "text_column": "sentence",
            "label_column": "label",
            "label_names": ["negative", "positive"],
            "invalid_rows": "drop",  # train.tsv has 3 texts with both labels (6 rows), as configs/sst2_minilm.yaml
            "max_train_rows": args.max_train_rows,
            "max_validation_rows": args.max_train_rows,
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
        "training": {
            "engine": "fast",
            "devices": devices,
            "compile": args.compile,
            "batch_size": args.batch_size,
            "learning_rate": 1e-3,
            "learning_rate_reference_batch": 32,
            "epochs": args.epochs,
            "logging_steps": 50,
            "eval_strategy": "epoch",
        },
        "registry": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".gpu/minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu/sst2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-platform"))
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=256, help="Per GPU.")
    parser.add_argument("--compile", default="none")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a quick check of the script.")
    parser.add_argument("--max-train-rows", type=int, default=None)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "FINETUNE_HOME": str(args.work / "home"), "MLFLOW_ENABLED": "false"}
    record: dict = {"runs": {}}
    for devices in args.devices:
        path = args.work / f"config-{devices}.yaml"
        path.write_text(yaml.safe_dump(config(args, devices)))
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "finetune_platform", "train", str(path), "--no-progress", "--json"],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n")
            record["runs"][str(devices)] = {"error": done.stderr[-2000:]}
            continue
        metrics = json.loads(done.stdout[done.stdout.index("{") :])
        row = {
            "accuracy": metrics["eval"]["accuracy"],
            "global_step": metrics["train"]["global_step"],
            "train_samples_per_second": metrics["train"]["samples_per_second"],
            "train_runtime_seconds": metrics["train"]["runtime_seconds"],
            "wall_seconds": wall,
            "final_checkpoint": metrics.get("final_checkpoint"),
        }
        record["runs"][str(devices)] = row
        print(f"finetune train, {devices} GPU(s): accuracy {row['accuracy']:.4f}, {row['global_step']} steps, "
              f"{row['train_samples_per_second']:.0f} samples/s in training (evaluations included), "
              f"wall {wall:.0f} s", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_platform_train.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
