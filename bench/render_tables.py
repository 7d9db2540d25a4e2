"""Markdown tables from bench/results/*.json, so the docs' numbers are the measured ones.

    python bench/render_tables.py train_throughput gpu_train:paired history/train_throughput_2026-11-26

prints one table per name: a result file under bench/results (without .json), optionally followed by
``:VIEW`` for files that hold several tables (gpu_train, gpu_serve, gpu_platform_train). `make docs`
(docs/gen/generate.py) writes the same tables into the docs pages' ``<!-- generated: bench NAME -->`` blocks.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))


def day(record: dict) -> str:
    return record["when"][:10] if record.get("when") else ""


def machine_line(record: dict) -> str:
    machine = record["machine"]
    device = machine["cuda"] or f"{machine['cpu']}, {machine['cores']} cores"
    return f"{device}, torch {machine['torch']}"


def times(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}×"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


# --- training ------------------------------------------------------------------------------------------------


def gpu_compare(record: dict) -> str:
    gpu = record["machine"]["gpu"]
    setup = record["setup"]
    lines = [
        f"*{gpu}, {setup['epochs']:g} epoch(s), batch {setup['batch_size']}, {setup['repeats']} alternating pairs*",
        "",
        "| compile | tree | samples/s, each run | median | dev accuracy | ratio to main |",
        "|---|---|---|---|---|---|",
    ]
    for mode, result in record["results"].items():
        for tree, runs in result["runs"].items():
            rates = ", ".join(f"{run['samples_per_second']:,.0f}" for run in runs if "error" not in run)
            medians = result["medians"][tree]
            ratio = f"**{result['ratio']:.3f}×**" if tree == "this tree" else "1"
            lines.append(
                f"| {mode} | {tree} | {rates} | {medians['samples_per_second']:,.0f} | "
                f"{medians['accuracy']:.4f} | {ratio} |"
            )
    return "\n".join(lines)


def train_throughput(record: dict) -> str:
    setup = record["setup"]
    lines = [
        f"*{machine_line(record)}; {setup['train_rows']} SST-2 rows, {setup['repeats']} repeats (medians); "
        f"{day(record)}*",
        "",
        "| variant | samples/s | vs HF baseline | train s | dev accuracy % |",
        "|---|---|---|---|---|",
    ]
    for name, result in record["results"].items():
        precision = result["runs"][0].get("resolved_precision")
        label = f"{name} → {precision}" if precision and f"({precision})" not in name else name
        lines.append(
            f"| {label} | {result['samples_per_second']:.1f} | {result['speedup']:.2f}× | "
            f"{result['train_seconds']:.1f} | {result['accuracy'] * 100:.2f} |"
        )
    return "\n".join(lines)


def sst2_minilm(record: dict) -> str:
    minutes, seconds = divmod(round(record["wall_seconds"]), 60)
    rows = [
        [
            f"{machine_line(record)}",
            f"{record['precision']} ({record['device']})",
            f"{record['accuracy'] * 100:.2f}%",
            f"{record['macro_f1'] * 100:.2f}%",
            f"{minutes} min {seconds} s",
            f"{record['train_samples_per_second']:.1f}",
        ]
    ]
    history = ", ".join(f"step {step}: {accuracy * 100:.2f}%" for step, accuracy in record["eval_history"])
    return "\n".join(
        [
            *table(
                ["machine", "precision", "dev accuracy", "macro-F1", "wall time", "train samples/s"], rows
            ),
            "",
            f"Accuracy after each evaluation ({day(record)}): {history}; final adapter `{record['final_checkpoint']}`.",
        ]
    )


GPU_MODELS = {"minilm": "MiniLM", "bert-base": "bert-base size"}


def _config_label(key: str) -> str:
    """'minilm cudagraphs b256' → 'MiniLM, CUDA graphs, 256'."""
    model, mode, batch = key.split()
    return (
        f"{GPU_MODELS[model]}, {'CUDA graphs' if mode == 'cudagraphs' else mode}, {batch.removeprefix('b')}"
    )


def gpu_train_throughput(record: dict) -> str:
    part = record["throughput"]
    columns = list(next(iter(part["throughput"].values())))
    rows = []
    for model, results in part["throughput"].items():
        base = results[columns[0]]["samples_per_second"]
        size = results[columns[0]]["parameters"] / 1e6
        cells = [f"{GPU_MODELS[model]} ({size:.1f} M)"]
        for column in columns:
            result = results[column]
            ratio = "" if column == columns[0] else f"{result['samples_per_second'] / base:.1f}×, "
            cells.append(f"{result['samples_per_second']:,.0f} /s ({ratio}MFU {result['mfu'] * 100:.2f}%)")
        rows.append(cells)
    header = ["model", *(_variant_label(column) for column in columns)]
    note = f"*{part['gpu']}, torch {part['torch']}; {part['machine']}; {part['train_rows']:,} SST-2 rows*"
    return "\n".join([note, "", *table(header, rows)])


def _variant_label(key: str) -> str:
    """'baseline bf16 b128 fused' → 'Trainer bf16, batch 128, fused AdamW'; 'platform fast b512' → 'fast, batch 512'."""
    words = key.split()
    if words[0] == "baseline":
        text = f"Trainer {words[1]}, batch {words[2].removeprefix('b')}"
        return f"baseline: {text}" if "fused" not in words else f"{text}, fused AdamW"
    rest = " ".join(words[3:])
    return f"fast, batch {words[2].removeprefix('b')}" + (f" {rest}" if rest else "")


def gpu_train_accuracy(record: dict) -> str:
    part = record["accuracy"]
    graphs = record["accuracy_graphs"]["accuracy_graphs"]
    baseline = part["baseline fp32 b32"]["accuracy"]
    earlier = {
        key.removeprefix("earlier call, "): value for key, value in part.items() if key.startswith("earlier")
    }
    rows = [
        [
            _variant_label("baseline fp32 b32"),
            f"{baseline:.4f}",
            "–",
            f"{part['baseline fp32 b32']['seconds']} s",
        ]
    ]
    for key in (
        "platform fast b256",
        "platform fast b256 + CUDA graphs",
        "platform fast b512",
        "platform fast b512 + CUDA graphs",
    ):
        result = part.get(key) or graphs[key]
        accuracy = f"{result['accuracy']:.4f}"
        delta = f"{(result['accuracy'] - baseline) * 100:+.2f}"
        if key in earlier:
            accuracy += f" (earlier call: {earlier[key]['accuracy']:.4f})"
            delta += f" ({(earlier[key]['accuracy'] - earlier[key]['baseline']) * 100:+.2f})"
        wall = f"{result['seconds']:.0f} s"
        if "samples_per_second" in result:
            wall += (
                f" ({result['samples_per_second']:,.0f} samples/s steady, lr {result['learning_rate']:.2g})"
            )
        rows.append([_variant_label(key), accuracy, delta.replace("-", "−"), wall])
    note = f"*{part['epochs']} epochs; {part['machine']}; CUDA-graph runs: {record['accuracy_graphs']['machine']}*"
    return "\n".join(
        [note, "", *table(["run", "SST-2 dev accuracy", "vs baseline (points)", "wall time"], rows)]
    )


def gpu_train_paired(record: dict) -> str:
    part = record["scaling"]["paired"]
    rows = []
    for key, result in part["rows"].items():
        one, two = result["1"], result["2"]
        rows.append(
            [
                _config_label(key),
                " / ".join(f"{value:,.0f}" for value in one),
                " / ".join(f"{value:,.0f}" for value in two),
                f"**{result['scaling']:.2f}×**",
            ]
        )
    runs = part["repeats"]
    note = (
        f"*{part['world_size']}× {part['gpu']}, {part['epochs']:g} epoch, {runs} alternating repeats; "
        f"{record['scaling']['machine']}*"
    )
    header = [
        "configuration (batch per GPU)",
        f"1 GPU, {runs} runs",
        f"2 GPUs, {runs} runs",
        "scaling (medians)",
    ]
    return "\n".join([note, "", *table(header, rows)])


def gpu_train_launches(record: dict) -> str:
    launches = record["scaling"]["launches"]
    names = list(launches)
    configurations = list(launches[names[0]]["1"]["rows"])
    rows = []
    for key in configurations:
        cells = [_config_label(key)]
        for name in names:
            one = launches[name]["1"]["rows"][key]["samples_per_second"]
            two = launches[name]["2"]["rows"][key]["samples_per_second"]
            cells.append(f"{one:,.0f} → {two:,.0f} ({two / one:.2f}×)")
        rows.append(cells)
    header = ["configuration", *(f"launch {name.upper()}: 1 → 2 GPUs" for name in names)]
    return "\n".join(table(header, rows))


def gpu_platform_train(record: dict, runs: dict | None = None, machine: str | None = None) -> str:
    runs = runs or record["runs"]
    one = runs["1"]["train_samples_per_second"]
    rows = []
    for devices, run in runs.items():
        rate = f"{run['train_samples_per_second']:,.0f}"
        if devices != "1":
            rate += f" (**{run['train_samples_per_second'] / one:.2f}×**)"
        rows.append(
            [
                devices,
                f"{run['accuracy']:.4f}",
                str(run["global_step"]),
                f"{run['train_runtime_seconds']:.1f} s",
                rate,
                f"{run['wall_seconds']:.0f} s",
            ]
        )
    header = ["GPUs", "SST-2 dev accuracy", "steps", "training time", "samples/s", "whole command"]
    return "\n".join([f"*{machine or record['machine']}*", "", *table(header, rows)])


def gpu_platform_train_previous(record: dict) -> str:
    previous = record["previous"]
    return gpu_platform_train(record, previous["runs"], previous["machine"])


# --- data, tracking, queue, API --------------------------------------------------------------------------------

DATA_JOBS = {
    "pandas.read_csv": "`pandas.read_csv(path)`",
    "pandas.read_csv(dtype=str)": "`pandas.read_csv(path, dtype=str)`",
    "validate + hash": "validate + hash (all checks)",
}


def data_validate(record: dict) -> str:
    rows = []
    for key, result in record["results"].items():
        job = key.rsplit(" @ ", 1)[0]
        millions = result["rows_per_second"] / 1e6
        rows.append(
            [
                f"{result['rows']:,}",
                f"{result['file_mb']:.0f} MB",
                DATA_JOBS.get(job, job),
                f"{result['seconds']:.2f}",
                f"{millions:.2f} M" if millions < 1 else f"{millions:.1f} M",
                times(result["ratio_to_pandas"]),
                f"{result['peak_above_imports_mb']:.0f} MB",
            ]
        )
    sst2 = record["sst2_train"]
    header = ["rows", "file", "job", "seconds", "rows/s", "vs plain read", "peak RSS above imports"]
    return "\n".join(
        [
            f"*{machine_line(record)}; {day(record)}; medians of 3 fresh processes*",
            "",
            *table(header, rows),
            "",
            f"SST-2 `train.tsv` ({sst2['rows']:,} rows) with the MiniLM tokenizer's checks: {sst2['seconds']:.2f} s "
            f"(issues found: {', '.join(f'`{issue}`' for issue in sst2['issues'])}).",
        ]
    )


def tracking_overhead(record: dict) -> str:
    rows = [
        [label, f"{statistics.median(runs):.2f}", ", ".join(f"{run:.2f}" for run in runs)]
        for label, runs in (
            ("tracking off", record["training_wall_seconds"]["tracking_off"]),
            ("tracking on", record["training_wall_seconds"]["tracking_on"]),
        )
    ]
    search = record["search"]
    return "\n".join(
        [
            f"*{machine_line(record)}; {day(record)}*",
            "",
            *table(["quickstart training", "wall s (median)", "runs"], rows),
            "",
            f"- MLflow share of training wall time, side by side: {record['mlflow_share'] * 100:+.1f}%",
            f"- registering (card, embedding, model version): {record['registration_seconds']:.2f} s",
            f"- search with filters plus a recommendation over {record['cards']:,} cards: p50 "
            f"{search['p50_ms']:.1f} ms, p95 {search['p95_ms']:.1f} ms ({search['rounds']} rounds); the first read "
            f"of the card folder {search['cold_load_ms']:.0f} ms",
        ]
    )


QUEUE_SETUPS = {"redis+postgresql": "Redis + PostgreSQL", "filesystem+sqlite": "filesystem + SQLite"}


def queue(record: dict) -> str:
    rows = []
    for key, label in QUEUE_SETUPS.items():
        for app, name in (("bare", "bare Celery"), ("platform", "platform")):
            result = record[key][app]
            rows.append(
                [
                    label,
                    name,
                    f"{result['latency_ms_p50']:.1f} ms",
                    f"{result['latency_ms_p95']:.1f} ms",
                    f"{result['throughput_jobs_per_s']:.0f}",
                ]
            )
    training = record["training"]
    per_worker = " and ".join(str(count) for _, count in sorted(training["jobs_per_worker"].items()))
    goals = ", ".join(f"`{name}` {'met' if met else '**not met**'}" for name, met in record["goals"].items())
    return "\n".join(
        [
            f"*{machine_line(record)}; {day(record)}*",
            "",
            *table(["broker + database", "app", "start p50", "start p95", "no-op jobs/s"], rows),
            "",
            f"{training['jobs']} tiny-model training jobs through {len(training['jobs_per_worker'])} workers: "
            f"{training['succeeded']} succeeded, {training['lost']} lost, {training['duplicated']} started twice, "
            f"{training['distinct_model_versions']} distinct model versions, {per_worker} per worker, "
            f"{training['wall_seconds']:.0f} s. Goals: {goals}.",
        ]
    )


def api(record: dict) -> str:
    routes = [key for key, value in record.items() if isinstance(value, dict) and "requests_per_s" in value]
    rows = [
        [
            f"bare FastAPI `{route.removeprefix('bare ')}`" if route.startswith("bare ") else f"`{route}`",
            f"{record[route]['requests_per_s']:.0f}",
            f"{record[route]['p50_ms']:.1f} ms",
            f"{record[route]['p99_ms']:.1f} ms",
            f"{record[route]['share_of_bare'] * 100:.0f}%",
        ]
        for route in routes
    ]
    goals = ", ".join(f"`{name}` {'met' if met else '**not met**'}" for name, met in record["goals"].items())
    return "\n".join(
        [
            f"*{machine_line(record)}; {record['connections']} connections for {record['seconds']} s; {day(record)}*",
            "",
            *table(["route", "req/s", "p50", "p99", "share of bare"], rows),
            "",
            f"Goals: {goals}.",
        ]
    )


# --- inference and metrics -----------------------------------------------------------------------------------


def _server_label(name: str) -> str:
    if "(" not in name:
        return name
    server, runtime = name.rstrip(")").split(" (")
    return f"{'serve' if server == 'finetune serve' else server}, `{runtime}`"


def inference(record: dict) -> str:
    clients = [str(count) for count in record["clients"]]
    rows = []
    for name, server in record["servers"].items():
        load = server["load"]
        cells = [
            _server_label(name),
            f"{load['unloaded']['p50_ms']:.1f} ms",
            f"{load['unloaded']['p99_ms']:.1f} ms",
        ]
        for count in clients:
            point = load[count]
            text = f"{point['requests_per_s']:.0f} req/s"
            if "accuracy" in server:
                text += f" ({point['vs_baseline']:.1f}×)"
            if count != clients[0]:
                text += f", p99 {point['p99_ms']:.0f} ms"
            cells.append(text)
        cells.append(f"{server['accuracy']:.4f}" if "accuracy" in server else "–")
        memory = server.get("memory")
        cells.append(
            f"{memory['rss_1_mb']:.0f} → {memory['rss_20_mb']:.0f} MB ({memory['ratio']:.2f}×)"
            if memory
            else "–"
        )
        rows.append(cells)
    header = [
        "server",
        "p50 unloaded",
        "p99 unloaded",
        *(f"{count} client{'s' * (count != '1')}" for count in clients),
        "dev accuracy",
        "RSS 1 → 20 adapters",
    ]
    goals = ", ".join(f"`{name}` {'met' if met else '**not met**'}" for name, met in record["goals"].items())
    return "\n".join(
        [
            f"*{machine_line(record)}; {record['seconds']} s per point; {day(record)}; training's own evaluation on "
            f"the {record['dev_rows']:,} dev rows: {record['training_eval_accuracy']:.4f}*",
            "",
            *table(header, rows),
            "",
            f"Goals: {goals}.",
        ]
    )


def inference_side_by_side(record: dict) -> str:
    clients = [str(count) for count in record["clients"]]
    rows = []
    for runtime, ratios in record["this_tree_vs_baseline_src"].items():
        cells = [f"`{runtime}`", times(ratios["unloaded_p50"])]
        cells += [times(ratios[f"rps_{count}"]) for count in clients]
        cells.append(times(ratios["rss_20"]))
        rows.append(cells)
    header = [
        "runtime",
        "p50 unloaded",
        *(f"req/s, {count} client{'s' * (count != '1')}" for count in clients),
        "RSS, 20 adapters",
    ]
    return "\n".join(
        [
            f"*{machine_line(record)}; {record['seconds']} s per point, {record['repeat']} rounds (medians); "
            f"{day(record)}; this tree ÷ the tree before the runtime registry (`--baseline-src`)*",
            "",
            *table(header, rows),
        ]
    )


def observability(record: dict) -> str:
    rows = []
    for route, result in record.items():
        if not isinstance(result, dict) or "overhead" not in result:
            continue
        rows.append(
            [
                route,
                f"{result['off']['requests_per_s']:.0f}",
                f"{result['on']['requests_per_s']:.0f}",
                f"{result['overhead'] * 100:.1f}%",
                f"{result['off']['p99_ms']:.0f} ms",
                f"{result['on']['p99_ms']:.0f} ms",
            ]
        )
    header = ["route", "req/s metrics off", "req/s metrics on", "throughput cost", "p99 off", "p99 on"]
    return "\n".join(
        [
            f"*{machine_line(record)}; {record['rounds']} rounds of {record['seconds']} s at {record['connections']} "
            f"clients, medians; {day(record)}*",
            "",
            *table(header, rows),
            "",
            f"Goal (throughput cost ≤ 5%): {'met' if record['goal_le_5pct'] else '**not met**'}.",
        ]
    )


def gpu_serve(record: dict) -> str:
    run = record["runs"][-1]
    points = [key for key in run["platform"] if key.isdigit()]
    last = points[-1]
    rows = []
    for name in ("baseline", "platform-eager", "platform"):
        server = run[name]
        cells = [{"baseline": "baseline pipeline", "platform": "**platform (CUDA graphs)**"}.get(name, name)]
        for point in points:
            rate = f"{server[point]['requests_per_second']:,.0f} req/s"
            if "speedup" in server:
                rate += f" ({server['speedup'][point]:.1f}×)"
            cells.append(rate)
        cells.append(f"{server[last]['p50_ms']:.0f} / {server[last]['p99_ms']:.0f} ms")
        cells.append(f"{server[last].get('texts_per_batch', 1):.1f}")
        accuracy = f"{server['dev_accuracy']:.4f}"
        if "agreement" in server:
            accuracy += f" (agreement {server['agreement'] * 100:.2f}%)"
        cells.append(accuracy)
        rows.append(cells)
    header = [
        "server",
        *(f"{point} client{'s' * (point != '1')}" for point in points),
        f"p50 / p99 at {last}",
        f"texts per batch at {last}",
        "dev accuracy",
    ]
    return "\n".join(
        [
            f"*{run['gpu']}, torch {run['torch']}; {run['seconds']:g} s per point; {run['change']}*",
            "",
            *table(header, rows),
        ]
    )


def gpu_serve_host(record: dict) -> str:
    host = record["runs"][-1]["host"]
    sizes = [key.removeprefix("eager_") for key in host if key.startswith("eager_") and key[6:].isdigit()]
    rows = [
        [
            f"{size} text{'s' * (size != '1')}",
            f"{host[f'eager_{size}']['ms']:.1f} ms",
            f"{host[f'cuda_graphs_{size}']['ms']:.1f} ms",
        ]
        for size in sizes
    ]
    rows.append(
        ["loading", f"{host['eager_load_seconds']:.1f} s", f"{host['cuda_graphs_load_seconds']:.1f} s"]
    )
    return "\n".join(table(["batch", "eager PyTorch", "CUDA graphs replayed"], rows))


# --- code structure ------------------------------------------------------------------------------------------


def layer_report(record: dict) -> str:
    """This checkout's layer report beside the one before issue 20 (layer_report_before.json)."""
    before = load("layer_report_before")["summary"]
    after = record["summary"]

    def lazy(summary: dict) -> str:
        heavy = summary["function_level_imports_by_kind"]["heavy"]
        return f"{summary['function_level_imports']} ({heavy} of heavy libraries)"

    lines = [
        "| measure | before issue 20 | after |",
        "|---|---|---|",
        f"| upward imports (module pairs) | {before['upward_imports']} | {after['upward_imports']} |",
        f"| import cycles | {before['import_cycles']} | {after['import_cycles']} |",
        f"| function-level imports | {lazy(before)} | {lazy(after)}, each with its reason |",
    ]
    return "\n".join(lines)


def train_throughput_seeds(record: dict) -> str:
    setup = record["setup"]
    seeds = [str(seed) for seed in setup["seeds"]]
    lines = [
        f"*{machine_line(record)}; {setup['train_rows']} SST-2 rows, one run per seed*",
        "",
        *table(
            ["variant", *(f"seed {seed}" for seed in seeds), "mean ± sd", "mean vs HF baseline"],
            [
                [
                    name,
                    *(f"{result['accuracy_by_seed'][seed] * 100:.2f}" for seed in seeds),
                    f"**{result['mean'] * 100:.2f}** ± {result['stdev'] * 100:.2f}",
                    f"{result['mean_vs_hf_baseline'] * 100:+.2f}",
                ]
                for name, result in record["results"].items()
            ],
        ),
    ]
    return "\n".join(lines)


def sweep(record: dict) -> str:
    setup, results, goals = record["setup"], record["results"], record["goals"]
    names = {
        "default": "default config (one job)",
        "pruned": f"**TPE sweep, median pruner** ({setup['trials']} trials)",
        "unpruned": f"the same {setup['trials']} trials, no pruner",
    }
    rows = []
    for key in ("default", "pruned", "unpruned"):
        entry = results[key]
        trials = entry.get("trials") or {}
        rows.append([
            names[key],
            f"{100 * (entry['best_accuracy'] or 0):.2f}",
            f"{entry['wall_seconds']:.0f}",
            f"{entry['compute_seconds'] or 0:.0f}",
            str(sum(trials.values()) if trials else 1),
            str(trials.get("pruned", 0)),
        ])  # fmt: skip
    lines = [
        f"*{machine_line(record)}, {day(record)}; {setup['workers']} `finetune worker` processes, "
        f"{setup['rows']} SST-2 training rows, the {setup['dev_rows']}-row dev set, MiniLM, {setup['epochs']:g} "
        f"epochs and {setup.get('evaluations', 5)} evaluations per trial*",
        "",
        *table(["variant", "best dev accuracy %", "wall s", "compute s", "trials", "pruned"], rows),
        "",
        f"Pruned sweep: **{goals['points_over_default']:+.2f} points** over the default config (goal ≥ "
        f"{goals['points_goal']:g}), **{100 * goals['wall_share_of_unpruned']:.0f}%** of the unpruned sweep's wall "
        f"time (goal ≤ {100 * goals['wall_share_goal']:.0f}%) and {100 * goals['compute_share_of_unpruned']:.0f}% "
        "of its compute.",
    ]
    return "\n".join(lines)


def calibration(record: dict) -> str:
    setup, run, cross = record["setup"], record["run"], record["cross_fitted_mean"]
    rows = [
        ["fitted and judged on dev (the run's own report)", f"{run['ece_before']:.4f}", f"{run['ece_after']:.4f}",
         f"{run['ece_after'] / run['ece_before']:.2f}", f"{run['temperature']:.3f}",
         f"{100 * record['accuracy_before']:.2f} → {100 * record['accuracy_after']:.2f}"],
        ["cross-fitted: T from one half of dev, judged on the other (mean of both ways)", f"{cross['ece_before']:.4f}",
         f"{cross['ece_after']:.4f}", f"{cross['ece_after'] / cross['ece_before']:.2f}",
         "/".join(f"{c['temperature']:.3f}" for c in record["cross_fitted"]), ""],
    ]  # fmt: skip
    lines = [
        f"*{machine_line(record)}, {day(record)}; MiniLM, {setup['rows']} SST-2 training rows, {setup['epochs']:g} "
        f"epochs, the {setup['dev_rows']}-row dev set, ECE over 15 bins*",
        "",
        *table(["ECE", "before", "after", "after / before", "temperature", "dev accuracy %"], rows),
        "",
        f"Goal (ECE at least halved, accuracy unchanged): **{'met' if record['goal']['met'] else 'not met'}**.",
    ]
    return "\n".join(lines)


TASK_METRICS = {
    "multilabel": {"micro_f1": "micro-F1", "macro_f1": "macro-F1", "subset_accuracy": "subset accuracy"},
    "sts": {"rmse": "RMSE", "mae": "MAE", "pearson": "Pearson", "spearman": "Spearman"},
}
TASK_SIDES = {"baseline": "HF Trainer + PEFT", "platform": "**platform**"}


def _tasks(record: dict) -> list[str]:
    """bench/tasks.py's result: each side's medians over the seeds, the platform's difference, the setup."""
    setup, results = record["setup"], record["results"]
    recipe, metrics = setup["recipe"], TASK_METRICS[setup["dataset"]]
    rows = [
        [TASK_SIDES[side], *(f"{results[side]['metrics'][key]:.4f}" for key in metrics),
         f"{results[side]['train_seconds']:.1f}"]
        for side in TASK_SIDES
        if side in results
    ]  # fmt: skip
    if "difference" in results:
        difference = results["difference"]
        rows.append(
            ["platform − baseline", *(f"{difference[key]:+.4f}".replace("-", "−") for key in metrics),
             times(difference["train_seconds_ratio"])]
        )  # fmt: skip
    seeds = ", ".join(str(seed) for seed in setup["seeds"])
    precision = {run.get("precision") for run in results.get("platform", {}).get("runs", [])} - {None}
    note = (
        f"{machine_line(record)}, {day(record)}; MiniLM, LoRA r {recipe['lora_r']} on "
        f"{'/'.join(recipe['target_modules'])}, {setup['train_rows']:,} training rows (train.tsv), "
        f"{setup['eval_rows']:,} evaluation rows (dev.tsv), {recipe['epochs']:g} "
        f"epoch{'s' * (recipe['epochs'] != 1)}, batch {recipe['batch_size']}, learning rate "
        f"{recipe['learning_rate']:g}, max length {recipe['max_length']}; "
        f"{f'medians over seeds {seeds}' if len(setup['seeds']) > 1 else f'seed {seeds}'}"
    )
    if precision:
        note += f"; platform precision {', '.join(sorted(precision))}"
    lines = [f"*{note}*", "", *table(["side", *metrics.values(), "train s"], rows)]
    agreement = results.get("platform", {}).get("reported_max_difference")
    if agreement is not None:
        lines += [
            "",
            "Both sides are scored by the same code on the same rows; the platform's own evaluation (its "
            f"metrics.json) differs from that scoring of its saved adapter by at most {agreement:.4f}.",
        ]
    return lines


def tasks_multilabel(record: dict) -> str:
    setup = record["setup"]
    train, evaluation = setup["train_counts"], setup["eval_counts"]
    counts = ", ".join(f"{name} {train[name]:,} / {evaluation[name]:,}" for name in train)
    thresholds = setup["thresholds"]
    return "\n".join(
        [
            *_tasks(record),
            "",
            f"Rows carrying each label (training / evaluation): {counts}. A label is predicted above "
            f"{thresholds['baseline']:g} (the platform: `thresholds: {thresholds['platform']}`).",
        ]
    )


def tasks_sts(record: dict) -> str:
    setup = record["setup"]
    train, evaluation = setup["train_counts"], setup["eval_counts"]
    counts = ", ".join(f"{band} {train[band]:,} / {evaluation[band]:,}" for band in train)
    return "\n".join([*_tasks(record), "", f"Pairs per score band (training / evaluation): {counts}."])


def gpu_serve_side_by_side(record: dict) -> str:
    before, after = record["before"], record["after"]
    rows = []
    for server, label in (("platform", "platform, CUDA graphs"), ("platform-eager", "platform, eager"),
                          ("baseline", "baseline pipeline")):  # fmt: skip
        for clients in ("1", "16", "64"):
            old, new = before[server][clients], after[server][clients]
            rows.append([
                label, clients, f"{old['requests_per_second']:.0f}", f"{new['requests_per_second']:.0f}",
                times(new["requests_per_second"] / old["requests_per_second"]),
                f"{old['p50_ms']:.1f} / {old['p99_ms']:.1f}", f"{new['p50_ms']:.1f} / {new['p99_ms']:.1f}",
            ])  # fmt: skip
    host = [
        [f"host {kind.replace('_', ' ')}, {n} texts", "", f"{before['host'][f'{kind}_{n}']['ms']:.2f} ms",
         f"{after['host'][f'{kind}_{n}']['ms']:.2f} ms",
         times(before["host"][f"{kind}_{n}"]["ms"] / after["host"][f"{kind}_{n}"]["ms"]), "", ""]
        for kind in ("cuda_graphs", "eager") for n in (1, 256)
    ]  # fmt: skip
    lines = [
        f"*{before['gpu']}, torch {before['torch']}, {day(record)}; {record['machine']}; {before['seconds']:g} s "
        "per load point*",
        "",
        *table(
            [
                "server",
                "clients",
                "before req/s",
                "after req/s",
                "after / before",
                "before p50 / p99 ms",
                "after p50 / p99 ms",
            ],
            rows + host,
        ),
        "",
        f"Dev accuracy: {before['platform']['dev_accuracy']:.4f} before, {after['platform']['dev_accuracy']:.4f} "
        f"after (each tree's own adapter; agreement with its baseline {before['platform']['agreement']:.4f} and "
        f"{after['platform']['agreement']:.4f}). Host rows: median ms per call in-process (after / before: speed-up).",
    ]
    return "\n".join(lines)


def gpu_decoder(record: dict) -> str:
    settings = record["settings"]
    rows = []
    for label, runs in (("", record["runs"]), (" (before)", record.get("previous", {}).get("runs", {}))):
        for quantization, row in runs.items():
            rows.append([
                f"{quantization}{label}", f"{row['train_samples_per_second']:.0f}",
                f"{row['peak_gpu_memory_mib']:,}", f"{row['idle_gpu_memory_mib']:,}", str(row["global_step"]),
                f"{row['accuracy']:.3f}",
            ])  # fmt: skip
    ratio = record["ratio_4bit"]
    lines = [
        f"*{record['machine']}, torch {record['torch']}, {day(record)}; {record['model']}, "
        f"{record['parameters'] / 1e6:.0f} M parameters; {settings['steps']} steps of batch {settings['batch_size']}, "
        f"{settings['max_length']} tokens, bf16 autocast*",
        "",
        *table(
            ["quantization", "samples/s", "peak GPU MiB", "idle MiB", "steps", "accuracy (random weights)"],
            rows,
        ),
        "",
        f"4-bit / none: {times(ratio['samples_per_second'])} the samples/s, {times(ratio['peak_memory'])} the peak "
        "GPU memory (nvidia-smi, sampled every 100 ms; the CUDA context and PyTorch's cache included).",
    ]
    if "previous" in record:
        lines.append(
            f"Rows marked *before*: {record['previous']['change']}: 4-bit took "
            f"{times(record['previous']['ratio_4bit']['peak_memory'])} the memory of the unquantized run."
        )
    return "\n".join(lines)


def data_audit(record: dict) -> str:
    audit = record["audit"]
    rows = [
        [label, f"{audit[key]['flagged']:,}", f"{audit[key]['precision']:.3f}", f"{audit[key]['recall']:.3f}"]
        for key, label in (
            ("at_flip_rate", "**audit**: top-ranked rows, as many as were flipped"),
            ("cleanlab_flagged", "**audit**: cleanlab's flagged set"),
            ("baseline_disagree", "baseline: every row the same classifier labels differently"),
        )
    ]
    stages = audit.get("stages") or {}
    lines = [
        f"*{machine_line({'machine': audit.get('machine', record['machine'])})}, {day(record)}; SST-2 train, "
        f"{audit['rows']:,} rows audited, {audit['flips']:,} "
        f"labels flipped at random (rate {audit['flip_rate']:g}, seed {audit['seed']})*",
        "",
        *table(["flagged rows", "rows", "precision", "recall"], rows),
        "",
        f"Wall time {audit['wall_seconds']:.0f} s for `finetune data audit` in a fresh process (embedding "
        f"{stages.get('embed', 0):.0f} s, label errors {stages.get('label_errors', 0):.0f} s, near-duplicates "
        f"{stages.get('near_duplicates', 0):.0f} s), peak memory {audit['peak_rss_mib']:,} MiB. The classifier's "
        f"out-of-fold accuracy: {audit['oof_accuracy']:.4f} "
        f"({audit.get('model', 'embeddings + logistic regression')}); "
        f"cleanlab's estimated label noise {audit['estimated_noise']:.1%}.",
    ]
    if "train" in record:
        t = record["train"]
        runs = t["runs"]
        seeds = t.get("seeds", [t.get("seed")])
        lines += [
            "",
            f"*{machine_line({'machine': t.get('machine', record['machine'])})}: MiniLM trained on each file "
            f"(configs/sst2_minilm.yaml, {t['epochs']:g} epoch(s), last checkpoint), scored on all of SST-2 dev; "
            f"training seeds {', '.join(str(seed) for seed in seeds)}, medians*",
            "",
            *table(
                ["training file", "rows", "dev accuracy (median)", "by seed"],
                [
                    [
                        name,
                        f"{run['rows']:,}",
                        f"{run['dev_accuracy']:.4f}",
                        ", ".join(f"{a:.4f}" for a in run.get("dev_accuracy_by_seed", [run["dev_accuracy"]])),
                    ]
                    for name, run in runs.items()
                ],
            ),
            "",
            f"`data fix --drop {t['drop']}` removed {t['rows_removed']:,} rows"
            + (
                f", {t['flipped_rows_removed']:,} of the {t['flips']:,} flipped ones"
                if "flipped_rows_removed" in t
                else ""
            )
            + f". Accuracy lost to the flips {t['accuracy_lost']:+.4f}, won back by the fix "
            f"{t['accuracy_won_back']:+.4f}"
            + (
                f" ({t['share_recovered']:.0%} of the loss)." if t.get("share_recovered") is not None else "."
            ),
        ]
    return "\n".join(lines)


RENDER: dict[str, Callable[[dict], str]] = {
    "gpu_compare": gpu_compare,
    "train_throughput": train_throughput,
    "train_throughput_cuda": train_throughput,
    "train_throughput_seeds": train_throughput_seeds,
    "sst2_minilm": sst2_minilm,
    "data_validate": data_validate,
    "tracking_overhead": tracking_overhead,
    "queue": queue,
    "api": api,
    "inference": inference,
    "inference_side_by_side": inference_side_by_side,
    "observability": observability,
    "layer_report": layer_report,
    "gpu_train:throughput": gpu_train_throughput,
    "gpu_train:accuracy": gpu_train_accuracy,
    "gpu_train:paired": gpu_train_paired,
    "gpu_train:launches": gpu_train_launches,
    "gpu_platform_train": gpu_platform_train,
    "gpu_platform_train:previous": gpu_platform_train_previous,
    "gpu_serve": gpu_serve,
    "gpu_serve:host": gpu_serve_host,
    "sweep": sweep,
    "calibration": calibration,
    "gpu_serve_side_by_side": gpu_serve_side_by_side,
    "tasks_multilabel": tasks_multilabel,
    "tasks_sts": tasks_sts,
    "gpu_decoder": gpu_decoder,
    "data_audit": data_audit,
}


def table_for(name: str) -> str:
    """The table NAME[:VIEW] names: the result file's own kind (its "benchmark" field, else the file name)."""
    file, _, view = name.partition(":")
    record = load(file)
    kind = record.get("benchmark", Path(file).name)
    key = f"{kind}:{view}" if view else kind
    if key not in RENDER:
        raise KeyError(f"bench/render_tables.py has no renderer for {key!r} (from {name!r})")
    return RENDER[key](record)


def main() -> None:
    for name in sys.argv[1:]:
        print(table_for(name))
        print()


if __name__ == "__main__":
    main()
