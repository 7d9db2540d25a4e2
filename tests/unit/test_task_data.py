"""The benchmark datasets bench/task_data.py writes from SST-2: the multi-label labels and the STS score follow the
rules its docstring states, on every row, and a seed gives the same file byte for byte."""

from __future__ import annotations

import csv
import json

import pytest
from bench.common import SST2_DIR
from bench.task_data import (
    MULTILABEL_NAMES,
    TOPICS,
    distinct,
    label_counts,
    labels_of,
    multilabel_rows,
    read_sst2,
    score_counts,
    sts_rows,
    write_multilabel,
    write_sts,
)

SENTENCES = [
    ("the actors carry a thin plot", 1),
    ("a funny , touching comedy with a great soundtrack", 1),
    ("the director 's camera never stops moving", 0),
    ("an actorly turn in a dull picture", 0),
    ("nothing to see here", 0),
    ("the actors carry a thin plot", 0),  # a repeat with the other label: the first one counts
    ("", 1),
    ("beautifully shot and scored , with witty writing", 1),
    ("it is long and slow and never funny", 0),
    ("a masterpiece", 1),
]
LONG_SENTENCES = [
    " ".join(f"w{sentence}x{word}" for word in range(6 + sentence % 9)) for sentence in range(40)
] + ["the the the the the the the", "one two three"]  # one distinct word / too short: never a sentence a


def read_csv(path):
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_there_are_at_least_five_labels_and_each_topic_has_words():
    assert len(MULTILABEL_NAMES) == 7
    assert MULTILABEL_NAMES == ("acting", "comedy", "director", "music", "positive", "story", "visuals")
    assert all(len(words) >= 5 for words in TOPICS.values())


@pytest.mark.parametrize(
    ("sentence", "sentiment", "labels"),
    [
        ("the actors carry a thin plot", 1, ["acting", "positive", "story"]),
        ("a funny , touching comedy with a great soundtrack", 0, ["comedy", "music"]),
        ("the director 's camera never stops moving", 0, ["director", "visuals"]),
        ("an actorly turn in a dull picture", 1, ["positive"]),  # whole words only: "actorly" is not "actor"
        ("nothing to see here", 0, []),
    ],
)
def test_a_row_carries_positive_for_its_sentiment_and_each_topic_whose_word_it_holds(
    sentence, sentiment, labels
):
    assert labels_of(sentence, sentiment) == labels


def test_each_sentence_is_kept_once_with_its_first_label():
    kept = distinct(SENTENCES)

    assert [text for text, _ in kept].count("the actors carry a thin plot") == 1
    assert dict(kept)["the actors carry a thin plot"] == 1
    assert "" not in dict(kept)
    assert len(kept) == 8


def test_multilabel_file_is_the_same_for_a_seed_and_its_labels_follow_the_rule(tmp_path):
    first = write_multilabel(multilabel_rows(SENTENCES, 6, seed=3), tmp_path / "a.csv")
    again = write_multilabel(multilabel_rows(SENTENCES, 6, seed=3), tmp_path / "b.csv")
    other = write_multilabel(multilabel_rows(SENTENCES, 6, seed=4), tmp_path / "c.csv")

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    rows = read_csv(first)
    assert list(rows[0]) == ["text", "labels"]
    assert len(rows) == 6
    sentiment = dict(distinct(SENTENCES))
    for row in rows:
        labels = json.loads(row["labels"])
        assert labels == labels_of(row["text"], sentiment[row["text"]]), row
        assert labels == sorted(labels) and set(labels) <= set(MULTILABEL_NAMES)


def test_more_multilabel_rows_than_sentences_takes_each_once():
    rows = multilabel_rows(SENTENCES, 100, seed=0)

    assert sorted(row["text"] for row in rows) == sorted(text for text, _ in distinct(SENTENCES))
    assert label_counts(rows) == {
        "acting": 1, "comedy": 3, "director": 1, "music": 1, "positive": 4, "story": 2, "visuals": 2, "(none)": 2,
    }  # fmt: skip


def test_sts_file_is_the_same_for_a_seed(tmp_path):
    first = write_sts(sts_rows(LONG_SENTENCES, 30, seed=7), tmp_path / "a.csv")
    again = write_sts(sts_rows(LONG_SENTENCES, 30, seed=7), tmp_path / "b.csv")
    other = write_sts(sts_rows(LONG_SENTENCES, 30, seed=8), tmp_path / "c.csv")

    assert first.read_bytes() == again.read_bytes()
    assert first.read_bytes() != other.read_bytes()
    assert list(read_csv(first)[0]) == ["text", "text_pair", "score"]


def test_sts_score_is_five_times_the_share_of_a_words_kept_in_place(tmp_path):
    rows = read_csv(write_sts(sts_rows(LONG_SENTENCES, 40, seed=1), tmp_path / "sts.csv"))

    assert len(rows) == 40
    assert len({row["text"] for row in rows}) == 40  # each sentence a once
    vocabulary = {word for sentence in LONG_SENTENCES for word in sentence.split()}
    scores = []
    for row in rows:
        a, b = row["text"].split(), row["text_pair"].split()
        assert row["text"] in LONG_SENTENCES
        assert len(b) == len(a)
        kept = sum(x == y for x, y in zip(a, b, strict=True))
        assert float(row["score"]) == 5.0 * kept / len(a), row  # written exactly (repr round-trips)
        assert set(b) <= vocabulary
        # the words not kept come from one other sentence c (a word "w<sentence>x<position>" names its sentence)
        sources = {word.split("x")[0] for x, word in zip(a, b, strict=True) if x != word}
        assert len(sources) <= 1 and a[0].split("x")[0] not in sources
        scores.append(float(row["score"]))
    assert all(0.0 <= value <= 5.0 for value in scores)
    assert min(scores) < 1.0 and max(scores) > 4.0  # spread over the range
    assert sum(score_counts([{"score": value} for value in scores]).values()) == 40


SHARED_WORDS = [
    "the film is a fine film",
    "the film is not a fine one at all",
    "a fine film is the film",
    "is the film fine or is it not",
]


@pytest.mark.parametrize("seed", range(20))
def test_sts_filler_words_equal_to_a_word_in_place_are_skipped(seed):
    """Sentences sharing words: a filler word of c equal to a's word at its position would count as kept."""
    for row in sts_rows(SHARED_WORDS, 4, seed=seed):
        a, b = row["text"].split(), row["text_pair"].split()
        assert row["score"] == 5.0 * sum(x == y for x, y in zip(a, b, strict=True)) / len(a), row


def test_sts_refuses_more_rows_than_eligible_sentences():
    with pytest.raises(ValueError) as error:
        sts_rows(LONG_SENTENCES, 41, seed=0)

    assert str(error.value) == "rows 41: only 40 distinct sentences have 6-30 words"


def test_sts_sentence_length_bounds_are_checked():
    with pytest.raises(ValueError) as error:
        sts_rows(LONG_SENTENCES, 1, seed=0, min_words=9, max_words=8)

    assert str(error.value) == "min_words 9 and max_words 8: need 2 <= min_words <= max_words"


def test_score_bands_count_five_in_the_last():
    assert score_counts([{"score": s} for s in (0.0, 0.99, 1.0, 4.5, 5.0)]) == {
        "0-1": 2, "1-2": 1, "2-3": 0, "3-4": 0, "4-5": 2,
    }  # fmt: skip


def test_a_file_that_is_not_sst2_is_refused(tmp_path):
    path = tmp_path / "other.tsv"
    path.write_text("text\tlabel\nfine\t1\n", encoding="utf-8")

    with pytest.raises(SystemExit) as error:
        read_sst2(path)

    assert str(error.value) == f"{path}: not an SST-2 file (its header must name sentence and label)"


@pytest.mark.sst2
@pytest.mark.skipif(not (SST2_DIR / "train.tsv").is_file(), reason="needs ../shared/data/sst2 (or SST2_DIR)")
def test_sst2_rows_carry_every_label_and_pairs_follow_the_rule():
    sentences = read_sst2(SST2_DIR / "train.tsv")

    counts = label_counts(multilabel_rows(sentences, 4000, seed=0))
    pairs = sts_rows([text for text, _ in sentences], 500, seed=0)

    assert all(counts[name] >= 30 for name in MULTILABEL_NAMES), counts
    assert 0 < counts["(none)"] < 4000
    for row in pairs:
        a, b = row["text"].split(), row["text_pair"].split()
        assert row["score"] == 5.0 * sum(x == y for x, y in zip(a, b, strict=True)) / len(a)
