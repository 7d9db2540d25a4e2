"""Tracking overhead and registry search speed.

    python bench/tracking_overhead.py [--repeats 3] [--cards 1000]

1. The quickstart config trained in one process with MLflow tracking on and off, alternating (a warm-up run
   first, so imports and the store's creation are not counted; registration off on both sides, its cost is
   timed separately). Reports the MLflow share of training wall time.
2. Search + recommend over N generated model cards (real MiniLM embeddings): p50/p95 latency of a search with
   filters plus a natural-language recommendation (query embedding included), cards already loaded; and the
   cold load of the card folder.
Writes bench/results/tracking_overhead.json.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, median, print_table, write_result

TOPICS = ["sentiment", "topic", "spam", "intent", "toxicity", "emotion", "language-id", "urgency"]
DOMAINS = ["movie reviews", "product reviews", "news", "emails", "support tickets", "tweets", "forum posts"]
LANGUAGES = ["English", "Chinese", "German", "French", "Multilingual"]
BASES = ["minilm", "distilbert-base-uncased", "roberta-base", "albert-base-v2", "bert-base-chinese"]
QUERIES = [
    "small fast English sentiment model",
    "detect spam in emails",
    "classify news by topic",
    "Chinese product review sentiment",
    "toxic comment detection for forums",
    "route support tickets by urgency",
]


def train_once(home: Path, tracking: bool) -> float:
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import load_config
    from finetune_platform.training.runner import run_training

    settings = Settings(
        FINETUNE_HOME=home / ".finetune", MODEL_REGISTRY_DIR=home / "cards", MLFLOW_ENABLED=tracking
    )
    config = load_config(
        ROOT / "configs" / "quickstart.yaml",
        [
            f"output_dir={home / 'results'}",
            "registry.enabled=false",
            f"data.train_file={ROOT / 'data/sample/train.csv'}",
            f"data.validation_file={ROOT / 'data/sample/validation.csv'}",
        ],
    )
    start = time.perf_counter()
    result = run_training(config, settings=settings, show_progress=False)
    wall = time.perf_counter() - start
    if tracking:
        MEASURED.append((result.metrics["tracking_seconds"], wall))
    return wall


MEASURED: list[tuple[float, float]] = []  # (seconds inside MLflow calls, run wall seconds) per tracked run


def registration_seconds(home: Path) -> float:
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import load_config
    from finetune_platform.training.runner import run_training

    settings = Settings(FINETUNE_HOME=home / ".finetune", MODEL_REGISTRY_DIR=home / "cards")
    overrides = [
        f"output_dir={home / 'results'}",
        f"data.train_file={ROOT / 'data/sample/train.csv'}",
        f"data.validation_file={ROOT / 'data/sample/validation.csv'}",
        "training.max_steps=2",
    ]
    timings = {}
    for enabled in (False, True):
        config = load_config(
            ROOT / "configs" / "quickstart.yaml", [*overrides, f"registry.enabled={enabled}"]
        )
        start = time.perf_counter()
        run_training(config, settings=settings, show_progress=False)
        timings[enabled] = time.perf_counter() - start
    return timings[True] - timings[False]


def make_cards(root: Path, count: int) -> None:
    from finetune_platform.tracking.embeddings import default_embedder
    from finetune_platform.tracking.model_cards import CardStore, ModelCard

    rng = random.Random(0)
    store = CardStore(root)
    cards = []
    for i in range(count):
        topic, domain, language = rng.choice(TOPICS), rng.choice(DOMAINS), rng.choice(LANGUAGES)
        size = rng.choice(["small and fast", "large and accurate", "balanced"])
        cards.append(
            ModelCard(
                name=f"{topic}-{i}",
                version=1,
                base_model=rng.choice(BASES),
                language=language,
                task=f"{topic}",
                description=f"{language} {topic} classifier for {domain}, {size}",
                metrics={
                    "accuracy": round(rng.uniform(0.6, 0.97), 4),
                    "macro_f1": round(rng.uniform(0.5, 0.95), 4),
                },
                tags=[topic, domain.split()[0], size.split()[0]],
                dataset_version=None,
                run_id=None,
                run_folder=None,
                stage=rng.choice(["Staging", "Production", "Archived"]),
                created_at="2026-11-26T00:00:00+00:00",
                adapter_checksum="sha256:" + "0" * 64,
                labels=["a", "b"],
            )
        )
    embedder = default_embedder()
    for start in range(0, count, 64):
        batch = cards[start : start + 64]
        for card, vector in zip(batch, embedder.embed([c.text() for c in batch]), strict=True):
            card.embedding = vector.round(6).tolist()
            store.save(card)


def search_latency(root: Path, rounds: int) -> dict[str, float]:
    from finetune_platform.tracking.embeddings import default_embedder
    from finetune_platform.tracking.model_cards import CardStore
    from finetune_platform.tracking.search import CardFilter, Threshold, recommend_for_query, search

    store = CardStore(root)
    start = time.perf_counter()
    store.all()
    cold = time.perf_counter() - start
    embedder = default_embedder()
    timings = []
    for i in range(rounds):
        query = QUERIES[i % len(QUERIES)]
        card_filter = CardFilter(language="English", thresholds=[Threshold.parse("accuracy>=0.8")])
        start = time.perf_counter()
        search(store, card_filter)
        recommend_for_query(store, query, top_k=5, embedder=embedder)
        timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {
        "cold_load_ms": cold * 1000,
        "p50_ms": statistics.median(timings),
        "p95_ms": timings[int(0.95 * (len(timings) - 1))],
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cards", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        home = Path(folder)
        train_once(home, tracking=True)  # warm-up: imports, the store's tables, the experiment
        runs: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.repeats):
            for tracking in (False, True):
                runs[tracking].append(train_once(home, tracking))
        registration = registration_seconds(home)
        make_cards(home / "many-cards", args.cards)
        latency = search_latency(home / "many-cards", args.rounds)

    off, on = median(runs[False]), median(runs[True])
    share = (on - off) / on
    inside = median([seconds / wall for seconds, wall in MEASURED[1:]])  # the warm-up run is left out
    print_table(
        ["quickstart training", "wall s (median)", "runs"],
        [
            ["tracking off", f"{off:.2f}", ", ".join(f"{x:.2f}" for x in runs[False])],
            ["tracking on (MLflow SQLite store)", f"{on:.2f}", ", ".join(f"{x:.2f}" for x in runs[True])],
        ],
    )
    print(
        f"\nMLflow share of training wall time: side by side {share:+.1%}; time inside MLflow calls "
        f"{inside:.2%} of each tracked run (median) (goal <= 2%)"
    )
    print(f"registration (card, embedding, model version) adds {registration:.2f} s per run")
    print(
        f"\nsearch + recommend over {args.cards} cards: p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms "
        f"(goal p50 <= 50 ms); cold load of the card folder {latency['cold_load_ms']:.0f} ms"
    )
    path = write_result(
        "tracking_overhead",
        {
            "training_wall_seconds": {"tracking_off": runs[False], "tracking_on": runs[True]},
            "mlflow_share": share,
            "registration_seconds": registration,
            "cards": args.cards,
            "search": latency,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
