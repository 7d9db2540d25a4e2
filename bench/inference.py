"""Inference benchmark: `finetune serve` beside a naive server (FastAPI + transformers.pipeline per
request), same machine, same MiniLM + SST-2 adapter, measured over HTTP with wrk on loopback.

    .venv/bin/python -m bench.inference [--seconds 10] [--train-rows 8000] [--adapters 20]

Trains an SST-2 adapter (fp32, so serving can reproduce its evaluation exactly) and 19 small adapters on the
bundled sample data, all registered. Reports: accuracy of the served model on the dev rows against the
training run's own evaluation; one-sentence p50/p99 unloaded (one client); throughput with p50/p99 at 1, 8,
32 and 64 clients (requests rotate over 500 dev sentences); resident memory with 1 and with 20 adapters.
Our server runs with each runtime (onnx, the default; onnx-int8; torch). Needs `wrk`.
Writes bench/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.api import wrk
from bench.common import ROOT, SST2_DIR, print_table, write_result

BIN = Path(sys.executable).parent
CLIENTS = (1, 8, 32, 64)
GOALS = {"p50_ms": 10.0, "speedup_at_32": 4.0, "memory_ratio_20": 1.3}


def serve_values(work: Path) -> dict[str, str]:
    """The environment of `finetune serve` over the registry kept in ``work`` (local mode: no auth)."""
    return {
        "FINETUNE_HOME": str(work / ".finetune"),
        "MODEL_REGISTRY_DIR": str(work / "cards"),
        "ENVIRONMENT": "local",
        "PYTHONPATH": str(ROOT),
        "TOKENIZERS_PARALLELISM": "false",
    }


def train_adapters(home: Path, settings: Any, train_rows: int, extra: int) -> dict[str, Any]:
    """The SST-2 adapter (registered as sst2-bench) and ``extra`` quick ones (bench-adapter-N)."""
    from finetune_platform.training.config import load_config
    from finetune_platform.training.runner import run_training

    lines = (SST2_DIR / "train.tsv").read_text(encoding="utf-8").splitlines()
    subset = home / "train.tsv"
    subset.write_text("\n".join(lines[: train_rows + 1]) + "\n", encoding="utf-8")
    common = [f"output_dir={home / 'results'}", "precision=fp32"]
    started = time.perf_counter()
    config = load_config(
        ROOT / "configs" / "sst2_minilm.yaml",
        [
            *common,
            f"data.train_file={subset}",
            f"data.validation_file={SST2_DIR / 'dev.tsv'}",
            "training.epochs=1",
            "training.eval_strategy=epoch",
            "registry.model_name=sst2-bench",
        ],
    )
    result = run_training(config, settings=settings, show_progress=False)
    print(
        f"trained sst2-bench in {time.perf_counter() - started:.0f}s: {result.metrics['eval']['accuracy']:.4f}"
    )
    for index in range(1, extra + 1):
        quick = load_config(
            ROOT / "configs" / "sst2_minilm.yaml",
            [
                *common,
                f"data.train_file={ROOT / 'data/sample/train.csv'}",
                f"data.validation_file={ROOT / 'data/sample/validation.csv'}",
                "data.text_column=text",
                "data.label_column=label",
                "data.label_names=null",
                "training.max_steps=2",
                "training.eval_strategy=epoch",
                f"training.seed={index}",
                f"registry.model_name=bench-adapter-{index}",
            ],
        )
        run_training(quick, settings=settings, show_progress=False)
    return {"run": result.run.root, "eval": result.metrics["eval"]}


def merged_model(run: Path, target: Path) -> Path:
    """The baseline's model: the adapter merged into MiniLM, saved with its tokenizer."""
    from finetune_platform.inference.predictor import Predictor

    predictor = Predictor.from_run(run, merge=True)
    predictor.model.config.id2label = dict(enumerate(predictor.info.labels))
    predictor.model.save_pretrained(target)
    predictor.tokenizer.save_pretrained(target)
    return target


def start(command: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{command[0]} exited; see {log}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return process
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"server did not start; see {log}")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def post(port: int, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def lua_script(path: Path, sentences: list[str]) -> Path:
    bodies = ",\n".join(f"[==[{json.dumps({'text': s})}]==]" for s in sentences)
    path.write_text(
        f"bodies = {{\n{bodies}\n}}\ni = 0\n"
        "request = function()\n  i = i % #bodies + 1\n"
        '  return wrk.format("POST", "/predict", {["Content-Type"] = "application/json"}, bodies[i])\nend\n'
    )
    return path


def load_curve(port: int, script: Path, seconds: int) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/predict"
    wrk(url, 2, 8, {}, script)  # warm-up
    curve = {"unloaded": wrk(url, seconds, 1, {}, script)}  # one client: a lone request's latency
    for clients in CLIENTS:
        curve[str(clients)] = wrk(url, seconds, clients, {}, script)
    return curve


def served_accuracy(port: int, texts: list[str], labels: list[int]) -> float:
    correct = 0
    for start_at in range(0, len(texts), 64):
        answer = post(port, "/predict/batch", {"texts": texts[start_at : start_at + 64]})
        correct += sum(
            int(p["label"]) == gold
            for p, gold in zip(answer["predictions"], labels[start_at : start_at + 64], strict=True)
        )
    return correct / len(texts)


def memory(port: int, pid: int, extra: int, sentences: list[str]) -> dict[str, float]:
    """RSS with the served adapter warm, then with ``extra`` more adapters attached and used."""
    for _ in range(3):
        post(port, "/predict/batch", {"texts": sentences[:64]})
    one = rss_mb(pid)
    for index in range(1, extra + 1):
        for _ in range(3):
            post(port, "/predict/batch", {"texts": sentences[:64], "model": f"bench-adapter-{index}"})
    resident = len(json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/models").read())["loaded"])
    many = rss_mb(pid)
    return {"rss_1_mb": one, f"rss_{resident}_mb": many, "resident": resident, "ratio": many / one}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10, help="Seconds per wrk measurement.")
    parser.add_argument("--train-rows", type=int, default=8000, help="SST-2 training rows for the adapter.")
    parser.add_argument("--adapters", type=int, default=20, help="Adapters resident for the memory test.")
    parser.add_argument(
        "--work", type=Path, help="Keep the trained adapters in this folder and reuse them on the next run."
    )
    parser.add_argument(
        "--runtimes",
        default="onnx,onnx-int8,torch",
        help="Our server's runtimes to measure (comma-separated).",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if not (SST2_DIR / "dev.tsv").is_file():
        raise SystemExit(f"SST-2 not found at {SST2_DIR} (set SST2_DIR)")

    from tests.conftest import free_port

    from finetune_platform.settings import Settings

    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    values = serve_values(work)
    settings = Settings(**{k: v for k, v in values.items() if k in Settings.model_fields})
    env = {**os.environ, **values}
    rows = [line.split("\t") for line in (SST2_DIR / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]]
    texts, labels = [text for text, _ in rows], [int(label) for _, label in rows]
    script = lua_script(work / "predict.lua", texts[:500])
    results: dict[str, Any] = {"seconds": args.seconds, "clients": list(CLIENTS), "servers": {}}
    try:
        trained_file = work / "trained.json"
        if trained_file.is_file():
            trained = json.loads(trained_file.read_text())
        else:
            trained = train_adapters(work, settings, args.train_rows, args.adapters - 1)
            trained = {"run": str(trained["run"]), "accuracy": trained["eval"]["accuracy"]}
            merged_model(Path(trained["run"]), work / "merged")
            trained_file.write_text(json.dumps(trained))
        results["training_eval_accuracy"] = trained["accuracy"]
        results["dev_rows"] = len(texts)
        baseline_dir = work / "merged"

        port = free_port()
        server = start(
            [str(BIN / "uvicorn"), "bench.inference_baseline:app", "--port", str(port), "--log-level", "warning",
             "--no-access-log"],
            {**env, "BASELINE_MODEL_DIR": str(baseline_dir)}, work / "baseline.log", port,
        )  # fmt: skip
        try:
            results["servers"]["baseline pipeline"] = {"load": load_curve(port, script, args.seconds)}
        finally:
            stop(server)
        for runtime in args.runtimes.split(","):
            port = free_port()
            server = start(
                [str(BIN / "finetune"), "serve", "--model", "sst2-bench@1", "--port", str(port), "--runtime", runtime],
                env, work / f"serve-{runtime}.log", port,
            )  # fmt: skip
            try:
                entry = {"accuracy": served_accuracy(port, texts, labels)}
                entry["load"] = load_curve(port, script, args.seconds)
                entry["memory"] = memory(port, server.pid, args.adapters - 1, texts)
                results["servers"][f"finetune serve ({runtime})"] = entry
            finally:
                stop(server)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    print(f"wrote {write_result('inference', results)}")


def report(results: dict[str, Any]) -> None:
    baseline = results["servers"]["baseline pipeline"]["load"]
    rows = []
    for name, entry in results["servers"].items():
        load = entry["load"]
        row = [name, f"{load['unloaded']['p50_ms']:.1f}", f"{load['unloaded']['p99_ms']:.1f}"]
        for clients in CLIENTS:
            point = load[str(clients)]
            ratio = point["requests_per_s"] / baseline[str(clients)]["requests_per_s"]
            point["vs_baseline"] = ratio
            row.append(f"{point['requests_per_s']:.0f} ({ratio:.1f}×) p99 {point['p99_ms']:.0f}")
        accuracy = entry.get("accuracy")
        row.append(f"{accuracy:.4f}" if accuracy is not None else "-")
        memory = entry.get("memory")
        row.append(f"{memory['rss_1_mb']:.0f} → {memory['ratio']:.2f}×" if memory else "-")
        rows.append(row)
    print_table(
        [
            "server",
            "p50 ms",
            "p99 ms",
            *[f"{c} clients req/s" for c in CLIENTS],
            "dev accuracy",
            "RSS MB 1→20",
        ],
        rows,
    )
    print(f"training run's own evaluation accuracy on the same {results['dev_rows']} rows: "
          f"{results['training_eval_accuracy']:.4f}")  # fmt: skip
    ours = results["servers"].get("finetune serve (onnx)")
    if ours:
        results["goals"] = {
            "p50_le_10ms": ours["load"]["unloaded"]["p50_ms"] <= GOALS["p50_ms"],
            "ge_4x_baseline_at_32": ours["load"]["32"]["vs_baseline"] >= GOALS["speedup_at_32"],
            "memory_20_le_1_3x": ours["memory"]["ratio"] <= GOALS["memory_ratio_20"],
            "accuracy_identical": ours["accuracy"] == results["training_eval_accuracy"],
        }
        print("goals:", results["goals"])


if __name__ == "__main__":
    main()
