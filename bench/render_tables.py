"""Markdown tables for the README from bench/results/*.json (so the docs' numbers are the measured ones).

    python bench/render_tables.py gpu_compare_eager gpu_compare_graphs train_throughput layer_report

prints one table per result file named (without .json); paste it under the benchmark's section.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
    machine = record["machine"]
    lines = [
        f"*{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}; {record['setup']['train_rows']} "
        f"SST-2 rows, {record['setup']['repeats']} repeats (medians)*",
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


def layer_report(record: dict) -> str:
    """This checkout's layer report beside the one before issue 20 (layer_report_before.json)."""
    before = json.loads((RESULTS / "layer_report_before.json").read_text(encoding="utf-8"))["summary"]
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


RENDER = {"gpu_compare": gpu_compare, "train_throughput": train_throughput, "layer_report": layer_report}


def main() -> None:
    for name in sys.argv[1:]:
        record = json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
        kind = record.get("benchmark", name)
        print(RENDER[kind](record) if kind in RENDER else f"(no renderer for {kind})")
        print()


if __name__ == "__main__":
    main()
