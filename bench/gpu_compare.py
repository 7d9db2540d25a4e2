"""`finetune train` on a GPU from two source trees, side by side: this tree against a baseline (today's `main`).

Runs on a CUDA machine (the device tool), alternating the trees so drift hits both, the same config each time
(`bench/gpu_platform_train.py`'s SST-2 MiniLM config, MLflow and the registry off):

    python bench/gpu_compare.py --base-src .gpu/base/src --compile none reduce-overhead --repeats 3

Prints, per compile mode, the median training samples/s of each tree and their ratio, and writes
gpu_compare.json (every run) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

# bench/ holds queue.py, which would shadow the standard library's queue (torch imports it).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def _platform_train():
    """bench/gpu_platform_train.py as a module (bench/ is not put on sys.path: its queue.py would shadow the
    standard library's)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "gpu_platform_train", Path(__file__).with_name("gpu_platform_train.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ROOT, config = _platform_train().ROOT, _platform_train().config


def train_once(args: argparse.Namespace, src: Path, compile_mode: str, tag: str) -> dict:
    work = args.work / tag
    work.mkdir(parents=True, exist_ok=True)
    settings = argparse.Namespace(**{**vars(args), "work": work, "compile": compile_mode})
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config(settings, args.devices)))
    env = {
        **os.environ,
        "FINETUNE_HOME": str(work / "home"),
        "MLFLOW_ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])),
    }
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "finetune_platform", "train", str(path), "--no-progress", "--json"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", flush=True)
        return {"error": done.stderr[-2000:]}
    metrics = json.loads(done.stdout[done.stdout.index("{") :])
    return {
        "accuracy": metrics["eval"]["accuracy"],
        "global_step": metrics["train"]["global_step"],
        "samples_per_second": metrics["train"]["samples_per_second"],
        "train_seconds": metrics["train"]["runtime_seconds"],
        "wall_seconds": round(wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-src", type=Path, required=True, help="The baseline tree's src/ folder.")
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="This tree's src/ folder.")
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".gpu/minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu/sst2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-compare"))
    parser.add_argument("--compile", nargs="*", default=["none"], help="Compile modes to compare.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="Untimed runs of each tree first (0: none).")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--max-train-rows", type=int, default=None)
    args = parser.parse_args()
    trees = {"baseline (main)": args.base_src.resolve(), "this tree": args.src.resolve()}
    runs: dict[str, dict[str, list[dict]]] = {mode: {name: [] for name in trees} for mode in args.compile}
    for mode in args.compile:
        for name, src in list(trees.items()) * args.warmup:  # untimed: caches, the GPU's clocks
            print(
                f"[{mode} warm-up] {name}: {train_once(args, src, mode, f'{mode}-warmup-{name.split()[0]}')}"
            )
        for repeat in range(args.repeats):
            order = list(trees.items()) if repeat % 2 == 0 else list(reversed(trees.items()))
            for name, src in order:
                outcome = train_once(args, src, mode, f"{mode}-{repeat}-{name.split()[0]}")
                runs[mode][name].append(outcome)
                print(f"[{mode} {repeat + 1}/{args.repeats}] {name}: {outcome}", flush=True)
    table, summary = [], {}
    for mode, by_tree in runs.items():
        medians = {}
        for name, outcomes in by_tree.items():
            good = [o for o in outcomes if "error" not in o]
            medians[name] = {
                key: statistics.median(o[key] for o in good) if good else None
                for key in ("samples_per_second", "accuracy", "train_seconds", "wall_seconds")
            }
        base, ours = medians["baseline (main)"], medians["this tree"]
        ratio = (
            ours["samples_per_second"] / base["samples_per_second"] if base["samples_per_second"] else None
        )
        summary[mode] = {"medians": medians, "ratio": ratio, "runs": by_tree}
        table.append((mode, base, ours, ratio))
    print("\n| compile | tree | samples/s (median) | dev accuracy | train s | command s |")
    print("|---|---|---|---|---|---|")
    for mode, base, ours, ratio in table:
        for name, row in (("baseline (main)", base), ("this tree", ours)):
            print(f"| {mode} | {name} | {row['samples_per_second']:.0f} | {row['accuracy']:.4f} | "
                  f"{row['train_seconds']:.1f} | {row['wall_seconds']:.0f} |")  # fmt: skip
        print(f"| {mode} | ratio | **{ratio:.3f}×** | | | |")
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    record = {
        "benchmark": "gpu_compare",
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
        },
        "setup": {
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "devices": args.devices,
            "repeats": args.repeats,
            "model": "all-MiniLM-L6-v2 (fp16 weights, loaded as fp32)",
        },
        "results": summary,
    }
    (args.out / "gpu_compare.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
