"""Issue 18's attacks on a real `finetune serve` process (production mode, an API key): bodies refused before
they are read (anonymous, declared too large, streamed too large), texts too long for a request, and one client's
big batch that used to hold up everyone else."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import select
import socket
import subprocess
import threading
from collections.abc import Iterable, Iterator

import httpx
import pytest

from finetune_platform.inference.predictor import CHARS_PER_TOKEN, Predictor
from finetune_platform.settings import Settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.runner import run_training
from tests.conftest import finetune_bin, free_port, sentiment_rows, tiny_config_dict, write_csv
from tests.integration.queue_harness import http_answers, wait_for

pytestmark = pytest.mark.slow
API_KEY = secrets.token_hex(32)
MIB = 1024 * 1024
LONG = ("great film and a wonderful evening " * 70, "awful book and a boring afternoon " * 70)  # > 128 tokens


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("serve-limits")
    train = write_csv(root / "train.csv", sentiment_rows(96, 1))
    valid = write_csv(root / "validation.csv", sentiment_rows(32, 2))
    raw = tiny_config_dict(tiny_bert, train, valid, root / "results", max_steps=24, eval_steps=12)
    raw["experiment"], raw["registry"] = "limits", {"enabled": False}
    raw["model"]["max_length"] = 128
    settings = Settings(FINETUNE_HOME=root / "train-home", MLFLOW_ENABLED=False)
    return run_training(config_from_dict(raw), settings=settings, show_progress=False).run.root


@pytest.fixture(scope="module")
def server(run_folder, tmp_path_factory) -> Iterator[int]:
    """`finetune serve --run` in production mode; a pass runs at most one 128-token text."""
    home = tmp_path_factory.mktemp("serve-limits-home")
    port = free_port()
    env = {
        **os.environ,
        "FINETUNE_HOME": str(home),
        "ENVIRONMENT": "production",
        "JWT_SECRET": secrets.token_hex(32),
        "SERVE_API_KEYS": json.dumps([API_KEY]),
        "SERVE_MAX_BATCH_TOKENS": "128",
    }
    log = (home / "serve.log").open("w")
    command = [finetune_bin(), "serve", "--run", str(run_folder), "--port", str(port), "--device", "cpu"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(
            lambda: http_answers(f"http://127.0.0.1:{port}/health") or process.poll() is not None,
            120,
            "serve",
        )
        assert process.poll() is None, (home / "serve.log").read_text()
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # still waiting for a body a client never finished
            process.kill()
            process.wait(timeout=30)


def exchange(
    port: int, head: dict[str, str], path: str, chunks: Iterable[bytes] = ()
) -> tuple[int, dict, int]:
    """POST ``path`` over a raw socket: the head, then body chunks only until the server answers (a server that
    waits for the whole body makes this time out). Returns the status, the JSON answer, the body bytes sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
        lines += [f"{name}: {value}" for name, value in head.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # answered
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, json.loads(response.read()), sent


def chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    """A JSON body that never ends, in Transfer-Encoding: chunked framing, ``total`` bytes at most."""
    yield b"%x\r\n%s\r\n" % (10, b'{"text": "')
    for _ in range(total // size):
        yield b"%x\r\n%s\r\n" % (size, b"a" * size)


def test_an_anonymous_body_is_refused_before_it_is_read(server):
    status, answer, _ = exchange(server, {"Content-Length": str(300 * MIB)}, "/predict/batch", [b"[" * 65536])
    assert (status, answer) == (
        401,
        {"detail": "send a platform token (Authorization: Bearer) or an X-API-Key"},
    )
    status, answer, _ = exchange(server, {"X-API-Key": "wrong", "Transfer-Encoding": "chunked"}, "/predict")
    assert status == 401


def test_a_body_over_the_limit_is_refused_by_its_length_or_once_it_passes_it(server):
    key = {"X-API-Key": API_KEY}
    status, answer, _ = exchange(server, {**key, "Content-Length": str(300 * MIB)}, "/predict/batch")
    assert (status, answer) == (
        413, {"detail": "request body larger than the limit of 8388608 bytes for POST /predict/batch"}
    )  # fmt: skip
    # one 2 MB text: over /predict's 1 MiB (MAX_JSON_BODY_BYTES) before any JSON is parsed
    text = json.dumps({"text": "great film " * 200_000}).encode()
    pieces = [text[start : start + 65536] for start in range(0, len(text), 65536)]
    status, answer, _ = exchange(server, {**key, "Content-Length": str(len(text))}, "/predict", pieces)
    assert (status, answer) == (
        413, {"detail": "request body larger than the limit of 1048576 bytes for POST /predict"}
    )  # fmt: skip
    # no Content-Length: the server counts the stream and answers long before the 64 MiB are sent
    status, answer, sent = exchange(
        server, {**key, "Transfer-Encoding": "chunked"}, "/predict", chunked(64 * MIB)
    )
    assert (status, answer["detail"]) == (
        413,
        "request body larger than the limit of 1048576 bytes for POST /predict",
    )
    assert sent < 64 * MIB


def test_texts_over_the_character_limits_get_exact_answers(server):
    url, key = f"http://127.0.0.1:{server}", {"X-API-Key": API_KEY}
    cases = [
        ("/predict", {"text": "x" * 20_001}, 422, "text 0: 20001 characters, more than the limit of 20000 per text"),
        (
            "/predict/batch", {"texts": ["fine", "x" * 20_001]}, 422,
            "text 1: 20001 characters, more than the limit of 20000 per text",
        ),
        (
            "/predict/batch", {"texts": ["great " * 2_700] * 64}, 413,
            "1036800 characters in all, more than the limit of 1000000 per request",
        ),
    ]  # fmt: skip
    for path, body, code, message in cases:
        answer = httpx.post(url + path, json=body, headers=key, timeout=60)
        assert (answer.status_code, answer.json()["detail"]) == (code, message)
    at_limit = httpx.post(url + "/predict", json={"text": "great " * 3_333 + "xy"}, headers=key, timeout=60)
    assert (at_limit.status_code, at_limit.json()["truncated"]) == (200, True)
    headers = at_limit.headers
    assert (headers["x-content-type-options"], headers["x-frame-options"]) == ("nosniff", "DENY")
    assert headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"


def test_a_big_batch_does_not_hold_up_a_small_request(server, run_folder):
    """Eight clients send 64 long texts each (SERVE_MAX_BATCH_TOKENS=128: one text a pass, 512 passes); once the
    server is running them, a one-text request is answered before any of the eight, and every answer is its own.
    The tiny model runs a pass in about a millisecond here: the start is watched every 5 ms (three clients' 192
    passes once ended between two polls of 0.2 s, before the small request was sent)."""
    url, key = f"http://127.0.0.1:{server}", {"X-API-Key": API_KEY}
    batches = [[LONG[(i + j) % 2] for j in range(64)] for i in range(8)]
    finished: list[str] = []
    answers: dict[str, httpx.Response] = {}
    lock = threading.Lock()

    def send(name: str, path: str, body: dict) -> None:
        answer = httpx.post(url + path, json=body, headers=key, timeout=300)
        with lock:
            finished.append(name)
            answers[name] = answer

    def passes() -> int:
        return httpx.get(url + "/models", headers=key, timeout=30).json()["batches"]

    before = passes()
    big = [
        threading.Thread(target=send, args=(f"big-{i}", "/predict/batch", {"texts": texts}))
        for i, texts in enumerate(batches)
    ]
    for thread in big:
        thread.start()
    wait_for(lambda: passes() > before, 120, "the big batches to start", interval=0.005)
    assert not finished, f"the big batches ended before the small request was sent: {finished}"
    send("small", "/predict", {"text": "great film"})
    for thread in big:
        thread.join(timeout=300)
    assert finished[0] == "small" and sorted(finished[1:]) == [f"big-{i}" for i in range(8)]
    expected = Predictor.from_run(run_folder).predict([*LONG, "great film"])
    assert answers["small"].json()["probability"] == pytest.approx(expected[2].probability, abs=1e-4)
    for i, texts in enumerate(batches):
        got = answers[f"big-{i}"].json()["predictions"]
        want = [expected[LONG.index(text)] for text in texts]
        assert [p["label_name"] for p in got] == [p.label_name for p in want]
        assert [p["probability"] for p in got] == pytest.approx([p.probability for p in want], abs=1e-4)
        assert {p["truncated"] for p in got} == {True}


def test_a_huge_text_is_cut_before_the_tokenizer_reads_it_and_predicts_as_before(run_folder):
    predictor = Predictor.from_run(run_folder)
    tokenizer, limit = predictor.tokenizer, predictor.info.max_length
    read: list[int] = []

    class Recording:  # the real tokenizer, noting the longest string it is given
        def __call__(self, texts, **options):
            read.append(max(len(text) for text in texts))
            return tokenizer(texts, **options)

        def __getattr__(self, name):
            return getattr(tokenizer, name)

    predictor.tokenizer = Recording()
    text = "a quiet, patient film that earns every minute of its ending. " * 40_000  # 2.4 MB
    (prediction,) = predictor.predict([text])
    assert max(read) == (limit + 1) * CHARS_PER_TOKEN < len(text)
    assert prediction.truncated is True
    # what the model reads is what the tokenizer makes of the uncut text (its first 100,000 characters here)
    (ids,), _ = predictor.encode([text])
    assert ids == tokenizer(text[:100_000], truncation=True, max_length=limit)["input_ids"]
    short = "a quiet, patient film"
    assert predictor.encode([short]) == ([tokenizer(short)["input_ids"]], [False])
