"""The upload's `name` query parameter takes every name the format registry names: its shortest bound comes
from the registry's shortest suffix and a one-character stem, so `a.pq` is accepted (before: refused by a fixed
`min_length=5`) and a name that is only a suffix, `.pq`, is refused with a 422 naming the field."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq

from finetune_platform.data.formats import NAME_MIN_LENGTH, SUFFIXES
from tests.conftest import sentiment_rows


def small_parquet() -> bytes:
    rows = sentiment_rows(8, seed=4, labels=("pos", "neg"))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"text": text, "label": label} for text, label in rows]), buffer)
    return buffer.getvalue()


def test_the_shortest_name_the_registry_allows_is_one_character_and_a_suffix():
    assert NAME_MIN_LENGTH == min(len(suffix) for suffix in SUFFIXES) + 1 == len("a.pq")


def test_a_one_character_pq_name_is_uploaded(api_world):
    alice = api_world.as_("alice")
    response = alice.post("/datasets?name=a.pq", content=small_parquet())
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["name"], body["format"], body["rows"]) == ("a.pq", "parquet", 8)


def test_a_name_that_is_only_a_suffix_is_refused_before_reading(api_world):
    alice = api_world.as_("alice")
    listed = alice.get("/datasets").json()["count"]
    response = alice.post("/datasets?name=.pq", content=small_parquet())
    assert response.status_code == 422, response.text
    (problem,) = response.json()["problems"]
    assert problem["field"] == "query.name"
    assert f"at least {NAME_MIN_LENGTH} characters" in problem["message"]
    assert alice.get("/datasets").json()["count"] == listed


def test_a_csv_whose_first_row_opens_a_quote_that_never_closes_is_refused_with_the_line(api_world):
    """Before: pandas met the unclosed quote while the reader was being built, outside the handler that names
    it, and the upload answered 500 ("validation of the upload failed unexpectedly")."""
    alice = api_world.as_("alice")
    response = alice.post("/datasets?name=quotes.csv", content=b'text,label\n"abc,1\n')
    assert response.status_code == 201, response.text  # stored, marked invalid, with the report saying why
    body = response.json()
    assert body["valid"] is False
    (issue,) = body["report"]["files"][0]["issues"]
    assert (issue["code"], issue["message"]) == ("file", "quotes.csv: a quote opened on line 2 never closes")
