"""Quality and time of configs/sst2_minilm.yaml: train it as shipped, report dev accuracy and wall time.

    python bench/sst2_config.py [--set key=value ...]

Runs the real config through the platform (MLflow included) on ../shared/data/sst2, prints a table
and writes bench/results/sst2_minilm.json. Goal: >= 88% accuracy on dev.tsv in <= 15 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import yaml

from common import ROOT, SST2_DIR, print_table, write_result

GOAL_ACCURACY = 0.88
GOAL_SECONDS = 15 * 60


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="Config override.")
    args = parser.parse_args()
    if not (SST2_DIR / "train.tsv").is_file():
        sys.exit(f"SST-2 not found at {SST2_DIR} (set SST2_DIR)")

    from finetune_platform.settings import Settings
    from finetune_platform.training.config import load_config
    from finetune_platform.training.runner import run_training

    with tempfile.TemporaryDirectory() as home:
        overrides = [
            f"data.train_file={SST2_DIR / 'train.tsv'}",
            f"data.validation_file={SST2_DIR / 'dev.tsv'}",
            f"output_dir={home}/results",
            *args.overrides,
        ]
        start = time.perf_counter()
        config = load_config(ROOT / "configs" / "sst2_minilm.yaml", overrides)
        result = run_training(
            config,
            settings=Settings(
                FINETUNE_HOME=Path(home) / ".finetune", MODEL_REGISTRY_DIR=Path(home) / "cards"
            ),
            show_progress=False,
        )
        wall = time.perf_counter() - start
        resolved = yaml.safe_load(result.run.config_path.read_text())["resolved"]
    evaluation = result.metrics["eval"]
    history = [(entry["step"], entry["eval_accuracy"]) for entry in result.metrics["history"]]
    print_table(
        ["config", "device", "precision", "train rows", "dev rows", "dev accuracy %", "wall s", "goal met"],
        [
            [
                "sst2_minilm.yaml",
                resolved["device"],
                resolved["precision"],
                resolved["dataset"]["train_rows"],
                evaluation["num_rows"],
                f"{evaluation['accuracy'] * 100:.2f}",
                f"{wall:.0f}",
                "yes" if evaluation["accuracy"] >= GOAL_ACCURACY and wall <= GOAL_SECONDS else "no",
            ]
        ],
    )
    path = write_result(
        "sst2_minilm",
        {
            "config": "configs/sst2_minilm.yaml",
            "overrides": args.overrides,
            "device": resolved["device"],
            "precision": resolved["precision"],
            "accuracy": evaluation["accuracy"],
            "macro_f1": evaluation["macro_f1"],
            "wall_seconds": wall,
            "train_samples_per_second": result.metrics["train"]["samples_per_second"],
            "eval_history": history,
            "final_checkpoint": result.metrics["final_checkpoint"],
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
