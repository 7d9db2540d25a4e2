"""Shared fixtures: tiny random models of each family, small datasets, an isolated platform home."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = ROOT / "data" / "sample"
SST2_DIR = ROOT.parent / "shared" / "data" / "sst2"

POSITIVE = ["great", "wonderful", "excellent"]
NEGATIVE = ["awful", "boring", "terrible"]
NOUNS = ["film", "book", "meal", "hotel", "phone", "course", "concert", "game", "service", "app"]
CHINESE_POSITIVE = ["很好", "精彩", "喜欢", "出色", "满意"]
CHINESE_NEGATIVE = ["很差", "无聊", "讨厌", "糟糕", "失望"]


def pytest_addoption(parser):
    parser.addoption(
        "--extended",
        action="store_true",
        help="also run the tests marked extended (longer variants of behaviour the default run covers); "
        "make test-all passes it",
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``extended`` are skipped, with the reason shown, unless --extended is given: the default run
    (make test, CI) stays under 20 minutes on 2 cores and still covers every behaviour once.

    A module may set ``EXTENDED_BACKEND = "postgresql"``: its tests on that value of the API's database fixture
    are extended too (the same routes and queries run on SQLite in the default run, and other modules' tests keep
    PostgreSQL there)."""
    for item in items:
        backend = getattr(getattr(item, "module", None), "EXTENDED_BACKEND", None)
        callspec = getattr(item, "callspec", None)
        if backend and callspec is not None and callspec.params.get("api_world") == backend:
            item.add_marker(pytest.mark.extended)
    if config.getoption("--extended"):
        return
    skip = pytest.mark.skip(reason="extended: a longer variant of a covered behaviour; make test-all runs it")
    for item in items:
        if "extended" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _main_module_left_as_found():
    """Streamlit's AppTest makes its generated script `__main__`; a later test whose child processes start with
    multiprocessing's spawn would re-run that script in them (and they die before starting)."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(autouse=True)
def _no_console_logging_left_behind():
    """An in-process `finetune train` (CliRunner) adds the CLI's console handler to the package logger; a later
    test's CLI output must not depend on whether one ran before it."""
    import logging

    package = logging.getLogger("finetune_platform")
    handlers, level = list(package.handlers), package.level
    yield
    package.handlers[:] = handlers
    package.setLevel(level)


def write_csv(
    path: Path, rows: list[tuple[str, object]], header: tuple[str, str] = ("text", "label")
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def sentiment_rows(count: int, seed: int, labels: tuple[object, object] = (1, 0)) -> list[tuple[str, object]]:
    """Short sentences whose label is decided by one sentiment word: learnable in a few steps."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        positive = i % 2 == 0
        word = rng.choice(POSITIVE if positive else NEGATIVE)
        filler = " ".join(rng.choice(NOUNS) for _ in range(rng.randint(0, 3)))
        rows.append((f"{word} {filler}".strip(), labels[0] if positive else labels[1]))
    return rows


def three_class_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        kind = ("positive", "negative", "neutral")[i % 3]
        word = {"positive": rng.choice(POSITIVE), "negative": rng.choice(NEGATIVE), "neutral": "okay"}[kind]
        rows.append((f"{word} {rng.choice(NOUNS)}", kind))
    return rows


def chinese_rows(count: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    return [
        (
            f"这部电影{rng.choice(CHINESE_POSITIVE if i % 2 == 0 else CHINESE_NEGATIVE)}。",
            1 if i % 2 == 0 else 0,
        )
        for i in range(count)
    ]


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    from finetune_platform.catalogue import resolve_base_model

    return Path(resolve_base_model("minilm").source)


# Decoder families (``*ForSequenceClassification`` pools the last non-pad token). The GPT-2 and Llama folders get a
# byte-level BPE tokenizer with no pad token (as GPT-2's and Llama 3's have none); the others MiniLM's, which has one.
DECODER_FAMILIES = ("llama", "qwen2", "mistral", "gemma", "gpt2")
PADLESS_TOKENIZER_FAMILIES = ("llama", "gpt2")


def _tiny_decoder_config(family: str, vocab_size: int):
    from transformers import GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if family == "gpt2":
        # <|endoftext|> is the first token of the BPE tokenizer below
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=2,
            bos_token_id=0,
            eos_token_id=0,
        )
    common = dict(
        vocab_size=vocab_size,
        max_position_embeddings=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    if family == "gemma":
        return GemmaConfig(head_dim=16, **common)
    return {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family](**common)


def padless_tokenizer(words: list[str]):
    """A GPT-2-style byte-level BPE tokenizer with an end-of-text token and no pad token, trained offline on
    ``words`` (the `tokenizers` library; nothing downloaded)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(words, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    assert tokenizer.pad_token is None
    return tokenizer


def _tiny_config(family: str, vocab_size: int):
    from transformers import AlbertConfig, BertConfig, DebertaV2Config, DistilBertConfig, RobertaConfig

    if family in DECODER_FAMILIES:
        return _tiny_decoder_config(family, vocab_size)
    common = dict(vocab_size=vocab_size, max_position_embeddings=128)
    if family in {"bert", "bert-chinese"}:
        return BertConfig(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, **common
        )
    if family == "roberta":
        return RobertaConfig(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
            **common,
        )
    if family == "distilbert":
        return DistilBertConfig(dim=64, n_layers=2, n_heads=2, hidden_dim=128, **common)
    if family == "albert":
        return AlbertConfig(
            embedding_size=16,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            **common,
        )
    if family == "deberta-v2":
        return DebertaV2Config(
            hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, **common
        )
    raise ValueError(family)


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory, minilm_path):
    """Build (once per session) a tiny randomly initialised model folder of a given family.

    The tokenizer is MiniLM's (a BERT WordPiece vocabulary that also covers CJK characters), or for
    PADLESS_TOKENIZER_FAMILIES a byte-level BPE one without a pad token, so each folder loads offline
    exactly like a downloaded model would.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def build(family: str) -> Path:
        if family in built:
            return built[family]
        folder = root / f"tiny-{family}"
        if family in PADLESS_TOKENIZER_FAMILIES:
            words = [*POSITIVE, *NEGATIVE, *NOUNS, "okay", "fine", "the", "a", "and", "plot", "movie"]
            tokenizer = padless_tokenizer([" ".join(words)] * 4 + words)
        else:
            tokenizer = AutoTokenizer.from_pretrained(minilm_path)
        torch.manual_seed(0)
        model = AutoModel.from_config(_tiny_config(family, len(tokenizer)))
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        built[family] = folder
        return folder

    return build


@pytest.fixture(scope="session")
def tiny_bert(tiny_model_factory) -> Path:
    return tiny_model_factory("bert")


@pytest.fixture(scope="session")
def platform_home(tmp_path_factory) -> Path:
    """One FINETUNE_HOME (MLflow SQLite store) per session: creating the store costs seconds."""
    return tmp_path_factory.mktemp("finetune-home")


@pytest.fixture
def settings(platform_home):
    from finetune_platform.settings import Settings

    return Settings(FINETUNE_HOME=platform_home, MODEL_REGISTRY_DIR=platform_home / "cards")


@pytest.fixture
def cli_env(platform_home) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FINETUNE_HOME=str(platform_home),
        MODEL_REGISTRY_DIR=str(platform_home / "cards"),
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def sentiment_data(tmp_path) -> tuple[Path, Path]:
    train = write_csv(tmp_path / "data" / "train.csv", sentiment_rows(96, seed=1))
    validation = write_csv(tmp_path / "data" / "validation.csv", sentiment_rows(32, seed=2))
    return train, validation


# The registry section's gate off, for tiny runs whose test is about registering, serving or predicting rather
# than learning: a few steps on a random model rarely beat the majority baseline, and would stay unregistered.
UNGATED = {"require_better_than_baseline": False}


def tiny_config_dict(model: Path, train: Path, validation: Path | None, output_dir: Path, **training) -> dict:
    """A fast config: tiny model, short texts, a few steps, evaluation every few steps."""
    return {
        "experiment": "tiny",
        "output_dir": str(output_dir),
        "device": "cpu",
        "model": {"base_model": str(model), "max_length": 32},
        "data": {"train_file": str(train), "validation_file": str(validation) if validation else None},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "training": {
            "epochs": 8,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "logging_steps": 2,
            "eval_strategy": "steps",
            "eval_steps": 12,
            "seed": 7,
            **training,
        },
    }


def finetune_bin() -> str:
    found = shutil.which("finetune", path=str(Path(os.sys.executable).parent)) or shutil.which("finetune")
    assert found, "the `finetune` entry point is not installed (pip install -e .)"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "art"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=(root / "server.log").open("w"),
        # as deployed (compose, chart): no GenAI job-runner processes, which cost seconds of CPU at every start
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("mlflow server did not answer /health within 90 s")
    yield url, root
    process.terminate()
    process.wait(timeout=30)


def _postgres_database():
    """A fresh database on the local server, or a skip (a failure under CI=true) when it does not answer."""
    import psycopg

    name = f"finetune_test_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True, connect_timeout=3
        ) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL on 127.0.0.1:5432 does not answer under CI=true: {exc}")
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 does not answer: {exc}")
    return name


@contextlib.contextmanager
def database_settings(kind: str, tmp_path: Path):
    """Settings whose app database is a SQLite file (``kind`` "sqlite") or a fresh database of the local
    PostgreSQL server ("postgresql"), dropped afterwards."""
    from finetune_platform.settings import Settings

    if kind == "sqlite":
        yield Settings(FINETUNE_HOME=tmp_path / "home", MODEL_REGISTRY_DIR=tmp_path / "cards")
        return
    import psycopg

    from finetune_platform.db.session import engine_for

    name = _postgres_database()
    yield Settings(
        FINETUNE_HOME=tmp_path / "home", DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    )
    engine_for(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}").dispose()
    with psycopg.connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
    ) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request, tmp_path):
    """The app database on SQLite, then on a fresh database of the local PostgreSQL server."""
    with database_settings(request.param, tmp_path) as settings:
        yield settings
