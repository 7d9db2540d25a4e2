"""The UI for multi-label, regression and pair models (Streamlit's AppTest, a real API and `finetune serve` on
loopback): the training form offers the task, a text pair column, the label delimiter and the thresholds; the
playground takes a second text for a pair model and shows a multi-label or regression answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from finetune_platform.inference.predictor import Predictor, source_from_run
from tests.task_models import write_run_folder
from tests.ui.test_app import PASSWORD, log_in, open_page, serve_in_thread

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
APP = Path(__file__).resolve().parents[2] / "src" / "finetune_platform" / "ui" / "app.py"


@pytest.fixture(scope="module")
def servers(tmp_path_factory, tiny_bert):
    """The API (user alice), and `finetune serve --run` of a multi-label and of a pair regression run folder."""
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("ui-tasks")
    settings = Settings(
        FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MODEL_REGISTRY_DIR=root / "cards",
        SERVE_RUNTIME="torch", METRICS_ENABLED=False,
    )  # fmt: skip
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "alice", PASSWORD)
    runs = {
        kind: write_run_folder(root / kind, tiny_bert, kind) for kind in ("multi_label", "pair_regression")
    }
    started = [serve_in_thread(create_app(settings))]
    started += [serve_in_thread(create_serve_app(settings, run_folder=run)) for run in runs.values()]
    urls = {"api": started[0][0], "multi_label": started[1][0], "pair_regression": started[2][0]}
    yield urls, settings, runs
    for _, server in started:
        server.should_exit = True


def page(servers, monkeypatch, served: str):
    urls = servers[0]
    monkeypatch.setenv("FINETUNE_API_URL", urls["api"])
    monkeypatch.setenv("FINETUNE_SERVE_URL", urls[served])
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    return log_in(at, "alice")


def test_the_training_form_offers_the_task_and_its_fields(servers, monkeypatch):
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope
    from finetune_platform.ui.client import PlatformClient

    app = page(servers, monkeypatch, "multi_label")
    alice = PlatformClient(servers[0]["api"], app.session_state["token"])
    sample = Path(__file__).resolve().parents[2] / "data" / "sample" / "train.csv"
    app.session_state["dataset"] = alice.upload_dataset("reviews.csv", sample.read_bytes())
    app.run()
    task = app.selectbox(key="cfg.task")
    assert (task.options, task.value) == (["single_label", "multi_label", "regression"], "single_label")
    assert app.text_input(key="cfg.data.text_pair_column").value == ""
    keys = {widget.key for widget in app.text_input}
    assert not keys & {"cfg.thresholds", "cfg.data.label_delimiter"}  # multi_label only
    task.set_value("multi_label")
    app.run()
    assert app.text_input(key="cfg.thresholds").value == "0.5"
    assert app.text_input(key="cfg.data.label_delimiter").value == ","
    assert "F1-best" in app.text_input(key="cfg.thresholds").help
    app.text_input(key="cfg.experiment").input("tagged")
    app.text_input(key="cfg.thresholds").input("tune")
    app.text_input(key="cfg.data.label_delimiter").input("|")
    app.number_input(key="cfg.training.max_steps").set_value(4)
    app.button(key="submit").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    with session_scope(servers[1]) as session:
        config = session.get(Job, app.session_state["job"]).config
    assert (config["task"], config["thresholds"], config["data"]["label_delimiter"]) == (
        "multi_label",
        "tune",
        "|",
    )
    assert config["data"]["text_pair_column"] is None  # none given in the form


def test_the_playground_shows_the_labels_above_their_thresholds(servers, monkeypatch):
    app = open_page(page(servers, monkeypatch, "multi_label"), "Playground")
    app.text_area(key="play_text").input("great acting and music")
    app.button(key="play").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    expected = Predictor.of(source_from_run(servers[2]["multi_label"])).predict(["great acting and music"])[0]
    above = ", ".join(f"{name} ({p:.3f})" for name, p in expected.labels)
    (metric,) = app.metric
    assert (metric.label, metric.value) == ("multi_label vNone", f"{len(expected.labels)} labels")
    (caption,) = [c.value for c in app.caption]
    assert caption.startswith(f"labels above their thresholds: {above or 'none'} · ")


def test_the_playground_sends_a_second_text_to_a_pair_model(servers, monkeypatch):
    app = open_page(page(servers, monkeypatch, "pair_regression"), "Playground")
    app.text_area(key="play_text").input("a man plays")
    app.button(key="play").click()
    app.run()
    assert [e.value for e in app.error] == [
        "text_pair: model 'pair_regression' reads text pairs; give text_pair with the second text"
    ]
    app.text_area(key="play_text_pair").input("someone plays music")
    app.button(key="play").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    source = source_from_run(servers[2]["pair_regression"])
    expected = Predictor.of(source).predict(["a man plays"], pairs=["someone plays music"])[0]
    (metric,) = app.metric
    assert (metric.label, metric.value) == ("pair_regression vNone", f"{expected.value:.4g}")
    (caption,) = [c.value for c in app.caption]
    assert caption.startswith(f"similarity = {expected.value} · ")
