"""The import contract of pyproject.toml ([tool.importlinter], run by `make test` as `lint-imports`): it holds for
the package, it places every module in a layer, and it is not a formality: an upward import, an import from one
face into another, a cycle, or PyTorch in the API each break it."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = "finetune_platform"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
# The package whose __init__ holds only a docstring and the version, and so belongs to no layer: the root (the
# layers are its children).
UNLAYERED = {PACKAGE}


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under ``root``/src with the contract of ``root``/pyproject.toml."""
    environment = {**os.environ, "PYTHONPATH": str(root / "src"), "NO_COLOR": "1"}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=environment, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def contract(contract_id: str) -> dict:
    return next(item for item in CONFIG["contracts"] if item["id"] == contract_id)


def layer_modules() -> list[str]:
    """Every module named by the layers contract (optional ones, in parentheses, included)."""
    layers = contract("layers")
    (container,) = layers["containers"]
    names = []
    for layer in layers["layers"]:
        for tail in re.split(r"[|:]", layer):
            names.append(f"{container}.{tail.strip().strip('()')}")
    return names


def package_modules(source: Path) -> list[str]:
    modules = []
    for path in sorted((source / PACKAGE).rglob("*.py")):
        parts = path.relative_to(source).with_suffix("").parts
        modules.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return modules


def test_the_package_keeps_the_import_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_module_sits_in_exactly_one_layer():
    layers = layer_modules()
    assert len(layers) == len(set(layers)), "a module is named twice in the layers"
    for module in package_modules(ROOT / "src"):
        if module in UNLAYERED:
            continue
        homes = [layer for layer in layers if module == layer or module.startswith(layer + ".")]
        assert len(homes) == 1, (
            f"{module} is in {len(homes)} layers {homes}: name it (or its package) in exactly one layer of "
            "pyproject.toml's layers contract (DESIGN.md's 'Layers' says which)"
        )


def test_the_unlayered_packages_hold_no_code():
    """The root belongs to no layer, so nothing may hide in it: a docstring and the version only."""
    for package in UNLAYERED:
        init = ROOT / "src" / Path(*package.split(".")) / "__init__.py"
        for statement in ast.parse(init.read_text(encoding="utf-8")).body:
            docstring = isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant)
            version = isinstance(statement, ast.Assign) and [ast.unparse(t) for t in statement.targets] == [
                "__version__"
            ]
            assert docstring or version, f"{init}: {ast.unparse(statement)}"


def collapsed(text: str) -> str:
    """lint-imports wraps its lines at 80 columns: compare with runs of white space as one space."""
    return " ".join(text.split())


@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        # base imports a face: the kind of import that hid in observability.py
        ("settings.py", "from finetune_platform.worker import app as _worker", "layers"),
        # a foundation imports the domain: tracking.embeddings once took the model catalogue from training
        ("tracking/summary.py", "from finetune_platform.training import models as _models", "layers"),
        # a face imports another face: the inference server once took its metrics and tokens from the API
        ("serve/app.py", "from finetune_platform.api import auth as _auth", "layers"),
        # the domain imports a face: the adapter pool and the batcher stay below the inference server's app
        ("inference/batcher.py", "from finetune_platform.serve import app as _app", "layers"),
        # inside a function it is still an import: hiding one there changes nothing
        (
            "errors.py",
            "def _later():\n    from finetune_platform.services import jobs\n\n    return jobs",
            "layers",
        ),
        # two sibling modules that import each other (data.splits imports data.loading)
        ("data/loading.py", "from finetune_platform.data import splits as _splits", "no-cycles"),
        # the API image has no PyTorch
        ("api/schemas.py", "import torch as _torch", "api-without-torch"),
    ],
)
def test_a_broken_rule_fails_the_contract(tmp_path, module, line, broken):
    """A copy of the package with one bad import added: lint-imports fails, naming the contract and the import."""
    shutil.copytree(
        ROOT / "src" / PACKAGE, tmp_path / "src" / PACKAGE, ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "src" / PACKAGE / module
    path.write_text(path.read_text() + f"\n\n{line}\n")
    result = lint_imports(tmp_path)
    output = collapsed(result.stdout)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{collapsed(contract(broken)['name'])} BROKEN" in output, result.stdout
    stem = module.removesuffix(".py").replace("/", ".")
    assert f"{PACKAGE}.{stem}" in output or f".{stem.split('.')[-1]} ->" in output, result.stdout


# Issue 20, step 1: a function-level import only keeps a heavy optional dependency lazy, and says so in a one-line
# `# lazy: <why>` at the end of its line or on the line above it (or above the first of a run of imports that share
# the reason). Every module of the package.


def unreasoned_function_imports(path: Path) -> list[int]:
    """The lines of imports inside a function body of ``path`` that carry no `# lazy:` reason."""
    lines = path.read_text(encoding="utf-8").splitlines()
    tree = ast.parse("\n".join(lines), filename=str(path))

    def reasoned(number: int) -> bool:  # 1-based
        return 0 < number <= len(lines) and "# lazy:" in lines[number - 1]

    missing = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for body in (
            getattr(node, field) for node in ast.walk(function) for field in ("body", "orelse", "finalbody")
            if isinstance(getattr(node, field, None), list)
        ):  # fmt: skip
            run_start = None
            for statement in body:
                if not isinstance(statement, ast.Import | ast.ImportFrom):
                    run_start = None
                    continue
                if run_start is None:
                    run_start = statement.lineno
                own = range(statement.lineno, (statement.end_lineno or statement.lineno) + 1)
                if not (
                    any(reasoned(n) for n in own) or reasoned(statement.lineno - 1) or reasoned(run_start - 1)
                ):
                    missing.append(statement.lineno)
    return sorted(set(missing))


def test_function_level_imports_say_why_they_are_lazy():
    source = ROOT / "src" / PACKAGE
    files = sorted(source.rglob("*.py"))
    assert len(files) > 100, files
    missing = [
        f"{path.relative_to(ROOT)}:{line}" for path in files for line in unreasoned_function_imports(path)
    ]
    assert not missing, (
        "function-level imports without a `# lazy: <why>` reason (move a light import to the module's top; "
        "keep one lazy only for a heavy optional dependency, and say which): " + ", ".join(missing)
    )


def test_an_import_in_a_function_without_a_reason_is_found(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        textwrap.dedent(
            """\
            import os


            def first():
                import json  # line 5: no reason
                return json


            def second():
                # lazy: torch, loaded with a model
                import torch
                import numpy  # one run of imports under the reason above it
                return torch, numpy


            def third():
                if os.sep:
                    import csv  # lazy: this line only
                    x = 1
                    import re  # line 20: after another statement, a new run without a reason
                return csv, re, x
            """
        )
    )
    assert unreasoned_function_imports(module) == [5, 20]
