"""Jobs as API clients ask for them: datasets named by id, never by path. The server fills in the paths of its
copies and its results folder, holds the base model to the allow-list and claims the model name before anything
is queued; and whatever goes wrong is reported naming each dataset by its id and name, never by where the server
keeps it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from finetune_platform.db.models import Role
from finetune_platform.errors import ConfigError, PlatformError
from finetune_platform.services.base_models import check_allowed
from finetune_platform.services.jobs import Submission, submit_job, submit_prediction_job
from finetune_platform.services.schemas.datasets import DatasetPublic
from finetune_platform.services.schemas.jobs import PredictionJobCreate, TrainJobCreate
from finetune_platform.services.schemas.sweeps import SweepCreate, SweepDetail
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.settings import Settings
from finetune_platform.tracking.ownership import claim_name
from finetune_platform.training.config import ModelSection, config_from_dict
from finetune_platform.training.sweep_config import Choice, parse_spec

SERVER_FIELDS = (("data", "train_file"), ("data", "validation_file"), ("output_dir",))


def submit_training(
    session: Session,
    settings: Settings,
    user: UserPublic,
    request: TrainJobCreate,
    *,
    idempotency_key: str | None = None,
) -> Submission:
    """Queue a training job on the caller's uploaded datasets (once per idempotency key)."""
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import stored_dataset

    train, train_file = stored_dataset(session, user, request.dataset_id)
    stored = {train_file: train}
    validation_file = None
    if request.validation_dataset_id:
        validation, validation_file = stored_dataset(session, user, request.validation_dataset_id)
        stored[validation_file] = validation
    with datasets_named(stored):
        config = server_config(session, request.config, train_file, validation_file, settings.RESULTS_DIR)
        claim_model_name(session, user, config)
        return submit_job(
            session,
            user,
            config,
            idempotency_key=idempotency_key,
            max_attempts=request.max_attempts,
            settings=settings,
        )


def submit_sweep_request(
    session: Session, settings: Settings, user: UserPublic, request: SweepCreate
) -> SweepDetail:
    """Start a sweep on the caller's uploaded datasets: the base config gets the server's paths like a training
    job's, every base model the space may try must be on the allow-list, and no trial may set a server field."""
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import stored_dataset
    from finetune_platform.services.sweeps import submit_sweep

    spec = parse_spec(request.sweep)  # ConfigError naming sweep.<field>
    server_fields = {".".join(path) for path in SERVER_FIELDS}
    for dotted in spec.space:
        if dotted in server_fields:
            raise ConfigError(
                f"sweep.space.{dotted}: set by the server (use dataset_id / validation_dataset_id)"
            )
    train, train_file = stored_dataset(session, user, request.dataset_id)
    stored = {train_file: train}
    validation_file = None
    if request.validation_dataset_id:
        validation, validation_file = stored_dataset(session, user, request.validation_dataset_id)
        stored[validation_file] = validation
    with datasets_named(stored):
        config = server_config(session, request.config, train_file, validation_file, settings.RESULTS_DIR)
        base_models = spec.space.get("model.base_model")
        if isinstance(base_models, Choice):
            for value in base_models.values:
                if not isinstance(value, str):
                    raise ConfigError(
                        f"sweep.space.model.base_model: expected model names, got {type(value).__name__}"
                    )
                try:
                    check_allowed(session, value)
                except ConfigError as error:
                    raise ConfigError(
                        error.message.replace("config.model.base_model", "sweep.space.model.base_model", 1)
                    ) from None
        claim_model_name(session, user, config)
        return submit_sweep(session, user, config, spec, max_attempts=request.max_attempts, settings=settings)


def submit_prediction(
    session: Session,
    settings: Settings,
    user: UserPublic,
    request: PredictionJobCreate,
    *,
    idempotency_key: str | None = None,
) -> Submission:
    """Queue prediction over the caller's uploaded dataset with a registered model (pinned to a version now)."""
    # lazy: pandas and pyarrow (data loading), not loaded at API start
    from finetune_platform.services.datasets import stored_dataset

    dataset, input_file = stored_dataset(session, user, request.dataset_id)
    with datasets_named({input_file: dataset}):
        return submit_prediction_job(
            session,
            settings,
            user,
            model=request.model,
            input_file=input_file,
            text_column=request.text_column,
            label_column=request.label_column,
            idempotency_key=idempotency_key,
            max_attempts=request.max_attempts,
            text_pair_column=request.text_pair_column,
        )


def server_config(
    session: Session, raw: dict[str, Any], train: Path, validation: Path | None, results: Path
) -> dict[str, Any]:
    """The client's config with the server's paths and an allowed base model; a client cannot point the
    server at its files."""
    config = {key: (dict(value) if isinstance(value, dict) else value) for key, value in raw.items()}
    for section in ("model", "data"):
        if section in config and not isinstance(config[section], dict):
            raise ConfigError(
                f"config.{section}: expected an object of fields, got {type(config[section]).__name__}"
            )
    for path in SERVER_FIELDS:
        node = config
        for part in path[:-1]:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if path[-1] in node:
            raise ConfigError(
                f"config.{'.'.join(path)}: set by the server (use dataset_id / validation_dataset_id)"
            )
    base_model = (config.get("model") or {}).get(
        "base_model", ModelSection.model_fields["base_model"].default
    )
    if not isinstance(base_model, str):
        raise ConfigError(f"config.model.base_model: expected a name, got {type(base_model).__name__}")
    check_allowed(session, base_model)
    data = dict(config.get("data") or {})
    data["train_file"] = str(train)
    if validation is not None:
        data["validation_file"] = str(validation)
    config["data"] = data
    config["output_dir"] = str(results.resolve())
    return config


def claim_model_name(session: Session, user: UserPublic, config: dict[str, Any]) -> None:
    """The model name a training job will register under is the caller's, or free (then it becomes
    theirs); another user's name is refused now, not after hours of training."""
    parsed = config_from_dict(config)  # ConfigError names the field
    if parsed.registry.enabled:
        claim_name(session, parsed.model_name, user.id, is_admin=user.role == Role.ADMIN.value)


@contextmanager
def datasets_named(stored: dict[Path, DatasetPublic]) -> Iterator[None]:
    """Errors raised inside name each dataset (``stored``: the server's file of each) by its id and name: a
    client never learns where the server keeps its files, nor that server's folder layout."""
    try:
        yield
    except PlatformError as error:
        # lazy: pandas and pyarrow (data.validation), not loaded at API start
        from finetune_platform.data.validation import DatasetValidationError

        names = _names(stored)
        if isinstance(error, DatasetValidationError):
            raise DatasetValidationError(_renamed_report(error.report, names)) from None
        error.message = _renamed(error.message, names)
        error.args = (error.message,)
        raise


def _names(stored: dict[Path, DatasetPublic]) -> list[tuple[str, str]]:
    """(what a message may say, what to say instead), the longest first: the absolute path before the bare
    file name (``<id>.csv``) it ends with."""
    names = []
    for path, dataset in stored.items():
        for spelling in {str(path), str(path.resolve()), path.name}:
            names.append((spelling, dataset.label))
    return sorted(names, key=lambda pair: len(pair[0]), reverse=True)


def _renamed(text: str, names: list[tuple[str, str]]) -> str:
    for spelling, label in names:
        text = text.replace(spelling, label)
    return text


def _renamed_report(report: Any, names: list[tuple[str, str]]) -> Any:
    files = [
        dataclasses.replace(
            file,
            path=_renamed(file.path, names),
            issues=[
                dataclasses.replace(
                    issue, message=_renamed(issue.message, names), fix=_renamed(issue.fix, names)
                )
                for issue in file.issues
            ],
        )
        for file in report.files
    ]
    return dataclasses.replace(report, files=files)
