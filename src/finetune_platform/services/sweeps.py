"""Sweeps: submit, list, show, cancel, best, promote; and keeping each sweep moving.

A sweep's trials are ordinary training jobs (queue, leases, retries, resume, cancel, ownership) carrying the
sweep's id, their Optuna trial number and the values they try. Nothing holds a sweep in memory: ``advance``
starts trials while the sweep has budget and room under its ``parallelism``, and is called when a sweep is
submitted, when one of its trials ends (in the worker that ran it) and by every reconciler pass; each trial it
starts first wins a compare-and-set on ``Sweep.trials_started``, so any number of processes keep the budget and
the parallelism exact. ``settle`` tells the study how each ended trial ended (idempotently) and finishes a sweep
whose budget is spent and whose trials have all ended.

Ownership as for jobs: a user sees and changes only their own sweeps, an admin all; another's is not found.
"""

from __future__ import annotations

import contextlib
import logging
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from finetune_platform.db.models import Job, Role, Sweep, SweepStatus, User, utcnow
from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError, QuotaExceeded
from finetune_platform.services import jobs, quotas
from finetune_platform.services.job_states import ACTIVE, FINISHED, JobKind, JobStatus
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.sweeps import SweepDetail, SweepPublic, TrialPublic
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings, get_settings
from finetune_platform.training.config import config_from_dict
from finetune_platform.training.sweep_config import SweepSpec, check_space, with_params

logger = logging.getLogger("finetune_platform.sweeps")

# A sweep's lifecycle: running until cancelled or until its budget is spent and every trial has ended.
TABLE = {
    (SweepStatus.RUNNING, "cancel"): SweepStatus.CANCELLED,
    (SweepStatus.RUNNING, "finish"): SweepStatus.SUCCEEDED,
    (SweepStatus.RUNNING, "fail"): SweepStatus.FAILED,
}
SWEEP_FINISHED = frozenset({SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED})
# An Optuna trial with no job after this long was asked by a process that died before its job was written.
ORPHAN_SECONDS = 120.0
_ACTIVE = [state.value for state in ACTIVE]


def _aware(moment: datetime | None) -> datetime | None:
    return None if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def _now_aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def spec_of(sweep: Sweep) -> SweepSpec:
    return SweepSpec.model_validate(sweep.spec)


# -- submit ---------------------------------------------------------------------------------------------------
def submit_sweep(
    session: Session,
    user: UserPublic,
    base: dict[str, Any],
    spec: SweepSpec,
    *,
    max_attempts: int = 3,
    settings: Settings | None = None,
) -> SweepDetail:
    """Validate the space against the base config and the data once, then start the first trials.

    Refused before anything is written: a space value that makes an invalid config (422 naming the field), more
    devices than the pool has, an account at its queued-jobs limit (429), invalid data.
    """
    # lazy: pandas and pyarrow (data.validation), as in jobs.submit_job; Optuna, as below
    from finetune_platform.services import sweep_study
    from finetune_platform.training.data_check import check_data, validation_options

    settings = settings or get_settings()
    base_config = check_space(spec, base)
    quotas.check_pool_devices(base_config, settings)
    for value in _device_choices(spec):
        quotas.check_pool_devices(config_from_dict(with_params(base, {"training.devices": value})), settings)
    quotas.check_queue_room(session, user.id, settings, lock=False)
    report = check_data(base_config)
    if spec.seed is None:  # recorded, so the trials can be drawn again
        spec = spec.model_copy(update={"seed": random.randrange(2**31)})
    sweep = Sweep(
        id=str(uuid.uuid4()),
        owner_id=user.id,
        name=spec.name or base_config.experiment,
        status=SweepStatus.RUNNING.value,
        spec=spec.model_dump(mode="json"),
        base_config=with_params(base_config.to_yaml_dict(), {}),
        dataset_version=report.file("train").version,
        max_attempts=max_attempts,
        trials_started=0,
        cancel_requested=False,
    )
    session.add(sweep)
    session.flush()
    jobs.record_dataset_versions(session, report, validation_options(base_config), owner_id=user.id)
    sweep_study.create(settings, sweep.id, spec)
    advance(session, settings, sweep.id)
    return get_sweep(session, user, sweep.id)


def _device_choices(spec: SweepSpec) -> list[Any]:
    space = spec.space.get("training.devices")
    if space is None:
        return []
    return list(getattr(space, "values", [getattr(space, "low", 1), getattr(space, "high", 1)]))


# -- keeping a sweep moving -----------------------------------------------------------------------------------
def _in_flight(session: Session, sweep_id: str) -> int:
    return session.scalar(select(func.count()).where(Job.sweep_id == sweep_id, Job.status.in_(_ACTIVE))) or 0


def _out_of_time(sweep: Sweep, spec: SweepSpec) -> bool:
    if spec.max_hours is None:
        return False
    return utcnow() >= _now_aware(sweep.created_at) + timedelta(hours=spec.max_hours)


def advance(session: Session, settings: Settings, sweep_id: str) -> list[str]:
    """Start trials while the sweep is running, has budget and is under its parallelism; returns the new jobs."""
    # lazy: Optuna (services.sweep_study), which listing and reading sweeps never need
    from finetune_platform.services import sweep_study

    started: list[str] = []
    while True:
        sweep = session.get(Sweep, sweep_id, populate_existing=True)
        if sweep is None or sweep.status != SweepStatus.RUNNING.value or sweep.cancel_requested:
            return started
        spec = spec_of(sweep)
        if (
            sweep.trials_started >= spec.trial_budget
            or _out_of_time(sweep, spec)
            or _in_flight(session, sweep_id) >= spec.parallelism
        ):
            return started
        try:
            quotas.check_queue_room(session, sweep.owner_id, settings, lock=False)
        except QuotaExceeded as exc:  # the trials queued so far stay; the reconciler starts the rest later
            logger.info("sweep %s waits for queue room: %s", sweep_id, exc)
            return started
        slot = sweep.trials_started
        won = session.execute(
            update(Sweep)
            .where(
                Sweep.id == sweep_id, Sweep.trials_started == slot, Sweep.status == SweepStatus.RUNNING.value
            )
            .values(trials_started=slot + 1, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if not won:  # another process started a trial since the read: decide again
            continue
        asked = sweep_study.ask(settings, sweep_id, spec, slot)
        config = config_from_dict(with_params(sweep.base_config, asked.params))
        owner = session.get(User, sweep.owner_id)
        submission = jobs.queue_job(
            session,
            settings,
            UserPublic.of(owner),
            JobKind.TRAIN,
            config.to_yaml_dict(),
            dataset_version=sweep.dataset_version,
            idempotency_key=f"sweep:{sweep_id}:trial:{asked.number}",
            max_attempts=sweep.max_attempts,
            sweep_id=sweep_id,
            trial_number=asked.number,
            trial_params=asked.params,
        )
        started.append(submission.job.id)
        logger.info(
            "sweep %s: trial %d queued as job %s with %s",
            sweep_id,
            asked.number,
            submission.job.id,
            asked.params,
        )


def _outcome(job: Job) -> tuple[str, float | None]:
    if job.status == JobStatus.SUCCEEDED.value:
        return "complete", None
    if job.status == JobStatus.PRUNED.value:
        return "pruned", None
    return "fail", None


def _objective_value(job: Job, spec: SweepSpec) -> float | None:
    value = ((job.progress or {}).get("metrics") or {}).get(spec.objective.metric.value)
    return None if value is None else float(value)


def settle(session: Session, settings: Settings, sweep_id: str) -> Sweep | None:
    """Tell the study how each ended trial ended, fail trials whose job was never written, start trials, and
    finish the sweep once its budget is spent (or it is cancelled) and no trial is in flight."""
    # lazy: Optuna (services.sweep_study), which listing and reading sweeps never need
    from finetune_platform.services import sweep_study

    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        return None
    spec = spec_of(sweep)
    trial_jobs = session.scalars(select(Job).where(Job.sweep_id == sweep_id)).all()
    numbers = {job.trial_number for job in trial_jobs}
    for job in trial_jobs:
        if job.status not in FINISHED or job.trial_number is None:
            continue
        outcome, _ = _outcome(job)
        value = _objective_value(job, spec) if outcome == "complete" else None
        if outcome == "complete" and value is None:
            outcome = "fail"
        with contextlib.suppress(KeyError):  # no such trial in the study (deleted by hand): nothing to tell
            sweep_study.tell(settings, sweep_id, spec, job.trial_number, value=value, outcome=outcome)
    for trial in sweep_study.trials(settings, sweep_id):
        started = _aware(trial.datetime_start)
        if (
            trial.state.name == "RUNNING"
            and trial.number not in numbers
            and started is not None
            and (utcnow() - started).total_seconds() > ORPHAN_SECONDS
        ):
            sweep_study.tell(settings, sweep_id, spec, trial.number, value=None, outcome="fail")
    if sweep.status == SweepStatus.RUNNING.value:
        advance(session, settings, sweep_id)
    return _finish_if_done(session, sweep_id)


def _finish_if_done(session: Session, sweep_id: str) -> Sweep | None:
    sweep = session.get(Sweep, sweep_id, populate_existing=True)
    if sweep is None:
        return None
    spec = spec_of(sweep)
    best = _best_job(session, sweep, spec)
    values: dict[str, Any] = {"best_job_id": best.id if best else None}
    event = None
    if sweep.status == SweepStatus.RUNNING.value and _in_flight(session, sweep_id) == 0:
        if sweep.trials_started >= spec.trial_budget or _out_of_time(sweep, spec):
            event = "finish" if best is not None else "fail"
            values["finished_at"] = utcnow()
            if best is None:
                values["error"] = f"none of its {sweep.trials_started} trials completed"
    elif (
        sweep.status == SweepStatus.CANCELLED.value
        and sweep.finished_at is None
        and not _in_flight(session, sweep_id)
    ):
        values["finished_at"] = utcnow()
    if event is not None:
        values["status"] = TABLE[(SweepStatus(sweep.status), event)].value
        moved = session.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.status == SweepStatus.RUNNING.value)
            .values(**values, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved:
            logger.info("sweep %s %s", sweep_id, values["status"])
    elif values.get("best_job_id") != sweep.best_job_id or "finished_at" in values:
        session.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
    return session.get(Sweep, sweep_id, populate_existing=True)


def trial_ended(settings: Settings, job_id: str) -> None:
    """A worker's word that a job ended: if it was a trial, settle its sweep (failures are the reconciler's)."""
    from finetune_platform.db.session import session_scope  # lazy: keeps the import graph of the faces small

    try:
        with session_scope(settings) as session:
            sweep_id = session.scalar(select(Job.sweep_id).where(Job.id == job_id))
            if sweep_id is not None:
                settle(session, settings, sweep_id)
    except Exception as exc:  # the reconciler settles it on its next pass
        logger.warning("sweep of job %s not settled now (the reconciler will): %s", job_id, exc)


def has_active(session: Session) -> bool:
    """Whether any sweep is running or winding down (cheap: the reconciler asks on every pass)."""
    return (
        session.scalar(
            select(Sweep.id)
            .where(
                (Sweep.status == SweepStatus.RUNNING.value)
                | ((Sweep.status == SweepStatus.CANCELLED.value) & Sweep.finished_at.is_(None))
            )
            .limit(1)
        )
        is not None
    )


def reconcile_sweeps(settings: Settings) -> int:
    """Settle every running sweep (and cancelled ones still winding down); returns how many were looked at."""
    from finetune_platform.db.session import session_scope  # lazy: as above

    with session_scope(settings) as session:
        ids = session.scalars(
            select(Sweep.id).where(
                (Sweep.status == SweepStatus.RUNNING.value)
                | ((Sweep.status == SweepStatus.CANCELLED.value) & Sweep.finished_at.is_(None))
            )
        ).all()
    for sweep_id in ids:
        try:
            with session_scope(settings) as session:
                settle(session, settings, sweep_id)
        except PlatformError as exc:  # a quota, say: the next pass tries again
            logger.info("sweep %s waits: %s", sweep_id, exc)
        except Exception as exc:  # one sweep that cannot be settled (its study gone, say) holds up no other
            logger.warning("sweep %s not settled (the next pass tries again): %s", sweep_id, exc)
    return len(ids)


# -- reading ---------------------------------------------------------------------------------------------------
def _visible(session: Session, user: UserPublic, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id) if len(sweep_id) <= 36 and "\x00" not in sweep_id else None
    if sweep is None or (user.role != Role.ADMIN.value and sweep.owner_id != user.id):
        raise NotFoundError(f"no sweep {sweep_id!r}")
    return sweep


def _trial(job: Job, spec: SweepSpec) -> TrialPublic:
    progress = job.progress or {}
    return TrialPublic(
        number=job.trial_number if job.trial_number is not None else -1,
        task_id=job.id,
        status=job.status,
        params=dict(job.trial_params or {}),
        value=_objective_value(job, spec),
        evaluations=int(progress.get("evaluations") or 0),
        seconds=progress.get("run_seconds"),
        attempts=job.attempts,
        run_id=job.run_id,
        error=job.error,
    )


def _best_job(session: Session, sweep: Sweep, spec: SweepSpec) -> Job | None:
    done = session.scalars(
        select(Job).where(Job.sweep_id == sweep.id, Job.status == JobStatus.SUCCEEDED.value)
    ).all()
    scored = [(value, job) for job in done if (value := _objective_value(job, spec)) is not None]
    if not scored:
        return None
    sign = 1.0 if spec.objective.resolved_direction.value == "maximize" else -1.0
    return max(scored, key=lambda pair: (sign * pair[0], -(pair[1].trial_number or 0)))[1]


def _public(session: Session, sweep: Sweep, trial_jobs: list[Job] | None = None) -> dict[str, Any]:
    spec = spec_of(sweep)
    if trial_jobs is None:
        trial_jobs = list(session.scalars(select(Job).where(Job.sweep_id == sweep.id)))
    counts = Counter(job.status for job in trial_jobs)
    best = next((job for job in trial_jobs if job.id == sweep.best_job_id), None)
    if best is None:
        best = _best_job(session, sweep, spec)
    return {
        "id": sweep.id,
        "owner_id": sweep.owner_id,
        "name": sweep.name,
        "status": sweep.status,
        "objective": spec.objective.metric.value,
        "direction": spec.objective.resolved_direction.value,
        "sampler": spec.sampler.value,
        "pruner": spec.pruner.value,
        "max_trials": spec.trial_budget,
        "parallelism": spec.parallelism,
        "trials": {state.value: counts.get(state.value, 0) for state in JobStatus},
        "best_value": _objective_value(best, spec) if best else None,
        "best_task_id": best.id if best else None,
        "error": sweep.error,
        "created_at": sweep.created_at,
        "finished_at": sweep.finished_at,
    }


def get_sweep(session: Session, user: UserPublic, sweep_id: str) -> SweepDetail:
    sweep = _visible(session, user, sweep_id)
    spec = spec_of(sweep)
    trial_jobs = list(
        session.scalars(
            select(Job).where(Job.sweep_id == sweep.id).order_by(Job.trial_number, Job.created_at)
        )
    )
    return SweepDetail(
        **_public(session, sweep, trial_jobs),
        spec=sweep.spec,
        trial_list=[_trial(job, spec) for job in trial_jobs],
        compute_seconds=round(
            sum(float((job.progress or {}).get("run_seconds") or 0) for job in trial_jobs), 1
        ),
        dataset_version=sweep.dataset_version,
    )


def list_sweeps(
    session: Session, user: UserPublic, *, status: str | None = None, offset: int = 0, limit: int = 50
) -> Page[SweepPublic]:
    query = select(Sweep)
    if user.role != Role.ADMIN.value:
        query = query.where(Sweep.owner_id == user.id)
    if status is not None:
        query = query.where(Sweep.status == status)
    count = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Sweep.created_at.desc(), Sweep.id).offset(offset).limit(limit))
    return Page[SweepPublic](
        data=[SweepPublic(**_public(session, sweep)) for sweep in rows],
        count=count,
        limit=limit,
        offset=offset,
    )


def best_trial(session: Session, user: UserPublic, sweep_id: str) -> TrialPublic:
    """The completed trial with the best objective (ties: the earlier trial); 409 before any completed."""
    sweep = _visible(session, user, sweep_id)
    spec = spec_of(sweep)
    best = _best_job(session, sweep, spec)
    if best is None:
        raise PlatformError(
            f"sweep {sweep_id} has no completed trial yet ({sweep.trials_started} started)",
            ErrorCode.CONFLICT,
        )
    return _trial(best, spec)


# -- changing -----------------------------------------------------------------------------------------------------
def cancel_sweep(session: Session, user: UserPublic, sweep_id: str) -> SweepDetail:
    """No trial starts any more; queued trials are cancelled at once, running ones asked to stop."""
    sweep = _visible(session, user, sweep_id)
    if sweep.status != SweepStatus.RUNNING.value:
        raise PlatformError(
            f"sweep {sweep_id} is already {sweep.status}: only running sweeps can be cancelled",
            ErrorCode.CONFLICT,
        )
    moved = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status == SweepStatus.RUNNING.value)
        .values(
            status=TABLE[(SweepStatus.RUNNING, "cancel")].value, cancel_requested=True, updated_at=utcnow()
        )
        .execution_options(synchronize_session=False)
    ).rowcount
    if not moved:  # finished meanwhile
        session.refresh(sweep)
        raise PlatformError(
            f"sweep {sweep_id} is already {sweep.status}: only running sweeps can be cancelled",
            ErrorCode.CONFLICT,
        )
    for job_id in session.scalars(
        select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(_ACTIVE))
    ).all():
        with contextlib.suppress(PlatformError):  # ended meanwhile
            jobs.cancel_job(session, user, job_id)
    _finish_if_done(session, sweep_id)
    return get_sweep(session, user, sweep_id)


def promote_best(
    session: Session,
    settings: Settings,
    user: UserPublic,
    sweep_id: str,
    *,
    model_name: str | None = None,
    stage: str = "Production",
) -> dict[str, Any]:
    """Register the best trial's adapter as a new version of ``model_name`` and move it to ``stage``."""
    # lazy: MLflow and the registry, only when a model is registered
    from finetune_platform.tracking.registry import ModelRegistry, Stage
    from finetune_platform.training.registration import register_run

    trial = best_trial(session, user, sweep_id)
    job = session.get(Job, trial.task_id)
    if job is None or not job.run_folder:
        raise PlatformError(
            f"sweep {sweep_id}: the best trial {trial.task_id} has no run folder", ErrorCode.CONFLICT
        )
    config = config_from_dict(job.config)
    name = model_name or _sweep_model_name(session, sweep_id) or config.experiment
    info = register_run(
        settings,
        job.run_folder,
        owner_id=user.id if user.role != Role.ADMIN.value else job.owner_id,
        model_name=name,
    )
    if stage != "Staging":
        ModelRegistry(settings).transition(info["name"], info["version"], Stage(stage))
    return {
        "sweep_id": sweep_id,
        "task_id": job.id,
        "model_name": info["name"],
        "version": info["version"],
        "stage": stage,
        "value": trial.value,
    }


def _sweep_model_name(session: Session, sweep_id: str) -> str | None:
    sweep = session.get(Sweep, sweep_id)
    registry = (sweep.base_config or {}).get("registry") or {} if sweep else {}
    return registry.get("model_name")


def trial_spec(session: Session, sweep_id: str) -> SweepSpec:
    """The spec of a trial's sweep (the worker's pruning callback reads its objective and pruner)."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise NotFoundError(f"no sweep {sweep_id!r}")
    return spec_of(sweep)
