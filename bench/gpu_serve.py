"""GPU serving: `finetune serve` on CUDA (bf16, merged adapter, requests batched) against a naive FastAPI server
calling a transformers `pipeline` per request on the same GPU, side by side in one run.

Runs on a CUDA machine (the device tool) with torch, transformers, PEFT, FastAPI and uvicorn (no platform services):
    PYTHONPATH=src python bench/gpu_serve.py --model-dir .gpu/minilm --data .gpu/sst2 --out bench/results

1. Trains a MiniLM LoRA adapter on SST-2 (first 30,000 rows) with the fast path (1 epoch), as a run folder.
2. Times the served host in this process: predict calls of 1/8/64/256 dev texts, eager and from CUDA graphs.
3. Starts each server in its own process: the baseline (bench/inference_baseline.py, the fp32 merged model in a
   `text-classification` pipeline on cuda:0), `platform-eager` and `platform` (`create_serve_app(run_folder=...)`,
   the same app as `finetune serve --run DIR --device cuda`, with SERVE_CUDA_GRAPHS off and on; Prometheus metrics
   off, since that mount needs the API's database libraries).
4. Each classifies the whole SST-2 dev set (6,735 rows) over HTTP (accuracy, and agreement with the baseline).
5. Load: client processes keep 1, 16 or 64 connections busy with POST /predict (one dev sentence each, rotating),
   `--seconds` per point after a warm-up: throughput, p50/p99 latency and texts per batch (from GET /models);
   then GET /health at 64 connections, the HTTP stack's own ceiling. `--profile DIR`: py-spy GIL profiles of the
   64-client point (py-spy on PATH).
Appends the run to gpu_serve.json under --out and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import multiprocessing
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

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
    from finetune_platform.training.config import config_from_dict
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
    raw = {
        "experiment": "sst2-gpu", "model": {"base_model": str(model_dir.resolve()), "max_length": 128},
        "data": {"train_file": str((data / "train.tsv").resolve()), "text_column": "sentence"},
    }  # fmt: skip
    config_from_dict(raw)
    # the fields written, no defaults: a tree before today's config fields (--compare-src) reads it too
    (folder / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    # the baseline serves the same adapter merged into fp32 weights, saved as a plain model folder
    merged = model.merge_and_unload().float()
    merged.save_pretrained(str(folder / "merged"))
    tokenizer.save_pretrained(str(folder / "merged"))
    return {"train_seconds": result.seconds, "fast_path_dev_accuracy": dev_accuracy}


SERVERS = ("baseline", "platform-eager", "platform")  # platform-eager: SERVE_CUDA_GRAPHS=false


# -- the servers -------------------------------------------------------------------------------------------
def serve_platform(run_folder: Path, port: int, device: str, graphs: str) -> None:
    import uvicorn

    from finetune_platform.serve.app import create_serve_app, freeze_heap
    from finetune_platform.settings import Settings

    home = run_folder.parent / "home"
    settings = Settings(FINETUNE_HOME=home, ENVIRONMENT="local", METRICS_ENABLED=False, SERVE_DEVICE=device,
                        SERVE_RUNTIME="torch", SERVE_MAX_BATCH=256,
                        SERVE_CUDA_GRAPHS=graphs == "on")  # fmt: skip
    app = create_serve_app(settings, run_folder=run_folder)
    app.state.pool.load(
        app.state.pool.key_for(None)
    )  # load before accepting requests, as finetune serve does
    freeze_heap()
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


def start(kind: str, run_folder: Path, port: int, device: str, src: Path = ROOT / "src") -> subprocess.Popen:
    """One server in its own process; a platform server imports ``finetune_platform`` from ``src``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    if kind == "baseline":
        env.update(
            BASELINE_MODEL_DIR=str(run_folder / "merged"), BASELINE_DEVICE="0" if device == "cuda" else "-1"
        )
    server = "--baseline" if kind == "baseline" else "--platform"
    command = [sys.executable, __file__, server, str(run_folder), "--port", str(port), "--device", device,
               "--graphs", "off" if kind == "platform-eager" else "on"]  # fmt: skip
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
def request_bytes(path: str, body: bytes | None) -> bytes:
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip


async def exchange(reader, writer, request: bytes) -> bytes:
    """Send one request on a kept-alive connection; the response body (RuntimeError unless 200)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))  # fmt: skip
    payload = await reader.readexactly(length)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{head[:40]!r} {payload[:200]!r}")
    return payload


async def _client(
    port: int, requests: list[bytes], offset: int, until: float, latencies: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < until:
        started = time.perf_counter()
        await exchange(reader, writer, requests[i % len(requests)])
        latencies.append(time.perf_counter() - started)
        i += 1
    writer.close()


def _load_process(
    port: int, requests: list[bytes], connections: int, first: int, seconds: float, queue
) -> None:
    async def main() -> list[float]:
        latencies: list[float] = []
        until = time.perf_counter() + seconds
        await asyncio.gather(*(_client(port, requests, first + 97 * c, until, latencies)
                               for c in range(connections)))  # fmt: skip
        return latencies

    queue.put(asyncio.run(main()))


def batches_so_far(port: int) -> int | None:
    """The platform server's count of batches run (GET /models); None for the baseline."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/models", timeout=10) as response:
            return json.loads(response.read())["batches"]
    except Exception:
        return None


def load(port: int, requests: list[bytes], clients: int, seconds: float, profile: Path | None = None,
         pid: int | None = None) -> dict:  # fmt: skip
    processes = min(clients, 8)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    shares = [clients // processes + (1 if p < clients % processes else 0) for p in range(processes)]
    workers = [context.Process(target=_load_process, args=(port, requests, n, 1000 * p, seconds, queue))
               for p, n in enumerate(shares)]  # fmt: skip
    batches = batches_so_far(port)
    for worker in workers:
        worker.start()
    spy = None
    if profile is not None and pid is not None and shutil.which("py-spy"):
        # who holds the GIL during the middle of the point, by thread
        command = ["py-spy", "record", "--pid", str(pid), "--duration", str(max(1, int(seconds) - 2)),
                   "--rate", "250", "--gil", "--threads", "--nonblocking", "--format", "raw",
                   "--output", str(profile)]  # fmt: skip
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    latencies = sorted(x for _ in workers for x in queue.get())
    for worker in workers:
        worker.join()
    if spy is not None:
        spy.wait(timeout=60)
    point = {
        "clients": clients,
        "requests_per_second": len(latencies) / seconds,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "requests": len(latencies),
    }
    if batches is not None:
        # /models itself is not a prediction; any batch count change comes from this point's requests
        point["texts_per_batch"] = len(latencies) / max(1, batches_so_far(port) - batches)
    return point


def classify_all(port: int, texts: list[str]) -> list[str]:
    """Every text once, over 16 connections."""

    async def main() -> list[str]:
        async def one(chunk: list[int]) -> list[tuple[int, str]]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            out = []
            for index in chunk:
                request = request_bytes("/predict", json.dumps({"text": texts[index]}).encode())
                out.append((index, json.loads(await exchange(reader, writer, request))["label_name"]))
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
    parser.add_argument("--seconds", type=float, default=6.0, help="Seconds per load point.")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 16, 64])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a quick check of the script.")
    parser.add_argument(
        "--train-rows", type=int, default=30000, help="Train the adapter on the first N rows."
    )
    parser.add_argument("--note", default="", help="What changed since the last run (kept with the results).")
    parser.add_argument(
        "--profile", type=Path, help="Folder for py-spy GIL profiles of the largest load point."
    )
    parser.add_argument(
        "--compare-src", type=Path,
        help="Another tree's src/ folder: instead of the full run, serve one adapter from this tree's platform and "
        "from that one in alternating rounds (one server kind, --clients points) and write gpu_serve_rounds.json.",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of --compare-src (medians reported).")
    parser.add_argument(
        "--server", choices=SERVERS[1:], default="platform-eager", help="The server kind --compare-src runs."
    )
    parser.add_argument("--platform", type=Path, help=argparse.SUPPRESS)  # internal: run one server
    parser.add_argument("--baseline", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--graphs", choices=["on", "off"], default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.platform:
        serve_platform(args.platform, args.port, args.device, args.graphs)
        return
    if args.baseline:
        serve_baseline(args.port)
        return
    import torch

    run_folder = args.work / "run"
    gpu = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    record: dict = {"gpu": gpu, "torch": torch.__version__, "seconds": args.seconds, "change": args.note}
    record["adapter"] = make_run_folder(args.model_dir, args.data, run_folder, args.device, args.train_rows)
    print(f"{record['gpu']}: adapter trained, fast-path dev accuracy {record['adapter']['fast_path_dev_accuracy']:.4f}",
          flush=True)  # fmt: skip
    if args.compare_src:
        alternate(args, run_folder, record)
        return
    texts, labels = read_tsv(args.data / "dev.tsv")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    record["host"] = host_timing(run_folder, texts, args.device)
    names = ["negative", "positive"]
    requests = [request_bytes("/predict", json.dumps({"text": text}).encode()) for text in texts]
    predictions = {}
    for kind in SERVERS:
        port = free_port()
        process = start(kind, run_folder, port, args.device)
        try:
            answers = classify_all(port, texts)
            # the pipeline names labels from the merged model's config (negative/positive)
            predictions[kind] = answers
            accuracy = sum(a == names[y] for a, y in zip(answers, labels, strict=True)) / len(labels)
            row = {"dev_accuracy": accuracy}
            load(port, requests, 8, 2.0)  # warm-up
            for clients in args.clients:
                profile = (
                    args.profile / f"{kind}-{clients}.txt"
                    if args.profile and clients == max(args.clients)
                    else None
                )
                row[str(clients)] = point = load(port, requests, clients, args.seconds, profile, process.pid)
                batch = f"  {point['texts_per_batch']:.1f} texts/batch" if "texts_per_batch" in point else ""
                print(f"{kind:<14} {clients:>3} clients: {point['requests_per_second']:>8.0f} req/s  "
                      f"p50 {point['p50_ms']:.1f} ms  p99 {point['p99_ms']:.1f} ms{batch}", flush=True)  # fmt: skip
            if kind != "baseline":  # the HTTP stack's own ceiling: GET /health, no model
                row["health_64"] = load(port, [request_bytes("/health", None)], 64, 3.0)
                print(f"{kind:<14} GET /health, 64 clients: {row['health_64']['requests_per_second']:.0f} req/s",
                      flush=True)  # fmt: skip
            record[kind] = row
        finally:
            process.terminate()
            process.wait()
    for kind in SERVERS[1:]:
        record[kind]["agreement"] = sum(
            a == b for a, b in zip(predictions["baseline"], predictions[kind], strict=True)
        ) / len(texts)
        record[kind]["speedup"] = {
            str(c): record[kind][str(c)]["requests_per_second"]
            / record["baseline"][str(c)]["requests_per_second"]
            for c in args.clients
        }
        print(f"{kind}: dev accuracy {record[kind]['dev_accuracy']:.4f} (baseline "
              f"{record['baseline']['dev_accuracy']:.4f}), agreement {record[kind]['agreement']:.4f}; speed-up by "
              f"clients {json.dumps({k: round(v, 2) for k, v in record[kind]['speedup'].items()})}")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_serve.json"
    history = json.loads(path.read_text()) if path.is_file() else {}
    history.setdefault("runs", []).append(record)
    path.write_text(json.dumps(history, indent=2))


def alternate(args: argparse.Namespace, run_folder: Path, record: dict) -> None:
    """The same adapter served by ``--compare-src``'s platform ("before") and this tree's ("after"), one server
    at a time, alternating for ``--rounds`` rounds so drift on the machine hits both; medians per clients point."""
    texts, _ = read_tsv(args.data / "dev.tsv")
    requests = [request_bytes("/predict", json.dumps({"text": text}).encode()) for text in texts]
    trees = {"before": args.compare_src.resolve(), "after": ROOT / "src"}
    rounds: dict[str, list[dict]] = {tree: [] for tree in trees}
    for index in range(args.rounds):
        for tree, src in trees.items():
            port = free_port()
            process = start(args.server, run_folder, port, args.device, src)
            try:
                load(port, requests, 8, 2.0)  # warm-up
                points = {str(c): load(port, requests, c, args.seconds) for c in args.clients}
            finally:
                process.terminate()
                process.wait()
            rounds[tree].append(points)
            print(f"round {index + 1} {tree:<6} " + "  ".join(
                f"{c} clients {p['requests_per_second']:.0f} req/s p50 {p['p50_ms']:.1f} p99 {p['p99_ms']:.1f} ms"
                for c, p in points.items()), flush=True)  # fmt: skip
    medians = {
        tree: {
            c: {key: statistics.median(r[c][key] for r in runs) for key in ("requests_per_second", "p50_ms", "p99_ms")}
            for c in map(str, args.clients)
        }
        for tree, runs in rounds.items()
    }  # fmt: skip
    record.update(
        benchmark="gpu_serve_rounds", server=args.server, compare_src=str(args.compare_src), rounds=rounds,
        medians=medians, when=datetime.now(UTC).isoformat(),
    )  # fmt: skip
    for c in map(str, args.clients):
        before, after = medians["before"][c], medians["after"][c]
        print(f"{args.server}, {c} clients: before {before['requests_per_second']:.0f} req/s, after "
              f"{after['requests_per_second']:.0f} req/s "
              f"({after['requests_per_second'] / before['requests_per_second']:.2f}x)", flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_serve_rounds.json").write_text(json.dumps(record, indent=2))


def host_timing(run_folder: Path, texts: list[str], device: str = "cuda") -> dict:
    """The served host alone, in this process: median seconds per predict call of n dev texts, eager and
    replayed from CUDA graphs, with the CPU time the calling thread spent (holding the GIL, mostly). On the CPU
    (a check of the script) both are eager: the registry picks graphs on CUDA only."""
    import statistics

    import torch

    from finetune_platform.inference.predictor import source_from_run
    from finetune_platform.inference.runtimes import Placement, open_runtime

    source = source_from_run(run_folder)
    result: dict = {}
    for name, graphs in (("eager", False), ("cuda_graphs", True)):
        started = time.perf_counter()
        host = open_runtime(source, "torch", Placement(device, cuda_graphs=graphs, max_rows=256), merged=True)
        result[f"{name}_runtime"] = host.runtime
        result[f"{name}_load_seconds"] = time.perf_counter() - started
        for n in (1, 8, 64, 256):
            walls, cpus = [], []
            for repeat in range(25):
                batch = [texts[(repeat * 257 + i) % len(texts)] for i in range(n)]
                wall, cpu = time.perf_counter(), time.thread_time()
                host.predict_with(source.key, batch, batch_size=256)
                walls.append(time.perf_counter() - wall)
                cpus.append(time.thread_time() - cpu)
            result[f"{name}_{n}"] = {"ms": statistics.median(walls[5:]) * 1000,
                                      "cpu_ms": statistics.median(cpus[5:]) * 1000}  # fmt: skip
            print(f"host {name:<11} {n:>3} texts: {result[f'{name}_{n}']['ms']:.2f} ms "
                  f"(thread CPU {result[f'{name}_{n}']['cpu_ms']:.2f} ms)", flush=True)  # fmt: skip
        del host
        if device == "cuda":
            torch.cuda.empty_cache()
    return result


if __name__ == "__main__":
    main()
