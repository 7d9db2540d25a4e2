"""The base models users may train through the API: names on an allow-list the admin manages.

A training config submitted over HTTP names its base model; the worker would otherwise load whatever that
names, including paths on the worker's disk. The command line is the operator's and is not restricted.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from finetune_platform.db.models import AllowedBaseModel
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.registry import BaseModelPublic

# A bundled alias (minilm), a hub id (org/name) or, for an admin, an absolute folder on the workers.
BASE_MODEL_NAME = re.compile(
    r"^(?:[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?|/[A-Za-z0-9_./-]{1,200})$"
)


def _public(row: AllowedBaseModel) -> BaseModelPublic:
    return BaseModelPublic(name=row.name, added_by=row.added_by, created_at=row.created_at)


def allowed_base_models(session: Session) -> list[BaseModelPublic]:
    return [_public(row) for row in session.scalars(select(AllowedBaseModel).order_by(AllowedBaseModel.name))]


def page_base_models(session: Session, *, offset: int = 0, limit: int = 50) -> Page[BaseModelPublic]:
    """The allow-list by name, one page of it read (and counted) by the database."""
    count = session.scalar(select(func.count()).select_from(AllowedBaseModel)) or 0
    rows = session.scalars(
        select(AllowedBaseModel).order_by(AllowedBaseModel.name).offset(offset).limit(limit)
    )
    return Page[BaseModelPublic](data=[_public(row) for row in rows], count=count, limit=limit, offset=offset)


def check_allowed(session: Session, name: str) -> None:
    """Refuse (422, naming the field) a base model that is not on the allow-list."""
    if "\x00" in name or len(name) > 255 or session.get(AllowedBaseModel, name) is None:
        allowed = ", ".join(model.name for model in allowed_base_models(session)) or "none"
        raise ConfigError(
            f"config.model.base_model {name[:200]!r}: not an allowed base model (allowed: {allowed}); "
            "an admin adds models with POST /base-models"
        )


def allow_base_model(session: Session, name: str, admin_id: int) -> BaseModelPublic:
    if not BASE_MODEL_NAME.fullmatch(name) or ".." in name.split("/"):
        raise ConfigError(
            f"name {name[:200]!r}: a bundled alias, a Hugging Face id (org/name) or an absolute folder path"
        )
    if session.get(AllowedBaseModel, name) is not None:
        raise PlatformError(f"base model {name!r} is already allowed", ErrorCode.CONFLICT)
    row = AllowedBaseModel(name=name, added_by=admin_id)
    session.add(row)
    session.flush()
    return _public(row)


def disallow_base_model(session: Session, name: str) -> None:
    row = session.get(AllowedBaseModel, name) if "\x00" not in name else None
    if row is None:
        raise NotFoundError(f"no allowed base model {name!r}")
    session.delete(row)
    session.flush()
