"""GPU serving: `finetune serve` on CUDA (bf16, merged adapter, requests batched) against a naive FastAPI server
calling a transformers `pipeline` per request on the same GPU, side by side in one run.

Runs on a CUDA machine (the device tool) with torch, transformers, PEFT, FastAPI and uvicorn (no platform services):
    PYTHONPATH=src python bench/gpu_serve.py --model-dir .gpu/minilm --data .gpu/sst2 --out bench/results

1. Trains a MiniLM LoRA adapter on SST-2 with the fast path (1 epoch) and writes it as a run folder.
2. Starts each server in its own process: the baseline (bench/inference_baseline.py, the fp32 merged model in a
   `text-classification` pipeline on cuda:0) and the platform's (`create_serve_app(run_folder=...)`, the same
   app as `finetune serve --run DIR --device cuda`; Prometheus metrics off, since that mount needs the API's
   database libraries).
3. Both classify the whole SST-2 dev set (6,735 rows) over HTTP (accuracy, and agreement of the two).
4. Load: client processes keep 1 or 64 connections busy with POST /predict (one dev sentence each, rotating),
   `--seconds` per point after a warm-up; throughput and p50/p99 latency.
Writes gpu_serve.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [
    p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"
]  # bench/queue.py shadows queue
sys.path.insert(0, str(ROOT / "src"))


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows], [int(row["label"]) for row in rows]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the adapter, as a run folder -------------------------------------------------------------------------
def make_run_folder(model_dir: Path, data: Path, folder: Path, device_name: str, rows: int | None) -> dict:
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_platform.data.loading import LabelMap
    from finetune_platform.training.config import config_from_dict, dump_config
    from finetune_platform.training.fast_gpu import FastSettings, FastTrainer, accuracy, to_device

    device = torch.device(device_name)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts, labels = read_tsv(data / "train.tsv")
    texts, labels = texts[:rows], labels[:rows]
    dev = read_tsv(data / "dev.tsv")
    names = ["negative", "positive"]
    base = AutoModelForSequenceClassification.from_pretrained(
        model_dir, num_labels=2, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)},
        dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
    )  # fmt: skip
    model = get_peft_model(
        base, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=["query", "value"])
    ).to(device)
    settings = FastSettings(batch_size=256, base_learning_rate=1e-3, epochs=1.0, bf16=device.type == "cuda")
    result = FastTrainer(
        model, to_device(tokenizer, texts, labels, 128, device), settings, device=device
    ).train()
    dev_accuracy = accuracy(model, to_device(tokenizer, *dev, 128, device), bf16=device.type == "cuda")
    artifacts = folder / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(artifacts))
    tokenizer.save_pretrained(str(artifacts))
    (artifacts / "label_map.json").write_text(json.dumps(LabelMap(tuple(names), (0, 1)).to_json()))
    config = config_from_dict({
        "experiment": "sst2-gpu", "model": {"base_model": str(model_dir.resolve()), "max_length": 128},
        "data": {"train_file": str((data / "train.tsv").resolve()), "text_column": "sentence"},
    })  # fmt: skip
    dump_config(config, folder / "config.yaml")
    # the baseline serves the same adapter merged into fp32 weights, saved as a plain model folder
    merged = model.merge_and_unload().float()
    merged.save_pretrained(str(folder / "merged"))
    tokenizer.save_pretrained(str(folder / "merged"))
    return {"train_seconds": result.seconds, "fast_path_dev_accuracy": dev_accuracy}


# -- the servers -------------------------------------------------------------------------------------------
def serve_platform(run_folder: Path, port: int, device: str) -> None:
    import uvicorn

    from finetune_platform.inference.server import create_serve_app
    from finetune_platform.settings import Settings

    home = run_folder.parent / "home"
    settings = Settings(FINETUNE_HOME=home, ENVIRONMENT="local", METRICS_ENABLED=False, SERVE_DEVICE=device,
                        SERVE_RUNTIME="torch", SERVE_MAX_BATCH=256)  # fmt: skip
    app = create_serve_app(settings, run_folder=run_folder)
    app.state.pool.load(
        app.state.pool.key_for(None)
    )  # load before accepting requests, as finetune serve does
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def serve_baseline(port: int) -> None:
    """bench/inference_baseline.py's app (imported by path: bench/ on sys.path would shadow the queue module)."""
    import importlib.util

    import uvicorn

    spec = importlib.util.spec_from_file_location(
        "inference_baseline", ROOT / "bench" / "inference_baseline.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    uvicorn.run(module.app, host="127.0.0.1", port=port, log_level="warning")


def start(kind: str, run_folder: Path, port: int, device: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if kind == "baseline":
        env.update(
            BASELINE_MODEL_DIR=str(run_folder / "merged"), BASELINE_DEVICE="0" if device == "cuda" else "-1"
        )
    command = [
        sys.executable,
        __file__,
        f"--{kind}",
        str(run_folder),
        "--port",
        str(port),
        "--device",
        device,
    ]
    process = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return process
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{kind} server exited with {process.returncode}") from None
            time.sleep(0.5)
    raise SystemExit(f"{kind} server did not start")


# -- the load ------------------------------------------------------------------------------------------------
async def _client(port: int, bodies: list[bytes], offset: int, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < until:
        index = i % len(bodies)
        body = bodies[index]
        started = time.perf_counter()
        writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        payload = await reader.readexactly(length)
        latencies.append(time.perf_counter() - started)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"{head[:40]!r} {payload[:200]!r}")
        i += 1
    writer.close()


def _load_process(
    port: int, bodies: list[bytes], connections: int, first: int, seconds: float, queue
) -> None:
    async def main() -> list[float]:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, bodies, first + 97 * c, until, latencies)
                               for c in range(connections)))  # fmt: skip
        return latencies

    queue.put(asyncio.run(main()))


def load(port: int, bodies: list[bytes], clients: int, seconds: float) -> dict:
    processes = min(clients, 8)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    shares = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    workers = [context.Process(target=_load_process, args=(port, bodies, n, 1000 * p, seconds, queue))
               for p, n in enumerate(shares)]  # fmt: skip
    for worker in workers:
        worker.start()
    latencies = sorted(x for _ in workers for x in queue.get())
    for worker in workers:
        worker.join()
    return {
        "clients": clients,
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "requests": len(latencies),
    }


def classify_all(port: int, texts: list[str]) -> list[str]:
    """Every text once, over 16 connections."""

    async def main() -> list[str]:
        async def one(chunk: list[int]) -> list[tuple[int, str]]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            out = []
            for index in chunk:
                body = json.dumps({"text": texts[index]}).encode()
                writer.write(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))  # fmt: skip
                out.append((index, json.loads(await reader.readexactly(length))["label_name"]))
            writer.close()
            return out

        parts = await asyncio.gather(*(one(list(range(c, len(texts), 16))) for c in range(16)))
        labels = [""] * len(texts)
        for part in parts:
            for index, label in part:
                labels[index] = label
        return labels

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / ".gpu/minilm")
    parser.add_argument("--data", type=Path, default=ROOT / ".gpu/sst2")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-serve"))
    parser.add_argument("--seconds", type=float, default=10.0, help="Seconds per load point.")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a quick check of the script.")
    parser.add_argument("--train-rows", type=int, default=None, help="Train the adapter on the first N rows.")
    parser.add_argument("--platform", type=Path, help=argparse.SUPPRESS)  # internal: run one server
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.platform:
        serve_platform(args.platform, args.port, args.device)
        return
    if args.baseline:
        serve_baseline(args.port)
        return
    import torch

    run_folder = args.work / "run"
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    record: dict = {"gpu": gpu, "torch": torch.__version__, "seconds": args.seconds}
    record["adapter"] = make_run_folder(args.model_dir, args.data, run_folder, args.device, args.train_rows)
    print(f"{record['gpu']}: adapter trained, fast-path dev accuracy {record['adapter']['fast_path_dev_accuracy']:.4f}",
          flush=True)  # fmt: skip
    texts, labels = read_tsv(args.data / "dev.tsv")
    names = ["negative", "positive"]
    bodies = [json.dumps({"text": text}).encode() for text in texts]
    predictions = {}
    for kind in ("baseline", "platform"):
        port = free_port()
        process = start(kind, run_folder, port, args.device)
        try:
            answers = classify_all(port, texts)
            # the pipeline names labels from the merged model's config (negative/positive)
            predictions[kind] = answers
            accuracy = sum(a == names[y] for a, y in zip(answers, labels, strict=True)) / len(labels)
            row = {"dev_accuracy": accuracy}
            load(port, bodies, 8, 2.0)  # warm-up
            for clients in args.clients:
                row[str(clients)] = load(port, bodies, clients, args.seconds)
                point = row[str(clients)]
                print(f"{kind:<9} {clients:>3} clients: {point['requests_per_second']:>8.0f} req/s  "
                      f"p50 {point['p50_ms']:.1f} ms  p99 {point['p99_ms']:.1f} ms", flush=True)  # fmt: skip
            record[kind] = row
        finally:
            process.terminate()
            process.wait()
    record["agreement"] = sum(
        a == b for a, b in zip(predictions["baseline"], predictions["platform"], strict=True)
    ) / len(texts)
    for clients in args.clients:
        key = str(clients)
        record.setdefault("speedup", {})[key] = (
            record["platform"][key]["requests_per_second"] / record["baseline"][key]["requests_per_second"]
        )
    speedup = {key: round(value, 2) for key, value in record["speedup"].items()}
    print(f"dev accuracy: baseline {record['baseline']['dev_accuracy']:.4f}, "
          f"platform {record['platform']['dev_accuracy']:.4f}, agreement {record['agreement']:.4f}; "
          f"speed-up by clients {json.dumps(speedup)}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_serve.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
