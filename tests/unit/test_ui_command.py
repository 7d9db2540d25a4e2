"""How `finetune ui` starts Streamlit: for users (no developer toolbar), with the API's upload limit, and with the
addresses of the API and of the inference server. The browser test (tests/e2e/test_ui_browser.py) sees the page."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from finetune_platform.cli import app
from finetune_platform.settings import get_settings
from finetune_platform.ui.uploads import size_text, upload_megabytes


def started(monkeypatch, *args: str, **env: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment `finetune ui` becomes (it execs Streamlit in place)."""
    import finetune_platform.cli.system as system

    became: list = []
    monkeypatch.setattr(system.os, "execve", lambda path, argv, environ: became.extend([path, argv, environ]))
    for name in ("FINETUNE_API_URL", "FINETUNE_SERVE_URL", "MAX_UPLOAD_BYTES"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["ui", *args], env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    path, argv, environ = became
    assert path == sys.executable
    return argv, environ


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_streamlit_starts_for_users_with_the_apis_upload_limit_and_both_addresses(monkeypatch):
    argv, environ = started(
        monkeypatch,
        "--port",
        "8601",
        "--serve-url",
        "http://inference:8080",
        MAX_UPLOAD_BYTES=str(3 * 1024 * 1024),
    )
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4].endswith("finetune_platform/ui/asgi.py")
    assert option(argv, "--client.toolbarMode") == "minimal"  # no Deploy button, no developer menu
    assert option(argv, "--server.maxUploadSize") == "3"
    assert (option(argv, "--server.port"), option(argv, "--server.headless")) == ("8601", "true")
    assert environ["FINETUNE_SERVE_URL"] == "http://inference:8080"
    assert environ["FINETUNE_API_URL"] == "http://127.0.0.1:8000"


def test_the_defaults_and_the_environment(monkeypatch):
    argv, environ = started(monkeypatch)
    assert option(argv, "--server.maxUploadSize") == "100"  # MAX_UPLOAD_BYTES' default, 100 MiB
    assert (environ["FINETUNE_API_URL"], environ["FINETUNE_SERVE_URL"]) == (
        "http://127.0.0.1:8000", "http://127.0.0.1:8080",
    )  # fmt: skip
    _, environ = started(monkeypatch, FINETUNE_SERVE_URL="http://10.0.0.5:8080")
    assert environ["FINETUNE_SERVE_URL"] == "http://10.0.0.5:8080"


@pytest.mark.parametrize(
    ("limit", "megabytes", "text"),
    [
        (100 * 1024 * 1024, 100, "100 MB"),
        (1024, 1, "1 KB"),  # below Streamlit's unit: the uploader allows 1 MB, the page checks the bytes
        (1536 * 1024, 2, "1.5 MB"),  # never below the API's limit
        (1000, 1, "1000 bytes"),
        (1, 1, "1 byte"),
    ],
)
def test_the_upload_limit_in_streamlits_units(limit, megabytes, text):
    assert (upload_megabytes(limit), size_text(limit)) == (megabytes, text)
