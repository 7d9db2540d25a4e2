"""An upload is validated as the task it is for: POST /datasets takes task, text_pair_column and label_delimiter,
and its report reads the labels as that task does (issue 23)."""

from __future__ import annotations

STS = (
    "a,b,score\nA dog runs,A dog is running,4.5\nA cat sleeps,Stocks fell,0.2\nKids play,Children play,abc\n"
)
TAGS = "text,tags\nrain and goals,weather|sports\nvotes,politics\nnothing,[]\nbad,sports||weather\n"


def test_a_regression_upload_with_pairs_reports_targets_and_bad_numbers(api_world):
    alice = api_world.as_("alice")
    response = alice.post(
        "/datasets?name=sts.csv&text_column=a&text_pair_column=b&label_column=score&task=regression",
        content=STS,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["valid"] is False
    (report,) = body["report"]["files"]
    assert (report["task"], report["rows_valid"]) == ("regression", 2)
    assert report["target"] == {"min": 0.2, "max": 4.5, "mean": 2.35, "std": 2.15}
    assert [(i["code"], i["message"]) for i in report["issues"]] == [
        (
            "not_a_number",
            "1 row(s) have a label that is not a finite number: row 3: label 'abc' is not a number",
        )
    ]


def test_a_multi_label_upload_reads_the_delimiter(api_world):
    alice = api_world.as_("alice")
    response = alice.post(
        "/datasets?name=tags.csv&label_column=tags&task=multi_label&label_delimiter=%7C", content=TAGS
    )
    assert response.status_code == 201, response.text
    (report,) = response.json()["report"]["files"]
    assert report["label_counts"] == {"politics": 1, "sports": 1, "weather": 1}
    assert report["issues"][0]["message"] == (
        "1 row(s) have a malformed label list: row 4: label 'sports||weather' has an empty label (labels are "
        "separated by '|')"
    )


def test_an_unknown_task_is_refused_naming_the_field(api_world):
    response = api_world.as_("alice").post("/datasets?name=tags.csv&task=ranking", content=TAGS)
    assert response.status_code == 422, response.text
    (problem,) = response.json()["problems"]
    assert problem["field"] == "query.task"
