"""The UI's pages, each a function of an API client (so they render the same in the app and in AppTest)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import streamlit as st
import yaml

from finetune_platform.data.formats import SUFFIXES, SUFFIXES_TEXT
from finetune_platform.services.job_states import ACTIVE, JobKind, JobStage, JobStatus
from finetune_platform.ui.charts import (
    confusion_rows,
    confusion_spec,
    curve_rows,
    curves_spec,
    param_rows,
    param_spec,
    trial_rows,
    trials_spec,
)
from finetune_platform.ui.client import ApiError, PlatformClient
from finetune_platform.ui.uploads import size_text, upload_megabytes

PLATFORM = "finetune-platform"
ICON = ":material/tune:"


def page_header(title: str) -> None:
    """Every page: the browser tab names the page and the platform, the same header line names the platform,
    then the page's title."""
    st.set_page_config(page_title=f"{title} · {PLATFORM}", page_icon=ICON, layout="wide")
    st.markdown(f"{ICON} **{PLATFORM}**")
    st.title(title)


DONE = JobStage.DONE  # the last step: the job succeeded
STEPS = (
    JobStatus.QUEUED,
    JobStage.VALIDATING,
    JobStage.TRAINING,
    JobStage.EVALUATING,
    JobStage.REGISTERING,
    DONE,
)
PREDICT_STEPS = (JobStatus.QUEUED, JobStage.VALIDATING, JobStage.PREDICTING, DONE)
AUDIT_STEPS = (JobStatus.QUEUED, JobStage.VALIDATING, JobStage.AUDITING, DONE)
STEPS_OF = {JobKind.PREDICT: PREDICT_STEPS, JobKind.AUDIT: AUDIT_STEPS}  # any other kind: STEPS (training)


def login_page(client: PlatformClient) -> None:
    page_header("Log in")
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
    """The task's place in its steps, as one line: done steps ✓, the current one ▶, the rest ·; a failed or
    cancelled task (or a pruned sweep trial) shows ✗ on the step it stopped at."""
    steps = STEPS_OF.get(task.get("kind"), STEPS)
    status, stage = task["status"], task.get("stage")
    stopped = status in {JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PRUNED}
    if status == JobStatus.QUEUED or (stopped and stage not in steps):
        current = JobStatus.QUEUED
    elif status == JobStatus.RUNNING or stopped:
        current = stage if stage in steps else JobStage.VALIDATING
    else:
        current = DONE
    index = steps.index(current)
    marks = []
    for position, step in enumerate(steps):
        if position < index or (step == DONE and status == JobStatus.SUCCEEDED):
            marks.append(f"✓ {step}")
        elif position == index:
            marks.append(f"✗ {step} ({status})" if stopped else f"▶ {step}")
        else:
            marks.append(f"· {step}")
    return "  →  ".join(marks)


def jobs_page(client: PlatformClient) -> None:
    page_header("Jobs")
    if message := st.session_state.pop("flash", None):  # from a button callback of the last run
        st.error(message)
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
    live = st.toggle("Live (refresh every 2 s while the job runs)", value=True, key="live")
    task = next(t for t in tasks if t["id"] == chosen)
    running = task["status"] in ACTIVE
    st.fragment(run_every=2.0 if live and running else None)(job_view)(client, chosen, running)
    if task["status"] == JobStatus.SUCCEEDED and task["run_id"]:
        st.button(
            "Compare with other runs",
            key="compare_job",
            help="Open Experiments with this run and the latest other run of its experiment chosen.",
            on_click=open_comparison,
            args=(client, task["run_id"]),
        )


def open_comparison(client: PlatformClient, run_id: str) -> None:
    """Button callback: switch to Experiments with the run's experiment and the run chosen (plus the
    newest other run of that experiment, so the comparison shows at once)."""
    try:
        run = client.run(run_id)
        others = [r["run_id"] for r in client.runs(run["experiment"]) if r["run_id"] != run_id]
    except ApiError as error:
        st.session_state["flash"] = str(error)
        return
    st.session_state.update(
        page="Experiments", experiment=run["experiment"], run_status="any", compare_runs=[run_id, *others[:1]]
    )


def job_view(client: PlatformClient, chosen: str, was_running: bool = False) -> None:
    try:
        task = client.task(chosen)
        logs = client.task_logs(chosen, lines=50)
        metrics = client.task_metrics(chosen) if task["kind"] == JobKind.TRAIN else None
    except ApiError as error:
        st.error(str(error))
        return
    if was_running and task["status"] not in ACTIVE:
        st.rerun(scope="app")  # the job ended: redraw the page (no more refresh, the finished job's actions)
    st.markdown(f"**{stepper(task)}**")
    progress = task.get("progress") or {}
    percent = float(progress.get("percent") or (100.0 if task["status"] == JobStatus.SUCCEEDED else 0.0))
    eta = (metrics or {}).get("eta_seconds")
    remaining = f", ETA {timedelta(seconds=round(eta))}" if eta is not None else ""
    steps = f" · step {progress['step']} of {progress['max_steps']}" if progress.get("max_steps") else ""
    st.progress(min(percent, 100.0) / 100.0, text=f"{percent:.0f}%{remaining}{steps}")
    if progress.get("loss") is not None and task["status"] == JobStatus.RUNNING:
        st.metric("loss", f"{progress['loss']:.4f}")
    if task["status"] == JobStatus.FAILED:
        st.error(f"Failed: {task['error']}")
    if task["status"] in ACTIVE and st.button("Cancel job", key="cancel"):
        try:
            task = client.cancel(chosen)
            st.success(
                f"Job {chosen} is {task['status']}" + (" (stopping)" if task["cancel_requested"] else "")
            )
        except ApiError as error:
            st.error(str(error))
    if metrics is not None:
        training_results(metrics)
    elif task["kind"] == JobKind.PREDICT:
        prediction_results(client, task)
    st.subheader("Events")
    st.text("\n".join(f"{e['at']} [{e['kind']}] {e['message']}" for e in logs["events"]) or "none")
    if logs["log_lines"]:
        st.subheader("Log")
        st.code("\n".join(logs["log_lines"]))


METRIC_TITLES = {
    "accuracy": "accuracy",
    "macro_f1": "macro F1",
    "micro_f1": "micro F1",
    "subset_accuracy": "subset accuracy",
    "rmse": "RMSE",
    "mae": "MAE",
    "pearson": "Pearson",
    "spearman": "Spearman",
}


def training_results(metrics: dict[str, Any]) -> None:
    """The final scores and confusion matrix once evaluated; the curves as the run writes them."""
    final = metrics["final"]
    if final is not None:
        st.subheader("Final metrics")
        # single_label shows accuracy and macro F1 as always; the other tasks their own metrics (scores)
        shown = final.get("scores") or {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"]}
        shown = {name: value for name, value in shown.items() if name != "loss" and value is not None}
        columns = st.columns(len(shown) + 1)
        for column, (name, value) in zip(columns, shown.items(), strict=False):
            column.metric(METRIC_TITLES.get(name, name), f"{value:.4f}")
        columns[-1].metric("loss", "n/a" if final["loss"] is None else f"{final['loss']:.4f}")
        st.caption(
            f"On {final['rows']} validation rows, the model of {final['checkpoint'] or 'the last step'}."
        )
        if final.get("thresholds"):
            st.caption(
                "Each label is predicted above its threshold: "
                + ", ".join(f"{label} {value:g}" for label, value in final["thresholds"].items())
            )
        if final.get("target_scale"):
            scale = final["target_scale"]
            st.caption(f"Training targets: mean {scale['mean']:.4g}, std {scale['std']:.4g}.")
        calibration = final.get("calibration")
        if calibration:
            st.caption(
                f"Calibrated by temperature scaling (T = {calibration['temperature']:.3f}): expected calibration "
                f"error {calibration['ece_before']:.4f} → {calibration['ece_after']:.4f}, predictions unchanged."
            )
        if final["confusion_matrix"]:
            st.subheader("Confusion matrix")
            st.vega_lite_chart(
                confusion_rows(final["confusion_matrix"]), confusion_spec(final["confusion_matrix"])
            )
        if final["per_class"]:
            st.dataframe(
                [{"class": name, **scores} for name, scores in final["per_class"].items()], hide_index=True
            )
    if metrics["training"]:
        st.subheader("Training loss")
        st.vega_lite_chart(curve_rows(metrics["training"], {"loss": "training loss"}), curves_spec("loss"))
    if metrics["evaluations"]:
        st.subheader("Evaluation")
        points = [{**point, **(point.get("scores") or {})} for point in metrics["evaluations"]]
        names = dict.fromkeys(name for point in points for name in (point.get("scores") or {}))
        shown = {name: f"eval {METRIC_TITLES.get(name, name)}" for name in names} or {
            "accuracy": "eval accuracy",
            "macro_f1": "eval macro F1",
            "loss": "eval loss",
        }
        st.vega_lite_chart(curve_rows(points, shown), curves_spec("score"))
    if metrics["training"]:
        with st.expander("Learning rate, gradient norm, speed"):
            for key, title in (
                ("learning_rate", "learning rate"), ("grad_norm", "gradient norm"),
                ("samples_per_second", "samples/s"),
            ):  # fmt: skip
                rows = curve_rows(metrics["training"], {key: title})
                if rows:
                    st.vega_lite_chart(rows, curves_spec(title))


def prediction_results(client: PlatformClient, task: dict[str, Any]) -> None:
    """A finished prediction task: what it predicted, and its CSV to download."""
    if task["status"] != JobStatus.SUCCEEDED:
        return
    progress = task.get("progress") or {}
    accuracy, rmse = progress.get("accuracy"), progress.get("rmse")
    st.success(
        f"{progress.get('predicted', 0)} of {progress.get('rows', 0)} rows predicted with {task['model_name']} "
        f"version {task['model_version']}"
        + (f", accuracy {accuracy:.4f} against the file's labels" if accuracy is not None else "")
        + (f", RMSE {rmse:.4f} against the file's labels" if rmse is not None else "")
    )
    try:
        csv = client.predictions_csv(task["id"])
    except ApiError as error:  # e.g. the file is no longer on the server
        st.error(str(error))
        return
    st.download_button(
        "Download predictions (CSV)", data=csv, file_name=f"predictions-{task['id']}.csv", mime="text/csv",
        key="download_predictions",
    )  # fmt: skip


def datasets_page(client: PlatformClient) -> None:
    """The caller's uploads; the chosen one's verdict and its data audit."""
    page_header("Datasets")
    try:
        datasets = client.datasets()
    except ApiError as error:
        st.error(str(error))
        return
    if not datasets:
        st.info("No datasets yet: upload one on New job.")
        return
    st.dataframe(
        [{"name": d["name"], "rows": d["rows"], "valid": d["valid"], "version": d["version"],
          "uploaded": d["created_at"], "id": d["id"]} for d in datasets],
        hide_index=True,
    )  # fmt: skip
    names = {d["id"]: f"{d['name']} · {d['rows']} rows · {d['id'][:8]}" for d in datasets}
    chosen = st.selectbox("Dataset", list(names), format_func=names.__getitem__, key="audit_dataset")
    dataset = next(d for d in datasets if d["id"] == chosen)
    st.caption(
        f"{dataset['format']}, {size_text(dataset['size_bytes'])}, version {dataset['version']}: "
        + ("valid" if dataset["valid"] else "validation found errors (they are left out of an audit)")
    )
    audit_section(client, dataset, datasets)


def audit_section(client: PlatformClient, dataset: dict[str, Any], datasets: list[dict[str, Any]]) -> None:
    """Run an audit (optionally with a validation dataset), follow it, then show what the latest one found."""
    st.header("Audit")
    st.caption(
        "Likely label errors, near-duplicates and train/validation leaks, label pairs the data confuses, "
        "and outliers: a task on the queue, minutes at most."
    )
    try:
        tasks = client.dataset_audits(dataset["id"])
    except ApiError as error:
        st.error(str(error))
        return
    active = next((task for task in tasks if task["status"] in ACTIVE), None)
    others = {d["id"]: d["name"] for d in datasets if d["id"] != dataset["id"]}
    validation = st.selectbox(
        "Validation dataset (optional: its rows join the audit, and near-duplicates across the two are leaks)",
        [None, *others], format_func=lambda key: "none" if key is None else others[key], key="audit_validation",
    )  # fmt: skip
    if st.button("Run audit", key="audit_run", disabled=active is not None):
        try:
            active = client.audit_dataset(dataset["id"], validation)
        except ApiError as error:
            st.error(f"Not started: {error}")
            return
        st.success(f"Queued audit task {active['id']}")
    if active is not None:
        st.fragment(run_every=2.0)(audit_progress)(client, active["id"])
    elif tasks and tasks[0]["status"] == JobStatus.FAILED:
        st.error(f"The last audit failed: {tasks[0]['error']}")
    if any(task["status"] == JobStatus.SUCCEEDED for task in tasks):
        audit_results(client, dataset["id"])
    elif not tasks and active is None:
        st.info("No audit of this dataset yet.")


def audit_progress(client: PlatformClient, task_id: str) -> None:
    try:
        task = client.task(task_id)
    except ApiError as error:
        st.error(str(error))
        return
    if task["status"] not in ACTIVE:
        st.rerun(scope="app")  # it ended: redraw the section with its results (or its failure)
    progress = task.get("progress") or {}
    percent = float(progress.get("percent") or 0.0)
    phase = progress.get("phase") or task["status"]
    st.progress(min(percent, 100.0) / 100.0, text=f"Auditing: {phase} · {percent:.0f}%")


def audit_results(client: PlatformClient, dataset_id: str) -> None:
    """The summary counts, then the rows behind each finding (as audit.json lists them), the plots and the
    readable report."""
    try:
        audit = client.dataset_audit(dataset_id)
    except ApiError as error:
        st.error(str(error))
        return
    summary = audit["summary"]
    noise = summary["estimated_label_noise"]
    columns = st.columns(5)
    columns[0].metric("likely label errors", summary["label_errors"],
                      help=None if noise is None else f"estimated label noise {noise:.1%}")  # fmt: skip
    columns[1].metric("near-duplicate groups", summary["near_duplicate_groups"])
    columns[2].metric("train/validation leaks", summary["cross_split_groups"])
    columns[3].metric("overlapping label pairs", summary["overlapping_label_pairs"])
    columns[4].metric("outliers", summary["outliers"])
    model = audit.get("model") or {}
    accuracy = model.get("oof_accuracy")
    st.caption(
        f"Audit {audit['task_id']} of {audit['created_at']}: {summary['rows_audited']} rows"
        + (f", estimated label noise {noise:.1%}" if noise is not None else "")
        + (f", out-of-fold accuracy {accuracy:.3f}" if accuracy is not None else "")
    )
    st.subheader("Likely label errors (most likely first)")
    st.caption(
        "flagged: the rows cleanlab estimates are mislabelled; the others are rows the classifier labels "
        "differently, ranked below them."
    )
    errors = audit["label_errors"].get("rows") or []
    if errors:
        st.dataframe(
            [{"file": r["file"], "row": r["row"], "text": r["text"], "given": r["label"],
              "suggested": r["suggested"], "score": r["score"], "flagged": r.get("flagged", True)}
             for r in errors],
            hide_index=True,
        )  # fmt: skip
    else:
        st.caption(audit["label_errors"].get("skipped") or "None found.")
    st.subheader("Near-duplicate groups (leaks and conflicting labels first)")
    groups = audit["near_duplicates"].get("groups") or []
    if groups:
        st.dataframe(
            [{"group": g["id"], "leak": g["cross_split"], "labels differ": g["conflicting"],
              "similarity": g["similarity"], "file": r["file"], "row": r["row"], "text": r["text"],
              "label": r["label"]} for g in groups for r in g["rows"]],
            hide_index=True,
        )  # fmt: skip
    else:
        st.caption("None found.")
    st.subheader("Label pairs the data confuses")
    if audit["class_overlap"]:
        st.dataframe(
            [{"labels": " / ".join(p["labels"]), "confused": p["confused"], "expected": p["expected"],
              "ratio": p["ratio"], "suggestion": p["suggestion"]} for p in audit["class_overlap"]],
            hide_index=True,
        )  # fmt: skip
    else:
        st.caption("None found.")
    st.subheader("Outliers (farthest first)")
    outliers = audit["outliers"].get("rows") or []
    if outliers:
        st.dataframe(
            [{"file": r["file"], "row": r["row"], "text": r["text"], "label": r["label"], "z": r["z"],
              "why": r["reason"]} for r in outliers],
            hide_index=True,
        )  # fmt: skip
    else:
        st.caption("None found.")
    try:
        plots = {
            name: client.dataset_audit_file(dataset_id, name)
            for name in audit["downloads"]
            if name.endswith(".png")
        }
        report = client.dataset_audit_file(dataset_id, "audit.md")
    except ApiError as error:
        st.error(str(error))
        return
    if plots:
        st.subheader("Plots")
        for column, (name, image) in zip(st.columns(len(plots)), plots.items(), strict=True):
            column.image(image, caption=name)
    st.download_button(
        "Download the report (audit.md)", data=report, file_name=f"audit-{dataset_id}.md", mime="text/markdown",
        key="audit_download",
    )  # fmt: skip


def admin_page(client: PlatformClient) -> None:
    page_header("Admin")
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


FORM_SECTIONS = ("model", "lora", "training")
SERVER_FIELDS = {"output_dir"}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref") or next((item["$ref"] for item in node.get("allOf", []) if "$ref" in item), None)
    if ref:
        resolved = dict(schema["$defs"][ref.rsplit("/", 1)[1]])
        resolved.update({k: v for k, v in node.items() if k not in {"$ref", "allOf"}})
        return resolved
    return node


def field_widget(schema: dict[str, Any], section: str, name: str, node: dict[str, Any]) -> Any:
    """One config field as a widget: numbers, switches, choices, text; lists as comma-separated text."""
    node = _resolve(schema, node)
    key, label, help_text = f"cfg.{section}.{name}", name.replace("_", " "), node.get("description")
    default = node.get("default")
    kinds = {option.get("type") for option in node.get("anyOf", [])} or {node.get("type")}
    if "enum" in node:
        options = list(node["enum"])
        return st.selectbox(label, options, index=options.index(default) if default in options else 0, key=key,
                            help=help_text)  # fmt: skip
    if kinds & {"boolean"}:
        return st.checkbox(label, value=bool(default), key=key, help=help_text)
    if kinds & {"integer"}:
        return st.number_input(label, value=default, step=1, key=key, help=help_text)
    if kinds & {"number"}:
        return st.number_input(label, value=default, format="%g", key=key, help=help_text)
    if kinds & {"array"}:  # a list as comma-separated words; a single word may be one of the named choices
        shown = default if isinstance(default, str) else ", ".join(map(str, default or []))
        words = [
            part.strip() for part in st.text_input(label, value=shown, key=key, help=help_text).split(",")
        ]
        words = [word for word in words if word]
        choices = {value for option in node.get("anyOf", []) for value in option.get("enum", [])}
        if len(words) == 1 and words[0] in choices:
            return words[0]
        return words or default
    return (
        st.text_input(label, value="" if default is None else str(default), key=key, help=help_text) or None
    )


def task_form(schema: dict[str, Any]) -> dict[str, Any]:
    """What the run learns: the task, the column of a second text (sentence pairs, any task) and, for multi_label,
    the label delimiter and the thresholds ('tune' or a number); only changed values are kept."""
    config: dict[str, Any] = {}
    properties = schema["properties"]
    data = _resolve(schema, properties["data"])["properties"]
    task_node = _resolve(schema, properties["task"])
    tasks = list(task_node["enum"])
    default_task = task_node.get("default", tasks[0])
    task = st.selectbox("task", tasks, index=tasks.index(default_task), key="cfg.task",
                        help=task_node.get("description"))  # fmt: skip
    if task != default_task:
        config["task"] = task
    pair = field_widget(schema, "data", "text_pair_column", data["text_pair_column"])
    if pair:
        config.setdefault("data", {})["text_pair_column"] = pair.strip()
    if task != "multi_label":
        return config
    delimiter_node = _resolve(schema, data["label_delimiter"])
    delimiter = st.text_input("label delimiter", value=delimiter_node.get("default", ","),
                              key="cfg.data.label_delimiter", help=delimiter_node.get("description"))  # fmt: skip
    if delimiter != delimiter_node.get("default"):
        config.setdefault("data", {})["label_delimiter"] = delimiter
    thresholds_node = _resolve(schema, properties["thresholds"])
    default_thresholds = thresholds_node.get("default", 0.5)
    shown = st.text_input("thresholds (a probability, or tune)", value=str(default_thresholds),
                          key="cfg.thresholds", help=thresholds_node.get("description")).strip()  # fmt: skip
    try:
        thresholds: Any = float(shown)
    except ValueError:
        thresholds = shown  # 'tune', or a mistake the API names (config.thresholds)
    if thresholds != default_thresholds:
        config["thresholds"] = thresholds
    return config


def config_form(schema: dict[str, Any]) -> dict[str, Any]:
    """The experiment name, the task, and the model, LoRA and training sections as widgets; only changed values
    are kept."""
    config: dict[str, Any] = {}
    experiment = st.text_input("experiment", value=schema["properties"]["experiment"].get("default", ""),
                               key="cfg.experiment")  # fmt: skip
    if experiment:
        config["experiment"] = experiment
    with st.expander("task", expanded=False):
        config.update(task_form(schema))
    for section in FORM_SECTIONS:
        definition = _resolve(schema, schema["properties"][section])
        with st.expander(section, expanded=section == "training"):
            values = {}
            for name, node in definition["properties"].items():
                if name in SERVER_FIELDS:
                    continue
                value = field_widget(schema, section, name, node)
                default = _resolve(schema, node).get("default")
                if value != default and not (isinstance(default, float) and value == default):
                    values[name] = value
            if values:
                config[section] = values
    return config


def uploaded_dataset(
    client: PlatformClient, label: str, key: str, limit: int, *, state: str, empty: str
) -> dict[str, Any] | None:
    """The uploader ``key`` and the dataset of its file: each new upload (another file, or the same name again
    with new bytes) is sent to the API and validated once, replacing the last answer and any error. The answer
    is kept in ``st.session_state[state]`` for the page's next runs; ``empty`` is shown before any upload."""
    upload = st.file_uploader(
        f"{label} ({SUFFIXES_TEXT}; at most {size_text(limit)})", type=list(SUFFIXES), key=key,
        max_upload_size=upload_megabytes(limit),
    )  # fmt: skip
    if upload is not None and st.session_state.get(f"{key}.file_id") != upload.file_id:
        st.session_state[f"{key}.file_id"], st.session_state[f"{key}.error"] = upload.file_id, None
        st.session_state.pop(state, None)
        if upload.size > limit:
            st.session_state[f"{key}.error"] = (
                f"{upload.name} is {size_text(upload.size)}: over the upload limit of {size_text(limit)}"
            )
        else:
            try:
                st.session_state[state] = client.upload_dataset(upload.name, upload.getvalue())
            except ApiError as error:
                st.session_state[f"{key}.error"] = f"Upload failed: {error}"
    if error := st.session_state.get(f"{key}.error"):
        st.error(error)
        return None
    dataset = st.session_state.get(state)
    if dataset is None:
        st.info(empty)
    return dataset


def new_job_page(client: PlatformClient, upload_limit: int) -> None:
    page_header("New training job")
    dataset = uploaded_dataset(
        client,
        "Training data",
        "upload",
        upload_limit,
        state="dataset",
        empty="Upload a dataset to train on.",
    )
    if dataset is None:
        return
    findings = [issue for file in dataset["report"]["files"] for issue in file["issues"]]
    errors = [issue for issue in findings if issue["severity"] == "error"]
    for issue in findings:
        (st.error if issue["severity"] == "error" else st.warning)(f"{issue['message']} — {issue['fix']}")
    if not errors:
        st.success(f"{dataset['name']}: {dataset['rows']} rows, valid")
    try:
        schema = client.config_schema()
    except ApiError as error:
        st.error(str(error))
        return
    config = config_form(schema)
    if errors:
        st.caption("Fix the errors above and upload the file again to submit.")
    if st.button("Submit", key="submit", disabled=bool(errors)):
        try:
            task = client.train(config, dataset["id"])
        except ApiError as error:
            st.error(f"Not submitted: {error}")
            return
        st.session_state["job"] = task["id"]
        st.success(f"Queued task {task['id']}")


def predictions_page(client: PlatformClient, upload_limit: int) -> None:
    """Classify every row of a file with a registered model, as a queued task; its CSV is on the Jobs page."""
    page_header("Predict a file")
    try:
        cards = client.search_models()
    except ApiError as error:
        st.error(str(error))
        return
    versions = [card for card in cards if card["stage"] != "Archived"]
    if not versions:
        st.info("No registered model yet: train one (New job) first.")
        return
    dataset = uploaded_dataset(
        client, "Texts to classify", "predict_upload", upload_limit, state="predict_dataset",
        empty="Upload a file with a column of texts.",
    )  # fmt: skip
    if dataset is None:
        return
    # Its rows are read when the task runs, with the text column chosen below (the upload's report checks a
    # training dataset's columns).
    st.success(f"{dataset['name']} uploaded ({size_text(dataset['size_bytes'])})")
    shown = {
        f"{c['name']}@{c['version']}": f"{c['name']} version {c['version']} · {c['stage']}" for c in versions
    }
    model = st.selectbox("Model", list(shown), format_func=shown.__getitem__, key="predict_model")
    text_column = st.text_input("Text column", value="text", key="predict_text_column")
    text_pair_column = st.text_input(
        "Text pair column (only for a model trained on text pairs: the column of each row's second text)",
        key="predict_text_pair_column",
    )
    label_column = st.text_input(
        "Label column (optional: when the file has it, the task reports accuracy, or RMSE for a regression model)",
        value="label", key="predict_label_column",
    )  # fmt: skip
    if st.button("Submit", key="predict_submit"):
        try:
            task = client.predict_file(
                model, dataset["id"], text_column.strip(), label_column.strip() or "label",
                text_pair_column=text_pair_column.strip() or None,
            )  # fmt: skip
        except ApiError as error:
            st.error(f"Not submitted: {error}")
            return
        st.session_state["job"] = task["id"]
        st.success(
            f"Queued prediction task {task['id']}: follow it on the Jobs page, its CSV is there once done"
        )


STAGES = ("None", "Staging", "Production", "Archived")


def models_page(client: PlatformClient, admin: bool) -> None:
    page_header("Models")
    stage = st.selectbox("Stage", ["any", *STAGES], key="models_stage")
    language = st.text_input("Language", key="models_language")
    threshold = st.text_input("Metric threshold", key="models_metric", placeholder="accuracy>=0.9")
    try:
        cards = client.search_models(
            stage=None if stage == "any" else stage, language=language or None, metric=threshold or None
        )
    except ApiError as error:
        st.error(str(error))
        return
    st.dataframe([_card_row(card) for card in cards], hide_index=True)
    query = st.text_input(
        "Describe what you need", key="models_query", placeholder="sentiment of movie reviews"
    )
    if query:
        try:
            found = client.recommend(query)
        except ApiError as error:
            st.error(str(error))
        else:
            st.dataframe([{**_card_row(item["card"]), "score": round(item["score"], 3)} for item in found],
                         hide_index=True)  # fmt: skip
    if cards:
        st.subheader("Model card")
        shown = st.selectbox("Version", [f"{c['name']} v{c['version']}" for c in cards], key="card")
        card_view(next(c for c in cards if f"{c['name']} v{c['version']}" == shown))
    if not admin:
        return
    st.subheader("Move a version (admin)")
    names = sorted({card["name"] for card in cards})
    if not names:
        st.info("No registered model matches the filters.")
        return
    name = st.selectbox("Model", names, key="move_name")
    version = st.number_input("Version", min_value=1, step=1, value=1, key="move_version")
    target = st.selectbox("To stage", STAGES, index=2, key="move_stage")
    if st.button("Move", key="move"):
        try:
            moved = client.transition(name, int(version), target)
        except ApiError as error:
            st.error(str(error))
            return
        archived = f" (archived {', '.join(map(str, moved['archived']))})" if moved["archived"] else ""
        st.success(f"{moved['name']} version {moved['version']} is now {moved['stage']}{archived}")


def card_view(card: dict[str, Any]) -> None:
    metrics = ", ".join(f"{name} {value:.4f}" for name, value in sorted(card["metrics"].items())) or "none"
    st.markdown(
        f"**{card['name']}** version {card['version']} · stage **{card['stage']}**\n\n"
        f"{card['description'] or '(no description)'}\n\n"
        f"- task: {card['task']} · language: {card['language']} · base model: `{card['base_model']}`\n"
        f"- labels: {', '.join(card['labels']) or 'none'}\n"
        f"- metrics: {metrics}\n"
        f"- dataset version: {card['dataset_version'] or 'unknown'} · registered {card['created_at']}\n"
        f"- tags: {', '.join(card['tags']) or 'none'}"
    )


def _card_row(card: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": card["name"], "version": card["version"], "stage": card["stage"],
        "accuracy": card["metrics"].get("accuracy"), "base model": card["base_model"],
        "language": card["language"], "description": card["description"],
    }  # fmt: skip


def playground_page(inference: PlatformClient) -> None:
    page_header("Playground")
    text = st.text_area("Text", key="play_text", placeholder="A wonderful, moving film.")
    text_pair = st.text_area(
        "Second text (only for a model trained on text pairs)", key="play_text_pair",
        placeholder="A film that moved me.",
    )  # fmt: skip
    model = st.text_input(
        "Model (name, name@3, name@production; empty: the served default)", key="play_model"
    )
    if st.button("Predict", key="play") and text.strip():
        try:
            answer = inference.predict(
                text, model or None, text_pair=text_pair if text_pair.strip() else None
            )
        except ApiError as error:
            st.error(str(error))
            return
        served = f"{answer['model']} v{answer['version']}"
        about = f"{answer['base_model']}, {answer['language']} · {answer['latency_ms']} ms on the server" + (
            " (text truncated)" if answer["truncated"] else ""
        )
        task = answer.get("task", "single_label")  # a single-label answer carries no task
        if task == "regression":
            st.metric(served, f"{answer['value']:.4g}", answer["label_name"], delta_color="off")
            st.caption(f"{answer['label_name']} = {answer['value']} · {about}")
            return
        if task == "multi_label":
            above = ", ".join(f"{item['label']} ({item['probability']:.3f})" for item in answer["labels"])
            st.metric(served, f"{len(answer['labels'])} labels", above or "none above its threshold",
                      delta_color="off")  # fmt: skip
            st.caption(f"labels above their thresholds: {above or 'none'} · {about}")
        else:
            st.metric(served, answer["label_name"], f"p = {answer['probability']:.3f}", delta_color="off")
            st.caption(f"label {answer['label']} ({answer['label_name']}) · {about}")
        st.bar_chart(answer["probabilities"])


def experiments_page(client: PlatformClient) -> None:
    page_header("Experiments")
    try:
        experiments = client.experiments()
        tracking = client.mlflow()
    except ApiError as error:
        st.error(str(error))
        return
    if tracking.get("ui_url"):
        st.link_button("Open the MLflow UI", tracking["ui_url"])
    if not experiments:
        st.info("No experiments yet.")
        return
    name = st.selectbox("Experiment", [e["name"] for e in experiments], key="experiment")
    try:
        runs = client.runs(name)
    except ApiError as error:
        st.error(str(error))
        return
    status = st.selectbox("Status", ["any", *sorted({r["status"] for r in runs})], key="run_status")
    shown = [r for r in runs if status == "any" or r["status"] == status]
    st.dataframe(
        [{"run": r["run_id"], "name": r["run_name"], "status": r["status"], "started": r["started"],
          "accuracy": r["metrics"].get("final_accuracy", r["metrics"].get("eval_accuracy")),
          "dataset": r["dataset_version"]} for r in shown],
        hide_index=True,
    )  # fmt: skip
    chosen = st.multiselect("Compare runs", [r["run_id"] for r in shown], key="compare_runs")
    if len(chosen) < 2:
        st.caption("Choose two or more runs to compare them.")
        return
    try:
        comparison = client.compare(chosen)
    except ApiError as error:
        st.error(str(error))
        return
    curves = {name: dict(points) for name, points in comparison["loss_curves"].items()}
    if any(curves.values()):
        st.subheader("Training loss")
        st.line_chart(curves)
    scores = {  # the 0-1 scores on one chart, runs side by side
        metric: {run[:8]: value for run, value in values.items() if value is not None}
        for metric, values in comparison["metrics"].items()
        if metric.endswith(("accuracy", "f1", "precision", "recall"))
    }
    if any(scores.values()):
        import pandas as pd  # lazy: pandas, only for the comparison page's charts and tables

        st.subheader("Scores by run")
        st.bar_chart(pd.DataFrame(scores).T, stack=False)
    st.subheader("Final metrics")
    st.dataframe(
        [{"metric": metric, **{run[:8]: value for run, value in values.items()}}
         for metric, values in comparison["metrics"].items()],
        hide_index=True,
    )  # fmt: skip
    st.subheader("Config differences")
    differing = comparison["differing_params"]
    if not differing:
        st.info("The runs' configs are identical.")
    else:
        import pandas as pd  # lazy: pandas, only for the comparison page's charts and tables

        frame = pd.DataFrame({run[:8]: {k: v.get(run) for k, v in differing.items()} for run in chosen})

        def differs(row):  # cells unlike the first run's value are highlighted
            return ["" if value == row.iloc[0] else "background-color: #ffe08a" for value in row]

        st.dataframe(frame.style.apply(differs, axis=1))


SWEEP_RUNNING = "running"
TRIAL_ORDER = ("succeeded", "pruned", "running", "queued", "failed", "cancelled")
SWEEP_EXAMPLE = """\
objective: accuracy        # accuracy | macro_f1 | loss
max_trials: 8
parallelism: 2
sampler: tpe               # grid | random | tpe
pruner: median             # median | successive_halving | none
space:
  training.learning_rate: {type: loguniform, low: 1.0e-4, high: 5.0e-3}
  lora.r: {type: choice, values: [4, 8, 16]}
"""


def trial_counts(trials: dict[str, int]) -> str:
    """``3 succeeded · 1 pruned · 1 running``: the states that have trials, in a fixed order."""
    return " · ".join(f"{trials[state]} {state}" for state in TRIAL_ORDER if trials.get(state)) or "none yet"


def _value(value: float | None) -> str | None:
    return None if value is None else f"{value:.4f}"


def sweeps_page(client: PlatformClient, admin: bool) -> None:
    """The caller's sweeps (an admin's: all); the chosen one's trials, live while it runs; its actions."""
    page_header("Sweeps")
    if flash := st.session_state.pop("sweep_flash", None):  # from a button callback of the last run
        (st.success if flash[0] == "success" else st.error)(flash[1])
    new_sweep_form(client)
    try:
        page = client.sweeps(limit=100)
    except ApiError as error:
        st.error(str(error))
        return
    found = page["data"]
    if not found:
        st.info("No sweeps yet.")
        return
    st.dataframe(
        [
            {"id": s["id"], "name": s["name"], "status": s["status"],
             "objective": f"{s['objective']} ({s['direction']})", "best": s["best_value"],
             "trials": trial_counts(s["trials"]), "budget": s["max_trials"], "created": s["created_at"]}
            for s in found
        ],
        hide_index=True,
    )  # fmt: skip
    names = {s["id"]: f"{s['name']} · {s['status']} · {s['id'][:8]}" for s in found}
    chosen = st.selectbox("Sweep", list(names), format_func=names.__getitem__, key="sweep")
    live = st.toggle("Live (refresh every 2 s while the sweep runs)", value=True, key="sweep_live")
    running = next(s for s in found if s["id"] == chosen)["status"] == SWEEP_RUNNING
    st.fragment(run_every=2.0 if live and running else None)(sweep_view)(client, chosen, running)
    try:
        sweep = client.sweep(chosen)
    except ApiError as error:
        st.error(str(error))
        return
    sweep_actions(client, sweep, admin)


def sweep_view(client: PlatformClient, chosen: str, was_running: bool = False) -> None:
    """The sweep's state, its trials table and charts (a fragment: redrawn every 2 s while it runs)."""
    try:
        sweep = client.sweep(chosen)
    except ApiError as error:
        st.error(str(error))
        return
    if was_running and sweep["status"] != SWEEP_RUNNING:
        st.rerun(scope="app")  # the sweep ended: redraw the page (no more refresh, its final actions)
    objective, trials = sweep["objective"], sweep["trial_list"]
    started = sum(sweep["trials"].values())
    st.markdown(
        f"**{sweep['name']}** · {sweep['status']} · {sweep['objective']} ({sweep['direction']}) · "
        f"{sweep['sampler']} sampler, {sweep['pruner']} pruner · {started} of {sweep['max_trials']} trials "
        f"started ({trial_counts(sweep['trials'])})"
    )
    st.progress(
        min(started / max(sweep["max_trials"], 1), 1.0), text=f"{started} of {sweep['max_trials']} trials"
    )
    if sweep["status"] == "failed" and sweep["error"]:
        st.error(f"Failed: {sweep['error']}")
    best, compute = st.columns(2)
    best.metric(f"best {objective}", _value(sweep["best_value"]) or "n/a")
    compute.metric("compute", str(timedelta(seconds=round(sweep["compute_seconds"]))))
    st.subheader("Trials")
    if not trials:
        st.info("No trial has started yet.")
        return
    st.dataframe(
        [
            {"trial": t["number"], "state": t["status"],
             **{f"{name}": value if not isinstance(value, list) else ", ".join(map(str, value))
                for name, value in t["params"].items()},
             objective: t["value"], "evaluations": t["evaluations"],
             "duration": None if t["seconds"] is None else str(timedelta(seconds=round(t["seconds"]))),
             "task": t["task_id"], "note": t["error"]}
            for t in trials
        ],
        hide_index=True,
    )  # fmt: skip
    rows = trial_rows(trials, sweep["direction"])
    if not rows:
        st.caption("The charts appear once a trial has reported an evaluation.")
        return
    st.subheader(f"{objective} by trial")
    st.vega_lite_chart(rows, trials_spec(objective))
    st.caption(
        "Points: each trial's value (pruned ones: the evaluation they stopped at); line: the best so far."
    )
    space = sweep["spec"].get("space") or {}
    if space:
        st.subheader(f"Searched values against {objective}")
        for param, searched in space.items():
            shown = param_rows(trials, param)
            if shown:
                log_scale = (searched or {}).get("type") == "loguniform" or bool((searched or {}).get("log"))
                st.vega_lite_chart(shown, param_spec(param, objective, shown, log_scale))


def ranked_trials(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The completed trials with a value and a run, best first (ties: the earlier trial)."""
    sign = -1.0 if sweep["direction"] == "maximize" else 1.0
    done = [
        t
        for t in sweep["trial_list"]
        if t["status"] == "succeeded" and t["value"] is not None and t["run_id"]
    ]
    return sorted(done, key=lambda t: (sign * t["value"], t["number"]))


def sweep_actions(client: PlatformClient, sweep: dict[str, Any], admin: bool) -> None:
    """Compare the best trials' runs, cancel a running sweep, promote the best trial (admins)."""
    ranked = ranked_trials(sweep)
    if len(ranked) >= 2:
        st.subheader("Compare the best trials")
        top = st.number_input(
            "Trials", min_value=2, max_value=len(ranked), value=min(3, len(ranked)), step=1, key="compare_top"
        )
        st.button(
            f"Compare the top {int(top)}",
            key="compare_sweep",
            help="Open Experiments with these trials' runs chosen.",
            on_click=open_sweep_comparison,
            args=(client, [t["run_id"] for t in ranked[: int(top)]]),
        )
    if sweep["status"] == SWEEP_RUNNING:
        st.button(
            "Cancel sweep",
            key="cancel_sweep",
            help="No trial starts any more; queued trials are cancelled, running ones asked to stop.",
            on_click=cancel_sweep,
            args=(client, sweep["id"]),
        )
    if not admin or sweep["best_task_id"] is None:
        return
    st.subheader("Promote the best trial (admin)")
    best = next(t for t in sweep["trial_list"] if t["task_id"] == sweep["best_task_id"])
    st.caption(f"Trial {best['number']}: {sweep['objective']} {_value(best['value'])}, with {best['params']}")
    name = st.text_input("Model name (empty: the sweep's registry name or experiment)", key="promote_name")
    stage = st.selectbox("Stage", ["Production", "Staging"], key="promote_stage")
    if st.button("Promote best", key="promote"):
        try:
            promoted = client.promote_sweep(sweep["id"], name.strip() or None, stage)
        except ApiError as error:
            st.error(str(error))
            return
        st.success(
            f"Registered {promoted['model_name']} version {promoted['version']} ({promoted['stage']}) from trial "
            f"{best['number']}, {sweep['objective']} {_value(promoted['value'])}"
        )


def cancel_sweep(client: PlatformClient, sweep_id: str) -> None:
    """Button callback: cancel, and say so on the page's next run (which shows the new status)."""
    try:
        sweep = client.cancel_sweep(sweep_id)
    except ApiError as error:
        st.session_state["sweep_flash"] = ("error", str(error))
        return
    st.session_state["sweep_flash"] = ("success", f"Sweep {sweep['name']} is {sweep['status']}")


def open_sweep_comparison(client: PlatformClient, run_ids: list[str]) -> None:
    """Button callback: switch to Experiments with the trials' experiment and their runs chosen."""
    try:
        run = client.run(run_ids[0])
    except ApiError as error:
        st.session_state["sweep_flash"] = ("error", str(error))
        return
    st.session_state.update(
        page="Experiments", experiment=run["experiment"], run_status="any", compare_runs=list(run_ids)
    )


def new_sweep_form(client: PlatformClient) -> None:
    """Start a sweep on an uploaded dataset: the base config and the sweep section as YAML."""
    with st.expander("Start a sweep"):
        try:
            datasets = client.datasets()
        except ApiError as error:
            st.error(str(error))
            return
        if not datasets:
            st.info("Upload a dataset first (New job).")
            return
        names = {d["id"]: f"{d['name']} · {d['rows']} rows · {d['id'][:8]}" for d in datasets}
        dataset = st.selectbox(
            "Training data", list(names), format_func=names.__getitem__, key="sweep_dataset"
        )
        base = st.text_area("Base config (YAML)", value="experiment: sweep\n", key="sweep_base")
        section = st.text_area("Sweep section (YAML)", value=SWEEP_EXAMPLE, height=220, key="sweep_spec")
        if not st.button("Start sweep", key="sweep_submit"):
            return
        try:
            config, spec = yaml.safe_load(base) or {}, yaml.safe_load(section) or {}
        except yaml.YAMLError as error:
            st.error(f"Not a YAML document: {error}")
            return
        if not isinstance(config, dict) or not isinstance(spec, dict):
            st.error("Both the base config and the sweep section are YAML mappings (field: value).")
            return
        try:
            sweep = client.submit_sweep(config, spec, dataset)
        except ApiError as error:
            st.error(f"Not submitted: {error}")
            return
        st.session_state["sweep"] = sweep["id"]
        st.success(f"Started sweep {sweep['name']} ({sweep['id']}): {trial_counts(sweep['trials'])}")
