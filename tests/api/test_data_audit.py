"""POST /datasets/{id}/audit and what it leaves: a queued task of kind audit (202, Location), run by the worker's
own code, its phase and percent on GET /task/{id}, its audit.json on GET /datasets/{id}/audit and its report and
plots by a fixed list of names. On SQLite and PostgreSQL: a planted dataset's flipped labels and leak are found;
another user's dataset (admins' too) is not found on every route; path traversal through the file name is 404;
a failed audit names the dataset, never the server's file; cancel and retry work as for any task."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from finetune_platform.data.audit import AuditOptions
from finetune_platform.errors import ConfigError
from finetune_platform.services.schemas.datasets import DataAuditCreate
from finetune_platform.worker.executor import execute_job

pytestmark = pytest.mark.slow  # embeds with MiniLM: seconds per audit

TOPICS = {
    "sports": (
        ["the striker", "our goalkeeper", "the coach", "the home team", "a young sprinter", "the referee",
         "the captain", "the tennis champion"],
        ["scored twice in the final minutes", "won the league title on penalties",
         "broke the national record in the relay", "was sent off after a rough tackle",
         "trained hard before the marathon", "celebrated the cup victory with fans"],
    ),
    "cooking": (
        ["my grandmother", "the pastry chef", "a home cook", "the bakery", "our neighbour", "the restaurant kitchen",
         "a food blogger", "the caterer"],
        ["simmered the tomato sauce for hours", "baked sourdough bread with a crisp crust",
         "whisked eggs and sugar for the sponge cake", "roasted garlic and rosemary potatoes",
         "seasoned the soup with fresh basil", "kneaded dough for homemade pasta"],
    ),
    "weather": (
        ["the forecast", "a cold front", "the storm", "heavy clouds", "the morning fog", "a tropical cyclone",
         "the heatwave", "strong winds"],
        ["brought freezing rain to the valley", "pushed temperatures above forty degrees",
         "left snow drifts along the coast", "caused flooding after days of rain",
         "cleared by the afternoon with sunshine", "knocked down power lines overnight"],
    ),
}  # fmt: skip
LABELS = list(TOPICS)
FLIPPED = (6, 23, 42, 64, 81)  # 1-based data rows of train.csv whose label is moved to the next topic
LEAKED = 11  # train.csv's row 11 is validation.csv's row 1 too


def topic_rows(count: int, seed: int, taken: set[str] = frozenset()) -> list[list[str]]:
    """Distinct sentences about three topics, in turn: a linear classifier on MiniLM separates them."""
    rng, rows = random.Random(seed), []
    while len(rows) < count:
        label = LABELS[len(rows) % 3]
        subjects, predicates = TOPICS[label]
        text = f"{rng.choice(subjects).capitalize()} {rng.choice(predicates)}."
        if text not in taken and all(text != row[0] for row in rows):
            rows.append([text, label])
    return rows


def as_csv(rows: list[list[str]], header: tuple[str, str] = ("text", "label")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def planted() -> tuple[bytes, bytes]:
    train = topic_rows(90, 1)
    for row in FLIPPED:
        train[row - 1][1] = LABELS[(LABELS.index(train[row - 1][1]) + 1) % 3]
    validation = [list(train[LEAKED - 1]), *topic_rows(20, 2, {text for text, _ in train})]
    return as_csv(train), as_csv(validation)


@pytest.fixture(scope="module")
def audited(api_world):
    """alice's planted train and validation datasets, audited through the queue by the worker's own code."""
    alice = api_world.as_("alice")
    train, validation = planted()
    ids = {}
    for name, content in (("topics.csv", train), ("topics-validation.csv", validation)):
        answer = alice.post(f"/datasets?name={name}", content=content)
        assert answer.status_code == 201, answer.text
        ids[name] = answer.json()["id"]
    submitted = alice.post(
        f"/datasets/{ids['topics.csv']}/audit",
        json={"validation_dataset_id": ids["topics-validation.csv"], "folds": 3},
    )
    assert submitted.status_code == 202, submitted.text
    task_id = submitted.json()["id"]
    assert execute_job(api_world.settings, task_id) == "succeeded"
    return {"dataset": ids["topics.csv"], "validation": ids["topics-validation.csv"], "task": task_id}


def test_the_request_bounds_are_the_engines():
    assert {
        name: getattr(DataAuditCreate(), name) for name in ("folds", "near_duplicate_cosine", "outlier_z")
    } == {name: getattr(AuditOptions(), name) for name in ("folds", "near_duplicate_cosine", "outlier_z")}
    for field, bad in (
        ("folds", 1),
        ("folds", 21),
        ("near_duplicate_cosine", 0.49),
        ("near_duplicate_cosine", 1.01),
    ):
        with pytest.raises(ConfigError, match=f"audit option {field}"):
            AuditOptions(**{field: bad})
        with pytest.raises(ValueError, match=field):
            DataAuditCreate(**{field: bad})
    with pytest.raises(ConfigError, match="audit option outlier_z"):
        AuditOptions(outlier_z=0)


def test_an_audit_is_queued_with_its_location_audited_and_repeatable(api_world):
    alice, dataset = api_world.as_("alice"), api_world.ids["dataset"]
    answer = alice.post(f"/datasets/{dataset}/audit", headers={"Idempotency-Key": "audit-once"})
    assert answer.status_code == 202, answer.text
    task = answer.json()
    assert answer.headers["location"] == f"/task/{task['id']}"
    assert (task["kind"], task["status"], task["stage"], task["max_attempts"]) == ("audit", "queued", None, 3)
    again = alice.post(f"/datasets/{dataset}/audit", headers={"Idempotency-Key": "audit-once"})
    assert (again.status_code, again.json()["id"]) == (200, task["id"])
    shown = alice.get(f"/task/{task['id']}").json()
    assert (shown["kind"], shown["status"]) == ("audit", "queued")
    listed = alice.get(f"/datasets/{dataset}/audits").json()
    assert task["id"] in [t["id"] for t in listed["data"]]
    entries = api_world.as_("root").get("/audit/logs", params={"action": "dataset.audit"}).json()["data"]
    assert any(e["target"] == f"task:{task['id']}" and e["outcome"] == "ok" for e in entries)
    conflict = alice.get(f"/datasets/{dataset}/audit")
    assert conflict.status_code == 409
    assert conflict.json()["detail"].startswith(
        f"dataset {dataset} (train.csv) has no finished audit yet: audit task "
    )
    assert alice.post(f"/task/{task['id']}/cancel").json()["status"] == "cancelled"


def test_out_of_bounds_options_are_refused_naming_the_field(api_world):
    alice, dataset = api_world.as_("alice"), api_world.ids["dataset"]
    for body, field in (({"folds": 1}, "folds"), ({"near_duplicate_cosine": 2}, "near_duplicate_cosine"),
                        ({"outlier_z": 0}, "outlier_z"), ({"output_dir": "/tmp"}, "output_dir")):  # fmt: skip
        refused = alice.post(f"/datasets/{dataset}/audit", json=body)
        assert refused.status_code == 422, refused.text
        assert [p["field"] for p in refused.json()["problems"]] == [f"body.{field}"]


def test_no_audit_yet_is_404_saying_how_to_start_one(api_world):
    alice = api_world.as_("alice")
    fresh = alice.post("/datasets?name=fresh.csv", content=as_csv(topic_rows(12, 5))).json()["id"]
    answer = alice.get(f"/datasets/{fresh}/audit")
    assert answer.status_code == 404
    assert answer.json()["detail"] == (
        f"dataset {fresh} (fresh.csv) has no audit yet: start one with POST /datasets/{fresh}/audit"
    )
    assert alice.get(f"/datasets/{fresh}/audits").json() == {
        "data": [],
        "count": 0,
        "limit": None,
        "offset": 0,
    }


def test_another_users_dataset_is_not_found_on_every_audit_route(api_world, audited):
    dataset = audited["dataset"]
    for who in ("bob", "root"):  # datasets are private, admins' included
        client = api_world.as_(who)
        for answer in (
            client.post(f"/datasets/{dataset}/audit"),
            client.get(f"/datasets/{dataset}/audit"),
            client.get(f"/datasets/{dataset}/audits"),
            client.get(f"/datasets/{dataset}/audit/audit.md"),
            client.get(f"/datasets/{dataset}/audit/outliers.png"),
        ):
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"] == f"no dataset {dataset!r}"
    # nor may alice's audit name bob's dataset as its validation data
    bobs = (
        api_world.as_("bob").post("/datasets?name=bobs.csv", content=as_csv(topic_rows(12, 7))).json()["id"]
    )
    refused = api_world.as_("alice").post(f"/datasets/{dataset}/audit", json={"validation_dataset_id": bobs})
    assert (refused.status_code, refused.json()["detail"]) == (404, f"no dataset {bobs!r}")
    assert api_world.as_(None).get(f"/datasets/{dataset}/audit").status_code == 401


def test_a_planted_dataset_audited_through_the_queue(api_world, audited):
    alice, dataset, task_id = api_world.as_("alice"), audited["dataset"], audited["task"]
    task = alice.get(f"/task/{task_id}").json()
    assert (task["kind"], task["status"], task["stage"], task["error"]) == (
        "audit",
        "succeeded",
        "done",
        None,
    )
    assert (task["progress"]["phase"], task["progress"]["percent"]) == ("done", 100.0)
    events = alice.get(f"/task/{task_id}/logs").json()
    assert [e["message"] for e in events["events"] if e["kind"] == "stage"] == ["auditing"]
    assert any(line.endswith("embedding (65%)") for line in events["log_lines"])

    answer = alice.get(f"/datasets/{dataset}/audit")
    assert answer.status_code == 200, answer.text
    audit = answer.json()
    assert (audit["task_id"], audit["dataset_id"], audit["validation_dataset_id"], audit["pending_task_id"]) == (
        task_id, dataset, audited["validation"], None,
    )  # fmt: skip
    assert audit["summary"] == task["progress"]["summary"]
    assert audit["downloads"] == ["audit.md", "label_quality.png", "class_overlap.png", "outliers.png"]
    # flipped labels found: every flagged row is a flip, most of the flips are flagged, with the topic they were
    flagged = [(r["file"], r["row"]) for r in audit["label_errors"]["rows"] if r["flagged"]]
    assert flagged and {row for _, row in flagged} <= set(FLIPPED) and len(flagged) >= 3
    assert {file for file, _ in flagged} == {"train"}
    for row in (r for r in audit["label_errors"]["rows"] if r["flagged"]):
        assert LABELS.index(row["suggested"]) == (LABELS.index(row["label"]) - 1) % 3
    # the leak found, as a group of the train row and its validation copy
    leaks = [g for g in audit["near_duplicates"]["groups"] if g["cross_split"]]
    assert [[(r["file"], r["row"]) for r in g["rows"]] for g in leaks] == [
        [("train", LEAKED), ("validation", 1)]
    ]
    assert audit["summary"]["cross_split_groups"] == 1
    # the files are named by dataset, never by where the server keeps them
    home = str(Path(api_world.settings.FINETUNE_HOME).resolve())
    assert audit["files"]["train"]["path"] == f"dataset {dataset} (topics.csv)"
    assert audit["files"]["validation"]["dataset_id"] == audited["validation"]
    assert home not in answer.text

    report = alice.get(f"/datasets/{dataset}/audit/audit.md")
    assert report.status_code == 200 and report.headers["content-type"] == "text/markdown; charset=utf-8"
    assert report.text.startswith("# Data audit (single_label)") and home not in report.text
    plot = alice.get(f"/datasets/{dataset}/audit/label_quality.png")
    assert plot.headers["content-type"] == "image/png" and plot.content.startswith(b"\x89PNG")
    folder = Path(api_world.settings.FINETUNE_HOME) / "audits" / dataset / task_id
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["audit.json", "audit.md", "label_quality.png", "class_overlap.png", "outliers.png", "logs.txt"]
    )


@pytest.mark.parametrize(
    "name",
    ["../../secrets", "..%2F..%2Fsecrets", "%2e%2e%2f%2e%2e%2fsecrets", "..%252F..%252Fsecrets", "..", "%2e%2e",
     "audit.json", "logs.txt", "AUDIT.MD", "audit.md%00", "audit.md%2F..%2F..%2Fsecrets", "..%5C..%5Csecrets"],
)  # fmt: skip
def test_path_traversal_through_the_file_name_is_not_found(api_world, audited, name):
    home = Path(api_world.settings.FINETUNE_HOME)
    (home / "secrets").write_text("the server's secret\n")
    (home / "audits" / "secrets").write_text("the server's secret\n")
    answer = api_world.as_("alice").get(f"/datasets/{audited['dataset']}/audit/{name}")
    assert answer.status_code == 404, (name, answer.text)
    assert "secret\n" not in answer.text


def test_a_newer_audit_is_pending_beside_the_latest_one_then_cancelled_and_retried(api_world, audited):
    alice, dataset = api_world.as_("alice"), audited["dataset"]
    newer = alice.post(f"/datasets/{dataset}/audit").json()["id"]
    audit = alice.get(f"/datasets/{dataset}/audit").json()
    assert (audit["task_id"], audit["pending_task_id"]) == (audited["task"], newer)
    assert [t["id"] for t in alice.get(f"/datasets/{dataset}/audits").json()["data"]][:2] == [
        newer,
        audited["task"],
    ]
    assert alice.post(f"/task/{newer}/cancel").json()["status"] == "cancelled"
    assert alice.get(f"/datasets/{dataset}/audit").json()["pending_task_id"] is None
    retried = alice.post(f"/task/{newer}/retry")
    assert (retried.status_code, retried.json()["status"]) == (200, "queued")
    assert alice.post(f"/task/{newer}/cancel").json()["status"] == "cancelled"


def test_a_validation_dataset_of_other_columns_is_refused(api_world, audited):
    alice = api_world.as_("alice")
    other = alice.post(
        "/datasets?name=reviews.csv&text_column=review",
        content=as_csv(topic_rows(12, 8), ("review", "label")),
    ).json()["id"]
    refused = alice.post(f"/datasets/{audited['dataset']}/audit", json={"validation_dataset_id": other})
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        f"validation_dataset_id: dataset {other} (reviews.csv) was uploaded with other columns or task than "
        f"dataset {audited['dataset']} (topics.csv) (text_column 'review', label_column 'label', task "
        "'single_label', label_delimiter ','; text_column 'text', label_column 'label', task 'single_label', "
        "label_delimiter ','): upload it with the same ones"
    )


def test_an_audit_past_audit_max_rows_is_refused_and_queues_nothing(api_world, audited):
    """The attack: a large upload audited again and again takes a worker's memory and hours of CPU each time. Past
    AUDIT_MAX_ROWS the request is refused from the upload's row count, before a task exists."""
    from sqlalchemy import func, select

    from finetune_platform.api.app import create_app
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope
    from tests.api.conftest import Api

    capped = api_world.settings.model_copy(update={"AUDIT_MAX_ROWS": 100})
    alice = Api(create_app(capped), capped, api_world.ids).as_("alice")

    def audit_tasks() -> int:
        with session_scope(api_world.settings) as session:
            return session.scalar(select(func.count()).select_from(Job).where(Job.kind == "audit"))

    before = audit_tasks()
    dataset, validation = audited["dataset"], audited["validation"]
    refused = alice.post(f"/datasets/{dataset}/audit", json={"validation_dataset_id": validation})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"] == (  # 90 training rows and 21 validation rows
        f"dataset {dataset} (topics.csv) and dataset {validation} (topics-validation.csv): 111 rows to audit, "
        "more than the 100 one audit takes (AUDIT_MAX_ROWS): audit a sample of the rows, or raise AUDIT_MAX_ROWS "
        "where the machine has the memory and time (about 32 KB and 7 ms a row on 2 CPU cores)"
    )
    assert audit_tasks() == before
    queued = alice.post(f"/datasets/{dataset}/audit")  # its 90 training rows alone are within the limit
    assert queued.status_code == 202, queued.text
    task = queued.json()["id"]
    assert audit_tasks() == before + 1
    with session_scope(api_world.settings) as session:  # the worker holds the audit to the same limit
        assert session.get(Job, task).config["options"]["max_rows"] == 100
    assert alice.post(f"/task/{task}/cancel").status_code == 200  # nothing left pending for the other tests


def test_a_failed_audit_names_the_dataset_and_get_says_so(api_world):
    alice = api_world.as_("alice")
    broken = alice.post("/datasets?name=broken.csv", content=b"text,topic\nA storm,weather\n").json()
    assert broken["valid"] is False
    task_id = alice.post(f"/datasets/{broken['id']}/audit").json()["id"]
    assert execute_job(api_world.settings, task_id) == "failed"  # the file itself is refused: no retry
    task = alice.get(f"/task/{task_id}").json()
    assert (task["status"], task["stage"], task["attempts"]) == ("failed", "auditing", 1)
    assert f"dataset {broken['id']} (broken.csv)" in task["error"]
    assert str(Path(api_world.settings.FINETUNE_HOME).resolve()) not in task["error"]
    answer = alice.get(f"/datasets/{broken['id']}/audit")
    assert answer.status_code == 404
    assert answer.json()["detail"].startswith(
        f"dataset {broken['id']} (broken.csv) has no succeeded audit: its last audit task {task_id} is failed: "
    )
