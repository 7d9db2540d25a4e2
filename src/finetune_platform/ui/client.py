"""A typed client of the platform's REST API, for the web UI (and scripts).

Every failure becomes an ``ApiError`` whose message is what a person should read: the API's own ``detail``, the
fields a 422 names, or why the server could not be reached — never a traceback.
"""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    """An API call that did not succeed; ``str()`` is the readable reason."""

    def __init__(self, status: int | None, message: str, body: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.body = status, message, body


def _reason(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:200] or response.reason_phrase}"
    if isinstance(body, dict):
        problems = body.get("problems")
        if problems:
            return "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if detail is not None:
            return str(detail)
    return f"HTTP {response.status_code}"


class PlatformClient:
    """Calls the API at ``base_url`` (or through ``http``, an ``httpx.Client``) with the caller's token."""

    def unreachable(self, error: httpx.HTTPError) -> str:
        """What a person reads when the server does not answer."""
        return f"the platform API cannot be reached: {error}"

    def __init__(
        self, base_url: str = "http://127.0.0.1:8000", token: str | None = None, *, http: Any = None,
        timeout: float = 30.0,
    ) -> None:  # fmt: skip
        self.http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self.token = token

    # -- plumbing ---------------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, expect_json: bool = True, **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", None) or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = self.http.request(method, path, headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(None, self.unreachable(exc)) from None
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise ApiError(response.status_code, _reason(response), body)
        if not expect_json:
            return response.content
        return response.json() if response.content else None

    # -- accounts ---------------------------------------------------------------------------------
    def login(self, username: str, password: str) -> str:
        """Log in; the token is kept for the following calls and returned."""
        self.token = None
        answer = self._call("POST", "/login", data={"username": username, "password": password})
        self.token = answer["access_token"]
        return self.token

    def logout(self) -> None:
        self._call("POST", "/logout")
        self.token = None

    def me(self) -> dict[str, Any]:
        return self._call("GET", "/users/me")

    def users(self) -> list[dict[str, Any]]:
        return self._call("GET", "/users")

    def create_user(self, username: str, password: str, role: str = "user") -> dict[str, Any]:
        return self._call("POST", "/users", json={"username": username, "password": password, "role": role})

    def update_user(self, user_id: int, **changes: Any) -> dict[str, Any]:
        return self._call("PATCH", f"/users/{user_id}", json=changes)

    # -- datasets and tasks -----------------------------------------------------------------------
    def upload_dataset(self, name: str, content: bytes) -> dict[str, Any]:
        """Upload a file; the answer holds its id and the validation report."""
        return self._call("POST", "/datasets", params={"name": name}, content=content)

    def datasets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/datasets")["data"]

    def dataset_report(self, dataset_id: str) -> dict[str, Any]:
        return self._call("GET", f"/datasets/{dataset_id}/report")

    def audit_dataset(
        self, dataset_id: str, validation_dataset_id: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Queue a data audit of the dataset (options: folds, near_duplicate_cosine, outlier_z); the task."""
        body = {key: value for key, value in options.items() if value is not None}
        if validation_dataset_id:
            body["validation_dataset_id"] = validation_dataset_id
        return self._call("POST", f"/datasets/{dataset_id}/audit", json=body)

    def dataset_audits(self, dataset_id: str) -> list[dict[str, Any]]:
        """The dataset's audit tasks, newest first."""
        return self._call("GET", f"/datasets/{dataset_id}/audits")["data"]

    def dataset_audit(self, dataset_id: str) -> dict[str, Any]:
        """The latest succeeded audit's audit.json, with ``task_id`` and ``downloads``."""
        return self._call("GET", f"/datasets/{dataset_id}/audit")

    def dataset_audit_file(self, dataset_id: str, name: str) -> bytes:
        """audit.md or a plot of the latest succeeded audit."""
        return self._call("GET", f"/datasets/{dataset_id}/audit/{name}", expect_json=False)

    def config_schema(self) -> dict[str, Any]:
        return self._call("GET", "/config/schema")

    def train(
        self, config: dict[str, Any], dataset_id: str, validation_dataset_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {"config": config, "dataset_id": dataset_id}
        if validation_dataset_id:
            body["validation_dataset_id"] = validation_dataset_id
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._call("POST", "/train", json=body, headers=headers)

    def predict_file(
        self, model: str, dataset_id: str, text_column: str = "text", label_column: str = "label",
        text_pair_column: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        body = {
            "model": model,
            "dataset_id": dataset_id,
            "text_column": text_column,
            "label_column": label_column,
        }
        if text_pair_column:
            body["text_pair_column"] = text_pair_column
        return self._call("POST", "/predictions", json=body)

    def task(self, task_id: str) -> dict[str, Any]:
        return self._call("GET", f"/task/{task_id}")

    def tasks(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._call("GET", "/tasks", params=params)

    def task_logs(self, task_id: str, lines: int = 200) -> dict[str, Any]:
        return self._call("GET", f"/task/{task_id}/logs", params={"lines": lines})

    def task_metrics(self, task_id: str) -> dict[str, Any]:
        """A training task's curves (``training``, ``evaluations``), ``eta_seconds`` and ``final`` metrics."""
        return self._call("GET", f"/task/{task_id}/metrics")

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._call("POST", f"/task/{task_id}/cancel")

    def predictions_csv(self, task_id: str) -> bytes:
        return self._call("GET", f"/task/{task_id}/predictions", expect_json=False)

    # -- sweeps ---------------------------------------------------------------------------------------
    def submit_sweep(
        self, config: dict[str, Any], sweep: dict[str, Any], dataset_id: str,
        validation_dataset_id: str | None = None, max_attempts: int = 3,
    ) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "config": config, "sweep": sweep, "dataset_id": dataset_id, "max_attempts": max_attempts
        }  # fmt: skip
        if validation_dataset_id:
            body["validation_dataset_id"] = validation_dataset_id
        return self._call("POST", "/sweeps", json=body)

    def sweeps(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._call("GET", "/sweeps", params=params)

    def sweep(self, sweep_id: str) -> dict[str, Any]:
        """A sweep with its ``spec`` and ``trial_list`` (every trial, by number)."""
        return self._call("GET", f"/sweeps/{sweep_id}")

    def sweep_best(self, sweep_id: str) -> dict[str, Any]:
        return self._call("GET", f"/sweeps/{sweep_id}/best")

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("POST", f"/sweeps/{sweep_id}/cancel")

    def promote_sweep(
        self, sweep_id: str, model_name: str | None = None, stage: str = "Production"
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"stage": stage}
        if model_name:
            body["model_name"] = model_name
        return self._call("POST", f"/sweeps/{sweep_id}/promote", json=body)

    # -- experiments, models, audit ---------------------------------------------------------------
    def experiments(self) -> Any:
        return self._call("GET", "/experiments")

    def runs(self, experiment: str) -> list[dict[str, Any]]:
        return self._call("GET", "/experiments/runs", params={"experiment": experiment})

    def run(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/experiments/mlflow/{run_id}")

    def compare(self, run_ids: list[str]) -> dict[str, Any]:
        return self._call("POST", "/experiments/compare", json={"run_ids": run_ids})

    def mlflow(self) -> dict[str, Any]:
        return self._call("GET", "/mlflow")

    def search_models(self, **filters: Any) -> list[dict[str, Any]]:
        return self._call("GET", "/models/search", params={k: v for k, v in filters.items() if v is not None})

    def recommend(self, query: str) -> Any:
        return self._call("POST", "/models/recommend", json={"query": query})

    def transition(self, name: str, version: int, stage: str) -> dict[str, Any]:
        return self._call(
            "POST", "/models/transition", json={"name": name, "version": version, "stage": stage}
        )

    def audit(self, **filters: Any) -> dict[str, Any]:
        return self._call("GET", "/audit/logs", params={k: v for k, v in filters.items() if v is not None})

    # -- inference server (a client whose base URL is `finetune serve`) -----------------------------------
    def predict(self, text: str, model: str | None = None, text_pair: str | None = None) -> dict[str, Any]:
        """POST /predict: ``label`` (the class id), ``probability``, ``latency_ms``, ``base_model``,
        ``language``, ``label_name`` (the class's name), ``probabilities``, ``truncated``, ``model``, ``version``;
        a multi-label model's ``task`` and ``labels``, a regression model's ``task`` and ``value``. ``text_pair``:
        the second text, for a model trained on text pairs."""
        body: dict[str, Any] = {"text": text}
        if text_pair is not None:
            body["text_pair"] = text_pair
        if model:
            body["model"] = model
        return self._call("POST", "/predict", json=body)

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")


class InferenceClient(PlatformClient):
    """The inference server (`finetune serve`) at ``base_url``: ``predict`` and ``health``."""

    def unreachable(self, error: httpx.HTTPError) -> str:
        address = str(self.http.base_url).rstrip("/")
        return (
            f"the inference server at {address} cannot be reached ({error}): start it with `finetune serve`, or "
            "give the UI its address with `finetune ui --serve-url URL` (FINETUNE_SERVE_URL)"
        )
