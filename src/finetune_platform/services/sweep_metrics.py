"""Sweep metrics, read from the database at scrape time (served by the API's /metrics beside the job metrics):
``sweep_trials_total{state}`` counts the trials that ended, by how they ended (succeeded, failed, cancelled,
pruned); ``sweep_trials_in_flight{state}`` the trials queued or running now; ``sweeps_running`` the sweeps still
running. The only label is the state: no sweep or trial ids.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import func, select

from finetune_platform.db.models import Job, Sweep, SweepStatus
from finetune_platform.db.session import read_scope
from finetune_platform.services.job_states import ACTIVE, FINISHED, JobStatus
from finetune_platform.settings import Settings

# In the order of JobStatus, so the exposition reads the same on every scrape.
ENDED_STATES = [status.value for status in JobStatus if status in FINISHED]
IN_FLIGHT_STATES = [status.value for status in JobStatus if status in ACTIVE]


class SweepCollector:
    """Trial counts by state and the number of running sweeps, two grouped queries per scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        with read_scope(self.settings) as session:
            trials = dict(
                session.execute(
                    select(Job.status, func.count()).where(Job.sweep_id.is_not(None)).group_by(Job.status)
                ).all()
            )
            running = session.scalar(
                select(func.count()).select_from(Sweep).where(Sweep.status == SweepStatus.RUNNING.value)
            )
        ended = CounterMetricFamily(
            "sweep_trials",
            "Sweep trials that ended, by how they ended (after their last attempt)",
            labels=["state"],
        )
        for state in ENDED_STATES:
            ended.add_metric([state], trials.get(state, 0))
        in_flight = GaugeMetricFamily(
            "sweep_trials_in_flight", "Sweep trials queued or running now", labels=["state"]
        )
        for state in IN_FLIGHT_STATES:
            in_flight.add_metric([state], trials.get(state, 0))
        yield ended
        yield in_flight
        yield GaugeMetricFamily(
            "sweeps_running", "Sweeps still running (trials to start or in flight)", running or 0
        )
