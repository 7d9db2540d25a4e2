"""What a prediction says for each task, on every face: a multi-label answer lists every label above its threshold,
a regression answer its value in the training units, a pair model reads two texts (and refuses one), a single-label
answer stays exactly as it was. Models are tiny random adapters with each task's head (tests/task_models.py)."""

from __future__ import annotations

import csv
import json

import pytest
from fastapi.testclient import TestClient

from finetune_platform.data.loading import LabelMap
from finetune_platform.errors import ConfigError
from finetune_platform.inference.batch import check_columns, predict_file, read_rows
from finetune_platform.inference.pool import open_one
from finetune_platform.inference.predictor import PREDICTIONS, answer, source_from_run
from finetune_platform.settings import Settings
from tests.conftest import write_csv
from tests.task_models import LABEL_MAPS, MAX_LENGTH, TOPICS, reference_outputs, write_run_folder

SEED_KEYS = [
    "label", "probability", "latency_ms", "base_model", "language", "label_name", "probabilities", "truncated",
    "model", "version",
]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_bert, tmp_path_factory):
    """A run folder per kind of model: what `finetune predict --run` and `finetune serve --run` read."""
    root = tmp_path_factory.mktemp("task-runs")
    return {kind: write_run_folder(root / kind, tiny_bert, kind, seed=5) for kind in LABEL_MAPS}


@pytest.fixture(scope="module")
def hosts(runs):
    """Each run's model as a pool of one loads it (merged; PyTorch, as the server and the command below run it
    here: every runtime's equality is tests/unit/test_runtimes.py's)."""
    settings = Settings(MLFLOW_ENABLED=False)
    return {kind: open_one(settings, source_from_run(run), "torch") for kind, run in runs.items()}


# -- the shape of a prediction, from a row of outputs -------------------------------------------------------
def test_a_multi_label_prediction_lists_every_label_above_its_threshold_most_probable_first():
    label_map = LabelMap(TOPICS, TOPICS, task="multi_label", thresholds=(0.5, 0.5, 0.7, 0.9))
    made = PREDICTIONS["multi_label"](label_map, [0.2, 0.8, 0.6, 0.95], False)
    assert (made.task, made.label, made.label_name, made.probability) == ("multi_label", 3, "visuals", 0.95)
    assert made.probabilities == {"acting": 0.2, "music": 0.8, "plot": 0.6, "visuals": 0.95}
    assert made.labels == (("visuals", 0.95), ("music", 0.8))  # plot's 0.6 is under its 0.7
    at_threshold = PREDICTIONS["multi_label"](label_map, [0.5, 0.1, 0.7, 0.9], True)
    assert at_threshold.labels == ()  # above, not at: none here
    assert (at_threshold.label_name, at_threshold.truncated) == ("visuals", True)
    no_thresholds = LabelMap(TOPICS, TOPICS, task="multi_label")  # a map without them: 0.5 for each
    assert PREDICTIONS["multi_label"](no_thresholds, [0.51, 0.49, 0.9, 0.1], False).labels == (
        ("plot", 0.9),
        ("acting", 0.51),
    )


def test_a_regression_prediction_is_its_value_with_no_probability():
    made = PREDICTIONS["regression"](LABEL_MAPS["regression"], [3.1234567], False)
    assert (made.task, made.value, made.label, made.label_name) == ("regression", 3.123457, 0, "score")
    assert (made.probability, made.probabilities, made.labels) == (None, {}, ())


def test_answers_add_the_task_fields_only_to_the_new_tasks(hosts):
    texts = ["great acting", "a dull plot"]
    for kind in ("single_label", "multi_label", "regression"):
        host = hosts[kind]
        body = answer(host.predict(texts)[0], host.info, 1.5)
        extra = {"single_label": [], "multi_label": ["task", "labels"], "regression": ["task", "value"]}[kind]
        assert list(body) == SEED_KEYS + extra
    multi = hosts["multi_label"].predict(texts)[0]
    body = answer(multi, hosts["multi_label"].info, 1.5)
    assert body["labels"] == [{"label": name, "probability": p} for name, p in multi.labels]
    regression = answer(hosts["regression"].predict(texts)[0], hosts["regression"].info, 1.5)
    assert (regression["task"], regression["probability"], regression["probabilities"]) == (
        "regression",
        None,
        {},
    )
    assert isinstance(regression["value"], float)


def test_each_task_answers_the_outputs_of_its_logits_scaled_and_thresholded(hosts):
    texts = ["great acting and music", "a dull plot", "fine."]
    multi = hosts["multi_label"]
    expected = reference_outputs(next(iter(multi.adapters.values())), texts)
    for prediction, row in zip(multi.predict(texts), expected.tolist(), strict=True):
        assert list(prediction.probabilities.values()) == pytest.approx(row, abs=2e-5)
        above = [(name, p) for name, p, t in zip(TOPICS, row, (0.3, 0.5, 0.7, 0.9), strict=True) if p > t]
        assert [name for name, _ in prediction.labels] == [
            name for name, _ in sorted(above, key=lambda x: -x[1])
        ]
    regression = hosts["regression"]
    expected = reference_outputs(next(iter(regression.adapters.values())), texts)
    assert [p.value for p in regression.predict(texts)] == pytest.approx(expected[:, 0].tolist(), abs=1e-4)


# -- pairs -----------------------------------------------------------------------------------------------------
def test_pairs_are_tokenised_together_as_training_tokenises_them(hosts):
    host = hosts["pair_single_label"]
    texts, pairs = (
        ["a man plays", "fine."],
        ["someone is playing music", "the film is " + "very " * 40 + "long"],
    )
    encoded, truncated = host.encode(texts, pairs)
    want = host.tokenizer(texts, pairs, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert encoded == want and truncated == [False, True]  # a long second text truncates too
    alone = host.tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
    assert encoded[0] != alone[0]


@pytest.mark.parametrize(
    ("kind", "texts", "pairs", "message"),
    [
        ("pair_regression", ["a"], None, "text_pair: model 'pair_regression' reads text pairs; give the second "
         "text of each"),
        ("regression", ["a"], ["b"], "text_pair: model 'regression' reads one text; leave text_pair out"),
        ("pair_regression", ["a", "b"], ["c"], "text_pair: 1 pairs for 2 texts; give one per text"),
        ("pair_regression", ["a", "b", "c", "d"], ["x", "y", "z", "  "],
         "text_pair 3: empty; give the second text of the pair"),
        ("pair_regression", ["a", " "], ["x", "y"], "text 1: empty; give the text to classify"),
    ],
)  # fmt: skip
def test_a_pair_model_refuses_missing_or_empty_pairs_and_a_single_text_model_refuses_pairs(
    hosts, kind, texts, pairs, message
):
    with pytest.raises(ConfigError) as caught:
        hosts[kind].predict(texts, pairs=pairs)
    assert str(caught.value) == message


# -- the server --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(runs, tmp_path_factory):
    from finetune_platform.serve.app import create_serve_app

    home = tmp_path_factory.mktemp("serve-home")
    settings = Settings(
        FINETUNE_HOME=home,
        SERVE_DEVICE="cpu",
        SERVE_RUNTIME="torch",
        METRICS_ENABLED=False,
        MLFLOW_ENABLED=False,
    )
    return {kind: TestClient(create_serve_app(settings, run_folder=runs[kind])) for kind in runs}


def test_the_server_answers_each_task_with_its_fields(servers, hosts):
    texts = ["great acting and music", "a dull plot"]
    for kind in ("single_label", "multi_label", "regression"):
        client, host = servers[kind], hosts[kind]
        want = host.predict(texts)
        body = client.post("/predict", json={"text": texts[0]}).json()
        assert list(body) == [key for key in answer(want[0], host.info, 0.0)], kind
        batch = client.post("/predict/batch", json={"texts": texts}).json()["predictions"]
        for got, expected in zip(batch, want, strict=True):
            assert got["label"] == expected.label
            if kind == "single_label":
                assert list(got) == ["label", "probability", "label_name", "probabilities", "truncated"]
            elif kind == "multi_label":
                assert got["task"] == "multi_label"
                assert [item["label"] for item in got["labels"]] == [name for name, _ in expected.labels]
                assert got["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
            else:
                assert (got["task"], got["probability"], got["probabilities"]) == ("regression", None, {})
                assert got["value"] == pytest.approx(expected.value, abs=1e-6)
        (loaded,) = client.get("/models").json()["loaded"]
        assert (loaded["task"], loaded["pair"]) == (LABEL_MAPS[kind].task, False)


def test_a_pair_model_is_served_pairs_and_refuses_a_request_without_them(servers, hosts):
    client = servers["pair_regression"]
    want = hosts["pair_regression"].predict(["a man plays", "cats"], pairs=["someone plays music", "a car"])
    body = client.post("/predict", json={"text": "a man plays", "text_pair": "someone plays music"}).json()
    assert (body["task"], body["label_name"]) == ("regression", "similarity")
    assert body["value"] == pytest.approx(want[0].value, abs=1e-6)
    batch = client.post(
        "/predict/batch",
        json={"texts": ["a man plays", "cats"], "text_pairs": ["someone plays music", "a car"]},
    ).json()
    assert [p["value"] for p in batch["predictions"]] == pytest.approx([p.value for p in want], abs=1e-6)
    (loaded,) = client.get("/models").json()["loaded"]
    assert (loaded["task"], loaded["pair"], loaded["labels"]) == ("regression", True, ["similarity"])
    for path, request, message in (
        ("/predict", {"text": "a"}, "text_pair: model 'pair_regression' reads text pairs; give text_pair with "
         "the second text"),
        ("/predict/batch", {"texts": ["a", "b"]}, "text_pairs: model 'pair_regression' reads text pairs; give "
         "text_pairs with the second text of each"),
        ("/predict/batch", {"texts": ["a", "b"], "text_pairs": ["c"]}, "text_pairs: 1 for 2 texts; give one per "
         "text"),
        ("/predict/batch", {"texts": ["a", "b"], "text_pairs": ["c", " "]}, "text_pair 1: empty; give the second "
         "text of the pair"),
        ("/predict", {"text": "a", "text_pair": "x" * 20_001}, "text_pair 0: 20001 characters, more than the "
         "limit of 20000 per text"),
    ):  # fmt: skip
        response = client.post(path, json=request)
        assert (response.status_code, response.json()["detail"]) == (422, message)
    single = servers["single_label"].post("/predict", json={"text": "a", "text_pair": "b"})
    assert (single.status_code, single.json()["detail"]) == (
        422,
        "text_pair: model 'single_label' reads one text; leave text_pair out",
    )
    assert client.post("/predict", json={"text": "a", "text_pair": ""}).status_code == 422  # min_length


def test_the_new_fields_are_described_in_the_openapi_schema(servers):
    schemas = servers["single_label"].get("/openapi.json").json()["components"]["schemas"]
    for name, fields in (
        ("PredictRequest", ["text_pair"]),
        ("BatchRequest", ["text_pairs"]),
        ("PredictResponse", ["task", "labels", "value"]),
        ("TextPrediction", ["task", "labels", "value"]),
        ("ResidentAdapter", ["task", "pair"]),
        ("LabelProbability", ["label", "probability"]),
    ):
        for field in fields:
            assert schemas[name]["properties"][field]["description"], f"{name}.{field}"


# -- files and the command line ----------------------------------------------------------------------------------
def test_file_predictions_write_each_tasks_columns(hosts, tmp_path):
    rows = [("great acting", '["music", "acting"]'), ("", "plot"), ("a dull plot", "plot,visuals")]
    data = write_csv(tmp_path / "in.csv", rows)
    inputs = read_rows(data, "text", "label")
    multi = hosts["multi_label"]
    summary = predict_file(multi, inputs.texts, inputs.labels, tmp_path / "multi.csv")
    with (tmp_path / "multi.csv").open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["row", "labels", "probabilities", "truncated", "error"]
    want = multi.predict(["great acting", "a dull plot"])
    for row, expected in zip((written[0], written[2]), want, strict=True):
        assert row["labels"] == ",".join(name for name, _ in expected.labels)
        assert json.loads(row["probabilities"]) == expected.probabilities
    assert (written[1]["error"], written[1]["labels"]) == ("empty text", "")
    exact = sum(
        {name for name, _ in p.labels} == truth
        for p, truth in zip(want, [{"music", "acting"}, {"plot", "visuals"}], strict=True)
    )
    assert (summary.task, summary.accuracy, summary.scored) == ("multi_label", exact / 2, 2)
    assert "subset accuracy (exact label sets) against the 2 labelled rows" in summary.describe(tmp_path)

    numbers = write_csv(tmp_path / "numbers.csv", [("great acting", "2.5"), ("dull", "n/a"), ("fine", "4")])
    inputs = read_rows(numbers, "text", "label")
    summary = predict_file(hosts["regression"], inputs.texts, inputs.labels, tmp_path / "values.csv")
    with (tmp_path / "values.csv").open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert list(written[0]) == ["row", "value", "truncated", "error"]
    values = [p.value for p in hosts["regression"].predict(["great acting", "dull", "fine"])]
    assert [float(row["value"]) for row in written] == values
    rmse = (((values[0] - 2.5) ** 2 + (values[2] - 4) ** 2) / 2) ** 0.5  # "n/a" is not scored
    assert (summary.accuracy, summary.rmse, summary.scored) == (None, pytest.approx(rmse), 2)


def test_file_predictions_read_a_pair_column(hosts, tmp_path):
    data = write_csv(
        tmp_path / "pairs.csv",
        [("a man plays", "someone plays music", "1"), ("cats", " ", "0"), ("a car", "a bike", "0")],
        ("premise", "hypothesis", "label"),
    )
    assert check_columns(data, "premise", "hypothesis") == ["premise", "hypothesis", "label"]
    with pytest.raises(ConfigError) as caught:
        check_columns(data, "premise", "second")
    assert str(caught.value) == (
        "input pairs.csv: no column 'second' (columns: premise, hypothesis, label); choose the text pair column"
    )
    inputs = read_rows(data, "premise", "label", "hypothesis")
    host = hosts["pair_single_label"]
    summary = predict_file(host, inputs.texts, inputs.labels, tmp_path / "out.csv", pairs=inputs.pairs)
    with (tmp_path / "out.csv").open(encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    want = host.predict(["a man plays", "a car"], pairs=["someone plays music", "a bike"])
    assert [row["label_name"] for row in (written[0], written[2])] == [p.label_name for p in want]
    assert list(written[0])[:5] == ["row", "label", "label_name", "probability", "truncated"]
    assert (written[1]["error"], summary.empty, summary.predicted) == ("empty text pair", 1, 2)
    with pytest.raises(ConfigError) as caught:
        predict_file(host, inputs.texts, inputs.labels, tmp_path / "x.csv", pair_option="--text-pair-column")
    assert str(caught.value) == (
        "model 'pair_single_label' reads text pairs: give --text-pair-column (the column of the second texts)"
    )
    with pytest.raises(ConfigError) as caught:
        predict_file(hosts["regression"], inputs.texts, None, tmp_path / "x.csv", pairs=inputs.pairs)
    assert str(caught.value) == "model 'regression' reads one text: leave text_pair_column out"
    assert not (tmp_path / "x.csv").exists()


def test_the_predict_command_reads_pairs(runs, hosts, tmp_path):
    """The real `finetune predict` (in process: CliRunner) on a pair model's run folder."""
    from typer.testing import CliRunner

    from finetune_platform.cli import app

    def predict(*options: str, code: int = 0):
        result = CliRunner().invoke(
            app, ["predict", "--run", str(runs["pair_regression"]), "--runtime", "torch", *options]
        )
        assert result.exit_code == code, result.output
        return result

    texts = [
        "--text",
        "a man plays",
        "--text-pair",
        "someone plays music",
        "--text",
        "cats",
        "--text-pair",
        "a car",
    ]
    answers = json.loads(predict(*texts).stdout)
    want = hosts["pair_regression"].predict(["a man plays", "cats"], pairs=["someone plays music", "a car"])
    assert [a["value"] for a in answers] == pytest.approx([p.value for p in want], abs=1e-6)
    assert {(a["task"], a["label_name"], a["model"]) for a in answers} == {
        ("regression", "similarity", "pair_regression")
    }
    data = write_csv(
        tmp_path / "in.csv", [("a man plays", "someone plays music", "2.5")], ("a", "b", "label")
    )
    for options, message in (
        (["--text", "a man plays"], "error: model 'pair_regression' reads text pairs: give --text-pair (the "
         "column of the second texts)"),
        (["--text", "a", "--text", "b", "--text-pair", "c"], "error: --text-pair: 1 given for 2 --text; give one "
         "per --text"),
        (["--input", str(data), "--output", str(tmp_path / "o.csv"), "--text-column", "a"], "error: model "
         "'pair_regression' reads text pairs: give --text-pair-column (the column of the second texts)"),
    ):  # fmt: skip
        assert message in predict(*options, code=2).stderr
    output = tmp_path / "out.csv"
    done = predict(
        "--input", str(data), "--output", str(output), "--text-column", "a", "--text-pair-column", "b"
    )
    with output.open(encoding="utf-8") as handle:
        (row,) = list(csv.DictReader(handle))
    assert float(row["value"]) == pytest.approx(want[0].value, abs=1e-6)
    assert f"RMSE against the 1 labelled rows: {abs(float(row['value']) - 2.5):.4f}" in done.stdout
