"""A decoder LLM as a LoRA classifier on one GPU: a Qwen2-0.5B-sized model, with and without 4-bit (QLoRA).

Runs on a CUDA machine (the device tool) with torch, transformers, PEFT and bitsandbytes:
    PYTHONPATH=src python bench/gpu_decoder.py --tokenizer .gpu/minilm --data .gpu/sst2 --out bench/results

1. Builds a Qwen2-0.5B-sized model with random weights from its configuration (24 layers, hidden 896, 14 heads,
   2 key-value heads, MLP 4864, vocabulary 151,936: 494 M parameters) and saves it as a local model folder, with
   MiniLM's tokenizer (its ids are valid Qwen2 ids; speed and memory need no trained weights or Qwen's tokenizer).
2. Trains it with `finetune train` (the platform's CLI, MLflow and the registry off) on the first --rows SST-2
   sentences for --steps steps, LoRA r=8 on q_proj/v_proj (``target_modules: auto``), bf16 autocast, once with
   ``model.quantization: none`` (the frozen base in fp32) and once with ``4bit`` (NF4, double quantization; the
   rest of the frozen base in bf16).
3. Reports the training samples/s (from the run's metrics.json: evaluations included) and the GPU's peak memory in
   use during each run (nvidia-smi, sampled every 100 ms; the idle reading before the run is given too).
Writes gpu_decoder.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"
]  # bench/queue.py shadows queue
QWEN2_05B = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,
    "rope_theta": 1000000.0,
    "tie_word_embeddings": True,
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def build_model(folder: Path, tokenizer: Path) -> int:
    """A random-weight Qwen2-0.5B-sized causal LM saved in bf16 with MiniLM's tokenizer; its parameter count."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN2_05B)).to(torch.bfloat16)
    parameters = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(folder), safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    return parameters


def gpu_memory_mib() -> int:
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.split()[0])


class PeakMemory:
    """The highest nvidia-smi reading while the ``with`` block runs."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, gpu_memory_mib())
            time.sleep(0.1)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def config(args: argparse.Namespace, model_dir: Path, quantization: str) -> dict:
    return {
        "experiment": f"decoder-{quantization}",
        "output_dir": str(args.work / "results"),
        "device": "cuda",
        "model": {"base_model": str(model_dir), "max_length": 128, "quantization": quantization},
        "data": {
            "train_file": str((args.data / "train.tsv").resolve()),
            "validation_file": str((args.data / "dev.tsv").resolve()),
            "text_column": "sentence",
            "label_column": "label",
            "label_names": ["negative", "positive"],
            "invalid_rows": "drop",
            "max_train_rows": args.rows,
            "max_validation_rows": 512,
        },
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": "auto"},
        "training": {
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "learning_rate": 2e-4,
            "logging_steps": 20,
            "eval_strategy": "steps",
            "eval_steps": args.steps,
        },
        "calibration": "none",
        "registry": {"enabled": False},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, default=ROOT / ".gpu/minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu/sst2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-decoder"))
    parser.add_argument("--rows", type=int, default=4096, help="Training rows (the first N of train.tsv).")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--quantization", nargs="*", default=["none", "4bit"])
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = args.work / "qwen2-0.5b-random"
    parameters = build_model(model_dir, args.tokenizer)
    print(f"model: Qwen2-0.5B-sized, random weights, {parameters / 1e6:.0f} M parameters", flush=True)
    env = {**os.environ, "FINETUNE_HOME": str(args.work / "home"), "MLFLOW_ENABLED": "false"}
    from datetime import UTC, datetime

    import torch

    record: dict = {
        "benchmark": "gpu_decoder",
        "when": datetime.now(UTC).isoformat(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "model": "Qwen2-0.5B-sized (random weights)",
        "parameters": parameters,
        "runs": {},
    }
    record["settings"] = {
        "rows": args.rows,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": 128,
    }
    for quantization in args.quantization:
        path = args.work / f"config-{quantization}.yaml"
        path.write_text(yaml.safe_dump(config(args, model_dir, quantization)))
        idle = gpu_memory_mib()
        started = time.perf_counter()
        with PeakMemory() as memory:
            done = subprocess.run(
                [sys.executable, "-m", "finetune_platform", "train", str(path), "--no-progress", "--json"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
        wall = time.perf_counter() - started
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-4000:], sep="\n", flush=True)
            record["runs"][quantization] = {"error": done.stderr[-2000:]}
            continue
        metrics = json.loads(done.stdout[done.stdout.index("{") :])
        row = {
            "train_samples_per_second": metrics["train"]["samples_per_second"],
            "train_runtime_seconds": metrics["train"]["runtime_seconds"],
            "global_step": metrics["train"]["global_step"],
            "peak_gpu_memory_mib": memory.peak,
            "idle_gpu_memory_mib": idle,
            "wall_seconds": round(wall, 1),
            "accuracy": metrics["eval"]["accuracy"],
        }
        record["runs"][quantization] = row
        print(f"quantization {quantization}: {row['train_samples_per_second']:.0f} samples/s, "
              f"peak GPU memory {memory.peak} MiB (idle {idle}), wall {wall:.0f} s", flush=True)  # fmt: skip
    runs = record["runs"]
    if all("error" not in runs.get(q, {"error": 1}) for q in ("none", "4bit")):
        record["ratio_4bit"] = {
            "samples_per_second": runs["4bit"]["train_samples_per_second"]
            / runs["none"]["train_samples_per_second"],
            "peak_memory": runs["4bit"]["peak_gpu_memory_mib"] / runs["none"]["peak_gpu_memory_mib"],
        }
    print("\n| quantization | samples/s | peak GPU MiB | steps |\n|---|---|---|---|")
    for name, row in runs.items():
        if "error" in row:
            print(f"| {name} | error | | |")
        else:
            print(f"| {name} | {row['train_samples_per_second']:.0f} | {row['peak_gpu_memory_mib']} | "
                  f"{row['global_step']} |")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_decoder.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
