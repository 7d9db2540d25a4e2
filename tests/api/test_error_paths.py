"""No server filesystem path in an error body: each error a client can provoke around its datasets (a bad upload,
training on a file that fails validation, a file the server lost, a missing dataset, a missing column for a
prediction task) answers naming the dataset by its id and name, never by where the server keeps it (FINETUNE_HOME,
the uploads folder, any absolute path). On SQLite and PostgreSQL, through the HTTP client."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.api.conftest import SAMPLE, Api

# An absolute POSIX path of two or more components (not a URL's, not " / " between words).
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/(?:[\w.@-]+/)+[\w.@-]*")
TWO_LABELS = b"text,label\n" + b"".join(
    f"a wonderful film {i},positive\na boring book {i},negative\n".encode() for i in range(6)
)


def assert_no_server_path(api: Api, response) -> None:
    """Neither FINETUNE_HOME (as configured or resolved), its folders' names, nor any absolute path."""
    body = response.text
    home = Path(api.settings.FINETUNE_HOME)
    for spelling in {str(home), str(home.resolve()), str(api.settings.uploads_dir), "uploads/", ".incoming"}:
        assert spelling not in body, f"{spelling!r} in {body}"
    assert ABSOLUTE_PATH.findall(body) == [], body


def upload(api: Api, name: str, content: bytes, who: str = "alice", **params: str) -> dict:
    response = api.as_(who).post("/datasets", params={"name": name, **params}, content=content)
    assert response.status_code == 201, response.text
    assert_no_server_path(api, response)
    return response.json()


def label(dataset: dict) -> str:
    return f"dataset {dataset['id']} ({dataset['name']})"


def train(api: Api, dataset_id: str, who: str = "alice", **body: object):
    return api.as_(who).post(
        "/train", json={"config": {"experiment": "error-paths"}, "dataset_id": dataset_id, **body}
    )


def assert_names_the_dataset(api: Api, response, status: int, *datasets: dict) -> dict:
    """The answer has ``status``, names each dataset by id and name, and holds no server path."""
    assert response.status_code == status, response.text
    assert_no_server_path(api, response)
    body = response.json()
    for dataset in datasets:
        assert label(dataset) in body["detail"], body["detail"]
    return body


@pytest.mark.parametrize(
    ("name", "content", "issue"),
    [
        ("broken.parquet", b"not a parquet file", "broken.parquet: not a readable Parquet file"),
        ("latin1.csv", b"text,label\ncaf\xe9,1\n", "latin1.csv: not UTF-8"),
        ("columns.csv", b"a,b\nhello,1\n", "columns.csv: missing column(s) 'text', 'label'"),
        ("broken.json", b"{", "broken.json: not valid JSON"),
    ],
)
def test_an_upload_that_fails_validation_reports_by_its_name(api_world, name, content, issue):
    uploaded = upload(api_world, name, content)
    assert uploaded["valid"] is False
    (file,) = uploaded["report"]["files"]
    assert file["path"] == name
    assert file["issues"][0]["message"].startswith(issue), file["issues"]
    report = api_world.as_("alice").get(f"/datasets/{uploaded['id']}/report")
    assert report.status_code == 200 and report.json() == uploaded["report"]
    assert_no_server_path(api_world, report)


def test_refused_uploads_hold_no_server_path(api_world):
    alice = api_world.as_("alice")
    too_big = alice.post("/datasets?name=big.csv", content=b"x" * (api_world.settings.MAX_UPLOAD_BYTES + 1))
    assert too_big.status_code == 413
    assert_no_server_path(api_world, too_big)
    same = alice.post("/datasets?name=same.csv&text_column=text&label_column=text", content=SAMPLE)
    assert same.status_code == 422
    assert_no_server_path(api_world, same)
    deep = alice.post("/datasets?name=deep.json", content=b"[" * 100 + b"]" * 100)
    assert deep.status_code == 422 and "MAX_JSON_DEPTH" in deep.json()["detail"], deep.text
    assert_no_server_path(api_world, deep)


def test_training_on_a_dataset_with_invalid_rows_names_it(api_world):
    bad = upload(api_world, "bad-rows.csv", b"text,label\nhello,1\n,0\nfine,\n")
    body = assert_names_the_dataset(api_world, train(api_world, bad["id"]), 422, bad)
    assert body["code"] == "invalid_dataset"
    assert body["detail"].startswith(
        "invalid dataset: column 'text' is empty or whitespace in 1 row(s): rows 2\n"
    )
    assert f"train: {label(bad)}: 3 rows read, 1 valid" in body["detail"]
    (file,) = body["report"]["files"]
    assert (file["path"], file["role"], file["rows_read"]) == ("train", "train", 3)


def test_training_on_labels_too_small_for_the_validation_split_is_refused(api_world):
    three = upload(
        api_world, "three-classes.csv", b"text,label\na good film,a\na bad film,b\nan okay film,c\n"
    )
    assert three["valid"] is True  # an upload has no split to check; training on it without validation does
    body = assert_names_the_dataset(api_world, train(api_world, three["id"]), 422, three)
    assert body["code"] == "invalid_dataset"
    assert body["detail"].startswith(
        "invalid dataset: label 'a' has 1 row, label 'b' has 1 row, label 'c' has 1 row: a validation split of "
        "10% needs at least 2 rows of every label (one for training, one for validation)\n"
    )
    (issue,) = [i for i in body["report"]["files"][0]["issues"] if i["code"] == "split_too_small"]
    assert issue["fix"] == (
        "add rows of these labels, or give a validation file (data.validation_file, --validation-file)"
    )


def test_training_on_a_dataset_without_its_columns_names_it(api_world):
    columns = upload(api_world, "no-columns.csv", b"a,b\nhello,1\nbye,0\n")
    body = assert_names_the_dataset(api_world, train(api_world, columns["id"]), 422, columns)
    assert body["detail"].startswith(
        f"invalid dataset: {label(columns)}: missing column(s) 'text', 'label'; available columns: a, b\n"
    )
    assert [issue["message"] for issue in body["report"]["files"][0]["issues"]] == [
        f"{label(columns)}: missing column(s) 'text', 'label'; available columns: a, b"
    ]


def test_a_config_naming_a_missing_column_names_the_dataset(api_world):
    good = upload(api_world, "reviews.csv", TWO_LABELS)
    response = api_world.as_("alice").post(
        "/train",
        json={
            "config": {"experiment": "error-paths", "data": {"text_column": "body"}},
            "dataset_id": good["id"],
        },
    )
    body = assert_names_the_dataset(api_world, response, 422, good)
    assert f"{label(good)}: missing column(s) 'body'; available columns: text, label" in body["detail"]


def test_an_invalid_validation_dataset_is_named_beside_the_training_one(api_world):
    good = upload(api_world, "train-ok.csv", TWO_LABELS)
    bad = upload(api_world, "validation-bad.csv", b"text,label\nhello,1\n,0\n")
    body = assert_names_the_dataset(
        api_world, train(api_world, good["id"], validation_dataset_id=bad["id"]), 422, good, bad
    )
    assert f"validation: {label(bad)}: 2 rows read, 1 valid" in body["detail"]
    assert [file["path"] for file in body["report"]["files"]] == ["train", "validation"]


def test_a_dataset_whose_file_the_server_lost_is_named(api_world):
    from finetune_platform.db.models import Dataset
    from finetune_platform.db.session import session_scope

    gone = upload(api_world, "gone.csv", TWO_LABELS)
    with session_scope(api_world.settings) as session:
        Path(session.get(Dataset, gone["id"]).path).unlink()
    body = assert_names_the_dataset(api_world, train(api_world, gone["id"]), 422, gone)
    assert body["detail"].startswith(f"invalid dataset: dataset file not found: {label(gone)}\n")


def test_missing_datasets_are_named_by_the_id_asked_for(api_world):
    missing = train(api_world, "no-such-dataset")
    assert (missing.status_code, missing.json()) == (
        404,
        {"detail": "no dataset 'no-such-dataset'", "code": "not_found"},
    )
    bobs = upload(api_world, "bobs.csv", TWO_LABELS, who="bob")
    others = train(api_world, bobs["id"])  # another user's dataset reads as missing
    assert (others.status_code, others.json()["detail"]) == (404, f"no dataset {bobs['id']!r}")
    validation = train(api_world, api_world.ids["dataset"], validation_dataset_id="no-such-dataset")
    assert (validation.status_code, validation.json()["detail"]) == (404, "no dataset 'no-such-dataset'")
    for response in (missing, others, validation):
        assert_no_server_path(api_world, response)


@pytest.fixture(scope="module")
def registered_model(api_world) -> str:
    """A registered model version in the API's tracking store (no files: the prediction task never runs)."""
    from finetune_platform.tracking.client import mlflow_client

    client = mlflow_client(api_world.settings)
    client.create_registered_model("error-paths")
    client.create_model_version(
        "error-paths", source=(Path(api_world.settings.RESULTS_DIR) / "none").as_uri()
    )
    return "error-paths@1"


def test_a_prediction_file_without_its_text_column_is_named(api_world, registered_model):
    texts = upload(api_world, "texts.csv", b"body\nhello\nbye\n")
    response = api_world.as_("alice").post(
        "/predictions", json={"model": registered_model, "dataset_id": texts["id"]}
    )
    body = assert_names_the_dataset(api_world, response, 422, texts)
    assert body == {
        "detail": f"input {label(texts)}: no column 'text' (columns: body); choose the text column",
        "code": "invalid_config",
    }
    assert f"{texts['id']}.csv" not in response.text  # not even the name of the server's copy
