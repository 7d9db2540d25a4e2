"""Training throughput: the platform's recipe against plain HF Trainer + PEFT, side by side.

    python bench/train_throughput.py [--repeats 3] [--rows 4000] [--eval-rows 872] [--device cpu]

Same machine, same process, same data (first N rows of SST-2 train.tsv, accuracy on the first
872 rows of dev.tsv), same model (bundled MiniLM), max length 128, one epoch. Runs alternate
baseline/platform so drift hits both. Prints a table and writes bench/results/train_throughput.json.
"""

from __future__ import annotations

import argparse
import csv
import functools
import sys
import tempfile
import time
from pathlib import Path

# bench/ holds queue.py, which would shadow the standard library's queue (torch imports it): common.py by path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import yaml  # noqa: E402


def _common():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_common", Path(__file__).with_name("common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_c = _common()
ROOT = Path(__file__).resolve().parents[1]
SST2_DIR, median, print_table, write_result = _c.SST2_DIR, _c.median, _c.print_table, _c.write_result

BASELINE = "baseline: HF Trainer + PEFT (fp32)"


def run_baseline(
    train_rows: int, eval_rows: int, seed: int, device: str, base_model: str
) -> dict[str, float]:
    """Plain HF Trainer + PEFT with default arguments, as a user would write it from the docs."""
    import numpy as np
    import pandas as pd
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from finetune_platform.catalogue import resolve_base_model

    set_seed(seed)
    source = resolve_base_model(base_model).source
    read = dict(sep="\t", quoting=csv.QUOTE_NONE)
    train = pd.read_csv(SST2_DIR / "train.tsv", **read).head(train_rows)
    dev = pd.read_csv(SST2_DIR / "dev.tsv", **read).head(eval_rows)
    tokenizer = AutoTokenizer.from_pretrained(source)

    def encode(frame: pd.DataFrame) -> Dataset:
        encoded = tokenizer(frame["sentence"].tolist(), truncation=True, max_length=128)
        return Dataset.from_dict({**encoded, "labels": frame["label"].tolist()})

    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=2)
    model = get_peft_model(
        model, LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"])
    )
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=32,
            learning_rate=5e-4,
            num_train_epochs=1,
            seed=seed,
            report_to=[],
            save_strategy="no",
            disable_tqdm=True,
            use_cpu=device == "cpu",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=encode(train),
            data_collator=DataCollatorWithPadding(tokenizer),
        )
        start = time.perf_counter()
        output = trainer.train()
        train_wall = time.perf_counter() - start
        prediction = trainer.predict(encode(dev))
    accuracy = float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())
    return {
        "samples_per_second": output.metrics["train_samples_per_second"],
        "train_seconds": train_wall,
        "accuracy": accuracy,
    }


def _head_lines(source: Path, target: Path, rows: int) -> None:
    """The header and the first ``rows`` data lines, byte for byte (SST-2 has one record per line)."""
    with source.open(encoding="utf-8") as handle:
        target.write_text(
            "".join(line for _, line in zip(range(rows + 1), handle, strict=False)), encoding="utf-8"
        )


def run_platform(
    train_rows: int, eval_rows: int, seed: int, device: str, precision: str, base_model: str
) -> dict[str, float]:
    """The platform's recipe through its public entry point, MLflow tracking and checkpointing included."""
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    with tempfile.TemporaryDirectory() as home:
        # The same rows the baseline reads: the first N of each file, validated as the platform always does.
        train_file, dev_file = Path(home) / "train.tsv", Path(home) / "dev.tsv"
        _head_lines(SST2_DIR / "train.tsv", train_file, train_rows)
        _head_lines(SST2_DIR / "dev.tsv", dev_file, eval_rows)
        config = config_from_dict(
            {
                "experiment": "bench",
                "output_dir": f"{home}/results",
                "device": device,
                "precision": precision,
                "model": {"base_model": base_model, "max_length": 128},
                "data": {
                    "train_file": str(train_file),
                    "validation_file": str(dev_file),
                    "text_column": "sentence",
                    "label_column": "label",
                },
                "training": {"epochs": 1, "batch_size": 32, "seed": seed},
            }
        )
        settings = Settings(FINETUNE_HOME=Path(home) / ".finetune", MODEL_REGISTRY_DIR=Path(home) / "cards")
        start = time.perf_counter()
        result = run_training(config, settings=settings, show_progress=False)
        wall = time.perf_counter() - start
        resolved = yaml.safe_load(result.run.config_path.read_text())["resolved"]
    train = result.metrics["train"]
    return {
        "samples_per_second": train["samples_per_second"],
        "train_seconds": train["runtime_seconds"],
        "accuracy": result.metrics["eval"]["accuracy"],
        "end_to_end_seconds": wall,
        "resolved_precision": resolved["precision"],
    }


def run_platform_from(
    src: Path, train_rows: int, eval_rows: int, seed: int, device: str, precision: str, base_model: str
) -> dict[str, float]:
    """``run_platform`` in a fresh process that imports the platform from another tree's ``src`` (the baseline:
    today's main checked out elsewhere)."""
    import json
    import os
    import subprocess

    code = (
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('tt', {str(Path(__file__).resolve())!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        f"print(json.dumps(module.run_platform({train_rows}, {eval_rows}, {seed}, {device!r}, {precision!r}, "
        f"{base_model!r})))\n"
    )
    path = os.pathsep.join(filter(None, [str(src.resolve()), os.environ.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": path},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"baseline tree run failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3, help="Runs of each variant; medians are reported.")
    parser.add_argument("--rows", type=int, default=4000, help="Training rows (first N of train.tsv).")
    parser.add_argument("--eval-rows", type=int, default=872, help="Evaluation rows (first N of dev.tsv).")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="Device for both.")
    parser.add_argument(
        "--precisions",
        default="auto,fp32",
        help="Comma-separated platform precisions to run (auto = the platform default on this machine).",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="Also run the platform from this src/ folder (e.g. today's main checked out elsewhere), alternating.",
    )
    parser.add_argument(
        "--base-model", default="minilm", help="Base model for both sides (default: bundled)."
    )
    args = parser.parse_args()
    if not (SST2_DIR / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {SST2_DIR} (set SST2_DIR)")

    variants = {
        BASELINE: functools.partial(
            run_baseline, args.rows, args.eval_rows, args.seed, args.device, args.base_model
        ),
    }
    for precision in args.precisions.split(","):
        # Beside a baseline tree, both trees run in fresh processes alike.
        variants[f"platform recipe ({precision})"] = (
            functools.partial(
                run_platform, args.rows, args.eval_rows, args.seed, args.device, precision, args.base_model
            )
            if args.baseline_src is None
            else functools.partial(
                run_platform_from,
                ROOT / "src",
                args.rows,
                args.eval_rows,
                args.seed,
                args.device,
                precision,
                args.base_model,
            )
        )
        if args.baseline_src is not None:
            variants[f"platform @ baseline tree ({precision})"] = functools.partial(
                run_platform_from, args.baseline_src, args.rows, args.eval_rows, args.seed, args.device, precision,
                args.base_model,
            )  # fmt: skip
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, run in variants.items():
            outcome = run()
            runs[name].append(outcome)
            print(
                f"[{repeat + 1}/{args.repeats}] {name}: {outcome['samples_per_second']:.1f} samples/s, "
                f"accuracy {outcome['accuracy']:.4f}",
                flush=True,
            )

    base = median([r["samples_per_second"] for r in runs[BASELINE]])
    summary = {}
    rows = []
    for name, outcomes in runs.items():
        sps = median([r["samples_per_second"] for r in outcomes])
        accuracy = median([r["accuracy"] for r in outcomes])
        seconds = median([r["train_seconds"] for r in outcomes])
        summary[name] = {
            "samples_per_second": sps,
            "accuracy": accuracy,
            "train_seconds": seconds,
            "speedup": sps / base,
            "runs": outcomes,
        }
        precision = outcomes[0].get("resolved_precision")
        label = f"{name[:-1]} -> {precision})" if precision and f"({precision})" not in name else name
        rows.append([label, f"{sps:.1f}", f"{sps / base:.2f}x", f"{seconds:.1f}", f"{accuracy * 100:.2f}"])
    print()
    print_table(["variant", "samples/s (median)", "vs baseline", "train s", "dev accuracy %"], rows)
    path = write_result(
        "train_throughput" if args.device == "cpu" else f"train_throughput_{args.device}",
        {
            "setup": {
                "train_rows": args.rows,
                "eval_rows": args.eval_rows,
                "max_length": 128,
                "epochs": 1,
                "device": args.device,
                "repeats": args.repeats,
                "seed": args.seed,
                "baseline_src": str(args.baseline_src) if args.baseline_src else None,
            },
            "results": summary,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
