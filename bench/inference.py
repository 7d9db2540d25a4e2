"""Inference benchmark: `finetune serve` beside a naive server (FastAPI + transformers.pipeline per
request), same machine, same MiniLM + SST-2 adapter, measured over HTTP with wrk on loopback.

    .venv/bin/python -m bench.inference [--seconds 10] [--train-rows 8000] [--adapters 20]

Trains an SST-2 adapter (fp32, so serving can reproduce its evaluation exactly) and 19 small adapters on the
bundled sample data, all registered. Reports: accuracy of the served model on the dev rows against the
training run's own evaluation; one-sentence p50/p99 unloaded (one client); throughput with p50/p99 at 1, 8,
32 and 64 clients (requests rotate over 500 dev sentences); resident memory with 1 and with 20 adapters.
Our server runs with each runtime (onnx, the default; onnx-int8; torch). Needs `wrk`.
Writes bench/results/inference.json.

Side by side with another checkout (a change against the main it started from), same adapters, same load:

    git worktree add /tmp/base <commit>
    .venv/bin/python -m bench.inference --baseline-src /tmp/base/src --repeat 3 --seconds 5 --work /tmp/bench-inf

Each round measures every server once, this tree's and the other's `finetune serve` alternating in order from
round to round; every figure is the median over the rounds. Writes bench/results/inference_side_by_side.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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
BASELINE_SRC = "baseline-src serve"  # --baseline-src's server, by runtime
GOALS = {"p50_ms": 10.0, "speedup_at_32": 4.0, "memory_ratio_20": 1.3}


def serve_values(work: Path, src: Path = ROOT / "src") -> dict[str, str]:
    """The environment of `finetune serve` over the registry kept in ``work`` (local mode: no auth), running
    the platform from ``src`` (this checkout's, or another's with --baseline-src)."""
    return {
        "FINETUNE_HOME": str(work / ".finetune"),
        "MODEL_REGISTRY_DIR": str(work / "cards"),
        "ENVIRONMENT": "local",
        "PYTHONPATH": f"{src}{os.pathsep}{ROOT}",
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
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="Another checkout's src/ folder (`git worktree add`): its `finetune serve` is measured beside this "
        "tree's, each runtime, alternating, on the same adapters; the naive pipeline server too.",
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="Rounds of every measurement; figures are medians over rounds."
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
    trees = {"finetune serve": ROOT / "src"}
    if args.baseline_src:
        trees[BASELINE_SRC] = args.baseline_src.resolve()
    results: dict[str, Any] = {
        "seconds": args.seconds, "clients": list(CLIENTS), "repeat": args.repeat,
        "trees": {name: str(src) for name, src in trees.items()}, "servers": {},
    }  # fmt: skip
    rounds: dict[str, list[dict[str, Any]]] = {}
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

        for number in range(args.repeat):
            port = free_port()
            server = start(
                [str(BIN / "uvicorn"), "bench.inference_baseline:app", "--port", str(port), "--log-level",
                 "warning", "--no-access-log"],
                {**env, "BASELINE_MODEL_DIR": str(baseline_dir)}, work / "baseline.log", port,
            )  # fmt: skip
            try:
                rounds.setdefault("baseline pipeline", []).append(
                    {"load": load_curve(port, script, args.seconds)}
                )
            finally:
                stop(server)
            order = list(trees.items())
            for runtime in args.runtimes.split(","):
                for tree, src in order if number % 2 == 0 else order[::-1]:
                    port = free_port()
                    server = start(
                        [str(BIN / "finetune"), "serve", "--model", "sst2-bench@1", "--port", str(port),
                         "--runtime", runtime],
                        {**env, **serve_values(work, src)}, work / f"serve-{runtime}.log", port,
                    )  # fmt: skip
                    try:
                        entry = {"accuracy": served_accuracy(port, texts, labels)}
                        entry["load"] = load_curve(port, script, args.seconds)
                        entry["memory"] = memory(port, server.pid, args.adapters - 1, texts)
                        rounds.setdefault(f"{tree} ({runtime})", []).append(entry)
                    finally:
                        stop(server)
        results["servers"] = {name: median_entry(entries) for name, entries in rounds.items()}
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.baseline_src:
        compare(results, args.runtimes.split(","))
    print(f"wrote {write_result('inference_side_by_side' if args.baseline_src else 'inference', results)}")


def median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's figures, each the median over the rounds (the rounds kept beside them)."""

    def merge(values: list[Any]) -> Any:
        if isinstance(values[0], dict):
            return {key: merge([value[key] for value in values]) for key in values[0]}
        if isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            return statistics.median(values)
        return values[0]

    merged = merge(entries)
    if len(entries) > 1:
        merged["rounds"] = entries
    return merged


def compare(results: dict[str, Any], runtimes: list[str]) -> None:
    """This tree against --baseline-src, runtime by runtime: p50 and throughput ratios (above 1: this tree's
    throughput is higher; below 1 for latency: this tree is faster)."""
    rows = []
    comparison = {}
    for runtime in runtimes:
        ours = results["servers"][f"finetune serve ({runtime})"]
        theirs = results["servers"][f"{BASELINE_SRC} ({runtime})"]
        row = [
            runtime,
            f"{ours['load']['unloaded']['p50_ms']:.2f} / {theirs['load']['unloaded']['p50_ms']:.2f}",
        ]
        ratios = {"unloaded_p50": ours["load"]["unloaded"]["p50_ms"] / theirs["load"]["unloaded"]["p50_ms"]}
        for clients in CLIENTS:
            a, b = ours["load"][str(clients)], theirs["load"][str(clients)]
            ratios[f"rps_{clients}"] = a["requests_per_s"] / b["requests_per_s"]
            row.append(
                f"{a['requests_per_s']:.0f} / {b['requests_per_s']:.0f} ({ratios[f'rps_{clients}']:.2f}×)"
            )
        ratios["rss_20"] = ours["memory"]["ratio"] / theirs["memory"]["ratio"]
        row.append(f"{ours['accuracy']:.4f} / {theirs['accuracy']:.4f}")
        row.append(f"{ours['memory']['ratio']:.2f} / {theirs['memory']['ratio']:.2f}")
        rows.append(row)
        comparison[runtime] = ratios
    results["this_tree_vs_baseline_src"] = comparison
    print(f"\nthis tree / --baseline-src (medians of {results['repeat']} rounds)")
    print_table(
        ["runtime", "p50 ms", *[f"{c} clients req/s" for c in CLIENTS], "dev accuracy", "RSS ratio 1→20"],
        rows,
    )


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
