"""Dev accuracy of the CPU training variants over several seeds: is a difference between two trees the recipe, or
one seed's batches and dropout masks?

    python bench/train_seeds.py --seeds 1 2 3 --precisions fp32 --baseline-src /tmp/main/src

runs ``bench/train_throughput.py`` once per seed (one repeat each, every variant) and writes
``bench/results/train_throughput_seeds.json``: each variant's accuracy per seed, their mean and spread, and each
variant's mean difference to the HF baseline. ``--from FILE ...`` builds the same summary from
``train_throughput.json`` files of runs already made (one per seed, same setup). Throughput is not summarised:
use ``bench/train_throughput.py`` on a quiet machine for speed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds queue.py, which would shadow the standard library's queue (torch imports it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))
from bench.common import write_result  # noqa: E402

RESULT = ROOT / "bench" / "results" / "train_throughput.json"


def summarise(records: list[dict]) -> dict:
    """Accuracy per variant per seed (records: train_throughput results, one seed each, same setup)."""
    setups = [{k: v for k, v in r["setup"].items() if k != "seed"} for r in records]
    if any(setup != setups[0] for setup in setups):
        raise SystemExit("the runs differ in more than their seed: " + json.dumps(setups))
    seeds = [r["setup"]["seed"] for r in records]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"a seed appears twice: {seeds}")
    variants = list(records[0]["results"])
    accuracy = {
        name: {str(r["setup"]["seed"]): r["results"][name]["accuracy"] for r in records} for name in variants
    }
    baseline = next(iter(variants))
    summary = {}
    for name, by_seed in accuracy.items():
        values = list(by_seed.values())
        summary[name] = {
            "accuracy_by_seed": by_seed,
            "mean": statistics.fmean(values),
            "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
            "mean_vs_hf_baseline": statistics.fmean(v - accuracy[baseline][s] for s, v in by_seed.items()),
        }
    return {
        "setup": {**setups[0], "seeds": seeds},
        "run_when": {str(r["setup"]["seed"]): r["when"] for r in records},
        "results": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[1, 2, 3], help="One run of every variant each."
    )
    parser.add_argument("--from", dest="files", type=Path, nargs="*", help="Summarise these runs instead.")
    args, passed = (
        parser.parse_known_args()
    )  # the rest goes to train_throughput.py (--precisions, --baseline-src)
    if args.files:
        records = [json.loads(path.read_text(encoding="utf-8")) for path in args.files]
    else:
        records = []
        kept = RESULT.read_bytes() if RESULT.exists() else None  # the 3-repeat speed result stays as it was
        try:
            for seed in args.seeds:
                command = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--repeats", "1"]
                subprocess.run([*command, "--seed", str(seed), *passed], check=True)
                records.append(json.loads(RESULT.read_text(encoding="utf-8")))
        finally:
            if kept is not None:
                with tempfile.NamedTemporaryFile(dir=RESULT.parent, delete=False) as handle:
                    handle.write(kept)
                shutil.move(handle.name, RESULT)
    payload = summarise(records)
    for name, result in payload["results"].items():
        by_seed = ", ".join(
            f"{seed}: {value * 100:.2f}" for seed, value in result["accuracy_by_seed"].items()
        )
        print(f"{name}: mean {result['mean'] * 100:.2f} ± {result['stdev'] * 100:.2f} ({by_seed})")
    print(f"wrote {write_result('train_throughput_seeds', payload)}")


if __name__ == "__main__":
    main()
