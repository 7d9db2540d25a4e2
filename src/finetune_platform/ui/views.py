"""The UI's pages, each a function of an API client (so they render the same in the app and in AppTest)."""

from __future__ import annotations

from typing import Any

import streamlit as st

from finetune_platform.ui.client import ApiError, PlatformClient

STEPS = ("queued", "validating", "training", "evaluating", "registering", "done")
PREDICT_STEPS = ("queued", "validating", "predicting", "done")


def login_page(client: PlatformClient) -> None:
    st.title("finetune-platform")
    with st.form("login"):
        username = st.text_input("Username", key="username")
        password = st.text_input("Password", type="password", key="password")
        submitted = st.form_submit_button("Log in")
    if submitted:
        try:
            token = client.login(username, password)
            st.session_state["token"] = token
            st.session_state["user"] = client.me()
        except ApiError as error:
            st.error(f"Login failed: {error}")
            return
        st.rerun()


def stepper(task: dict[str, Any]) -> str:
    """The task's place in its steps, as one line: done steps ✓, the current one ▶, the rest ·."""
    steps = PREDICT_STEPS if task.get("kind") == "predict" else STEPS
    status, stage = task["status"], task.get("stage")
    if status == "queued":
        current = "queued"
    elif status == "running":
        current = stage or "validating"
    else:
        current = "done"
    index = steps.index(current) if current in steps else 0
    marks = []
    for position, step in enumerate(steps):
        if step == "done" and status in {"failed", "cancelled"}:
            marks.append(f"✗ {status}")
        elif position < index or (step == "done" and status == "succeeded"):
            marks.append(f"✓ {step}")
        elif position == index:
            marks.append(f"▶ {step}")
        else:
            marks.append(f"· {step}")
    return "  →  ".join(marks)


def jobs_page(client: PlatformClient) -> None:
    st.title("Jobs")
    try:
        page = client.tasks(limit=100)
    except ApiError as error:
        st.error(str(error))
        return
    tasks = page["data"]
    if not tasks:
        st.info("No jobs yet.")
        return
    st.dataframe(
        [
            {"id": t["id"], "kind": t["kind"], "status": t["status"], "stage": t["stage"],
             "progress %": (t["progress"] or {}).get("percent"), "model": t["model_name"], "created": t["created_at"]}
            for t in tasks
        ],
        hide_index=True,
    )  # fmt: skip
    chosen = st.selectbox("Job", [t["id"] for t in tasks], key="job")
    try:
        task = client.task(chosen)
        logs = client.task_logs(chosen, lines=50)
    except ApiError as error:
        st.error(str(error))
        return
    st.markdown(f"**{stepper(task)}**")
    progress = task.get("progress") or {}
    percent = float(progress.get("percent") or (100.0 if task["status"] == "succeeded" else 0.0))
    st.progress(min(percent, 100.0) / 100.0, text=f"{percent:.0f}%")
    if progress.get("loss") is not None:
        st.metric("loss", f"{progress['loss']:.4f}")
    if task["status"] == "failed":
        st.error(f"Failed: {task['error']}")
    if task["status"] in {"queued", "running"} and st.button("Cancel job", key="cancel"):
        try:
            task = client.cancel(chosen)
            st.success(
                f"Job {chosen} is {task['status']}" + (" (stopping)" if task["cancel_requested"] else "")
            )
        except ApiError as error:
            st.error(str(error))
    st.subheader("Events")
    st.text("\n".join(f"{e['at']} [{e['kind']}] {e['message']}" for e in logs["events"]) or "none")
    if logs["log_lines"]:
        st.subheader("Log")
        st.code("\n".join(logs["log_lines"]))


def admin_page(client: PlatformClient) -> None:
    st.title("Admin")
    try:
        users = client.users()
    except ApiError as error:
        st.error(str(error))
        return
    st.subheader("Users")
    st.dataframe(
        [
            {"id": u["id"], "username": u["username"], "role": u["role"], "active": u["is_active"]}
            for u in users
        ],
        hide_index=True,
    )
    st.subheader("Audit log")
    action = st.text_input("Action", key="audit_action", placeholder="login, train.submit, denied…")
    actor = st.text_input("Actor id", key="audit_actor")
    try:
        page = client.audit(action=action or None, actor_id=int(actor) if actor.strip().isdigit() else None)
    except ApiError as error:
        st.error(str(error))
        return
    st.caption(f"{page['count']} entries")
    st.dataframe(
        [{"at": e["at"], "action": e["action"], "actor": e.get("actor_id"), "target": e.get("target"),
          "outcome": e.get("outcome")} for e in page["data"]],
        hide_index=True,
    )  # fmt: skip
