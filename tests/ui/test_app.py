"""The web UI in Streamlit's AppTest against a real API on loopback: login (and its failure), the job monitor
(stepper, cancel, the failure reason), the admin page for admins only."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[2] / "src" / "finetune_platform" / "ui" / "app.py"
PASSWORD = "long enough password"


@pytest.fixture(scope="module")
def api_url(tmp_path_factory):
    import uvicorn

    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("ui")
    settings = Settings(
        FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MODEL_REGISTRY_DIR=root / "cards"
    )
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "alice", PASSWORD)
        create_user(session, "root", PASSWORD, role="admin")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", settings
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def app(api_url, monkeypatch):
    monkeypatch.setenv("FINETUNE_API_URL", api_url[0])
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    return at


def log_in(at, username: str, password: str = PASSWORD):
    at.text_input(key="username").input(username)
    at.text_input(key="password").input(password)
    at.button[0].click()
    at.run()
    return at


def queued_task(api_url) -> str:
    from finetune_platform.ui.client import PlatformClient

    alice = PlatformClient(api_url[0])
    alice.login("alice", PASSWORD)
    dataset = alice.upload_dataset(
        "reviews.csv", (Path(__file__).resolve().parents[2] / "data/sample/train.csv").read_bytes()
    )
    return alice.train({"experiment": "ui"}, dataset["id"])["id"]


def test_a_wrong_password_is_a_readable_error(app):
    log_in(app, "alice", "not the password")
    assert [e.value for e in app.error] == ["Login failed: incorrect username or password"]
    assert not app.exception
    assert "token" not in app.session_state


def test_a_user_sees_jobs_but_no_admin_page_and_can_cancel(app, api_url):
    task_id = queued_task(api_url)
    log_in(app, "alice")
    assert not app.exception
    assert app.sidebar.radio(key="page").options == ["New job", "Jobs"]
    app.sidebar.radio(key="page").set_value("Jobs")
    app.run()
    assert app.title[0].value == "Jobs"
    app.selectbox(key="job").set_value(task_id)
    app.run()
    assert any("▶ queued  →  · validating" in m.value for m in app.markdown)
    app.button(key="cancel").click()
    app.run()
    assert [s.value for s in app.success] == [f"Job {task_id} is cancelled"]
    app.run()
    assert any("✗ cancelled" in m.value for m in app.markdown)


def test_a_failed_job_shows_its_reason(app, api_url):
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    task_id = queued_task(api_url)
    with session_scope(api_url[1]) as session:
        job = session.get(Job, task_id)
        job.status, job.error = "failed", "data: no rows left after dropping invalid ones"
    log_in(app, "alice")
    app.sidebar.radio(key="page").set_value("Jobs")
    app.run()
    app.selectbox(key="job").set_value(task_id)
    app.run()
    assert [e.value for e in app.error] == ["Failed: data: no rows left after dropping invalid ones"]


def test_an_admin_sees_users_and_the_audit_log(app):
    log_in(app, "root")
    assert app.sidebar.radio(key="page").options == ["New job", "Jobs", "Admin"]
    app.sidebar.radio(key="page").set_value("Admin")
    app.run()
    assert not app.exception
    users = app.dataframe[0].value
    assert set(users["username"]) >= {"alice", "root"}
    app.text_input(key="audit_action").input("login")
    app.run()
    audit = app.dataframe[1].value
    assert len(audit) >= 1 and set(audit["action"]) == {"login"}


def test_logout_ends_the_session(app):
    log_in(app, "alice")
    app.sidebar.button(key="logout").click()
    app.run()
    assert "token" not in app.session_state
    assert app.title[0].value == "finetune-platform"


def test_a_job_is_submitted_from_the_generated_form(app, api_url):
    log_in(app, "alice")
    assert app.title[0].value == "New training job"
    assert [i.value for i in app.info] == ["Upload a dataset to train on."]
    # AppTest cannot feed st.file_uploader: the upload goes through the same client call the page makes
    from finetune_platform.ui.client import PlatformClient

    alice = PlatformClient(api_url[0], app.session_state["token"])
    sample = Path(__file__).resolve().parents[2] / "data" / "sample" / "train.csv"
    app.session_state["dataset"] = alice.upload_dataset("reviews.csv", sample.read_bytes())
    app.run()
    assert [s.value for s in app.success] == ["reviews.csv: 320 rows, valid"]
    assert app.number_input(key="cfg.training.batch_size").value == 32  # the schema's default
    app.text_input(key="cfg.experiment").input("from-the-ui")
    app.number_input(key="cfg.training.max_steps").set_value(6)
    app.selectbox(key="cfg.training.scheduler").set_value("cosine")
    app.button(key="submit").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    task_id = app.session_state["job"]
    assert [s.value for s in app.success][-1] == f"Queued task {task_id}"
    assert alice.task(task_id)["status"] == "queued"
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope

    with session_scope(api_url[1]) as session:
        config = session.get(Job, task_id).config
    assert config["experiment"] == "from-the-ui"
    assert (config["training"]["max_steps"], config["training"]["scheduler"]) == (6, "cosine")
    assert config["training"]["batch_size"] == 32 and config["lora"]["r"] == 8  # untouched: the defaults


def test_dataset_errors_block_submission(app, api_url):
    log_in(app, "alice")
    from finetune_platform.ui.client import PlatformClient

    alice = PlatformClient(api_url[0], app.session_state["token"])
    app.session_state["dataset"] = alice.upload_dataset("bad.csv", b"text,label\nhello,1\n,0\nfine,1\n")
    app.run()
    messages = [e.value for e in app.error]
    assert any(m.startswith("column 'text' is empty or whitespace in 1 row(s): rows 2") for m in messages)
    assert app.button(key="submit").disabled
