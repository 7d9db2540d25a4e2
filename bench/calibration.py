"""Calibration on SST-2: expected calibration error on the dev set before and after temperature scaling.

    python -m bench.calibration [--rows 4000] [--epochs 2] [--seed 42]

Trains MiniLM with LoRA through the platform (`run_training`, the default config on the first ``--rows`` rows of
train.tsv, dev.tsv as the validation set), which fits the temperature on the dev set and reports ECE (15 bins)
before and after. As the dev set is then both where T is fitted and where it is judged, the same logits are also
cross-fitted: T fitted on one half of dev and judged on the other, both ways. Prints a table and writes
bench/results/calibration.json. Goal: ECE at least halved, accuracy unchanged.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"
]  # bench/queue.py shadows queue
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.common import SST2_DIR, print_table, write_result  # noqa: E402


def write_rows(source: Path, target: Path, rows: int | None) -> Path:
    with source.open(encoding="utf-8") as handle:
        reader = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for row in reader[:rows]:
            writer.writerow([row["sentence"], row["label"]])
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda on a GPU machine.")
    parser.add_argument(
        "--base-model", default="minilm", help="minilm, or a local copy of it (a GPU machine)."
    )
    parser.add_argument("--out", default="calibration", help="Result name under bench/results/.")
    args = parser.parse_args()

    import numpy as np
    import torch

    from finetune_platform.inference.predictor import Predictor
    from finetune_platform.settings import Settings
    from finetune_platform.training.calibration import (
        expected_calibration_error,
        fit_temperature,
        negative_log_likelihood,
        probabilities,
    )
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as work:
        work_dir = Path(work)
        train = write_rows(SST2_DIR / "train.tsv", work_dir / "train.csv", args.rows)
        dev = write_rows(SST2_DIR / "dev.tsv", work_dir / "dev.csv", None)
        raw = {
            "experiment": "bench-calibration", "output_dir": str(work_dir / "results"), "device": args.device,
            "model": {"base_model": args.base_model, "max_length": 64},
            "data": {"train_file": str(train), "validation_file": str(dev), "label_names": ["negative", "positive"],
                     "invalid_rows": "drop"},  # train.tsv has 3 texts with both labels
            "training": {"epochs": args.epochs, "seed": args.seed},
            "registry": {"enabled": False},
        }  # fmt: skip
        settings = Settings(FINETUNE_HOME=work_dir / "home", MLFLOW_ENABLED=False)
        result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
        reported = result.metrics["calibration"]
        # the dev logits again, from the saved (uncalibrated) adapter, to cross-fit
        (result.run.artifacts_dir / "calibration.json").unlink()
        predictor = Predictor.from_run(result.run.root)  # on the CPU, fp32: the logits every runtime sees
        with dev.open(encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        texts = [row["text"] for row in rows]
        labels = np.array([int(row["label"]) for row in rows])
        encoded, _ = predictor.encode(texts)
        logits = []
        with torch.inference_mode():
            for start in range(0, len(encoded), 256):
                ids, mask = predictor._padded(encoded[start : start + 256])
                out = predictor.model(
                    input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)
                ).logits
                logits.append(out.float().numpy())
        logits = np.concatenate(logits)
    accuracy = float((logits.argmax(1) == labels).mean())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(labels))
    halves = [order[: len(order) // 2], order[len(order) // 2 :]]
    cross = []
    for fit_on, judge_on in (halves, halves[::-1]):
        temperature = fit_temperature(logits[fit_on], labels[fit_on])
        cross.append({
            "temperature": temperature,
            "ece_before": expected_calibration_error(probabilities(logits[judge_on]), labels[judge_on]),
            "ece_after": expected_calibration_error(probabilities(logits[judge_on], temperature), labels[judge_on]),
            "nll_before": negative_log_likelihood(logits[judge_on], labels[judge_on]),
            "nll_after": negative_log_likelihood(logits[judge_on], labels[judge_on], temperature),
        })  # fmt: skip
    after_accuracy = float((probabilities(logits, reported["temperature"]).argmax(1) == labels).mean())
    cross_before = float(np.mean([c["ece_before"] for c in cross]))
    cross_after = float(np.mean([c["ece_after"] for c in cross]))
    print_table(
        ["ECE on SST-2 dev (15 bins)", "before", "after", "ratio", "temperature", "accuracy before", "after"],
        [
            ["fitted and judged on dev (the run's report)", f"{reported['ece_before']:.4f}",
             f"{reported['ece_after']:.4f}", f"{reported['ece_after'] / reported['ece_before']:.2f}",
             f"{reported['temperature']:.3f}", f"{100 * accuracy:.2f}", f"{100 * after_accuracy:.2f}"],
            ["cross-fitted: fitted on one half, judged on the other (mean)", f"{cross_before:.4f}",
             f"{cross_after:.4f}", f"{cross_after / cross_before:.2f}",
             "/".join(f"{c['temperature']:.3f}" for c in cross), "", ""],
        ],
    )  # fmt: skip
    met = reported["ece_after"] <= reported["ece_before"] / 2 and accuracy == after_accuracy
    path = write_result(
        args.out,
        {
            "setup": {"rows": args.rows, "dev_rows": len(labels), "epochs": args.epochs, "seed": args.seed,
                      "model": "minilm", "max_length": 64, "device": args.device},
            "run": reported,
            "accuracy_before": accuracy,
            "accuracy_after": after_accuracy,
            "run_accuracy": result.metrics["eval"]["accuracy"],
            "cross_fitted": cross,
            "cross_fitted_mean": {"ece_before": cross_before, "ece_after": cross_after},
            "goal": {"ece_ratio_at_most": 0.5, "accuracy_unchanged": True, "met": met},
        },
    )  # fmt: skip
    print(f"goal (ECE at least halved, accuracy unchanged): {'met' if met else 'NOT met'}; wrote {path}")


if __name__ == "__main__":
    main()
