"""Per-account limits: jobs queued, jobs running, hours per job; and the devices a worker pool has.

An account's own limit (``users.max_queued_jobs``, ``max_running_jobs``, ``max_job_hours``, set by an admin)
wins; None there means the platform default from Settings. Where each limit holds:

- queued jobs: at submit and retry (``check_queue_room``), 429;
- running jobs: when a worker claims a job (``services.jobs.claim_job``), which leaves it queued;
- hours: in the worker, which stops the job at its next step (``worker.control.JobControl``);
- devices: at submit, against the pool the job's queue feeds (``check_pool_devices``), 422.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from finetune_platform.db.models import Job, JobStatus, User
from finetune_platform.errors import ConfigError, NotFoundError, QuotaExceeded
from finetune_platform.settings import Settings

# Account field -> the setting that is its default.
SETTING = {
    "max_queued_jobs": "MAX_QUEUED_JOBS_PER_USER",
    "max_running_jobs": "MAX_RUNNING_JOBS_PER_USER",
    "max_job_hours": "JOB_MAX_HOURS",
}
# What an admin may set per account (a queued limit of 0 stops an account from submitting).
BOUNDS: dict[str, tuple[float, float]] = {
    "max_queued_jobs": (0, 100_000),
    "max_running_jobs": (1, 10_000),
    "max_job_hours": (0.001, 8760),
}


@dataclass(frozen=True)
class Limits:
    """An account's effective limits, and which of them it sets itself (the rest are the defaults)."""

    max_queued_jobs: int
    max_running_jobs: int
    max_job_hours: float
    own: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings, account: Any = None) -> Limits:
        """From an account's row (or any object with the three fields; None: the defaults)."""
        values, own = {}, set()
        for name, setting in SETTING.items():
            value = getattr(account, name, None)
            if value is None:
                value = getattr(settings, setting)
            else:
                own.add(name)
            values[name] = value
        return cls(**values, own=frozenset(own))

    def source(self, name: str) -> str:
        """Where a limit comes from, as a message names it."""
        return f"the account's {name}" if name in self.own else SETTING[name]


def account_limits(session: Session, user_id: int, settings: Settings) -> Limits:
    return Limits.of(settings, session.get(User, user_id))


def own_limits(session: Session, user_id: int) -> dict[str, Any]:
    """The limits the account sets itself (None: the platform default), as UserOut shows them."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    return {name: getattr(user, name) for name in SETTING}


def lock_account(session: Session, user_id: Any) -> Any:
    """Lock the account's row for this transaction and read its own limits; None when there is no such row.

    A no-op UPDATE: on PostgreSQL it locks the row (two submits, or two claims, of one account take turns,
    so neither counts before the other has written), on SQLite it takes the database's write lock, and on
    both it returns the row's limits in the same round trip. ``user_id`` may be a scalar subquery.
    """
    users = User.__table__
    return session.execute(
        update(users)
        .where(users.c.id == user_id)
        .values(max_queued_jobs=users.c.max_queued_jobs)
        .returning(users.c.id, users.c.max_queued_jobs, users.c.max_running_jobs, users.c.max_job_hours)
    ).one_or_none()


def count_jobs(session: Session, user_id: int, status: JobStatus) -> int:
    return (
        session.scalar(select(func.count()).where(Job.owner_id == user_id, Job.status == status.value)) or 0
    )


def check_queue_room(session: Session, user_id: int, settings: Settings, *, lock: bool) -> None:
    """Refuse (429) a job that would take the account past its queued-jobs limit.

    ``lock``: take the account's row first, so that two submits racing cannot both see room for one.
    """
    account = lock_account(session, user_id) if lock else session.get(User, user_id)
    limits = Limits.of(settings, account)
    queued = count_jobs(session, user_id, JobStatus.QUEUED)
    if queued >= limits.max_queued_jobs:
        raise QuotaExceeded(
            f"too many queued jobs: {queued} of the account's jobs are waiting to start, the most it may have "
            f"queued is {limits.max_queued_jobs} ({limits.source('max_queued_jobs')}); wait for one to start, "
            "or cancel one"
        )


def pool_limit(settings: Settings, device: str) -> tuple[str, int, str]:
    """(queue, most devices one of its workers has, the setting that says so) for a job on ``device``.

    Mirrors the routing of ``broker.send``: ``device: cuda`` goes to GPU_QUEUE_NAME when it is set.
    """
    if settings.GPU_QUEUE_NAME and device.startswith("cuda"):
        return settings.GPU_QUEUE_NAME, settings.GPU_POOL_MAX_DEVICES, "GPU_POOL_MAX_DEVICES"
    return settings.QUEUE_NAME, settings.POOL_MAX_DEVICES, "POOL_MAX_DEVICES"


def check_pool_devices(config: Any, settings: Settings) -> None:
    """Refuse (422) a training job asking for more data-parallel processes than a worker of its pool has.

    The API does not run on the workers, so the pool's size comes from settings, not from this host.
    """
    if config.training.nodes > 1:
        raise ConfigError(
            f"training.nodes: {config.training.nodes} machines: a queued job runs on one worker; start a multi-node "
            "run with `finetune train` on the first node"
        )
    requested = config.training.devices
    queue, limit, setting = pool_limit(settings, str(config.device))
    if requested > limit:
        raise ConfigError(
            f"training.devices: {requested} requested, but a worker of the queue {queue!r} has at most "
            f"{limit} ({setting})"
        )


def set_account_limits(user: User, changes: Mapping[str, Any]) -> None:
    """Set an account's own limits; None returns one to the platform default. ConfigError names the field."""
    for name, value in changes.items():
        if name not in SETTING:
            raise ConfigError(f"{name}: not a limit (one of {', '.join(SETTING)})")
        if value is not None:
            low, high = BOUNDS[name]
            whole = name != "max_job_hours"
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or (whole and not float(value).is_integer())
                or not math.isfinite(value)
                or not low <= value <= high
            ):
                kind = "a whole number" if whole else "a number of hours"
                raise ConfigError(f"{name}: {kind} from {low:g} to {high:g} (got {value!r})")
            value = int(value) if whole else float(value)
        setattr(user, name, value)


def time_limit_reason(limits: Limits) -> str:
    """Why a job over its time limit was stopped (the start of its error)."""
    return f"stopped: exceeded the job time limit of {limits.max_job_hours:g} h ({limits.source('max_job_hours')})"
