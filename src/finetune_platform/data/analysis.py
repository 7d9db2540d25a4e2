"""Dataset analysis: label distribution, length histograms, vocabulary and top tokens per class.

Written as ``analysis.json`` plus PNG plots (matplotlib, headless) a person would rather look at. A multi-label row
counts for each of its labels; a regression file has one group ("all") and the target's histogram; with a pair
column, a row's text is both texts. Rows validation would refuse (no text, a bad label) are left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from finetune_platform.data.loading import is_integer_text, iter_chunks, normalise_label
from finetune_platform.data.validation import (
    MULTI_LABEL,
    REGRESSION,
    SINGLE_LABEL,
    LabelListError,
    parse_label_list,
    parse_target,
    summary_stats,
)

_WORD = re.compile(r"\w+", re.UNICODE)
# Function words say little about a class; they are left out of the "top tokens" lists only.
_STOPWORD_TEXT = (
    "a an and are as at be but by for from has have he her his i in is it its of on or she that the their "
    "them they this to was were will with you your we our not no so if than then there these those s t n"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())


def analyze_file(
    path: Path,
    text_column: str = "text",
    label_column: str = "label",
    *,
    out_dir: Path | None = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    top_k: int = 15,
    task: str = SINGLE_LABEL,
    text_pair_column: str | None = None,
    label_delimiter: str = ",",
) -> dict[str, Any]:
    """Stream the file once; return the analysis and, with ``out_dir``, write JSON and PNG plots."""
    label_counts: Counter[str] = Counter()
    words_by_label: dict[str, Counter[str]] = {}
    vocabulary: set[str] = set()
    char_lengths: dict[str, list[np.ndarray]] = {}
    token_lengths: dict[str, list[np.ndarray]] = {}
    targets: list[float] = []
    rows = 0
    chunks = iter_chunks(
        Path(path),
        text_column,
        label_column,
        text_pair_column=text_pair_column,
        label_lists=task == MULTI_LABEL,
    )
    for chunk in chunks:
        frame = chunk.frame.dropna()
        frame, valid = _groups(frame, task, label_delimiter, targets)
        rows += valid
        pairs = frame["text_pair"].astype(str) if text_pair_column is not None else None
        texts = frame["text"].astype(str)
        for label, group in texts.groupby(frame["group"]):
            label_counts[label] += len(group)
            both = group if pairs is None else group + " " + pairs[group.index]
            counter = words_by_label.setdefault(label, Counter())
            for text in both:
                words = _WORD.findall(text.lower())
                counter.update(words)
                vocabulary.update(words)
            lengths = group.str.len() if pairs is None else group.str.len() + pairs[group.index].str.len()
            char_lengths.setdefault(label, []).append(lengths.to_numpy())
            if tokenizer is not None:
                arguments = (
                    (group.tolist(),) if pairs is None else (group.tolist(), pairs[group.index].tolist())
                )
                ids = tokenizer(*arguments, add_special_tokens=True, truncation=False, verbose=False)[
                    "input_ids"
                ]
                token_lengths.setdefault(label, []).append(np.array([len(x) for x in ids]))
    order = sorted(label_counts, key=lambda v: (0, int(v)) if is_integer_text(v) else (1, v))
    chars = {label: np.concatenate(char_lengths[label]) for label in order}
    tokens = {label: np.concatenate(token_lengths[label]) for label in order if label in token_lengths}
    total = rows
    analysis: dict[str, Any] = {
        "file": str(path),
        "task": task,
        "rows": total,
        "labels": {
            label: {"rows": label_counts[label], "share": round(label_counts[label] / total, 4)}
            for label in order
        }
        if total
        else {},
        "vocabulary_size": len(vocabulary),
        "char_length": _histogram(np.concatenate(list(chars.values())) if chars else np.array([])),
        "token_length": _histogram(np.concatenate(list(tokens.values()))) if tokens else None,
        "max_length": max_length,
        "truncated_share": (
            round(float(np.mean(np.concatenate(list(tokens.values())) > max_length)), 4)
            if tokens and max_length
            else None
        ),
        "top_tokens": {
            label: [[word, count] for word, count in _top(words_by_label[label], top_k)] for label in order
        },
        "target": _target_histogram(np.array(targets)) if task == REGRESSION else None,
    }
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        analysis["plots"] = _plot(analysis, chars, tokens, out_dir)
        (out_dir / "analysis.json").write_text(json.dumps(analysis, indent=2), encoding="utf-8")
    return analysis


def _groups(frame: pd.DataFrame, task: str, delimiter: str, targets: list[float]) -> tuple[pd.DataFrame, int]:
    """(the rows with a ``group`` column to count them under, how many rows had a readable label). The group is
    the label; multi_label, one row per label (a row without labels counts under none); regression, 'all' (the
    targets go to ``targets``)."""
    if task == REGRESSION:
        parsed = frame["label"].map(parse_target)
        numbers = parsed.map(lambda value: not isinstance(value, str)).astype(bool)
        targets.extend(parsed[numbers].astype(float).tolist())
        return frame[numbers].assign(group="all"), int(numbers.sum())
    if task == MULTI_LABEL:

        def labels(cell: Any) -> list[str] | None:
            try:
                return [str(label) for label in parse_label_list(str(cell), delimiter)]
            except LabelListError:
                return None

        readable = frame.assign(group=frame["label"].map(labels)).dropna(subset=["group"])
        exploded = readable.explode("group").dropna(subset=["group"]).reset_index(drop=True)
        return exploded, len(readable)
    labels_of = frame["label"].astype(str).str.strip().map(lambda v: str(normalise_label(v)))
    return frame.assign(group=labels_of), len(frame)


def _top(counter: Counter[str], k: int) -> list[tuple[str, int]]:
    return [(w, c) for w, c in counter.most_common(k + len(STOPWORDS)) if w not in STOPWORDS][:k]


def _histogram(values: np.ndarray, bins: int = 20) -> dict[str, Any]:
    if values.size == 0:
        return {}
    counts, edges = np.histogram(values, bins=bins)
    return {**summary_stats(values), "bins": [round(float(e), 2) for e in edges], "counts": counts.tolist()}


def _target_histogram(values: np.ndarray, bins: int = 20) -> dict[str, Any]:
    if values.size == 0:
        return {}
    counts, edges = np.histogram(values, bins=bins)
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std(ddof=0)),
        "bins": [float(e) for e in edges],
        "counts": counts.tolist(),
    }


def _plot(
    analysis: dict[str, Any], chars: dict[str, np.ndarray], tokens: dict[str, np.ndarray], out_dir: Path
) -> list[str]:
    import matplotlib  # lazy: matplotlib, only for plots (not in the API image)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: matplotlib, after choosing the Agg backend

    written = []
    labels = list(analysis["labels"])

    fig, ax = plt.subplots(figsize=(7, 4))
    if analysis["target"]:  # regression: the target's distribution instead of the labels'
        ax.stairs(analysis["target"]["counts"], analysis["target"]["bins"], fill=True, color="#4C72B0")
        ax.set_title(f"Target distribution ({analysis['rows']} rows)")
        ax.set_ylabel("rows")
        written.append(_save(fig, out_dir / "target.png"))
    else:
        rows = [analysis["labels"][label]["rows"] for label in labels]
        bars = ax.bar(labels, rows, color="#4C72B0")
        ax.bar_label(
            bars,
            labels=[
                f"{r} ({analysis['labels'][lab]['share']:.0%})" for r, lab in zip(rows, labels, strict=True)
            ],
        )
        ax.set_title(f"Label distribution ({analysis['rows']} rows)")
        ax.set_ylabel("rows")
        written.append(_save(fig, out_dir / "labels.png"))

    for name, series, unit in (
        ("char_lengths.png", chars, "characters"),
        ("token_lengths.png", tokens, "tokens"),
    ):
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        upper = max(float(np.percentile(np.concatenate(list(series.values())), 99)), 1.0)
        for label, values in series.items():
            ax.hist(np.clip(values, 0, upper), bins=40, alpha=0.55, label=str(label))
        if unit == "tokens" and analysis["max_length"]:
            ax.axvline(
                analysis["max_length"],
                color="red",
                linestyle="--",
                label=f"max_length {analysis['max_length']}",
            )
        ax.set_title(f"Text length in {unit} by label (clipped at p99)")
        ax.set_xlabel(unit)
        ax.set_ylabel("rows")
        ax.legend()
        written.append(_save(fig, out_dir / name))

    columns = max(len(labels), 1)
    fig, axes = plt.subplots(1, columns, figsize=(4 * columns, 5), squeeze=False)
    for ax, label in zip(axes[0], labels, strict=False):
        top = analysis["top_tokens"][label][::-1]
        ax.barh([w for w, _ in top], [c for _, c in top], color="#55A868")
        ax.set_title(f"top tokens: {label}")
    fig.suptitle("Most frequent tokens per class (function words left out)")
    written.append(_save(fig, out_dir / "top_tokens.png"))
    return written


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt  # lazy: matplotlib, only for plots (not in the API image)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name
