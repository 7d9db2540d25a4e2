"""The runtime registry (inference/runtimes.py): every runtime name has a constructor and gives the same answers,
the device decides where a requested runtime cannot run, an adapter ONNX cannot express falls back to torch, a bad
name is refused naming the setting and the choices, and `finetune serve`, `finetune predict` and prediction jobs
all reach their models through the one pool and factory."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import get_args

import pytest

from finetune_platform.data.loading import LabelMap
from finetune_platform.errors import ConfigError
from finetune_platform.inference.onnx_host import OnnxHost
from finetune_platform.inference.pool import ModelPool, open_one
from finetune_platform.inference.predictor import AdapterSource, ModelInfo, Predictor
from finetune_platform.inference.runtimes import (
    CHOICES,
    REGISTRY,
    Placement,
    Runtime,
    RuntimeName,
    checked_choice,
    choose,
    open_runtime,
)
from finetune_platform.inference.torch_host import TorchHost
from finetune_platform.settings import Settings
from tests.conftest import finetune_bin
from tests.task_models import LABEL_MAPS, reference_outputs, task_source, write_task_adapter

SOURCE = Path(__file__).resolve().parents[2] / "src" / "finetune_platform"
TEXTS = [
    "great film",
    "a dull, long and tiresome evening",
    "fine.",
    "the best thing I have seen this year " * 3,
]
PAIRS = ["the acting", "music and story", "a long story about nothing at all " * 4, "fine"]
LABELS = ("neg", "pos")
# the one-text classifier of the fixtures below, then a model of each other task, and pairs
KINDS = ("single_label", "multi_label", "regression", "pair_regression")


def write_adapter(folder: Path, base: Path, seed: int = 0, **lora) -> Path:
    """A LoRA adapter folder as the recipe writes one (adapter, tokenizer, label_map.json), with random
    weights so that it changes the base model's answers."""
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(LABELS))
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, target_modules=["query", "value"], **lora
    )
    model = get_peft_model(model, config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "classifier" in name:  # far from a coin toss: labels differ by text
                parameter.normal_(std=0.5 if "lora_B" in name else 2.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    (folder / "label_map.json").write_text(json.dumps(LabelMap(LABELS, LABELS).to_json()))
    return folder


def source_of(folder: Path, base: Path, key: str) -> AdapterSource:
    name, _, version = key.partition("@")
    info = ModelInfo(name, int(version) if version.isdigit() else None, str(base), "English", LABELS, 32)
    return AdapterSource.of(key, folder, info)


@pytest.fixture(scope="module")
def plain(tiny_bert, tmp_path_factory) -> AdapterSource:
    folder = write_adapter(tmp_path_factory.mktemp("plain-adapter"), tiny_bert)
    return source_of(folder, tiny_bert, "plain@1")


@pytest.fixture(scope="module")
def dora(tiny_bert, tmp_path_factory) -> AdapterSource:
    """An adapter ONNX cannot express (DoRA)."""
    folder = write_adapter(tmp_path_factory.mktemp("dora-adapter"), tiny_bert, seed=1, use_dora=True)
    return source_of(folder, tiny_bert, "dora@1")


@pytest.fixture(scope="module")
def reference(plain) -> list:
    return Predictor.of(plain, merge=True).predict(TEXTS)


@pytest.fixture(scope="module")
def task_sources(plain, tiny_bert, tmp_path_factory) -> dict[str, AdapterSource]:
    sources = {"single_label": plain}
    for kind in KINDS[1:]:
        folder = write_task_adapter(tmp_path_factory.mktemp(kind), tiny_bert, LABEL_MAPS[kind], seed=3)
        sources[kind] = task_source(folder, tiny_bert, f"{kind}@1")
    return sources


@pytest.fixture(scope="module")
def task_references(task_sources) -> dict[str, tuple[list, object]]:
    """Per kind: the merged PyTorch predictor's answers, and ``softmax.outputs`` of a plain pass's logits."""
    answers = {}
    for kind, source in task_sources.items():
        pairs = PAIRS if source.label_map.pair else None
        predicted = Predictor.of(source, merge=True).predict(TEXTS, pairs=pairs)
        answers[kind] = (predicted, reference_outputs(source, TEXTS, pairs))
    return answers


def test_users_set_the_runtimes_the_settings_allow_and_every_name_has_a_constructor():
    assert (
        get_args(Settings.model_fields["SERVE_RUNTIME"].annotation)
        == CHOICES
        == ("onnx", "onnx-int8", "torch")
    )
    assert set(REGISTRY) == set(RuntimeName)
    assert [name.value for name in RuntimeName] == ["onnx", "onnx-int8", "torch", "torch+cuda-graphs"]
    assert all(kind.name is name and callable(kind.build) for name, kind in REGISTRY.items())


@pytest.mark.parametrize(
    ("requested", "device", "merged", "graphs", "chosen"),
    [
        ("onnx", "cpu", True, True, "onnx"),
        ("onnx", "cpu", False, True, "onnx"),
        ("onnx-int8", "cpu", True, True, "onnx-int8"),
        ("torch", "cpu", True, True, "torch"),  # graphs only on CUDA
        ("torch", "mps", True, True, "torch"),
        ("onnx", "mps", True, True, "torch"),  # ONNX runs on the CPU only: a GPU serves PyTorch
        ("onnx-int8", "cuda", False, True, "torch"),  # many adapters: PEFT, no graphs
        ("onnx", "cuda", True, True, "torch+cuda-graphs"),
        ("torch", "cuda:1", True, True, "torch+cuda-graphs"),
        ("torch", "cuda", True, False, "torch"),  # SERVE_CUDA_GRAPHS off
    ],
)
def test_the_device_decides_where_a_requested_runtime_cannot_run(requested, device, merged, graphs, chosen):
    assert choose(requested, Placement(device, cuda_graphs=graphs), merged) == RuntimeName(chosen)


def test_a_bad_runtime_is_refused_naming_the_setting_and_the_choices(plain):
    choices = "choose one of onnx, onnx-int8, torch"
    for refuse, message in (
        (lambda: checked_choice("tensorrt"), f"SERVE_RUNTIME 'tensorrt': {choices}"),
        (lambda: choose("tensorrt", Placement(), merged=True), f"SERVE_RUNTIME 'tensorrt': {choices}"),
        (lambda: open_runtime(plain, "tensorrt"), f"SERVE_RUNTIME 'tensorrt': {choices}"),
        (lambda: ModelPool(Settings(), None, 4, 5.0, "tensorrt"), f"SERVE_RUNTIME 'tensorrt': {choices}"),
        # CUDA graphs follow from the device and SERVE_CUDA_GRAPHS: not a value to set
        (lambda: checked_choice("torch+cuda-graphs"), f"SERVE_RUNTIME 'torch+cuda-graphs': {choices}"),
        (lambda: open_one(Settings(), plain, "onnx8", setting="--runtime"), f"--runtime 'onnx8': {choices}"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            refuse()


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_the_command_line_refuses_a_bad_runtime_naming_the_option(command, tmp_path, cli_env):
    options = ["--text", "great film"] if command == "predict" else []
    done = subprocess.run(
        [finetune_bin(), command, "--run", str(tmp_path), *options, "--runtime", "tensorrt"],
        env=cli_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "error: --runtime 'tensorrt': choose one of onnx, onnx-int8, torch" in done.stderr


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "adapters"])
@pytest.mark.parametrize("name", ["onnx", "onnx-int8", "torch"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_runtime_answers_as_the_merged_predictor(task_sources, task_references, kind, name, merged):
    """Each task's outputs (softmax, a sigmoid per label, the scaled number; pairs tokenised together) are the
    same on every runtime, and are ``softmax.outputs`` of the model's logits."""
    source = task_sources[kind]
    reference, expected = task_references[kind]
    pairs = PAIRS if source.label_map.pair else None
    host = open_runtime(source, name, merged=merged)
    assert isinstance(host, Runtime)
    assert isinstance(host, OnnxHost if name.startswith("onnx") else TorchHost)
    assert (host.runtime, host.merged, list(host.adapters)) == (name, merged, [source.key])
    assert host.accepts(source) is not merged  # a merged model serves its one adapter only
    got = host.predict_with(source.key, TEXTS, batch_size=3, pairs=pairs)
    assert [p.truncated for p in got] == [p.truncated for p in reference]
    tolerance = 0.05 if name == "onnx-int8" else 2e-5
    for ours, theirs, outputs_row in zip(got, reference, expected.tolist(), strict=True):
        assert ours.task == theirs.task == source.label_map.task
        if ours.task == "regression":
            scale = max(1.0, abs(theirs.value)) * (4 if name == "onnx-int8" else 1)
            assert ours.value == pytest.approx(theirs.value, abs=tolerance * scale)
            assert theirs.value == pytest.approx(outputs_row[0], abs=2e-5 * scale)
            assert (ours.probability, ours.probabilities) == (None, {})
            continue
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=tolerance)
        assert list(theirs.probabilities.values()) == pytest.approx(outputs_row, abs=2e-5)
        if name != "onnx-int8":
            assert ours.label == theirs.label
            assert [label for label, _ in ours.labels] == [label for label, _ in theirs.labels]


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="CUDA graphs need CUDA")
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_graphs_answer_as_the_eager_pass(
    task_sources, task_references, kind
):  # pragma: no cover - GPU only
    source = task_sources[kind]
    pairs = PAIRS if source.label_map.pair else None
    host = open_runtime(source, "torch", Placement("cuda", cuda_graphs=True, max_rows=8), merged=True)
    assert (host.runtime, host.merged) == ("torch+cuda-graphs", True)
    got = host.predict_with(source.key, TEXTS, pairs=pairs)
    for ours, theirs in zip(got, task_references[kind][0], strict=True):
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=0.02)
        if ours.task == "regression":  # bf16 on the GPU: within 2% of the value (or of 1)
            assert ours.value == pytest.approx(theirs.value, abs=0.02 * max(1.0, abs(theirs.value)))


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "adapters"])
def test_an_adapter_onnx_cannot_express_falls_back_to_torch(dora, merged, caplog):
    with caplog.at_level("WARNING", logger="finetune_platform.inference"):
        host = open_runtime(dora, "onnx-int8", merged=merged)
    assert isinstance(host, TorchHost) and (host.runtime, host.merged) == ("torch", merged)
    assert f"{dora.key}: served with PyTorch, not ONNX Runtime (use_dora=True)" in caplog.text
    want = Predictor.of(dora, merge=merged).predict(TEXTS)
    got = host.predict(TEXTS)
    for ours, theirs in zip(got, want, strict=True):
        assert ours.probabilities == pytest.approx(theirs.probabilities, abs=1e-6)


def test_serve_predict_and_jobs_make_one_decision_for_an_adapter_onnx_cannot_express(dora, plain, tmp_path):
    """The server's pool and a pool of one (`finetune predict`, prediction jobs) load a lone adapter the same
    way: merged, on ONNX where it can, else on torch; a second adapter of the same base unmerges both."""
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False)
    for source, runtime in ((dora, "torch"), (plain, "onnx")):
        served = ModelPool(settings, None, 4, 5.0, "onnx")
        served.serve_local(source)
        host, _ = served.load(source.key)
        alone = open_one(settings, source, "onnx")
        assert [(m["runtime"], m["merged"]) for m in served.loaded()] == [(runtime, True)]
        assert (type(alone), alone.runtime, alone.merged) == (type(host), runtime, True)
        assert [p.probabilities for p in alone.predict(TEXTS)] == [
            p.probabilities for p in host.predict(TEXTS)
        ]
    served.serve_local(dora)  # the pool holds plain (ONNX, merged); dora shares its base model
    served.load(dora.key)
    assert sorted((m["model"], m["runtime"], m["merged"]) for m in served.loaded()) == [
        ("dora", "torch", False),  # PEFT holds DoRA; the ONNX graph does not
        ("plain", "onnx", False),
    ]


def test_every_path_reaches_models_through_the_pool_and_the_factory():
    """Only runtimes.py builds a runtime, only the pool calls the factory, and `finetune serve`, `finetune predict`
    and prediction jobs all go through the pool."""
    from finetune_platform.cli.inference import predict
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.worker.executor import predict_job

    built = re.compile(r"\b(?:OnnxHost|TorchHost|Predictor|MergedHost|BaseHost)(?:\.of|\.from_\w+)?\(")
    called = re.compile(r"\bopen_runtime\(")
    builders, callers = set(), set()
    for path in sorted(SOURCE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        relative = str(path.relative_to(SOURCE))
        if any(
            built.search(line) for line in text.splitlines() if not line.lstrip().startswith(("class", "def"))
        ):
            builders.add(relative)
        if called.search(text.replace("def open_runtime(", "")):
            callers.add(relative)
    assert builders == {"inference/runtimes.py"}
    assert callers == {"inference/pool.py"}
    assert "open_one(" in inspect.getsource(predict) and "open_one(" in inspect.getsource(predict_job)
    assert "ModelPool(" in inspect.getsource(create_serve_app)
