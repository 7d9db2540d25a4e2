"""GPU training throughput and accuracy: the platform's fast path against plain HF Trainer + PEFT, side by side.

Runs on a CUDA machine (the device tool); needs torch, transformers and PEFT only (no platform services):

    PYTHONPATH=src python bench/gpu_train.py --model-dir .gpu/minilm --data .gpu/sst2 --out bench/results
    torchrun --nproc-per-node 2 bench/gpu_train.py ... --only scaling          # data-parallel throughput

Parts (``--only`` picks some):
- ``throughput``: samples/s and useful-token MFU (4 × parameters × non-pad tokens/s ÷ 989 TFLOP/s) on SST-2 text
  for MiniLM and a bert-base-sized encoder (BertConfig defaults, random weights: speed does not need trained
  ones), LoRA r=8 on query/value. Baseline: HF Trainer, batch 32, fp32, dynamic padding (the issue's setup), and
  the same with bf16, batch 128 and fused AdamW. Ours: the fast path, batch 256, bf16.
- ``accuracy``: MiniLM on the SST-2 dev set, the baseline trained to convergence (3 epochs, batch 32, fp32)
  against the fast path (3 epochs, batch 256, bf16, sqrt-scaled learning rate).
- ``oom``: a batch that does not fit (the process limited to a few GB) continues with smaller micro-batches.
- ``scaling``: under torchrun, the fast path's samples/s over all ranks (run it with 1 and with 2 processes).
- ``paired``: under torchrun with N processes, rank 0 alone (the others waiting) and all N ranks, alternately
  ``--repeats`` times in the same processes: the scaling as a ratio of medians, free of launch-to-launch drift.
Writes gpu_train.json (or gpu_scaling_<world>.json) under --out and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

PEAK_BF16 = 989e12  # H100/H200 dense bf16, the yardstick
ROOT = Path(__file__).resolve().parents[1]
# bench/ holds queue.py, which would shadow the standard library's queue (torch imports it): run from src only.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT / "src"))


def read_tsv(path: Path, limit: int | None = None) -> tuple[list[str], list[int]]:
    texts, labels = [], []
    with path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            texts.append(row["sentence"])
            labels.append(int(row["label"]))
            if limit and len(texts) >= limit:
                break
    return texts, labels


def load_model(kind: str, model_dir: Path, dtype):
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    if kind == "minilm":
        return AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, dtype=dtype, attn_implementation="sdpa"
        )
    config = BertConfig(num_labels=2, attn_implementation="sdpa")  # bert-base: 12 layers, 768 wide, 110M
    import torch

    torch.manual_seed(0)
    return BertForSequenceClassification(config).to(dtype)


def lora(model, r: int = 8):
    from peft import LoraConfig, TaskType, get_peft_model

    return get_peft_model(
        model, LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=16, target_modules=["query", "value"])
    )


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def mfu(params: int, tokens_per_second: float) -> float:
    return 4 * params * tokens_per_second / PEAK_BF16


# -- the baseline: HF Trainer + PEFT ------------------------------------------------------------------
def baseline(kind, model_dir, tokenizer, texts, labels, *, bf16, batch, steps, epochs, lr, eval_set=None):
    """Plain Trainer as the docs show it; returns samples/s over the steps after the first 10 % and dev acc."""
    import numpy as np
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

    def encoded(rows_texts, rows_labels):  # a list of dicts is a dataset to the Trainer
        features = tokenizer(rows_texts, truncation=True, max_length=128)
        return [
            {**{k: v[i] for k, v in features.items()}, "label": rows_labels[i]}
            for i in range(len(rows_texts))
        ]

    model = lora(load_model(kind, model_dir, torch.float32))
    data = encoded(texts, labels)
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (warm, state.max_steps):
                torch.cuda.synchronize()
                marks[state.global_step] = time.perf_counter()

    total = steps or math.ceil(len(texts) / batch * epochs)
    warm = max(1, total // 10)
    args = TrainingArguments(
        output_dir="/tmp/baseline",
        per_device_train_batch_size=batch,
        learning_rate=lr,
        num_train_epochs=epochs,
        max_steps=steps or -1,
        bf16=bf16,
        optim="adamw_torch_fused" if bf16 else "adamw_torch",
        warmup_steps=0.06,  # a float below 1 is a share of the total steps (transformers 5)
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        dataloader_num_workers=2,
        seed=42,
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorWithPadding(tokenizer), callbacks=[Clock()])  # fmt: skip
    trainer.train()
    timed = max(marks) - warm
    result = {"samples_per_second": timed * batch / (marks[max(marks)] - marks[warm]), "steps": max(marks)}
    if eval_set is not None:
        prediction = trainer.predict(encoded(*eval_set))
        result["accuracy"] = float((np.argmax(prediction.predictions, -1) == np.asarray(eval_set[1])).mean())
    result["parameters"] = parameters(model)
    del trainer, model
    torch.cuda.empty_cache()
    return result


# -- ours: the fast path --------------------------------------------------------------------------------
def fast(
    kind,
    model_dir,
    tokenizer,
    texts,
    labels,
    *,
    batch,
    epochs,
    lr,
    eval_set=None,
    device=None,
    log=None,
    compile_mode=None,
    world=None,
):
    import torch

    from finetune_platform.training.fast_gpu import FastSettings, FastTrainer, accuracy, to_device

    device = device or torch.device("cuda")
    model = lora(load_model(kind, model_dir, torch.bfloat16)).to(device)
    train = to_device(tokenizer, texts, labels, 128, device)
    settings = FastSettings(
        batch_size=batch, base_learning_rate=lr, epochs=epochs, log_every=20, compile=compile_mode
    )
    ranks = {} if world is None else {"rank": int(os.environ.get("RANK", 0)), "world_size": world}
    trainer = FastTrainer(model, train, settings, device=device, on_log=log, **ranks)
    outcome = trainer.train()
    steady = [h["samples_per_second"] for h in outcome.history[1:]] or [outcome.samples_per_second]
    result = {
        "samples_per_second": sorted(steady)[len(steady) // 2],  # median over log intervals after the first
        "samples_per_second_overall": outcome.samples_per_second,
        "steps": outcome.steps,
        "tokens_per_sample": outcome.tokens / outcome.samples,
        "micro_batch": outcome.micro_batch,
        "learning_rate": settings.learning_rate,
        "parameters": parameters(model),
        "final_loss": outcome.final_loss,
    }
    if eval_set is not None:
        result["accuracy"] = accuracy(model, to_device(tokenizer, *eval_set, 128, device))
    del trainer, model
    torch.cuda.empty_cache()
    return result


# scaling configurations: model, torch.compile mode (None: eager), batch per GPU
SCALING = {
    f"{kind} {'eager' if mode is None else 'cudagraphs'} b{batch}": (kind, mode, batch)
    for kind in ("minilm", "bert-base")
    for mode in (None, "reduce-overhead")
    for batch in (512, 256)
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".gpu/minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu/sst2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--only", nargs="*", default=["throughput", "accuracy", "oom"])
    parser.add_argument("--steps", type=int, default=300, help="Baseline steps timed for throughput.")
    parser.add_argument("--epochs", type=float, default=3.0, help="Epochs of the accuracy and scaling runs.")
    parser.add_argument("--scaling-rows", nargs="*", default=[name for name in SCALING if "eager" in name],
                        choices=list(SCALING), help="Scaling: the configurations timed (CUDA graphs compile "
                        "for ~1-2 min each).")  # fmt: skip
    parser.add_argument(
        "--repeats", type=int, default=3, help="Paired scaling: alternations of 1 and N GPUs."
    )
    parser.add_argument("--tag", default="", help="Scaling: suffix of the result file (repeated launches).")
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer

    torch.backends.cuda.matmul.allow_tf32 = True
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    texts, labels = read_tsv(args.data / "train.tsv")
    dev = read_tsv(args.data / "dev.tsv")
    args.out.mkdir(parents=True, exist_ok=True)

    if "paired" in args.only:  # under torchrun: one GPU and all GPUs alternately, in the same processes
        import statistics

        import torch.distributed as dist

        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        dist.init_process_group("nccl")
        paired = {}
        for name in args.scaling_rows:
            kind, mode, batch = SCALING[name]
            runs = {1: [], world_size: []}
            for _ in range(args.repeats):
                for world in (1, world_size):
                    if world == 1 and rank != 0:  # the other ranks wait while rank 0 trains alone
                        dist.barrier()
                        continue
                    row = fast(kind, args.model_dir, tokenizer, texts, labels, batch=batch, epochs=args.epochs,
                               lr=1e-3, device=torch.device("cuda", rank), compile_mode=mode, world=world)  # fmt: skip
                    runs[world].append(row["samples_per_second"])
                    if world == 1:
                        dist.barrier()
            if rank == 0:  # the only rank that trained alone
                one, many = statistics.median(runs[1]), statistics.median(runs[world_size])
                paired[name] = {"1": runs[1], str(world_size): runs[world_size], "scaling": many / one}
                ones, manys = [round(x) for x in runs[1]], [round(x) for x in runs[world_size]]
                print(f"{name}: 1 GPU {ones}, {world_size} GPUs {manys} samples/s: {many / one:.2f}x (medians)",
                      flush=True)  # fmt: skip
        if rank == 0:
            record = {"world_size": world_size, "gpu": torch.cuda.get_device_name(), "repeats": args.repeats,
                      "epochs": args.epochs, "rows": paired}  # fmt: skip
            (args.out / f"gpu_scaling_paired{args.tag}.json").write_text(json.dumps(record, indent=2))
        dist.destroy_process_group()
        return

    if "scaling" in args.only:
        import torch.distributed as dist

        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        if world_size > 1:
            dist.init_process_group("nccl")
        rows = {}
        for name in args.scaling_rows:
            kind, mode, batch = SCALING[name]
            rows[name] = row = fast(
                kind, args.model_dir, tokenizer, texts, labels, batch=batch, epochs=args.epochs, lr=1e-3,
                device=torch.device("cuda", local), compile_mode=mode,
            )  # fmt: skip
            if rank == 0:
                print(f"{world_size} GPU(s) {name}: {row['samples_per_second']:.0f} samples/s "
                      f"(all ranks, median of log intervals)", flush=True)  # fmt: skip
        if rank == 0:
            record = {"world_size": world_size, "gpu": torch.cuda.get_device_name(), "rows": rows}
            (args.out / f"gpu_scaling_{world_size}{args.tag}.json").write_text(json.dumps(record, indent=2))
        if world_size > 1:
            dist.destroy_process_group()
        return

    gpu = torch.cuda.get_device_name()
    record: dict = {"gpu": gpu, "torch": torch.__version__, "train_rows": len(texts), "dev_rows": len(dev[0])}
    print(f"{gpu}, torch {torch.__version__}, SST-2 {len(texts)} train / {len(dev[0])} dev rows", flush=True)
    if "throughput" in args.only:
        table = {}
        for kind in ("minilm", "bert-base"):
            base = baseline(kind, args.model_dir, tokenizer, texts, labels, bf16=False, batch=32,
                            steps=args.steps, epochs=1, lr=1e-3)  # fmt: skip
            tuned = baseline(kind, args.model_dir, tokenizer, texts, labels, bf16=True, batch=128,
                             steps=args.steps, epochs=1, lr=1e-3)  # fmt: skip
            ours = fast(kind, args.model_dir, tokenizer, texts, labels, batch=512, epochs=1.0, lr=1e-3)
            graphs = fast(kind, args.model_dir, tokenizer, texts, labels, batch=256, epochs=1.0, lr=1e-3,
                          compile_mode="reduce-overhead")  # fmt: skip
            tokens = ours["tokens_per_sample"]
            for row in (base, tuned, ours, graphs):
                row["mfu"] = mfu(row["parameters"], row["samples_per_second"] * tokens)
            table[kind] = {"baseline fp32 b32": base, "baseline bf16 b128 fused": tuned,
                           "platform fast b512": ours, "platform fast b256 + CUDA graphs": graphs}  # fmt: skip
            print(
                f"\n{kind}: {base['parameters'] / 1e6:.1f} M parameters, {tokens:.1f} tokens/sample",
                flush=True,
            )
            for name, row in table[kind].items():
                print(f"  {name:<34} {row['samples_per_second']:>9.0f} samples/s  "
                      f"{row['samples_per_second'] / base['samples_per_second']:>6.1f}x  MFU {row['mfu']:.2%}",
                      flush=True)  # fmt: skip
        record["throughput"] = table
    if "variants" in args.only:  # which fast-path options pay: eager, bigger batch, compiled, CUDA graphs
        table = {}
        for kind in ("minilm", "bert-base"):
            table[kind] = {}
            for name, batch, mode in (("eager b256", 256, None), ("eager b512", 512, None),
                                      ("compile b256", 256, "default"), ("cudagraphs b256", 256, "reduce-overhead"),
                                      ("cudagraphs b512", 512, "reduce-overhead")):  # fmt: skip
                started = time.perf_counter()
                row = fast(kind, args.model_dir, tokenizer, texts, labels, batch=batch, epochs=1.0, lr=1e-3,
                           compile_mode=mode)  # fmt: skip
                row["wall_seconds"] = time.perf_counter() - started
                table[kind][name] = row
                print(
                    f"{kind:<10} {name:<16} steady {row['samples_per_second']:>8.0f} samples/s  overall "
                    f"{row['samples_per_second_overall']:>8.0f}  wall {row['wall_seconds']:.0f} s",
                    flush=True,
                )
        record["variants"] = table
    if "accuracy" in args.only:
        runs = {}
        for batch in (512, 256):
            started = time.perf_counter()
            runs[f"platform fast b{batch}"] = row = fast(
                "minilm",
                args.model_dir,
                tokenizer,
                texts,
                labels,
                batch=batch,
                epochs=args.epochs,
                lr=1e-3,
                eval_set=dev,
            )
            row["seconds"] = time.perf_counter() - started
            print(
                f"\naccuracy: platform fast b{batch} {row['accuracy']:.4f} in {row['seconds']:.0f} s",
                flush=True,
            )
        started = time.perf_counter()
        base = baseline("minilm", args.model_dir, tokenizer, texts, labels, bf16=False, batch=32, steps=None,
                        epochs=args.epochs, lr=1e-3, eval_set=dev)  # fmt: skip
        base["seconds"] = time.perf_counter() - started
        print(f"accuracy: baseline {base['accuracy']:.4f} in {base['seconds']:.0f} s", flush=True)
        record["accuracy"] = {"baseline fp32 b32": base, **runs, "epochs": args.epochs}
    if "accuracy-graphs" in args.only:  # the CUDA-graph runs' accuracy (the baseline is the accuracy part's)
        for batch in (256, 512):
            started = time.perf_counter()
            row = fast("minilm", args.model_dir, tokenizer, texts, labels, batch=batch, epochs=args.epochs,
                       lr=1e-3, eval_set=dev, compile_mode="reduce-overhead")  # fmt: skip
            row["seconds"] = time.perf_counter() - started
            record.setdefault("accuracy_graphs", {})[f"platform fast b{batch} + CUDA graphs"] = row
            print(f"accuracy: platform fast b{batch} + CUDA graphs {row['accuracy']:.4f} in {row['seconds']:.0f} s "
                  f"({row['samples_per_second']:.0f} samples/s steady)", flush=True)  # fmt: skip
    (args.out / "gpu_train.json").write_text(
        json.dumps(record, indent=2)
    )  # before the part that limits memory
    if "oom" in args.only:
        import logging

        logging.basicConfig(level=logging.INFO)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(3 * 2**30 / total)  # a 3 GiB card
        long_texts = [" ".join(["word"] * 120)] * 8192
        outcome = fast("bert-base", args.model_dir, tokenizer, long_texts, [0, 1] * 4096, batch=4096,
                       epochs=1.0, lr=1e-3)  # fmt: skip
        torch.cuda.set_per_process_memory_fraction(1.0)
        record["oom"] = {"batch": 4096, "micro_batch": outcome["micro_batch"], "steps": outcome["steps"]}
        print(
            f"\noom: batch 4096 finished {outcome['steps']} steps with micro-batches of {outcome['micro_batch']}"
        )
    (args.out / "gpu_train.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
