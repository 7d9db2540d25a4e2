"""The web UI as an ASGI app: Streamlit's own server (Starlette) with the platform's security headers in
front, so every page and asset says nosniff, may not be framed, sends no referrer and, in production,
asks for HTTPS only. `finetune ui` runs this file with `streamlit run`."""

from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware
from streamlit.starlette import App

from finetune_platform.http_guard import SecurityHeaders
from finetune_platform.settings import get_settings

app = App(
    Path(__file__).with_name("app.py"),
    middleware=[Middleware(SecurityHeaders, environment=get_settings().ENVIRONMENT, no_store_paths=())],
)
