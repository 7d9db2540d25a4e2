"""The Datasets page's Audit section in Streamlit's AppTest against a real API on loopback: no audit yet, the Run
audit button queues one (with a validation dataset) and shows its progress, then, once the worker's own code has
run it, the summary counts, the label errors, the near-duplicate groups with the leak marked, and the plots; a
failed audit shows why."""

from __future__ import annotations

import pytest

from tests.api.test_data_audit import FLIPPED, LEAKED, as_csv, planted
from tests.ui.test_app import APP, PASSWORD, log_in, open_page, serve_in_thread

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
pytestmark = pytest.mark.slow  # embeds with MiniLM


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    """The API on loopback with alice's planted datasets (topics.csv and its validation file) uploaded."""
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings
    from finetune_platform.ui.client import PlatformClient

    root = tmp_path_factory.mktemp("ui-audit")
    settings = Settings(
        FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MODEL_REGISTRY_DIR=root / "cards",
        MLFLOW_ENABLED=False,
    )  # fmt: skip
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "alice", PASSWORD)
    url, server = serve_in_thread(create_app(settings))
    alice = PlatformClient(url)
    alice.login("alice", PASSWORD)
    train, validation = planted()
    ids = {
        "validation": alice.upload_dataset("topics-validation.csv", validation)["id"],
        "train": alice.upload_dataset("topics.csv", train)["id"],  # the newest: the page shows it first
    }
    yield url, settings, ids, alice
    server.should_exit = True


@pytest.fixture
def app(api_url, monkeypatch):
    monkeypatch.setenv("FINETUNE_API_URL", api_url[0])
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    log_in(at, "alice")
    return open_page(at, "Datasets")


def test_an_audit_is_run_followed_and_shown(app, api_url):
    from finetune_platform.worker.executor import execute_job

    _url, settings, ids, _alice = api_url
    assert app.selectbox(key="audit_dataset").value == ids["train"]
    assert [h.value for h in app.header] == ["Audit"]
    assert [i.value for i in app.info] == ["No audit of this dataset yet."]
    app.selectbox(key="audit_validation").set_value(ids["validation"])
    app.button(key="audit_run").click()
    app.run()
    assert not app.exception, app.exception
    (queued,) = [s.value for s in app.success]
    task_id = queued.removeprefix("Queued audit task ")
    assert "Auditing: queued · 0%" in [p.proto.text for p in app.get("progress")]
    app.run()
    assert app.button(key="audit_run").disabled  # one audit at a time
    assert "Auditing: queued · 0%" in [p.proto.text for p in app.get("progress")]

    assert execute_job(settings, task_id) == "succeeded"  # the worker's own code, in this process
    app.run()
    assert not app.exception, app.exception
    assert not app.button(key="audit_run").disabled
    metrics = {m.label: m.value for m in app.metric}
    assert metrics["train/validation leaks"] == "1"
    assert int(metrics["likely label errors"]) >= 3
    assert [s.value for s in app.subheader] == [
        "Likely label errors (most likely first)", "Near-duplicate groups (leaks and conflicting labels first)",
        "Label pairs the data confuses", "Outliers (farthest first)", "Plots",
    ]  # fmt: skip
    tables = {tuple(frame.value.columns)[:3]: frame.value for frame in app.dataframe}
    errors = tables["file", "row", "text"]
    assert list(errors.columns) == ["file", "row", "text", "given", "suggested", "score", "flagged"]
    assert set(errors[errors["flagged"]]["row"]) <= set(FLIPPED) and errors["flagged"].sum() >= 3
    groups = tables["group", "leak", "labels differ"]
    leak = groups[groups["leak"]]
    assert list(zip(leak["file"], leak["row"], strict=True)) == [("train", LEAKED), ("validation", 1)]
    assert any(c.value.startswith(f"Audit {task_id} of ") for c in app.caption)
    assert len(app.get("image")) == 3  # label quality, class overlap, outliers
    assert [b.label for b in app.get("download_button")] == ["Download the report (audit.md)"]


def test_a_failed_audit_says_why(app, api_url):
    from finetune_platform.worker.executor import execute_job

    _url, settings, _ids, alice = api_url
    broken = alice.upload_dataset("broken.csv", as_csv([["A storm", "weather"]], ("text", "topic")))
    task_id = alice.audit_dataset(broken["id"])["id"]
    assert execute_job(settings, task_id) == "failed"
    app.run()
    app.selectbox(key="audit_dataset").set_value(broken["id"])
    app.run()
    assert not app.exception, app.exception
    (failed,) = [e.value for e in app.error]
    assert failed.startswith(
        f"The last audit failed: invalid dataset: dataset {broken['id']} (broken.csv): missing"
    )
    assert not app.info
