"""The tracking store's activity as anyone may see it: experiment names, run counts, newest run times.

GET /mlflow answers without sign-in, so this holds nothing else: no run names or ids, params, metrics, tags,
artifact locations or owners. It costs two MLflow searches at most every CACHE_SECONDS per store, made in a
background thread: a caller waits at most WAIT_SECONDS and otherwise gets the previous summary (or none), so
a slow or failing tracking server never holds the endpoint up nor receives more than one search at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime

from finetune_platform.settings import Settings
from finetune_platform.tracking.client import mlflow_client

logger = logging.getLogger(__name__)

MAX_EXPERIMENTS = 50  # listed, the most recently active first
MAX_EXPERIMENTS_SCANNED = 1000  # one page of MLflow's experiment search
MAX_RUNS_SCANNED = 2000  # runs counted; past this the counts are lower bounds (complete: false)
CACHE_SECONDS = 30.0
WAIT_SECONDS = 3.0


@dataclass(frozen=True)
class ExperimentActivity:
    name: str
    runs: int
    last_run: datetime | None


@dataclass(frozen=True)
class TrackingSummary:
    experiments: list[ExperimentActivity]
    experiment_count: int
    run_count: int
    complete: bool
    as_of: datetime


def summarize(client) -> TrackingSummary:
    """Active experiments and their active runs, from one experiment search and one run search."""
    from mlflow.entities import ViewType  # lazy: mlflow, only when the summary is refreshed

    experiments = client.search_experiments(
        view_type=ViewType.ACTIVE_ONLY, max_results=MAX_EXPERIMENTS_SCANNED
    )
    counts = {experiment.experiment_id: 0 for experiment in experiments}
    newest: dict[str, int] = {}
    runs_left_out = False
    if counts:
        runs = client.search_runs(
            list(counts),
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=MAX_RUNS_SCANNED,
            order_by=["attributes.start_time DESC"],
        )
        runs_left_out = bool(runs.token)
        for run in runs:
            experiment_id, started = run.info.experiment_id, run.info.start_time or 0
            counts[experiment_id] = counts.get(experiment_id, 0) + 1
            newest[experiment_id] = max(newest.get(experiment_id, 0), started)
    activity = [
        ExperimentActivity(
            name=experiment.name,
            runs=counts[experiment.experiment_id],
            last_run=_moment(newest.get(experiment.experiment_id)),
        )
        for experiment in experiments
        if counts[experiment.experiment_id] or experiment.name != "Default"  # MLflow's own, while unused
    ]
    epoch = datetime.min.replace(tzinfo=UTC)
    activity.sort(key=lambda item: item.name)
    activity.sort(key=lambda item: item.last_run or epoch, reverse=True)
    return TrackingSummary(
        experiments=activity[:MAX_EXPERIMENTS],
        experiment_count=len(activity),
        run_count=sum(item.runs for item in activity),
        complete=not runs_left_out and len(experiments) < MAX_EXPERIMENTS_SCANNED,
        as_of=datetime.now(UTC).replace(microsecond=0),
    )


def _moment(milliseconds: int | None) -> datetime | None:
    return datetime.fromtimestamp(milliseconds / 1000, UTC) if milliseconds else None


@dataclass
class _Cached:
    at: float  # time.monotonic() of the last finished search, or -inf
    summary: TrackingSummary | None
    pending: Future | None = None


_cache: dict[str, _Cached] = {}
_lock = threading.Lock()


def public_summary(settings: Settings, wait: float = WAIT_SECONDS) -> TrackingSummary | None:
    """The store's summary, at most CACHE_SECONDS old; None while none could be made (the store failed or did
    not answer within ``wait`` seconds of the first request)."""
    uri = settings.mlflow_tracking_uri
    with _lock:
        cached = _cache.setdefault(uri, _Cached(at=float("-inf"), summary=None))
        if time.monotonic() - cached.at < CACHE_SECONDS:
            return cached.summary
        if cached.pending is None:
            cached.pending = Future()
            threading.Thread(
                target=_refresh, args=(settings, cached), name="mlflow-summary", daemon=True
            ).start()
        pending, previous = cached.pending, cached.summary
    try:
        return pending.result(timeout=wait)
    except FutureTimeout:
        return previous


def _refresh(settings: Settings, cached: _Cached) -> None:
    try:
        summary = summarize(mlflow_client(settings))
    except Exception as exc:  # the store is down, refuses us or is broken: no summary for CACHE_SECONDS
        logger.warning("tracking summary for GET /mlflow failed: %s", exc.__class__.__name__)
        summary = None
    with _lock:
        pending, cached.pending = cached.pending, None
        cached.at, cached.summary = time.monotonic(), summary
    pending.set_result(summary)


def forget() -> None:
    """Drop every cached summary (tests that change a store between calls)."""
    with _lock:
        _cache.clear()
