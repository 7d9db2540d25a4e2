"""The platform's web UI (Streamlit), started by `finetune ui`. It talks to the platform only through the REST
API at FINETUNE_API_URL (the Playground to `finetune serve` at FINETUNE_SERVE_URL); the token from /login lives in
the browser session.

Pages: login/logout; a new training job (upload, validation report, a form generated from the config schema,
submit); datasets (the caller's uploads, a data audit of one: run it, its progress, what it found, its plots
and report); the job monitor (stepper, progress, curves, final metrics and confusion matrix, events and log tail,
cancel, the failure reason, a prediction task's CSV); sweeps (trials live, charts, compare the best, cancel,
promote the best for admins); prediction over a file; experiments (the runs of your jobs,
all runs for admins; comparison); models (search, card, recommendation, stage moves for admins); the playground;
admin (users, audit log). API errors are shown as their readable message, never as a traceback. Uploads hold to
MAX_UPLOAD_BYTES, the API's own limit.
"""

from __future__ import annotations

import contextlib
import os

import streamlit as st

from finetune_platform.settings import get_settings
from finetune_platform.ui.client import ApiError, InferenceClient, PlatformClient
from finetune_platform.ui.views import (
    ICON,
    PLATFORM,
    admin_page,
    datasets_page,
    experiments_page,
    jobs_page,
    login_page,
    models_page,
    new_job_page,
    playground_page,
    predictions_page,
    sweeps_page,
)

st.set_page_config(page_title=PLATFORM, page_icon=ICON, layout="wide")


def client() -> PlatformClient:
    return PlatformClient(
        os.environ.get("FINETUNE_API_URL", "http://127.0.0.1:8000"), st.session_state.get("token")
    )


if not st.session_state.get("token"):
    login_page(client())
else:
    user = st.session_state.get("user") or {}
    admin = user.get("role") == "admin"
    pages = [
        "New job",
        "Datasets",
        "Jobs",
        "Sweeps",
        "Predict a file",
        "Experiments",
        "Models",
        "Playground",
        *(["Admin"] if admin else []),
    ]
    st.sidebar.write(f"Signed in as **{user.get('username', '?')}** ({user.get('role', '?')})")
    page = st.sidebar.radio("Page", pages, key="page")
    if st.sidebar.button("Log out", key="logout"):
        with contextlib.suppress(ApiError):  # the token may already be revoked: the session ends either way
            client().logout()
        st.session_state.clear()
        st.rerun()
    if page == "New job":
        new_job_page(client(), get_settings().MAX_UPLOAD_BYTES)
    elif page == "Datasets":
        datasets_page(client())
    elif page == "Jobs":
        jobs_page(client())
    elif page == "Sweeps":
        sweeps_page(client(), admin)
    elif page == "Predict a file":
        predictions_page(client(), get_settings().MAX_UPLOAD_BYTES)
    elif page == "Models":
        models_page(client(), admin)
    elif page == "Playground":
        serve_url = os.environ.get("FINETUNE_SERVE_URL", "http://127.0.0.1:8080")  # `finetune ui --serve-url`
        playground_page(InferenceClient(serve_url, st.session_state.get("token")))
    elif page == "Experiments":
        experiments_page(client())
    elif page == "Admin":
        admin_page(client())
