"""One PlatformError -> HTTP table: the REST API and the inference server, each over real HTTP, answer every
error code with the same status and body. Before the shared table the inference server answered
INVALID_DATASET, CONFLICT, UNSUPPORTED and QUOTA_EXCEEDED with 500."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from finetune_platform.errors import (
    HTTP_STATUS,
    ConfigError,
    DatasetError,
    DeviceError,
    ErrorCode,
    NotFoundError,
    PlatformError,
    QuotaExceeded,
)
from tests.conftest import free_port

# Written out, not read from errors.py: a change to the table shows here.
EXPECTED = {
    ErrorCode.INVALID_CONFIG: 422,
    ErrorCode.INVALID_DATASET: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.UNSUPPORTED: 422,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.INTERNAL: 500,
}


def test_the_table_gives_every_code_a_status():
    assert dict(HTTP_STATUS) == EXPECTED and set(EXPECTED) == set(ErrorCode)
    kinds = [ConfigError, DatasetError, NotFoundError, DeviceError, QuotaExceeded, PlatformError]
    assert [kind("m").http_status for kind in kinds] == [422, 422, 404, 422, 429, 500]
    assert PlatformError("taken", ErrorCode.CONFLICT).http_status == 409
    with pytest.raises(TypeError):
        HTTP_STATUS[ErrorCode.CONFLICT] = 400  # type: ignore[index]


def _raise(code: ErrorCode) -> None:
    raise PlatformError(f"raised with {code.value}", code)


def _serve(app) -> tuple[str, object]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    return f"http://127.0.0.1:{server.config.port}", server


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """The REST API and the inference server, each with one extra route that raises the code it is given."""
    from finetune_platform.api.app import create_app
    from finetune_platform.db.session import upgrade
    from finetune_platform.serve.app import create_serve_app
    from finetune_platform.settings import Settings

    root = tmp_path_factory.mktemp("error-status")
    settings = Settings(FINETUNE_HOME=root / "home", MLFLOW_ENABLED=False, METRICS_ENABLED=False)
    upgrade(settings)  # the API writes refused requests to the audit log
    urls, running = {}, []
    for name, app in (("api", create_app(settings)), ("serve", create_serve_app(settings, "anything"))):
        app.add_api_route("/raise/{code}", _raise, methods=["GET"])
        urls[name], server = _serve(app)
        running.append(server)
    yield urls
    for server in running:
        server.should_exit = True


@pytest.mark.parametrize("code", list(ErrorCode))
def test_each_error_code_answers_the_same_status_on_both_servers(servers, code):
    for name, url in servers.items():
        answer = httpx.get(f"{url}/raise/{code.value}", timeout=30)
        assert answer.status_code == EXPECTED[code], name
        assert answer.json() == {"detail": f"raised with {code.value}", "code": code.value}, name


@pytest.mark.parametrize(("code", "status"), [(ErrorCode.INVALID_DATASET, 422), (ErrorCode.CONFLICT, 409)])
def test_a_client_mistake_is_not_a_server_fault_on_the_inference_server(servers, code, status):
    answer = httpx.get(f"{servers['serve']}/raise/{code.value}", timeout=30)
    assert answer.status_code == status
