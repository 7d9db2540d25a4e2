"""Every suffix of the format registry is accepted by every path that takes a dataset file, with the same rows
read from each: validation, training, upload (the REST API), prediction (`finetune predict` and prediction
jobs), and the UI's file picker offers exactly those suffixes. Real files of each format, written here.

Before the registry, a `.tab` file trained but could not be predicted over, and `.tab`, `.ndjson` and `.pq`
uploads were refused."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest

from finetune_platform.data.formats import BY_SUFFIX, SUFFIXES, DatasetFormat
from tests.conftest import finetune_bin, sentiment_rows, tiny_config_dict

pytestmark = pytest.mark.slow
ROWS = sentiment_rows(48, seed=5, labels=("pos", "neg"))
PASSWORD = "long enough"


def write_dataset(path: Path, rows: list[tuple[str, object]]) -> Path:
    """``rows`` (text, label) in the format the suffix of ``path`` names."""
    fmt = BY_SUFFIX[path.suffix]
    records = [{"text": text, "label": label} for text, label in rows]
    if fmt.delimiter is not None:
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter=fmt.delimiter)
            writer.writerow(["text", "label"])
            writer.writerows(rows)
    elif fmt is DatasetFormat.JSONL:
        path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    elif fmt is DatasetFormat.JSON:
        path.write_text(json.dumps(records), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    return {suffix: write_dataset(folder / f"reviews{suffix}", ROWS) for suffix in SUFFIXES}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert, files):
    """A run trained on the `.tab` file and evaluated on a `.pq` one (MLflow off)."""
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training

    root = tmp_path_factory.mktemp("formats-run")
    holdout = write_dataset(root / "holdout.pq", sentiment_rows(16, seed=6, labels=("pos", "neg")))
    raw = tiny_config_dict(tiny_bert, files[".tab"], holdout, root / "results", max_steps=8, eval_steps=4)
    settings = Settings(FINETUNE_HOME=root / "home", MLFLOW_ENABLED=False)
    return run_training(config_from_dict(raw), settings=settings, show_progress=False), holdout


@pytest.fixture(scope="module")
def uploader(tmp_path_factory):
    """The REST API with one user, alice, and her bearer token."""
    from fastapi.testclient import TestClient

    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("formats-api")
    settings = Settings(FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MLFLOW_ENABLED=False)
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "alice", PASSWORD)
    client = TestClient(create_app(settings))
    token = client.post("/login", data={"username": "alice", "password": PASSWORD}).json()["access_token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client, settings


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_validation_reads_every_suffix_as_the_same_rows(files, suffix):
    from finetune_platform.data.validation import ValidationOptions, validate_dataset

    options = ValidationOptions()
    report = validate_dataset(files[suffix], options)
    (found,) = report.files
    assert report.ok, [issue.message for issue in found.issues]
    assert (found.format, found.rows_read, found.rows_valid) == (BY_SUFFIX[suffix].value, 48, 48)
    assert found.label_counts == {"pos": 24, "neg": 24}
    assert found.version == validate_dataset(files[".csv"], options).files[0].version  # the same rows


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_training_reads_every_suffix(files, suffix):
    """What a training run reads its data with (validated splits and the label map)."""
    from finetune_platform.data.splits import load_splits

    splits = load_splits(files[suffix], "text", "label", validation_split=0.25, seed=3)
    assert splits.label_map.names == ("neg", "pos")
    assert (len(splits.train), len(splits.validation)) == (36, 12)
    read = [(row.text, row.label) for part in (splits.train, splits.validation) for row in part.itertuples()]
    assert sorted(read) == sorted(ROWS)


def test_a_run_trains_on_a_tab_file_and_evaluates_on_a_pq_file(trained, files):
    result, holdout = trained
    lineage = result.metrics["dataset"]
    assert (lineage["train_file"], lineage["train_rows"]) == (str(files[".tab"]), 48)
    assert (lineage["validation"], lineage["validation_rows"]) == (f"file:{holdout}", 16)
    assert 0 <= result.metrics["eval"]["accuracy"] <= 1


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_upload_accepts_every_suffix_in_any_case(uploader, files, suffix):
    from finetune_platform.db.models import Dataset
    from finetune_platform.db.session import session_scope

    client, settings = uploader
    name = f"Reviews{suffix.upper()}"
    response = client.post(f"/datasets?name={name}", content=files[suffix].read_bytes())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["format"]) == (name, BY_SUFFIX[suffix].value)
    assert (body["rows"], body["valid"]) == (48, True)
    with session_scope(settings) as session:
        stored = Path(session.get(Dataset, body["id"]).path)
    assert stored.suffix == suffix and stored.read_bytes() == files[suffix].read_bytes()


def test_upload_refuses_a_suffix_outside_the_registry_before_reading(uploader, files):
    client, _ = uploader
    listed = client.get("/datasets").json()["count"]
    response = client.post("/datasets?name=reviews.xlsx", content=files[".csv"].read_bytes())
    assert response.status_code == 422
    assert response.json()["problems"][0]["field"] == "query.name"
    assert client.get("/datasets").json()["count"] == listed


@pytest.fixture(scope="module")
def predicted_csv(trained, files, tmp_path_factory) -> tuple[object, bytes]:
    """The trained predictor, and its predictions file for the `.csv` input."""
    from finetune_platform.inference.batch import predict_file, read_texts
    from finetune_platform.inference.predictor import source_from_run
    from finetune_platform.inference.runtimes import open_runtime

    predictor = open_runtime(source_from_run(trained[0].run.root), merged=True)
    output = tmp_path_factory.mktemp("predicted") / "from-csv.csv"
    predict_file(predictor, *read_texts(files[".csv"], "text", "label"), output)
    return predictor, output.read_bytes()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_prediction_reads_every_suffix_with_the_same_answers(predicted_csv, files, suffix, tmp_path):
    """A prediction job checks the columns when it is submitted; the worker and `finetune predict` read the
    texts (and labels, for the accuracy) and write one row per input row."""
    from finetune_platform.inference.batch import check_columns, predict_file, read_texts

    predictor, expected = predicted_csv
    assert check_columns(files[suffix], "text") == ["text", "label"]
    texts, labels = read_texts(files[suffix], "text", "label")
    assert list(zip(texts, labels, strict=True)) == ROWS
    summary = predict_file(predictor, texts, labels, tmp_path / "predictions.csv")
    assert (summary.rows, summary.predicted, summary.empty) == (48, 48, 0)
    assert (tmp_path / "predictions.csv").read_bytes() == expected


def test_predict_command_reads_a_tab_file(trained, files, tmp_path):
    """`finetune predict --input reviews.tab` (before the registry: "unknown format '.tab'")."""
    output = tmp_path / "predictions.csv"
    done = subprocess.run(
        [finetune_bin(), "predict", "--run", str(trained[0].run.root), "--input", str(files[".tab"]),
         "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"wrote 48 rows to {output} (48 predicted, 0 empty, 0 truncated at 32 tokens)" in done.stdout
    assert "accuracy against the 48 labelled rows: " in done.stdout


def test_the_ui_file_picker_offers_every_registered_suffix():
    streamlit_testing = pytest.importorskip("streamlit.testing.v1")

    def page():
        from finetune_platform.ui.views import new_job_page

        new_job_page(None, 100 * 1024 * 1024)  # no upload yet: the page stops before it calls the API

    at = streamlit_testing.AppTest.from_function(page, default_timeout=30).run()
    assert not at.exception
    (picker,) = at.get("file_uploader")
    assert tuple(picker.proto.type) == SUFFIXES
    assert picker.proto.label == (
        "Training data (.csv, .json, .jsonl, .ndjson, .parquet, .pq, .tab, .tsv; at most 100 MB)"
    )
