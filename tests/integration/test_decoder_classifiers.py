"""Decoder LLMs (Llama, Qwen2, Mistral, Gemma, GPT-2) as LoRA sequence classifiers: tiny random models of each family
trained by the real recipe, then served by `finetune predict`'s Predictor, the PyTorch runtime and the server; ONNX
where the export expresses the adapter, else PyTorch with the registry's log line."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from safetensors.numpy import load_file

from finetune_platform.errors import ConfigError
from finetune_platform.inference.onnx_host import OnnxHost
from finetune_platform.inference.predictor import Predictor, source_from_run
from finetune_platform.inference.runtimes import open_runtime
from finetune_platform.inference.torch_host import TorchHost
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.models import FAMILIES, ModelFamily, load_tokenizer
from finetune_platform.training.runner import run_training
from tests.conftest import (
    PADLESS_TOKENIZER_FAMILIES,
    ROOT,
    finetune_bin,
    sentiment_rows,
    tiny_config_dict,
    write_csv,
)

pytestmark = pytest.mark.slow  # real training runs

TEXTS = ["great film", "awful book", "wonderful concert tonight", "boring game", "excellent phone and app"]
FAMILIES_TRAINED = [
    "llama",
    "gpt2",
    "qwen2",
    "mistral",
    "gemma",
]  # llama and gpt2: tokenizers without a pad token
# An ONNX export costs ~10 s a family: Llama's runs by default, the others (the same graph path) with --extended.
ONNX_FAMILIES = [
    "llama",
    *(pytest.param(family, marks=pytest.mark.extended) for family in ("qwen2", "mistral", "gemma")),
]


@pytest.fixture(scope="module")
def decoder_runs(tmp_path_factory, tiny_model_factory):
    """A few steps of the real recipe per family (built on first use), MLflow and the registry off."""
    root = tmp_path_factory.mktemp("decoders")
    train = write_csv(root / "train.csv", sentiment_rows(64, seed=1, labels=("pos", "neg")))
    validation = write_csv(root / "validation.csv", sentiment_rows(24, seed=2, labels=("pos", "neg")))
    runs = {}

    def run(family: str):
        if family not in runs:
            model = tiny_model_factory(family)
            raw = tiny_config_dict(model, train, validation, root / family, max_steps=12, eval_steps=6)
            raw["experiment"], raw["registry"] = f"tiny-{family}", {"enabled": False}
            # A random decoder's logits are large; a fitted temperature would sharpen them into 0/1 probabilities,
            # where a padding mistake could no longer show (calibration has its own tests).
            raw["calibration"] = "none"
            settings = Settings(FINETUNE_HOME=root / "home", MLFLOW_ENABLED=False)
            runs[family] = (
                run_training(config_from_dict(raw), settings=settings, show_progress=False),
                validation,
            )
        return runs[family]

    return run


@pytest.mark.parametrize("family", FAMILIES_TRAINED)
def test_a_decoder_trains_with_lora_on_its_family_targets_and_saves_its_score_head(decoder_runs, family):
    result, _ = decoder_runs(family)
    artifacts = result.run.root / "artifacts"
    adapter = json.loads((artifacts / "adapter_config.json").read_text())
    spec = FAMILIES[ModelFamily(family)]
    assert sorted(adapter["target_modules"]) == sorted(spec.target_modules)
    assert adapter["fan_in_fan_out"] is (family == "gpt2")
    assert spec.head == "score"
    tensors = load_file(str(artifacts / "adapter_model.safetensors"))
    assert tensors["base_model.model.score.weight"].shape == (2, 64)  # the head, trained in full and saved
    assert any(".lora_A." in name for name in tensors)
    # the saved tokenizer pads (with end-of-text where the base tokenizer had no pad token), on the right
    tokenizer = load_tokenizer(str(artifacts))
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "right"
    if family in PADLESS_TOKENIZER_FAMILIES:
        assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"
    # `finetune predict`'s predictor reproduces the run's own evaluation, merged or not
    rows = sentiment_rows(24, seed=2, labels=("pos", "neg"))
    for merge in (True, False):
        predictions = Predictor.from_run(result.run.root, merge=merge).predict(
            [t for t, _ in rows], batch_size=5
        )
        correct = sum(p.label_name == label for p, (_, label) in zip(predictions, rows, strict=True))
        assert correct / len(rows) == pytest.approx(result.metrics["eval"]["accuracy"])


@pytest.mark.parametrize("family", FAMILIES_TRAINED)
def test_padding_a_text_does_not_change_its_prediction(decoder_runs, family):
    """The last-non-pad pooling reads config.pad_token_id: a text padded beside a longer one gets the same
    probabilities as alone; with a wrong pad id (the pooled token would be padding) it would not."""
    predictor = Predictor.from_run(decoder_runs(family)[0].run.root)
    predictor.padding_budget = sys.maxsize  # one forward pass: the short text is padded to the long one
    longer = "wonderful film and excellent book and great concert and boring game"
    alone = predictor.predict(["great film"])[0]
    padded = predictor.predict(["great film", longer])[0]
    assert len(predictor.encode([longer])[0][0]) > len(predictor.encode(["great film"])[0][0]) + 5
    assert padded.probabilities == pytest.approx(alone.probabilities, abs=1e-5)
    pad = predictor.model.config.pad_token_id
    assert pad == predictor.tokenizer.pad_token_id is not None
    predictor.model.config.pad_token_id = pad + 1  # control: the check above can fail
    wrong = predictor.predict(["great film", longer])[0]
    assert wrong.probabilities != pytest.approx(alone.probabilities, abs=1e-5)


@pytest.mark.parametrize("family", FAMILIES_TRAINED)
def test_a_decoder_is_served_by_the_torch_runtime_and_the_server(decoder_runs, family, tmp_path):
    from finetune_platform.serve.app import create_serve_app

    root = decoder_runs(family)[0].run.root
    expected = Predictor.from_run(root).predict(TEXTS)
    source = source_from_run(root)
    for merged in (True, False):
        host = open_runtime(source, "torch", merged=merged)
        assert isinstance(host, TorchHost) and host.runtime == "torch"
        got = host.predict(TEXTS, batch_size=3)
        assert [p.label for p in got] == [p.label for p in expected]
        for ours, theirs in zip(got, expected, strict=True):
            assert ours.probabilities == pytest.approx(theirs.probabilities, abs=2e-5)
    settings = Settings(
        FINETUNE_HOME=tmp_path / "home", SERVE_DEVICE="cpu", SERVE_RUNTIME="torch", METRICS_ENABLED=False
    )
    with TestClient(create_serve_app(settings, run_folder=root)) as client:
        answers = [client.post("/predict", json={"text": text}).json() for text in TEXTS]
        (loaded,) = client.get("/models").json()["loaded"]
    assert loaded["runtime"] == "torch"
    assert [a["label_name"] for a in answers] == [p.label_name for p in expected]
    np.testing.assert_allclose(
        [a["probability"] for a in answers], [p.probability for p in expected], atol=1e-4
    )


@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_onnx_runtime_gives_torchs_probabilities_for_a_decoder(decoder_runs, family):
    """The export path of today's encoders carries Llama, Qwen2, Mistral and Gemma: merged, and with the adapter
    as graph inputs, texts padded in one pass, the same probabilities as PyTorch."""
    root = decoder_runs(family)[0].run.root
    source = source_from_run(root)
    reference = Predictor.from_run(root)
    reference.padding_budget = sys.maxsize
    expected = reference.predict(TEXTS)
    for merged in (True, False):
        host = open_runtime(source, "onnx", merged=merged)
        assert isinstance(host, OnnxHost) and host.runtime == "onnx"
        host.padding_budget = sys.maxsize  # every text padded to the longest: the pooling must skip padding
        got = host.predict(TEXTS)
        assert [p.label for p in got] == [p.label for p in expected]
        for ours, theirs in zip(got, expected, strict=True):
            assert ours.probabilities == pytest.approx(theirs.probabilities, abs=2e-5)


def test_gpt2s_conv1d_adapter_is_served_by_pytorch_with_the_registrys_log_line(decoder_runs, caplog):
    """GPT-2 keeps its projections in Conv1D, so its LoRA is fan_in_fan_out, which the ONNX graph does not
    express: the onnx runtime hands it to PyTorch, saying why."""
    root = decoder_runs("gpt2")[0].run.root
    source = source_from_run(root)
    with caplog.at_level("WARNING", logger="finetune_platform.inference"):
        host = open_runtime(source, "onnx", merged=True)
    assert isinstance(host, TorchHost) and host.runtime == "torch" and host.merged
    assert f"{source.key}: served with PyTorch, not ONNX Runtime (fan_in_fan_out=True)" in caplog.text
    expected = Predictor.from_run(root).predict(TEXTS)
    assert [p.probabilities for p in host.predict(TEXTS)] == [p.probabilities for p in expected]


def test_finetune_predict_answers_with_a_decoder_on_the_torch_runtime(decoder_runs):
    root = decoder_runs("gpt2")[0].run.root
    expected = Predictor.from_run(root).predict(["wonderful concert"])[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [finetune_bin(), "predict", "--run", str(root), "--runtime", "torch", "--text", "wonderful concert"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    assert (answer["label_name"], answer["model"]) == (expected.label_name, "tiny-gpt2")
    assert answer["probability"] == pytest.approx(expected.probability, abs=1e-5)


def test_4bit_training_on_this_cpu_machine_is_refused_before_a_run_folder_exists(
    tmp_path, tiny_model_factory
):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here: the message names only the missing CUDA")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    raw = tiny_config_dict(tiny_model_factory("llama"), train, None, tmp_path / "results", max_steps=2)
    raw["device"], raw["model"]["quantization"] = "auto", "4bit"
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False)
    with pytest.raises(ConfigError) as refused:
        run_training(config_from_dict(raw), settings=settings, show_progress=False)
    assert str(refused.value) == (
        "model.quantization: 4bit needs CUDA and the bitsandbytes package (pip install bitsandbytes); this machine "
        "has no CUDA device (the run would train on cpu) and no bitsandbytes package"
    )
    assert not (tmp_path / "results").exists()


needs_cuda_and_bitsandbytes = pytest.mark.skipif(
    "not __import__('torch').cuda.is_available() or __import__('importlib').util.find_spec('bitsandbytes') is None",
    reason="4-bit needs CUDA and bitsandbytes",
)


@needs_cuda_and_bitsandbytes
@pytest.mark.parametrize(("precision", "frozen_dtype"), [("bf16", "bfloat16"), ("fp32", "float32")])
def test_a_4bit_base_loads_nf4_layers_with_fp32_trainables(
    tmp_path, tiny_model_factory, precision, frozen_dtype
):
    """The linear layers load as NF4; the rest of the frozen base stays in the compute dtype under mixed precision
    (activations in bf16, as an unquantized bf16 run) and is upcast only for an fp32 run; LoRA and the head are fp32."""
    import bitsandbytes as bnb
    import torch

    from finetune_platform.catalogue import resolve_base_model
    from finetune_platform.data.loading import LabelMap
    from finetune_platform.training.models import build_model

    model_dir = tiny_model_factory("qwen2")
    train = write_csv(tmp_path / "train.csv", sentiment_rows(16, seed=1))
    raw = tiny_config_dict(model_dir, train, None, tmp_path / "results", max_steps=2)
    raw["device"], raw["precision"], raw["model"]["quantization"] = "cuda", precision, "4bit"
    config = config_from_dict(raw)
    state = SimpleNamespace(model=resolve_base_model(str(model_dir), None))
    model = build_model(config, state, LabelMap(("neg", "pos"), ("neg", "pos")), pad_token_id=0)
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) > 0
    frozen = {str(p.dtype) for p in model.parameters() if not p.requires_grad and p.dtype.is_floating_point}
    assert frozen == {f"torch.{frozen_dtype}"}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}


@needs_cuda_and_bitsandbytes
@pytest.mark.parametrize("precision", ["auto", "fp32"])
def test_a_4bit_decoder_trains_on_cuda_and_predicts(tmp_path, tiny_model_factory, precision):
    train = write_csv(tmp_path / "train.csv", sentiment_rows(64, seed=1, labels=("pos", "neg")))
    validation = write_csv(tmp_path / "validation.csv", sentiment_rows(24, seed=2, labels=("pos", "neg")))
    raw = tiny_config_dict(tiny_model_factory("qwen2"), train, validation, tmp_path / "results", max_steps=12)
    raw["device"], raw["precision"], raw["model"]["quantization"] = "cuda", precision, "4bit"
    raw["registry"], raw["calibration"] = {"enabled": False}, "none"
    settings = Settings(FINETUNE_HOME=tmp_path / "home", MLFLOW_ENABLED=False)
    outcome = run_training(config_from_dict(raw), settings=settings, show_progress=False)
    metrics = json.loads((outcome.run.root / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 12
    assert np.isfinite(metrics["eval"]["loss"]) and 0.0 <= metrics["eval"]["accuracy"] <= 1.0
    (answer,) = Predictor.from_run(outcome.run.root).predict(["wonderful concert"])
    assert answer.label_name in {"pos", "neg"} and 0.0 < answer.probability <= 1.0
