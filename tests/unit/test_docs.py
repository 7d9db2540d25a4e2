"""The documentation: generated reference pages match the code, and the README stays short and points into docs/.

`make docs` (docs/gen/generate.py) writes the blocks between ``<!-- generated: NAME -->`` and
``<!-- end generated -->``; these tests regenerate every page in a copy of the repository and compare.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
GENERATOR = Path("docs") / "gen" / "generate.py"
BLOCK = re.compile(r"<!-- generated: (?P<name>[^>]+?) -->\n(?P<body>.*?)<!-- end generated -->", re.DOTALL)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """What the generator reads, copied: docs/, the package, bench/ and the chart's values."""
    target = tmp_path / "repo"
    for name in ("docs", "src", "bench"):
        shutil.copytree(ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (target / "charts" / "finetune-platform").mkdir(parents=True)
    shutil.copy(
        ROOT / "charts/finetune-platform/values.yaml", target / "charts/finetune-platform/values.yaml"
    )
    return target


def generate(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / GENERATOR), "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def pages(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text(encoding="utf-8") for p in sorted((root / "docs").rglob("*.md"))
    }


def test_generated_pages_match_the_code(copy):
    result = generate(copy)
    assert result.returncode == 0, result.stderr
    stale = [name for name, text in pages(copy).items() if text != pages(ROOT)[name]]
    assert stale == [], f"generated docs are stale, run `make docs`: {stale}"


def test_every_reference_is_generated():
    """Each reference table lives in a generated block, and every block has content."""
    found: dict[str, list[str]] = {}
    for name, text in pages(ROOT).items():
        for block in BLOCK.finditer(text):
            assert block["body"].strip(), f"{name}: the block {block['name']!r} is empty"
            found.setdefault(block["name"].split()[0], []).append(name)
    assert found["settings"] == ["docs/settings.md"]
    assert found["config"] == ["docs/reference/config.md"]
    assert found["cli"] == ["docs/reference/cli.md"]
    assert found["helm-values"] == ["docs/reference/helm-values.md"]
    assert set(found["bench"]) == {"docs/benchmarks.md", "docs/architecture.md"}  # the layer report on both


def test_every_benchmark_result_is_on_the_benchmarks_page():
    text = (DOCS / "benchmarks.md").read_text(encoding="utf-8")
    names = [block["name"].split() for block in BLOCK.finditer(text)]
    shown = {args[0].split(":")[0] for kind, *args in names if kind == "bench"}
    results = {
        str(path.relative_to(ROOT / "bench" / "results").with_suffix(""))
        for path in (ROOT / "bench" / "results").rglob("*.json")
    }
    # layer_report_before is the "before" column of the layer_report table
    assert results - shown == {"layer_report_before"}


def test_a_changed_description_makes_the_page_stale(copy):
    settings = copy / "src/finetune_platform/settings.py"
    text = settings.read_text(encoding="utf-8")
    old = 'description="Log level of the platform\'s loggers."'
    assert old in text
    settings.write_text(text.replace(old, 'description="How much the platform logs."'), encoding="utf-8")

    result = generate(copy, "--check")

    assert result.returncode == 1
    assert "stale generated docs (run `make docs`): docs/settings.md" in result.stderr
    result = generate(copy)
    assert result.returncode == 0, result.stderr
    assert (
        "| `LOG_LEVEL` | string | `INFO` | How much the platform logs. |"
        in (copy / "docs/settings.md").read_text()
    )


def test_a_hand_edit_inside_a_generated_block_is_caught(copy):
    page = copy / "docs/reference/helm-values.md"
    page.write_text(
        page.read_text().replace("| `ui.replicas` | `1` |", "| `ui.replicas` | `3` |"), encoding="utf-8"
    )
    assert "| `ui.replicas` | `3` |" in page.read_text()

    result = generate(copy, "--check")

    assert result.returncode == 1
    assert "docs/reference/helm-values.md" in result.stderr


def test_a_new_benchmark_result_changes_the_page(copy):
    result_file = copy / "bench/results/api.json"
    result_file.write_text(
        result_file.read_text().replace('"requests_per_s": 441.91', '"requests_per_s": 999.0')
    )

    result = generate(copy, "--check")

    assert result.returncode == 1
    assert "docs/benchmarks.md" in result.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "message"),
    [
        (
            "src/finetune_platform/settings.py",
            'description="Log level of the platform\'s loggers."',
            "",
            "docs: Settings fields without a description: LOG_LEVEL",
        ),
        (
            "src/finetune_platform/training/config.py",
            'description="Gradient clipping norm; above 0, at most 1,000,000."',
            "",
            "docs: TrainConfig fields without a description: training.max_grad_norm",
        ),
        (
            "src/finetune_platform/cli/training.py",
            'help="Print the final metrics as JSON."',
            "",
            "docs: CLI commands or parameters without help: finetune train json_output",
        ),
        (
            "charts/finetune-platform/values.yaml",
            "## @param ui.replicas Number of UI pods (Streamlit sessions are sticky to a pod: use session affinity "
            "at the ingress)",
            "## @param ui.replicas",
            "docs: charts/finetune-platform/values.yaml: @param without a description: ui.replicas",
        ),
    ],
    ids=["setting", "config field", "cli option", "helm value"],
)
def test_a_missing_description_stops_the_generator(copy, path, old, new, message):
    source = copy / path
    text = source.read_text(encoding="utf-8")
    assert old in text
    source.write_text(text.replace(old, new), encoding="utf-8")
    before = pages(copy)

    result = generate(copy)

    assert result.returncode == 2
    assert message in result.stderr
    assert pages(copy) == before  # nothing written


def test_an_unknown_block_is_an_error(copy):
    page = copy / "docs/index.md"
    page.write_text(
        page.read_text() + "\n<!-- generated: nonsense -->\n<!-- end generated -->\n", encoding="utf-8"
    )

    result = generate(copy)

    assert result.returncode != 0
    assert "docs/index.md: unknown generated block 'nonsense'" in result.stderr


# --- the README ---------------------------------------------------------------------------------------------

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_short_and_starts_with_the_two_commands():
    assert len(README.splitlines()) <= 200
    first_block = re.search(r"```bash\n(.*?)```", README, re.DOTALL)[1]
    assert first_block.splitlines()[0].startswith("make demo   # ")
    assert first_block.splitlines()[1].startswith("make test   # ")


def test_readme_links_into_docs_resolve():
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 10
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_the_seed_readme_table_is_on_its_docs_page_and_linked():
    page = (DOCS / "compatibility.md").read_text(encoding="utf-8")
    assert page.startswith("# Compatibility with the Finetune-30-days README")
    assert "| the README says | what it does here |" in page
    assert "](docs/compatibility.md)" in README
