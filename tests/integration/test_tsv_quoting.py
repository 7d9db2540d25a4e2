"""A TSV file is read one way everywhere: with no quoting, as GLUE ships it, so a text that starts with or
contains `"` is read as written, by training's loader and by `finetune predict --input`. The rule lives in the
format registry (``DatasetFormat.quoting``).

Before, prediction read TSV with pandas' default quoting: an opening `"` swallowed the tabs and line ends up to
the next `"`, so rows merged and texts lost their quotes."""

from __future__ import annotations

import csv
import subprocess
from pathlib import Path

import pytest

from finetune_platform.data.formats import DatasetFormat
from tests.conftest import finetune_bin, sentiment_rows, tiny_config_dict

pytestmark = pytest.mark.slow

QUOTED = [
    ('"great film, would watch again', "pos"),  # opens a quote that never closes
    ("fine", "neg"),
    ('"terrible" acting', "neg"),  # a quoted word first
    ('a "so-called" classic', "pos"),
    ('"', "neg"),  # only a quote
    ('he said ""wow""', "pos"),  # doubled quotes stay doubled
    ('"loved it"', "pos"),  # quoted whole: the quotes are part of the text
    ('dull"', "neg"),
]
ROWS = QUOTED + sentiment_rows(24, seed=9, labels=("pos", "neg"))


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Tab-separated, written as is: no quoting (a text holds no tab or line end)."""
    path.write_text("text\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_tsv(tmp_path_factory.mktemp("tsv-quotes") / "quotes.tsv", ROWS)


def test_the_registry_names_each_delimited_formats_quoting():
    assert (DatasetFormat.CSV.quoting, DatasetFormat.TSV.quoting) == (csv.QUOTE_MINIMAL, csv.QUOTE_NONE)
    assert {fmt.quoting for fmt in DatasetFormat if fmt.delimiter is None} == {None}


def test_training_and_prediction_read_the_same_texts(data):
    from finetune_platform.data.splits import load_splits
    from finetune_platform.inference.batch import read_texts

    splits = load_splits(data, "text", "label", validation_split=0.25, seed=3)
    trained_on = [
        (row.text, row.label) for part in (splits.train, splits.validation) for row in part.itertuples()
    ]
    assert sorted(trained_on) == sorted(ROWS)
    texts, labels = read_texts(data, "text", "label")
    assert list(zip(texts, labels, strict=True)) == ROWS


def test_predict_command_keeps_every_row(data, tiny_bert, tmp_path):
    """`finetune predict --input quotes.tsv` with a run trained on that same file: one output row per line."""
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    raw = tiny_config_dict(tiny_bert, data, None, tmp_path / "results", max_steps=2)
    result = run_training(
        config_from_dict(raw), settings=Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False),
        show_progress=False,
    )  # fmt: skip
    output = tmp_path / "predictions.csv"
    done = subprocess.run(
        [finetune_bin(), "predict", "--run", str(result.run.root), "--input", str(data), "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = len(ROWS)
    assert f"wrote {rows} rows to {output} ({rows} predicted, 0 empty, " in done.stdout
    assert f"accuracy against the {rows} labelled rows: " in done.stdout
    with output.open(encoding="utf-8", newline="") as handle:
        assert [int(row["row"]) for row in csv.DictReader(handle)] == list(range(1, rows + 1))
