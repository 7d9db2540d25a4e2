"""Spreadsheet formula injection through the predictions CSV: a model trained on labels that are formulas
(labels come from whoever trained a shared model) writes them with a leading ', while the numbers stay
numbers (OWASP "CSV injection")."""

from __future__ import annotations

import csv

import pytest

from finetune_platform.inference.batch import predict_file, spreadsheet_safe
from finetune_platform.inference.predictor import Predictor
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import three_class_rows, tiny_config_dict, write_csv

HOSTILE = {"positive": '=HYPERLINK("http://x")', "negative": "@SUM(1)", "neutral": "-2+3"}


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, tiny_bert):
    """A tiny real run whose three labels are formulas."""
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("hostile-labels")
    rename = [(text, HOSTILE[kind]) for text, kind in three_class_rows(48, seed=3)]
    train = write_csv(root / "train.csv", rename)
    raw = tiny_config_dict(tiny_bert, train, None, root / "results", max_steps=4)
    settings = Settings(FINETUNE_HOME=root / "home", MLFLOW_ENABLED=False)
    return run_training(config_from_dict(raw), settings=settings, show_progress=False)


def test_formula_labels_come_back_quoted_and_numbers_stay_numbers(hostile_run, tmp_path):
    predictor = Predictor.from_run(hostile_run.run.root)
    assert set(predictor.info.labels) == set(HOSTILE.values())
    texts = ["=1+1 great film", "@SUM(2) awful plot", "okay movie", "  "]
    output = tmp_path / "predictions.csv"
    summary = predict_file(predictor, texts, ["-2+3", "@SUM(1)", "-2+3", "-2+3"], output)
    with output.open(newline="", encoding="utf-8") as handle:
        header, *rows = list(csv.reader(handle))
    names = list(predictor.info.labels)
    assert header == [
        "row",
        "label",
        "label_name",
        "probability",
        "truncated",
        *[f"p_{n}" for n in names],
        "error",
    ]
    quoted = {"'" + label for label in HOSTILE.values()}
    for row in rows[:3]:
        assert row[2] in quoted and row[1] == str(names.index(row[2][1:]))  # the name, quoted; its class id
        assert 0 < float(row[3]) <= 1 and row[4] == "False"
        assert sum(float(cell) for cell in row[5:-1]) == pytest.approx(1, abs=1e-4)
        assert row[-1] == ""
    assert rows[3] == ["4", "", "", "", "", "", "", "", "empty text"]
    assert summary.predicted == 3 and summary.accuracy is not None  # compared before quoting


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("@SUM(1)", "'@SUM(1)"),
        ("-2+3", "'-2+3"),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("\t=1+1", "'\t=1+1"),
        ("\r=1+1", "'\r=1+1"),
        ("-", "'-"),
        ("-1", "-1"),  # only a number: a spreadsheet reads -1, nothing runs
        ("+0.5e-3", "+0.5e-3"),
        ("positive", "positive"),
        ("", ""),
        (0.25, 0.25),
        (-3, -3),
        (True, True),
    ],
)
def test_cells_a_spreadsheet_would_run_get_a_leading_quote(cell, written):
    assert spreadsheet_safe(cell) == written
