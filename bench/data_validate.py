"""Validation + hashing speed and memory against a bare pandas.read_csv of the same file.

    python bench/data_validate.py [--rows 1000000] [--repeats 3]

Generates CSV files (250k and 1M rows by default), then times, each in a fresh process so peak memory
(ru_maxrss) belongs to that one job: (a) ``pandas.read_csv(path)``, (b) the same read with every column
as text (``dtype=str``, what a validator must look at), (c) ``validate_file`` (all checks, content hash,
chunks of 100k rows). Imports are outside the timings. Runs alternate; medians are reported. Also times
the validation of
SST-2 train.tsv with the MiniLM tokenizer (token-length checks on). Writes bench/results/data_validate.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SST2_DIR, median, print_table, write_result

WORDS = (
    "the a film movie plot actor story scene great awful boring brilliant slow funny dull moving script "
    "music ending character director dialogue visual charming clumsy tense warm cold long short"
).split()


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        handle.write("text,label\n")
        for i in range(rows):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 16)))
            handle.write(f"{text} {i},{rng.randint(0, 1)}\n")


def child(kind: str, path: str) -> None:
    import pandas as pd

    from finetune_platform.data.validation import ValidationOptions, validate_file

    start = time.perf_counter()  # imports are not part of the job
    if kind == "pandas":
        rows = len(pd.read_csv(path))
    elif kind == "pandas-str":
        rows = len(pd.read_csv(path, dtype=str))
    else:
        report = validate_file(Path(path), ValidationOptions())
        rows = report.rows_read
        assert report.content_hash
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_mb, "rows": rows}))


def measure(kind: str, path: Path) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path)], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def baseline_rss() -> float:
    """Peak RSS of a process that imports the same libraries and reads nothing (the floor)."""
    code = (
        "import resource, pandas, finetune_platform.data.validation; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    return float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


def sst2_seconds() -> dict[str, float] | None:
    if not (SST2_DIR / "train.tsv").is_file():
        return None
    from transformers import AutoTokenizer

    from finetune_platform.catalogue import resolve_base_model
    from finetune_platform.data.validation import ValidationOptions, validate_file

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("minilm").source)
    options = ValidationOptions(
        text_column="sentence",
        label_column="label",
        tokenizer=tokenizer,
        max_length=128,
        label_names=["negative", "positive"],
    )
    times = []
    for _ in range(3):
        start = time.perf_counter()
        report = validate_file(SST2_DIR / "train.tsv", options)
        times.append(time.perf_counter() - start)
    return {
        "seconds": median(times),
        "rows": report.rows_read,
        "issues": [i.code.value for i in report.issues],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="Rows of the large generated file.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    floor = baseline_rss()
    results = {}
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for rows in (args.rows // 4, args.rows):
            path = Path(folder) / f"generated_{rows}.csv"
            generate(path, rows)
            size_mb = path.stat().st_size / 1e6
            jobs = {
                "pandas.read_csv": "pandas",
                "pandas.read_csv(dtype=str)": "pandas-str",
                "validate + hash": "validate",
            }
            runs: dict[str, list[dict[str, float]]] = {name: [] for name in jobs}
            for _ in range(args.repeats):
                for name, kind in jobs.items():
                    runs[name].append(measure(kind, path))
            base = median([r["seconds"] for r in runs["pandas.read_csv"]])
            for name, outcomes in runs.items():
                seconds = median([r["seconds"] for r in outcomes])
                peak = max(r["peak_rss_mb"] for r in outcomes)
                results[f"{name} @ {rows}"] = {
                    "rows": rows,
                    "file_mb": round(size_mb, 1),
                    "seconds": seconds,
                    "rows_per_second": rows / seconds,
                    "peak_rss_mb": peak,
                    "peak_above_imports_mb": peak - floor,
                    "ratio_to_pandas": seconds / base,
                    "runs": outcomes,
                }
                table.append(
                    [
                        f"{rows:,}",
                        f"{size_mb:.0f}",
                        name,
                        f"{seconds:.2f}",
                        f"{rows / seconds:,.0f}",
                        f"{seconds / base:.2f}x",
                        f"{peak:.0f}",
                        f"{peak - floor:.0f}",
                    ]
                )
    print_table(
        ["rows", "file MB", "job", "seconds", "rows/s", "vs pandas", "peak RSS MB", "above imports MB"], table
    )
    sst2 = sst2_seconds()
    if sst2:
        print(
            f"\nSST-2 train.tsv ({sst2['rows']:,} rows) with MiniLM token-length checks: {sst2['seconds']:.2f} s "
            f"(median of 3); issues: {', '.join(sst2['issues']) or 'none'}"
        )
    path = write_result(
        "data_validate", {"import_floor_rss_mb": floor, "results": results, "sst2_train": sst2}
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
