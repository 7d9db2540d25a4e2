"""The Sweeps page in Streamlit's AppTest against a real API on loopback, over real sweeps of a tiny model: the list
(status, objective, best value, trials by state), a sweep's trials table and charts (objective by trial with the
best so far, each searched value against the objective, states told apart), comparing the top trials in the
Experiments view, cancelling a running sweep, promoting the best trial (admins only), and the start form."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.ui.test_app import APP, HEADER, PASSWORD, log_in, open_page, serve_in_thread

streamlit_testing = pytest.importorskip("streamlit.testing.v1")
pytest.importorskip("optuna")
pytestmark = pytest.mark.slow  # the module's sweep trains three tiny trials

SPACE = {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 2e-2}}


@pytest.fixture(scope="module")
def sweep_api(tmp_path_factory, tiny_bert):
    """The API over a finished sweep of alice's (3 trials, each run by the worker's own code) and a running one
    whose first trial is queued."""
    from sqlalchemy import select

    from finetune_platform.api.app import create_app
    from finetune_platform.db.models import Job
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.services import sweeps
    from finetune_platform.services.users import create_user
    from finetune_platform.settings import Settings
    from finetune_platform.training.sweep_config import parse_spec
    from finetune_platform.worker.executor import execute_job
    from tests.conftest import sentiment_rows, tiny_config_dict, write_csv

    root = tmp_path_factory.mktemp("ui-sweeps")
    settings = Settings(
        FINETUNE_HOME=root / "home", RESULTS_DIR=root / "results", MODEL_REGISTRY_DIR=root / "cards"
    )
    upgrade(settings)
    train = write_csv(root / "train.csv", sentiment_rows(48, 1))
    valid = write_csv(root / "valid.csv", sentiment_rows(16, 2))
    base = tiny_config_dict(tiny_bert, train, valid, settings.RESULTS_DIR, max_steps=4, eval_steps=2)
    base["experiment"] = "ui-sweep"
    finished_spec = parse_spec(
        {"name": "lr-search", "objective": "accuracy", "sampler": "random", "pruner": "none", "max_trials": 3,
         "parallelism": 1, "seed": 5, "space": SPACE}
    )  # fmt: skip
    running_spec = parse_spec(
        {"name": "still-going", "objective": "loss", "sampler": "random", "pruner": "none", "max_trials": 4,
         "parallelism": 1, "seed": 6, "space": SPACE}
    )  # fmt: skip
    with session_scope(settings) as session:
        alice = create_user(session, "alice", PASSWORD)
        create_user(session, "root", PASSWORD, role="admin")
        finished = sweeps.submit_sweep(session, alice, base, finished_spec, settings=settings).id
    while True:  # the worker's loop, in this process: each ended trial starts the next
        with session_scope(settings) as session:
            queued = session.scalars(
                select(Job.id).where(Job.sweep_id == finished, Job.status == "queued")
            ).all()
        if not queued:
            break
        for job_id in queued:
            assert execute_job(settings, job_id) == "succeeded"
    with session_scope(settings) as session:
        running = sweeps.submit_sweep(session, alice, base, running_spec, settings=settings).id
    api, server = serve_in_thread(create_app(settings))
    yield api, settings, finished, running
    server.should_exit = True


@pytest.fixture
def app(sweep_api, monkeypatch):
    monkeypatch.setenv("FINETUNE_API_URL", sweep_api[0])
    at = streamlit_testing.AppTest.from_file(str(APP), default_timeout=30)
    at.run()
    return at


def as_admin(sweep_api):
    from finetune_platform.ui.client import PlatformClient

    client = PlatformClient(sweep_api[0])
    client.login("root", PASSWORD)
    return client


def chart_specs_and_rows(app) -> list:
    import pyarrow as pa

    found = [e for e in app.main if getattr(e, "type", "") == "vega_lite_chart" and e.proto.HasField("data")]
    return [
        (json.loads(e.proto.spec), pa.ipc.open_stream(e.proto.data.data).read_all().to_pandas())
        for e in found
    ]


def open_sweep(app, sweep_id: str):
    open_page(app, "Sweeps")
    app.toggle(key="sweep_live").set_value(False)
    app.selectbox(key="sweep").set_value(sweep_id)
    app.run()
    assert not app.exception, app.exception
    return app


def test_the_list_shows_each_sweeps_status_objective_best_value_and_trials(app, sweep_api):
    _, _, finished, running = sweep_api
    log_in(app, "alice")
    open_page(app, "Sweeps")
    assert (app.main.markdown[0].value, app.title[0].value) == (HEADER, "Sweeps")
    best = as_admin(sweep_api).sweep(finished)["best_value"]
    table = app.dataframe[0].value.set_index("id")
    assert list(table.index) == [running, finished]  # newest first
    assert table.loc[finished, ["name", "status", "objective", "trials", "budget"]].tolist() == [
        "lr-search", "succeeded", "accuracy (maximize)", "3 succeeded", 3
    ]  # fmt: skip
    assert table.loc[finished, "best"] == pytest.approx(best)
    assert table.loc[running, ["status", "objective", "trials"]].tolist() == [
        "running",
        "loss (minimize)",
        "1 queued",
    ]


def test_a_sweeps_trials_and_charts_show_what_the_api_reports(app, sweep_api):
    _, _, finished, _ = sweep_api
    detail = as_admin(sweep_api).sweep(finished)
    trials = detail["trial_list"]
    log_in(app, "alice")
    open_sweep(app, finished)
    summary = next(m.value for m in app.markdown if m.value.startswith("**lr-search**"))
    assert summary == (
        "**lr-search** · succeeded · accuracy (maximize) · random sampler, none pruner · 3 of 3 trials started "
        "(3 succeeded)"
    )
    assert app.metric[0].label == "best accuracy" and app.metric[0].value == f"{detail['best_value']:.4f}"
    table = app.dataframe[1].value
    assert list(table["trial"]) == [0, 1, 2] and set(table["state"]) == {"succeeded"}
    assert list(table["training.learning_rate"]) == [t["params"]["training.learning_rate"] for t in trials]
    assert list(table["accuracy"]) == [t["value"] for t in trials]
    assert list(table["evaluations"]) == [t["evaluations"] for t in trials] and min(table["evaluations"]) >= 1
    assert list(table["task"]) == [t["task_id"] for t in trials]
    assert list(table["duration"]) == [str(timedelta(seconds=round(t["seconds"]))) for t in trials]
    assert [s.value for s in app.subheader][:3] == [
        "Trials",
        "accuracy by trial",
        "Searched values against accuracy",
    ]
    (by_trial_spec, by_trial), (param_spec, by_param) = chart_specs_and_rows(app)
    values = [t["value"] for t in trials]
    assert list(by_trial["trial"]) == [0, 1, 2] and list(by_trial["value"]) == values
    assert list(by_trial["best"]) == [max(values[: i + 1]) for i in range(3)]  # the best so far, maximised
    assert [layer["mark"]["type"] for layer in by_trial_spec["layer"]] == ["line", "point"]
    assert list(by_param["param"]) == [t["params"]["training.learning_rate"] for t in trials]
    assert list(by_param["objective"]) == values and list(by_param["state"]) == ["succeeded"] * 3
    assert param_spec["encoding"]["x"]["scale"] == {"type": "log"}  # a loguniform range, on a log axis
    # A pruned trial is told apart in both charts: its own colour and shape.
    for encoding in (by_trial_spec["layer"][1]["encoding"], param_spec["encoding"]):
        for channel in ("color", "shape"):
            scale = encoding[channel]["scale"]
            given = dict(zip(scale["domain"], scale["range"], strict=True))
            assert encoding[channel]["field"] == "state" and given["pruned"] != given["succeeded"]
    assert not [b for b in app.button if b.key in {"promote", "cancel_sweep"}]  # a user; a finished sweep


def test_compare_the_top_trials_opens_the_run_comparison(app, sweep_api):
    _, _, finished, _ = sweep_api
    trials = as_admin(sweep_api).sweep(finished)["trial_list"]
    best_first = sorted(trials, key=lambda t: (-t["value"], t["number"]))
    log_in(app, "alice")
    open_sweep(app, finished)
    assert app.number_input(key="compare_top").value == 3
    app.number_input(key="compare_top").set_value(2)
    app.run()
    assert app.button(key="compare_sweep").label == "Compare the top 2"
    app.button(key="compare_sweep").click()
    app.run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert app.title[0].value == "Experiments"
    assert app.selectbox(key="experiment").value == "ui-sweep"
    assert app.multiselect(key="compare_runs").value == [t["run_id"] for t in best_first[:2]]
    assert "Final metrics" in [h.value for h in app.subheader]


def test_cancel_stops_a_running_sweep(app, sweep_api):
    from sqlalchemy import select

    from finetune_platform.db.models import Job, Sweep
    from finetune_platform.db.session import session_scope

    _, settings, _, running = sweep_api
    log_in(app, "alice")
    open_sweep(app, running)
    assert app.dataframe[1].value["state"].tolist() == ["queued"]
    app.button(key="cancel_sweep").click()
    app.run()
    assert not app.exception
    assert [s.value for s in app.success] == ["Sweep still-going is cancelled"]
    assert any(m.value.startswith("**still-going** · cancelled") for m in app.markdown)
    assert not [b for b in app.button if b.key == "cancel_sweep"]
    with session_scope(settings) as session:
        assert session.get(Sweep, running).status == "cancelled"
        assert session.scalars(select(Job.status).where(Job.sweep_id == running)).all() == ["cancelled"]


def test_an_admin_promotes_the_best_trial_and_a_user_cannot(app, sweep_api):
    from finetune_platform.tracking.registry import ModelRegistry
    from finetune_platform.ui.client import ApiError, PlatformClient

    _, settings, finished, _ = sweep_api
    detail = as_admin(sweep_api).sweep(finished)
    best = next(t for t in detail["trial_list"] if t["task_id"] == detail["best_task_id"])
    alice = PlatformClient(sweep_api[0])
    alice.login("alice", PASSWORD)
    with pytest.raises(ApiError) as refused:
        alice.promote_sweep(finished, "sweep-model")
    assert refused.value.status == 403
    log_in(app, "root")
    open_sweep(app, finished)
    assert app.selectbox(key="promote_stage").value == "Production"
    app.text_input(key="promote_name").input("sweep-model")
    app.button(key="promote").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    assert [s.value for s in app.success] == [
        f"Registered sweep-model version 1 (Production) from trial {best['number']}, accuracy {best['value']:.4f}"
    ]
    (version,) = ModelRegistry(settings).versions("sweep-model")
    assert (version.version, version.stage, version.run_id) == (1, "Production", best["run_id"])


def test_a_sweep_is_started_from_the_form(app, sweep_api):
    from pathlib import Path

    from finetune_platform.db.models import Sweep
    from finetune_platform.db.session import session_scope
    from finetune_platform.ui.client import PlatformClient

    _, settings, _, _ = sweep_api
    log_in(app, "alice")
    open_page(app, "Sweeps")
    assert [i.value for i in app.info][:1] == ["Upload a dataset first (New job)."]
    alice = PlatformClient(sweep_api[0], app.session_state["token"])
    sample = Path(__file__).resolve().parents[2] / "data" / "sample" / "train.csv"
    dataset = alice.upload_dataset("reviews.csv", sample.read_bytes())
    app.run()
    assert app.selectbox(key="sweep_dataset").value == dataset["id"]
    app.text_area(key="sweep_spec").input("objective: [")
    app.button(key="sweep_submit").click()
    app.run()
    (error,) = [e.value for e in app.error]
    assert error.startswith("Not a YAML document: ")
    app.text_area(key="sweep_spec").input("objective: accuracy\nmax_trials: 2\nspace: {}\n")
    app.button(key="sweep_submit").click()
    app.run()
    (refused,) = [e.value for e in app.error]
    assert refused == (
        "Not submitted: invalid sweep:\n  sweep.space: Dictionary should have at least 1 item after validation, not 0"
    )
    app.text_area(key="sweep_base").input("experiment: form-sweep\n")
    app.text_area(key="sweep_spec").input(
        "objective: loss\nmax_trials: 2\nparallelism: 1\nsampler: random\n"
        "space:\n  training.learning_rate: {type: loguniform, low: 1.0e-4, high: 1.0e-2}\n"
    )
    app.button(key="sweep_submit").click()
    app.run()
    assert not app.error, [e.value for e in app.error]
    sweep_id = app.session_state["sweep"]
    assert [s.value for s in app.success] == [f"Started sweep form-sweep ({sweep_id}): 1 queued"]
    with session_scope(settings) as session:
        sweep = session.get(Sweep, sweep_id)
        assert (sweep.name, sweep.status, sweep.spec["max_trials"]) == ("form-sweep", "running", 2)
        assert sweep.base_config["experiment"] == "form-sweep"
        assert sweep.spec["space"]["training.learning_rate"] == {
            "type": "loguniform",
            "low": 1e-4,
            "high": 1e-2,
        }
    alice.cancel_sweep(sweep_id)  # its queued trial would count against alice's queue in the other tests
