"""Datasets the audit tests write themselves: topic sentences built from word lists, so every text is distinct, with
label flips, near-duplicates, cross-split leaks, a confusable label pair and outliers planted at known rows."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

TOPICS = {
    "sports": "team match goal striker coach league season player referee stadium penalty tournament keeper "
    "defender trophy athlete sprint medal race champion",
    "finance": "market stock bond investor bank interest rate earnings profit dividend currency inflation "
    "portfolio shares loan credit budget revenue fund",
    "cooking": "oven sauce garlic onion flour butter recipe simmer bake roast dough pepper salt kitchen "
    "skillet broth herbs dessert pastry knead",
    "weather": "rain storm cloud sunshine forecast wind thunder snow frost humidity drizzle temperature "
    "breeze fog hail heatwave showers lightning chilly mild",
}
# Two labels drawn from one vocabulary: the data cannot tell them apart.
CONFUSABLE = {"football": "ball pitch kick header winger dribble offside corner tackle midfield crossbar "
              "goalpost volley freekick fullback sweeper nutmeg striker keeper pass"}  # fmt: skip
FILLER = "the a this that today again really quite very then also still just now here there"
OPENERS = [
    "we saw",
    "they said",
    "i think",
    "news about",
    "a note on",
    "people talk of",
    "notes on",
    "all about",
]


@dataclass
class Planted:
    train: Path
    validation: Path
    flipped: set[int] = field(default_factory=set)  # train data rows whose label was flipped
    groups: list[set[tuple[str, int]]] = field(
        default_factory=list
    )  # (file, row) sets planted as near-duplicates
    leaks: list[set[tuple[str, int]]] = field(default_factory=list)  # the groups that span both files
    outliers: set[int] = field(default_factory=set)  # train rows
    confusable: tuple[str, str] | None = None


def sentence(rng: random.Random, words: list[str], length: int = 10) -> str:
    chosen = rng.sample(words, k=min(length, len(words)))
    filler = FILLER.split()
    parts = [rng.choice(OPENERS)]
    for word in chosen:
        parts.append(word)
        if rng.random() < 0.3:
            parts.append(rng.choice(filler))
    return " ".join(parts)


def write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def planted_dataset(
    folder: Path,
    *,
    per_label: int = 50,
    flips: int = 8,
    duplicates: int = 3,
    leaks: int = 2,
    outliers: bool = True,
    confusable: bool = False,
    seed: int = 7,
) -> Planted:
    """A train and a validation CSV (data rows numbered from 1, as validation numbers them) with what is planted."""
    rng = random.Random(seed)
    topics = dict(TOPICS)
    if confusable:
        topics["soccer"] = CONFUSABLE["football"]
        topics["football"] = CONFUSABLE["football"]
    train = [
        (sentence(rng, words.split()), label) for label, words in topics.items() for _ in range(per_label)
    ]
    rng.shuffle(train)
    validation = [(sentence(rng, words.split()), label) for label, words in topics.items() for _ in range(10)]
    planted = Planted(folder / "train.csv", folder / "validation.csv")
    plain = [i for i, (_, label) in enumerate(train) if label in TOPICS]
    for i in rng.sample(plain, k=flips):
        text, label = train[i]
        train[i] = (text, rng.choice([other for other in TOPICS if other != label]))
        planted.flipped.add(i + 1)
    for k in range(duplicates):  # a copy with different case and punctuation, appended to train
        source = (k * 37) % len(train)
        if source + 1 in planted.flipped:
            source += 1
        text, label = train[source]
        train.append((text.upper() + " !", label))
        planted.groups.append({("train", source + 1), ("train", len(train))})
    for k in range(leaks):  # a train row copied into validation with one word dropped
        source = (k * 53 + 11) % len(train)
        while source + 1 in planted.flipped or any(("train", source + 1) in g for g in planted.groups):
            source += 1
        text, label = train[source]
        words = text.split()
        validation.append((" ".join(words[:-1]), label))
        group = {("train", source + 1), ("validation", len(validation))}
        planted.groups.append(group)
        planted.leaks.append(group)
    if outliers:
        for text in (
            "!!! ???",
            "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor",
        ):
            train.append((text, "sports"))
            planted.outliers.add(len(train))
    if confusable:
        planted.confusable = ("football", "soccer")
    write(planted.train, train)
    write(planted.validation, validation)
    return planted
