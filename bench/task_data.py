"""Two datasets the project writes itself from SST-2, for the multi-label and STS benchmarks (bench/tasks.py).

    python bench/task_data.py multilabel --rows 4000 --seed 0 --out /tmp/multilabel.csv [--source dev.tsv]
    python bench/task_data.py sts --rows 4000 --seed 0 --out /tmp/sts.csv [--source dev.tsv]

Both read SST-2's sentences (``../shared/data/sst2/train.tsv`` by default; bench/tasks.py trains on train.tsv and
evaluates on dev.tsv), keep each distinct sentence once (the first time it appears) and are deterministic: the same
source, rows and seed give the same file, byte for byte.

**multilabel**: CSV ``text,labels``, the labels a JSON list of names (``["acting", "positive"]``; ``[]`` for none),
sorted. Seven labels, any number of them per row (0 to 7):

- ``positive``: the SST-2 sentiment is positive (label 1). A negative sentence does not carry it.
- ``acting``, ``comedy``, ``director``, ``music``, ``story``, ``visuals``: the sentence holds one of the topic's words
  in ``TOPICS`` as a whole word (SST-2 is lower-case and already split into words, so ``sentence.split()`` is the
  test: "actor" in "the actors" does not count, "actors" does).

The rows are drawn at random (seeded) from the distinct sentences; ``--rows`` larger than their number takes them all.
The topic labels are a function of the words, so a model can learn them exactly; ``positive`` is SST-2's own task.

**sts**: CSV ``text,text_pair,score``, an STS-style sentence pair with a similarity score in [0, 5]. Sentence a is an
SST-2 sentence of ``min_words``-``max_words`` words (6-30 by default) and at least two distinct words; b is built from
it word by word:

1. draw how many of a's n words b keeps, k, uniformly from 0..n, and which positions (at random);
2. b has n words: at a kept position, a's word; elsewhere the next word of another SST-2 sentence c (drawn at random,
   its words used in order and from the start again when they run out), skipping a word of c equal to a's word at
   that position;
3. score = 5 × k / n.

So the rule a reader can check on any row: b has as many words as a, and the score is 5 × (the positions where b's
word equals a's word) / (a's words). Scores spread evenly over [0, 5] in steps of 5/n.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds queue.py, which would shadow the standard library's queue: run as a script, bench/ leaves sys.path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

from bench.common import SST2_DIR  # noqa: E402

# Each topic label and the words that carry it (whole words of the lower-cased, tokenised SST-2 sentence).
TOPICS: dict[str, frozenset[str]] = {
    "acting": frozenset(
        "acting actor actors actress actresses performance performances cast casting role roles".split()
    ),
    "comedy": frozenset(
        "comedy comedies comic comedic funny funnier funniest humor humorous laugh laughs laughter jokes joke "
        "hilarious wit witty".split()
    ),
    "director": frozenset(
        "director directors directed direction directing directorial filmmaker filmmakers".split()
    ),
    "music": frozenset(
        "music musical musicians score soundtrack song songs sing singing singer tunes rhythm rhythms opera concert "
        "band hip-hop rap dance dancing dancers ballet".split()
    ),
    "story": frozenset(
        "story stories plot plots script scripts screenplay narrative tale tales storytelling writing written "
        "writer writers".split()
    ),
    "visuals": frozenset(
        "visual visuals visually camera cinematography cinematographer images imagery photography photographed "
        "shot shots effects animation animated color colors colorful lighting scenery landscape landscapes costumes "
        "editing".split()
    ),
}
POSITIVE = "positive"
MULTILABEL_NAMES: tuple[str, ...] = tuple(sorted((POSITIVE, *TOPICS)))
MAX_SCORE = 5.0


def read_sst2(path: Path) -> list[tuple[str, int]]:
    """(sentence, label) of an SST-2 TSV file (header ``sentence<TAB>label``, no quoting), in file order."""
    if not path.is_file():
        raise SystemExit(f"{path}: no such file (SST-2 lives in ../shared/data/sst2; set SST2_DIR)")
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        if reader.fieldnames is None or not {"sentence", "label"} <= set(reader.fieldnames):
            raise SystemExit(f"{path}: not an SST-2 file (its header must name sentence and label)")
        rows = []
        for line, row in enumerate(reader, start=2):
            if row["label"] not in ("0", "1"):
                raise SystemExit(f"{path}, line {line}: label {row['label']!r} is not 0 or 1")
            rows.append((row["sentence"].strip(), int(row["label"])))
    return rows


def distinct(rows: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Each non-empty sentence once, with its first label (SST-2 repeats a few phrases, three with both labels)."""
    seen: dict[str, int] = {}
    for sentence, label in rows:
        if sentence and sentence not in seen:
            seen[sentence] = label
    return list(seen.items())


def labels_of(sentence: str, sentiment: int) -> list[str]:
    """The multi-label row's labels, sorted: ``positive`` for sentiment 1, plus every topic with a word present."""
    words = set(sentence.split())
    found = [topic for topic, vocabulary in TOPICS.items() if words & vocabulary]
    return sorted([POSITIVE, *found] if sentiment == 1 else found)


def multilabel_rows(sentences: Sequence[tuple[str, int]], rows: int | None, seed: int) -> list[dict]:
    """``rows`` rows {"text", "labels"} drawn (seeded) from the distinct sentences; None or more than there are:
    all of them, shuffled."""
    pool = distinct(sentences)
    random.Random(seed).shuffle(pool)
    return [{"text": text, "labels": labels_of(text, label)} for text, label in pool[:rows]]


def _pair(a: list[str], c: list[str], rng: random.Random) -> tuple[list[str], int]:
    """b built from a (keeping k of its words in place) and filler words of c; returns (b, k)."""
    kept_count = rng.randint(0, len(a))
    kept = set(rng.sample(range(len(a)), kept_count))
    b, next_c = [], 0
    for position, word in enumerate(a):
        if position in kept:
            b.append(word)
            continue
        while c[next_c % len(c)] == word:  # c has two distinct words: this ends within one pass
            next_c += 1
        b.append(c[next_c % len(c)])
        next_c += 1
    return b, kept_count


def sts_rows(
    sentences: Sequence[str], rows: int, seed: int, min_words: int = 6, max_words: int = 30
) -> list[dict]:
    """``rows`` pairs {"text", "text_pair", "score"} by the rule in the module docstring, each sentence a at most
    once; more rows than there are eligible sentences is an error."""
    if not 2 <= min_words <= max_words:
        raise ValueError(f"min_words {min_words} and max_words {max_words}: need 2 <= min_words <= max_words")
    eligible = [
        words
        for words in (text.split() for text in dict.fromkeys(s.strip() for s in sentences))
        if min_words <= len(words) <= max_words and len(set(words)) >= 2
    ]
    if rows > len(eligible):
        raise ValueError(
            f"rows {rows}: only {len(eligible)} distinct sentences have {min_words}-{max_words} words"
        )
    if len(eligible) < 2:
        raise ValueError("need at least two eligible sentences (one to keep words of, one to fill from)")
    rng = random.Random(seed)
    order = rng.sample(range(len(eligible)), rows)
    out = []
    for index in order:
        a = eligible[index]
        other = rng.randrange(len(eligible) - 1)
        c = eligible[other + (other >= index)]  # any sentence but a itself
        b, kept = _pair(a, c, rng)
        out.append({"text": " ".join(a), "text_pair": " ".join(b), "score": MAX_SCORE * kept / len(a)})
    return out


def write_multilabel(rows: Sequence[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "labels"])
        writer.writerows([row["text"], json.dumps(row["labels"])] for row in rows)
    return path


def write_sts(rows: Sequence[dict], path: Path) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "text_pair", "score"])
        writer.writerows([row["text"], row["text_pair"], repr(row["score"])] for row in rows)
    return path


def label_counts(rows: Sequence[dict]) -> dict[str, int]:
    """Rows carrying each label (every name of MULTILABEL_NAMES, zeros included), and "(none)" for empty rows."""
    counts = Counter(label for row in rows for label in row["labels"])
    return {
        **{name: counts[name] for name in MULTILABEL_NAMES},
        "(none)": sum(1 for row in rows if not row["labels"]),
    }


def score_counts(rows: Sequence[dict]) -> dict[str, int]:
    """Rows per score band [0, 1), [1, 2), ... [4, 5] (5 itself in the last)."""
    bands = Counter(min(int(row["score"]), 4) for row in rows)
    return {f"{band}-{band + 1}": bands[band] for band in range(5)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=["multilabel", "sts"])
    parser.add_argument("--source", type=Path, default=SST2_DIR / "train.tsv", help="An SST-2 TSV file.")
    parser.add_argument("--rows", type=int, default=4000, help="Rows to write (multilabel: at most all).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="The CSV file to write.")
    args = parser.parse_args()
    sentences = read_sst2(args.source)
    if args.dataset == "multilabel":
        rows = multilabel_rows(sentences, args.rows, args.seed)
        write_multilabel(rows, args.out)
        counts = label_counts(rows)
    else:
        rows = sts_rows([text for text, _ in sentences], args.rows, args.seed)
        write_sts(rows, args.out)
        counts = score_counts(rows)
    print(f"{len(rows)} rows -> {args.out}")
    for name, count in counts.items():
        print(f"  {name}: {count}")


if __name__ == "__main__":
    main()
