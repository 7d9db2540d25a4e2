"""The web UI in Streamlit's AppTest against a real API on loopback: login (and its failure), the header of every
page, uploads (limit, a corrected file of the same name), the job monitor (stepper, cancel, the failure reason,
curves and final metrics from GET /task/{id}/metrics), prediction over a file and its CSV, the playground without
an inference server, the admin page for admins only."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import UNGATED, free_port

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[2] / "src" / "finetune_platform" / "ui" / "app.py"
PASSWORD = "long enough password"
HEADER = ":material/tune: **finetune-platform**"  # the first line of every page


def serve_in_thread(app) -> tuple[str, object]:
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server


@pytest.fixture(scope="module")
def api_url(tmp_path_factory, tiny_bert):
    """The API and `finetune serve` on loopback over one registry holding ui-model version 1."""
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training
    from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

    root = tmp_path_factory.mktemp("ui")
    settings = Settings(
        FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MODEL_REGISTRY_DIR=root / "cards"
    )
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "alice", PASSWORD)
        create_user(session, "root", PASSWORD, role="admin")
    train = write_csv(root / "train.csv", sentiment_rows(96, 1))
    valid = write_csv(root / "valid.csv", sentiment_rows(32, 2))
    raw = tiny_config_dict(tiny_bert, train, valid, root / "runs", max_steps=16, eval_steps=8)
    raw["registry"] = {
        "model_name": "ui-model",
        "description": "tiny sentiment model for the UI tests",
        **UNGATED,
    }
    run_training(config_from_dict(raw), settings=settings, show_progress=False)
    raw["registry"], raw["training"]["learning_rate"] = {"enabled": False}, 5e-3  # a second run to compare
    run_training(config_from_dict(raw), settings=settings, show_progress=False)
    api, api_server = serve_in_thread(create_app(settings))
    serve, serve_server = serve_in_thread(create_serve_app(settings))
    yield api, settings, serve
    for server in (api_server, serve_server):
        server.should_exit = True


@pytest.fixture
def app(api_url, monkeypatch):
    monkeypatch.setenv("FINETUNE_API_URL", api_url[0])
    monkeypatch.setenv("FINETUNE_SERVE_URL", api_url[2])
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
    assert app.sidebar.radio(key="page").options == [
        "New job", "Datasets", "Jobs", "Sweeps", "Predict a file", "Experiments", "Models", "Playground"
    ]  # fmt: skip
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
    assert any("✗ queued (cancelled)  →  · validating" in m.value for m in app.markdown)


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
    assert app.sidebar.radio(key="page").options == [
        "New job", "Datasets", "Jobs", "Sweeps", "Predict a file", "Experiments", "Models", "Playground", "Admin"
    ]  # fmt: skip
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
    assert (app.markdown[0].value, app.title[0].value) == (HEADER, "Log in")


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
    assert config["lora"]["target_modules"] == "auto"


def test_dataset_errors_block_submission(app, api_url):
    log_in(app, "alice")
    from finetune_platform.ui.client import PlatformClient

    alice = PlatformClient(api_url[0], app.session_state["token"])
    app.session_state["dataset"] = alice.upload_dataset("bad.csv", b"text,label\nhello,1\n,0\nfine,1\n")
    app.run()
    messages = [e.value for e in app.error]
    assert any(m.startswith("column 'text' is empty or whitespace in 1 row(s): rows 2") for m in messages)
    assert app.button(key="submit").disabled


def open_page(app, page: str):
    app.sidebar.radio(key="page").set_value(page)
    app.run()
    assert not app.exception, app.exception
    return app


def test_models_are_searched_and_recommended_but_only_admins_move_them(app):
    log_in(app, "alice")
    open_page(app, "Models")
    table = app.dataframe[0].value
    assert list(zip(table["name"], table["version"], table["stage"], strict=True)) == [
        ("ui-model", 1, "Staging")
    ]
    card = next(m.value for m in app.markdown if m.value.startswith("**ui-model** version 1"))
    assert "tiny sentiment model for the UI tests" in card and "- labels: 0, 1\n" in card
    assert re.search(r"^- metrics: accuracy \d\.\d{4}, loss \d\.\d{4}, macro_f1 \d\.\d{4}$", card, re.M)
    app.selectbox(key="models_stage").set_value("Production")
    app.run()
    assert len(app.dataframe[0].value) == 0
    app.text_input(key="models_query").input("sentiment")
    app.run()
    assert list(app.dataframe[1].value["name"]) == ["ui-model"]
    assert not [b for b in app.button if b.key == "move"]  # no stage moves for a user


def test_an_admin_moves_a_version_to_production(app):
    log_in(app, "root")
    open_page(app, "Models")
    app.selectbox(key="move_stage").set_value("Production")
    app.button(key="move").click()
    app.run()
    assert [s.value for s in app.success] == ["ui-model version 1 is now Production"]
    app.number_input(key="move_version").set_value(7)
    app.button(key="move").click()
    app.run()
    assert [e.value for e in app.error] == ["model 'ui-model' has no version 7"]


def test_the_playground_classifies_a_text(app, api_url):
    from finetune_platform.inference.predictor import Predictor

    log_in(app, "alice")
    open_page(app, "Playground")
    app.text_area(key="play_text").input("great film")
    app.text_input(key="play_model").input("ui-model@1")
    app.button(key="play").click()
    app.run()
    predictor = Predictor.from_registry(api_url[1], "ui-model@1")
    expected = predictor.predict(["great film"])[0]
    assert [(m.label, m.value) for m in app.metric] == [("ui-model v1", expected.label_name)]
    # the class id beside its name, and the seed README's base_model and language
    assert predictor.info.labels[expected.label] == expected.label_name
    (caption,) = [c.value for c in app.caption]
    shown, _, latency = caption.rpartition(" · ")
    assert shown == f"label {expected.label} ({expected.label_name}) · {predictor.info.base_model}, English"
    assert re.fullmatch(r"[0-9.]+ ms on the server", latency), caption
    app.text_input(key="play_model").input("no-such-model")
    app.button(key="play").click()
    app.run()
    assert [e.value for e in app.error] == ["no registered model 'no-such-model'"]


def chart_data(element):
    """The data a Streamlit chart element carries (Arrow), as a pandas frame."""
    import pyarrow as pa

    return pa.ipc.open_stream(element.proto.datasets[0].data.data).read_all().to_pandas()


def test_an_admin_compares_runs(app):
    log_in(app, "root")
    open_page(app, "Experiments")
    app.selectbox(key="experiment").set_value("tiny")
    app.run()
    runs = app.dataframe[0].value
    assert len(runs) == 2 and set(runs["status"]) == {"FINISHED"}
    assert [c.value for c in app.caption] == ["Choose two or more runs to compare them."]
    app.multiselect(key="compare_runs").set_value(list(runs["run"]))
    app.run()
    assert not app.exception and not app.error
    assert [h.value for h in app.subheader] == [
        "Training loss",
        "Scores by run",
        "Final metrics",
        "Config differences",
    ]
    metrics = app.dataframe[1].value
    assert "final_accuracy" in set(metrics["metric"])
    bars = chart_data([e for e in app.main if getattr(e, "type", "") == "vega_lite_chart"][1])
    metric, run, _ = bars.columns  # one bar per (score, run)
    assert sorted(set(bars[metric])) == ["eval_accuracy", "eval_macro_f1", "final_accuracy", "final_macro_f1"]
    assert sorted(set(bars[run])) == sorted(r[:8] for r in runs["run"]) and len(bars) == 8
    differences = app.dataframe[2].value
    assert "training.learning_rate" in differences.index
    assert sorted(differences.loc["training.learning_rate"]) == ["0.005", "0.01"]


def finished_job_of(settings, username: str, run_id: str) -> str:
    """A succeeded job of ``username`` that made ``run_id`` (the fixture's runs were trained outside the queue)."""
    import uuid

    from sqlalchemy import select

    from finetune_platform.db.models import Job, User
    from finetune_platform.db.session import session_scope

    job_id = str(uuid.uuid4())
    with session_scope(settings) as session:
        owner = session.scalar(select(User).where(User.username == username))
        session.add(
            Job(
                id=job_id,
                owner_id=owner.id,
                status="succeeded",
                stage="done",
                config={"experiment": "tiny", "output_dir": str(settings.RESULTS_DIR)},  # as a real job's
                run_id=run_id,
            )
        )
    return job_id


def test_a_user_sees_and_compares_only_the_runs_of_their_own_jobs(app, api_url):
    from finetune_platform.tracking.experiments import ExperimentStore
    from finetune_platform.ui.client import ApiError, PlatformClient

    newer, older = (run.run_id for run in ExperimentStore(api_url[1]).runs("tiny"))
    log_in(app, "alice")
    open_page(app, "Experiments")
    assert [i.value for i in app.info] == ["No experiments yet."]  # the fixture's runs are not alice's
    finished_job_of(api_url[1], "alice", older)
    app.run()
    assert app.selectbox(key="experiment").options == ["tiny"]
    assert list(app.dataframe[0].value["run"]) == [older]  # the admin's run is not hers
    alice = PlatformClient(api_url[0])
    alice.login("alice", PASSWORD)
    with pytest.raises(ApiError) as caught:
        alice.compare([older, newer])
    assert (caught.value.status, str(caught.value)) == (404, f"no run {newer!r} in the tracking store")
    job_id = finished_job_of(api_url[1], "alice", newer)
    open_page(app, "Jobs")
    app.selectbox(key="job").set_value(job_id)
    app.run()
    app.button(key="compare_job").click()
    app.run()
    assert not app.exception and not app.error
    assert app.title[0].value == "Experiments"
    assert app.multiselect(key="compare_runs").value == [newer, older]
    assert [h.value for h in app.subheader] == [
        "Training loss",
        "Scores by run",
        "Final metrics",
        "Config differences",
    ]
    assert sorted(app.dataframe[2].value.loc["training.learning_rate"]) == ["0.005", "0.01"]


SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "train.csv"


def charts(app) -> list:
    """The Vega-Lite charts given their data (st.vega_lite_chart), in page order, as (spec, data frame)."""
    import json

    import pyarrow as pa

    found = [e for e in app.main if getattr(e, "type", "") == "vega_lite_chart" and e.proto.HasField("data")]
    return [
        (json.loads(e.proto.spec), pa.ipc.open_stream(e.proto.data.data).read_all().to_pandas())
        for e in found
    ]


def test_every_page_has_the_platforms_header_and_its_own_title(app):
    log_in(app, "root")
    titles = {
        "New job": "New training job", "Datasets": "Datasets", "Jobs": "Jobs", "Sweeps": "Sweeps",
        "Predict a file": "Predict a file",
        "Experiments": "Experiments", "Models": "Models", "Playground": "Playground", "Admin": "Admin",
    }  # fmt: skip
    assert app.sidebar.radio(key="page").options == list(titles)
    for page, title in titles.items():
        open_page(app, page)
        assert (app.main.markdown[0].value, app.title[0].value) == (HEADER, title), page


def test_the_uploader_states_and_holds_to_the_apis_limit(app):
    from finetune_platform.data.formats import SUFFIXES_TEXT

    log_in(app, "alice")
    uploader = app.file_uploader(key="upload")
    # The setting's default, 100 MiB: Streamlit's own hint says "100MB", the label the same.
    assert uploader.label == f"Training data ({SUFFIXES_TEXT}; at most 100 MB)"
    assert uploader.proto.max_upload_size_mb == 100


@pytest.fixture
def small_upload_limit(monkeypatch):
    from finetune_platform.settings import get_settings

    monkeypatch.setenv("MAX_UPLOAD_BYTES", "1024")
    get_settings.cache_clear()
    yield 1024
    monkeypatch.delenv("MAX_UPLOAD_BYTES")
    get_settings.cache_clear()


def test_a_file_over_the_limit_is_refused_before_it_is_sent(app, api_url, small_upload_limit):
    from finetune_platform.ui.client import PlatformClient

    log_in(app, "alice")
    uploader = app.file_uploader(key="upload")
    assert uploader.label.endswith("; at most 1 KB)") and uploader.proto.max_upload_size_mb == 1
    uploader.set_value(("big.csv", (b"text,label\n" + b"a fine film,1\n" * 160)[:2048], "text/csv"))
    app.run()
    assert [e.value for e in app.error] == ["big.csv is 2 KB: over the upload limit of 1 KB"]
    assert not [button for button in app.button if button.key == "submit"]  # no form, no Submit
    alice = PlatformClient(api_url[0], app.session_state["token"])
    assert "big.csv" not in {dataset["name"] for dataset in alice.datasets()}


def test_a_corrected_file_of_the_same_name_is_validated_again(app):
    log_in(app, "alice")
    app.file_uploader(key="upload").set_value(
        ("reviews.csv", "text,label\ncafé,1\n".encode("latin-1"), "text/csv")
    )
    app.run()
    first = [e.value for e in app.error]
    assert len(first) == 1 and "UTF-8" in first[0], first
    assert app.button(key="submit").disabled
    app.file_uploader(key="upload").set_value(("reviews.csv", SAMPLE.read_bytes(), "text/csv"))  # same name
    app.run()
    assert not app.error, [e.value for e in app.error]  # the stale error is gone
    assert [s.value for s in app.success] == ["reviews.csv: 320 rows, valid"]
    assert not app.button(key="submit").disabled


HISTORY = [  # what a run's ProgressCallback writes to history.jsonl
    {"step": 2, "epoch": 0.17, "loss": 0.6973, "learning_rate": 1e-2, "grad_norm": 1.2, "samples_per_second": 252.3,
     "eta_seconds": 9.0},
    {"step": 4, "epoch": 0.33, "loss": 0.678, "learning_rate": 7.14e-3, "grad_norm": 0.9,
     "samples_per_second": 686.8, "eta_seconds": 4.0},
    {"step": 4, "epoch": 0.33, "eval_loss": 0.7049, "eval_accuracy": 0.5, "eval_macro_f1": 0.3333},
    {"step": 6, "epoch": 0.5, "loss": 0.7017, "learning_rate": 4.29e-3, "grad_norm": 0.8, "samples_per_second": 273.5,
     "eta_seconds": 2.0},
]  # fmt: skip


def test_a_running_job_shows_its_curves_and_eta_from_the_runs_records(app, api_url):
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.jobs import run_folder_path
    from finetune_platform.training.run_folder import append_history

    task_id = queued_task(api_url)
    with session_scope(api_url[1]) as session:
        job = session.get(Job, task_id)
        job.status, job.stage = "running", "training"
        job.progress = {"percent": 75.0, "loss": 0.7017, "step": 6, "max_steps": 8}
        folder = run_folder_path(job.config["output_dir"], job.config["experiment"], job.id)
    folder.mkdir(parents=True)
    for entry in HISTORY:
        append_history(folder / "history.jsonl", entry)
    # Log lines are for people: nothing on the page comes from them.
    (folder / "logs.txt").write_text(
        "10:00:03 INFO progress: step 6/8 epoch 0.50 loss 9.9999 lr 1e-2 eta 9:59:59\n"
    )
    log_in(app, "alice")
    open_page(app, "Jobs")
    app.toggle(key="live").set_value(False)
    app.selectbox(key="job").set_value(task_id)
    app.run()
    assert any("✓ validating  →  ▶ training" in m.value for m in app.markdown)
    assert app.get("progress")[0].proto.text == "75%, ETA 0:00:02 · step 6 of 8"
    assert [s.value for s in app.subheader][:2] == ["Training loss", "Evaluation"]
    (loss_spec, loss), (eval_spec, evaluation), *_ = charts(app)
    assert list(zip(loss["step"], loss["value"], strict=True)) == [(2, 0.6973), (4, 0.678), (6, 0.7017)]
    # One evaluation: its three scores are points at step 4, on an axis of whole steps.
    assert sorted(zip(evaluation["metric"], evaluation["step"], evaluation["value"], strict=True)) == [
        ("eval accuracy", 4, 0.5), ("eval loss", 4, 0.7049), ("eval macro F1", 4, 0.3333)
    ]  # fmt: skip
    for spec in (loss_spec, eval_spec):
        assert spec["mark"]["point"] == {"filled": True, "size": 64}  # a single value is a visible point
        assert spec["encoding"]["x"]["axis"] == {"format": "d", "tickMinStep": 1}  # 8, not 8.000000
        assert spec["encoding"]["y"]["axis"] == {"format": "~g"}
    assert not any("9.9999" in str(m.value) for m in app.metric)  # the loss shown is the row's
    assert [(m.label, m.value) for m in app.metric] == [("loss", "0.7017")]


def test_a_finished_job_shows_its_final_metrics_and_confusion_matrix(app, api_url, tiny_bert, tmp_path):
    """A real tiny run with a single evaluation, trained in a succeeded job's own run folder."""
    import uuid

    from sqlalchemy import select

    from finetune_platform.db.models import Job, User
    from finetune_platform.db.session import session_scope
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training
    from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

    settings, job_id = api_url[1], str(uuid.uuid4())
    with session_scope(settings) as session:
        owner = session.scalar(select(User).where(User.username == "alice"))
        session.add(
            Job(
                id=job_id, owner_id=owner.id, status="succeeded", stage="done", progress={"percent": 100.0},
                config={"experiment": "ui-final", "output_dir": str(settings.RESULTS_DIR.resolve())},
            )
        )  # fmt: skip
    train = write_csv(tmp_path / "train.csv", sentiment_rows(48, 3))
    valid = write_csv(tmp_path / "valid.csv", sentiment_rows(20, 4))
    raw = tiny_config_dict(tiny_bert, train, valid, settings.RESULTS_DIR, max_steps=8, eval_steps=8)
    raw.update(experiment="ui-final", registry={"enabled": False})
    result = run_training(config_from_dict(raw), run_id=job_id, settings=settings, show_progress=False)
    final = result.metrics["eval"]

    log_in(app, "alice")
    open_page(app, "Jobs")
    app.selectbox(key="job").set_value(job_id)
    app.run()
    assert not app.exception and not app.error
    assert any("✓ done" in m.value for m in app.markdown)
    assert [(m.label, m.value) for m in app.metric] == [
        ("accuracy", f"{final['accuracy']:.4f}"), ("macro F1", f"{final['macro_f1']:.4f}"),
        ("loss", f"{final['loss']:.4f}"),
    ]  # fmt: skip
    headings = [s.value for s in app.subheader]
    assert headings[:4] == ["Final metrics", "Confusion matrix", "Training loss", "Evaluation"]
    calibration = result.metrics["calibration"]
    assert (
        f"Calibrated by temperature scaling (T = {calibration['temperature']:.3f}): expected calibration error "
        f"{calibration['ece_before']:.4f} → {calibration['ece_after']:.4f}, predictions unchanged."
    ) in [c.value for c in app.caption]
    (matrix_spec, matrix), _, (_, evaluation), *_ = charts(app)
    cells = {
        (a, p): c for a, p, c in zip(matrix["actual"], matrix["predicted"], matrix["count"], strict=True)
    }
    labels = final["confusion_matrix"]["labels"]
    assert cells == {
        (labels[i], labels[j]): count
        for i, row in enumerate(final["confusion_matrix"]["matrix"])
        for j, count in enumerate(row)
    }
    assert sum(cells.values()) == 20 and matrix_spec["layer"][1]["encoding"]["text"]["field"] == "count"
    assert set(evaluation["step"]) == {8} and len(evaluation) == 3  # the one evaluation: three points
    per_class = app.dataframe[-1].value
    assert list(per_class["class"]) == labels and sum(per_class["support"]) == 20


def test_a_finished_regression_job_shows_its_own_metrics(app, api_url, tiny_bert, tmp_path):
    """A regression run has no accuracy or confusion matrix: the page shows RMSE, MAE, Pearson and Spearman."""
    import uuid

    from sqlalchemy import select

    from finetune_platform.db.models import Job, User
    from finetune_platform.db.session import session_scope
    from finetune_platform.training.config import config_from_dict
    from finetune_platform.training.runner import run_training
    from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

    settings, job_id = api_url[1], str(uuid.uuid4())
    with session_scope(settings) as session:
        owner = session.scalar(select(User).where(User.username == "alice"))
        session.add(
            Job(
                id=job_id, owner_id=owner.id, status="succeeded", stage="done", progress={"percent": 100.0},
                config={"experiment": "ui-regression", "output_dir": str(settings.RESULTS_DIR.resolve())},
            )
        )  # fmt: skip

    def scored(
        count: int, seed: int
    ) -> list[tuple[str, float]]:  # positive 4, negative 1, and a little noise
        rows = sentiment_rows(count, seed)
        return [(text, 1.0 + 3.0 * int(label) + i % 3 * 0.1) for i, (text, label) in enumerate(rows)]

    train = write_csv(tmp_path / "train.csv", scored(48, 3))
    valid = write_csv(tmp_path / "valid.csv", scored(20, 4))
    raw = tiny_config_dict(tiny_bert, train, valid, settings.RESULTS_DIR, max_steps=8, eval_steps=8)
    raw.update(experiment="ui-regression", task="regression", registry={"enabled": False})
    result = run_training(config_from_dict(raw), run_id=job_id, settings=settings, show_progress=False)
    final = result.metrics["eval"]

    log_in(app, "alice")
    open_page(app, "Jobs")
    app.selectbox(key="job").set_value(job_id)
    app.run()
    assert not app.exception and not app.error
    assert [(m.label, m.value) for m in app.metric] == [
        ("RMSE", f"{final['rmse']:.4f}"), ("MAE", f"{final['mae']:.4f}"), ("Pearson", f"{final['pearson']:.4f}"),
        ("Spearman", f"{final['spearman']:.4f}"), ("loss", f"{final['loss']:.4f}"),
    ]  # fmt: skip
    headings = [s.value for s in app.subheader]
    assert "Confusion matrix" not in headings and headings[:2] == ["Final metrics", "Training loss"]
    scale = result.metrics["target_scale"]
    assert f"Training targets: mean {scale['mean']:.4g}, std {scale['std']:.4g}." in [
        c.value for c in app.caption
    ]


def test_a_file_is_predicted_as_a_task_and_its_csv_is_offered(app, api_url):
    import csv
    import io

    from finetune_platform.ui.client import PlatformClient
    from finetune_platform.worker.executor import execute_job

    log_in(app, "alice")
    open_page(app, "Predict a file")
    assert [i.value for i in app.info] == ["Upload a file with a column of texts."]
    texts = "review,label\na wonderful film,1\na dreadful film,0\nwonderful and moving,1\n"
    app.file_uploader(key="predict_upload").set_value(("texts.csv", texts.encode(), "text/csv"))
    app.run()
    (model,) = app.selectbox(key="predict_model").options  # Staging, or Production once an admin moved it
    assert model.startswith("ui-model version 1 · ")
    assert [s.value for s in app.success] == [f"texts.csv uploaded ({len(texts)} bytes)"]
    app.text_input(key="predict_text_column").input("body")
    app.button(key="predict_submit").click()
    app.run()
    (refused,) = [e.value for e in app.error]  # the API names the server's copy of the file
    assert refused.startswith("Not submitted: input ")
    assert refused.endswith(": no column 'body' (columns: review, label); choose the text column")
    app.text_input(key="predict_text_column").input("review")
    app.button(key="predict_submit").click()
    app.run()
    task_id = app.session_state["job"]
    assert app.success[-1].value.startswith(f"Queued prediction task {task_id}")
    assert execute_job(api_url[1], task_id) == "succeeded"  # the worker's own code, in this process

    open_page(app, "Jobs")
    app.selectbox(key="job").set_value(task_id)
    app.run()
    assert not app.exception and not app.error
    assert any("✓ predicting  →  ✓ done" in m.value for m in app.markdown)
    (summary,) = [s.value for s in app.success]
    assert summary.startswith("3 of 3 rows predicted with ui-model version 1, accuracy ")
    (download,) = app.get("download_button")
    assert download.proto.label == "Download predictions (CSV)"
    written = PlatformClient(api_url[0], app.session_state["token"]).predictions_csv(task_id).decode()
    assert len(list(csv.DictReader(io.StringIO(written)))) == 3


def test_the_playground_names_the_inference_server_and_how_to_set_its_address(api_url, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("FINETUNE_API_URL", api_url[0])
    monkeypatch.setenv("FINETUNE_SERVE_URL", dead)
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    log_in(at, "alice")
    open_page(at, "Playground")
    at.text_area(key="play_text").input("great film")
    at.button(key="play").click()
    at.run()
    (message,) = [e.value for e in at.error]
    assert message.startswith(f"the inference server at {dead} cannot be reached (")
    assert message.endswith(
        "start it with `finetune serve`, or give the UI its address with `finetune ui --serve-url URL` "
        "(FINETUNE_SERVE_URL)"
    )
    assert "platform API" not in message
