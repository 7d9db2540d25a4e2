"""Decompression and structure bombs uploaded to POST /datasets: refused with 422 naming the limit, the
value and the row or line, with no dataset recorded and no file left in the uploads folder; crafted shapes
that used to answer 500 are recorded with an issue naming the row or field; and an upload that passes
the counters but needs more memory than VALIDATION_MEMORY_MB stops the validating child, not the API
(a real `finetune api` process whose peak memory is read from /proc)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.api.conftest import PASSWORD, SAMPLE, Api, running_api


@pytest.fixture(scope="module")
def roomy(api_world) -> Api:
    """The same API (database, users, uploads folder) taking uploads up to 1 MiB instead of 64 KiB: a
    100,000-level JSON document is 200 KB."""
    from finetune_platform.api.app import create_app

    settings = api_world.settings.model_copy(update={"MAX_UPLOAD_BYTES": 1 << 20})
    return Api(create_app(settings), settings, api_world.ids)


def parquet(table: pa.Table, **options) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", **options)
    return buffer.getvalue()


def repeated(text: str, rows: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([text]))


def two_labels(rows: int) -> pa.Array:
    return pa.array(["pos", "neg"] * (rows // 2))


DEEP = "[" * 100_000 + "]" * 100_000

REFUSED = {
    "bomb.parquet": (  # 800 bytes, 1 GB of text decoded
        lambda: parquet(pa.table({"text": repeated("x" * 1_000_000, 1000), "label": two_labels(1000)})),
        "dataset refused: by row 537 the text and label cells decode to 537,000,000 bytes, more than the limit "
        "of 536,870,912 (MAX_DATASET_DECODED_BYTES)",
    ),
    "cell.parquet": (
        lambda: parquet(
            pa.table(
                {"text": pa.array(["fine", "y" * 2_000_001]).dictionary_encode(), "label": two_labels(2)}
            )
        ),
        "dataset refused: row 2, column 'text': 2,000,001 characters, more than the limit of 2,000,000 per cell "
        "(MAX_TEXT_CHARS)",
    ),
    "rows.parquet": (
        lambda: parquet(
            pa.table({"text": repeated("a review", 10_000_001), "label": repeated("pos", 10_000_001)})
        ),
        "dataset refused: the Parquet metadata declares 10,000,001 rows, more than the limit of 10,000,000 "
        "(MAX_DATASET_ROWS)",
    ),
    "deep.jsonl": (
        lambda: ('{"text": "fine", "label": 1}\n{"text": ' + DEEP + ', "label": 0}\n').encode(),
        "dataset refused: line 2: JSON nested more than 64 levels deep (MAX_JSON_DEPTH)",
    ),
    "deep.json": (
        lambda: DEEP.encode(),
        "dataset refused: line 1: JSON nested more than 64 levels deep (MAX_JSON_DEPTH)",
    ),
}


def stored(api: Api) -> tuple[int, list[Path]]:
    """Dataset rows in the database (everyone's) and files under the uploads folder."""
    from sqlalchemy import func, select

    from finetune_platform.db.models import Dataset
    from finetune_platform.db.session import session_scope

    with session_scope(api.settings) as session:
        rows = session.scalar(select(func.count()).select_from(Dataset))
    files = sorted(path for path in Path(api.settings.uploads_dir).rglob("*") if path.is_file())
    return rows, files


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_bomb_is_refused_with_422_and_leaves_nothing_behind(roomy, name):
    build, detail = REFUSED[name]
    body = build()
    assert len(body) < 300_000
    before = stored(roomy)
    response = roomy.as_("alice").post("/datasets", params={"name": name}, content=body)
    assert (response.status_code, response.json()) == (422, {"detail": detail, "code": "invalid_dataset"})
    assert stored(roomy) == before


def test_the_same_column_for_text_and_label_is_refused_before_reading(api_world):
    body = parquet(pa.table({"text": pa.array(["a", "b"]), "label": two_labels(2)}))
    before = stored(api_world)
    response = api_world.as_("alice").post(
        "/datasets",
        params={"name": "same.parquet", "text_column": "label", "label_column": "label"},
        content=body,
    )
    assert response.status_code == 422
    assert response.json() == {
        "detail": "the text column and the label column are both 'label': name two different columns",
        "code": "invalid_config",
    }
    assert stored(api_world) == before


def records(*rows: dict) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


FINE = [{"text": f"review {i}", "label": i % 2} for i in range(10)]
RECORDED = {  # name -> (body, issue code, issue message): shapes that answered 500 before
    "nested.jsonl": (
        lambda: records(*FINE[:2], {"text": {"title": "an object"}, "label": 1}, *FINE[2:]),
        "nested_value",
        "column 'text' holds a JSON object or array instead of a value in 1 row(s): rows 3",
    ),
    "surrogate.jsonl": (
        lambda: b'{"text": "\\ud800", "label": 1}\n' + records(*FINE),
        "malformed_line",
        "1 malformed line(s) could not be read (line 1: field 'text' is not valid Unicode (a lone surrogate))",
    ),
    "number.json": (
        lambda: ('[{"text": "a", "label": ' + "1" * 5000 + "}]").encode(),
        "file",
        "number.json: not valid JSON (a number of more than 4,300 digits at line 1, column 2)",
    ),
    "header.csv": (
        lambda: ("text,label," + "h" * 200_000 + "\na,1,2\n").encode(),
        "file",
        "header.csv: the header row cannot be read (field larger than field limit (131072))",
    ),
    "bytes.parquet": (
        lambda: parquet(
            pa.table({"text": pa.array([b"fine", b"\xff\xfe"]).view(pa.string()), "label": two_labels(2)})
        ),
        "file",
        "bytes.parquet: row 2, column 'text': not UTF-8 text",
    ),
    "columns.parquet": (
        lambda: parquet(
            pa.table([pa.array(["a"]), pa.array([1]), pa.array([2])], names=["text", "label", "label"])
        ),
        "file",
        "columns.parquet: duplicate column name(s): 'label'",
    ),
    "struct.parquet": (
        lambda: parquet(pa.table({"text": pa.array([{"a": 1}, {"a": 2}]), "label": two_labels(2)})),
        "file",
        "struct.parquet: column 'text' holds struct<a: int64> values; text and label columns hold strings or "
        "numbers",
    ),
}


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_crafted_shapes_are_recorded_with_an_issue_naming_the_row_or_field(roomy, name):
    """Row and file errors are what a report is for: the upload is kept, invalid, and the message names
    the upload by its name, never by its server path."""
    build, code, message = RECORDED[name]
    rows_before, files_before = stored(roomy)
    response = roomy.as_("alice").post("/datasets", params={"name": name}, content=build())
    assert response.status_code == 201, response.text
    document = response.json()
    assert document["valid"] is False
    issue = document["report"]["files"][0]["issues"][0]
    assert (issue["code"], issue["message"]) == (code, message)
    rows_after, files_after = stored(roomy)
    assert (rows_after, len(files_after)) == (rows_before + 1, len(files_before) + 1)
    saved = roomy.as_("alice").get(f"/datasets/{document['id']}/report").json()
    assert saved["files"][0]["issues"][0]["message"] == message


BUILD_ONE_CELL = """
import sys
import pyarrow as pa, pyarrow.parquet as pq
text = pa.DictionaryArray.from_arrays(pa.array([0, 0], pa.int32()), pa.array(["z" * int(sys.argv[2])]))
pq.write_table(pa.table({"text": text, "label": ["a", "b"]}), sys.argv[1], compression="zstd")
"""


def peak_memory(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0]) << 10


def test_an_upload_needing_more_memory_than_the_cap_stops_the_child_not_the_api(tmp_path):
    """The counters opened up (a 100-million-character cell passes them), VALIDATION_MEMORY_MB=128: the
    API process's peak memory does not grow by the cell; the answer names the memory limit."""
    bomb = tmp_path / "one_cell.parquet"
    subprocess.run([sys.executable, "-c", BUILD_ONE_CELL, str(bomb), "100000000"], check=True, timeout=300)
    log = tmp_path / "api.log"
    with running_api(
        tmp_path,
        VALIDATION_MEMORY_MB=128,
        MAX_TEXT_CHARS=10**9,
        MAX_DATASET_DECODED_BYTES=10**10,
        MAX_UPLOAD_BYTES=1 << 20,
        MLFLOW_ENABLED="false",
    ) as (base, server, env):
        with httpx.Client(base_url=base, timeout=120) as client:
            login = client.post("/login", data={"username": "alice", "password": PASSWORD})
            client.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
            # a first upload loads what validation needs in the API process (pandas, the database)
            assert client.post("/datasets", params={"name": "train.csv"}, content=SAMPLE).status_code == 201
            before = peak_memory(server.pid)
            response = client.post(
                "/datasets", params={"name": "one_cell.parquet"}, content=bomb.read_bytes()
            )
            grown = peak_memory(server.pid) - before
            assert (response.status_code, response.json()) == (
                422,
                {
                    "detail": "dataset refused: validation needed more memory than its limit of 128 MiB "
                    "(VALIDATION_MEMORY_MB)",
                    "code": "invalid_dataset",
                },
            ), log.read_text()[-3000:]
            assert grown < 32 << 20, f"the API process grew by {grown >> 20} MiB"
            assert client.get("/datasets").json()["count"] == 1
        uploads = Path(env.values["FINETUNE_HOME"]) / "uploads"
        assert [path.suffix for path in uploads.rglob("*") if path.is_file()] == [".csv"]
