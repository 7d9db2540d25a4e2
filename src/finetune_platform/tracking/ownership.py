"""Who owns a registered model name, and what the platform wrote for each version (in the app database).

MLflow's registry is shared storage that anyone able to reach the tracking server could write to; these
records are the platform's own: a name belongs to its first registrant (or whoever an admin hands it to),
and a version is served only when its files match the checksums recorded here when it was registered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import ModelVersionRecord, RegisteredModel, User
from finetune_platform.errors import ErrorCode, NotFoundError, PlatformError


@dataclass(frozen=True)
class VersionChecksums:
    adapter: str
    artifacts: dict[str, str]
    owner_id: int | None


def owner_of(session: Session, name: str) -> int | None:
    return session.scalar(select(RegisteredModel.owner_id).where(RegisteredModel.name == name))


def claim_name(session: Session, name: str, user_id: int, *, is_admin: bool = False) -> int:
    """The owner of ``name`` after this call: the caller claims a free name; a name owned by someone else
    is refused (403) unless the caller is an admin (who registers under the owner's name, keeping it)."""
    owner = owner_of(session, name)
    if owner is None:
        _refuse_lookalike(session, name, user_id, is_admin)
        savepoint = session.begin_nested()
        try:
            session.add(RegisteredModel(name=name, owner_id=user_id))
            session.flush()
            savepoint.commit()
            return user_id
        except IntegrityError:  # claimed by someone else a moment ago
            savepoint.rollback()
            owner = owner_of(session, name)
    if owner != user_id and not is_admin:
        raise PlatformError(
            f"model name {name!r} belongs to another user; choose another name (an admin can transfer it)",
            ErrorCode.PERMISSION_DENIED,
        )
    return owner  # type: ignore[return-value]


def canonical(name: str) -> str:
    """What two names look like to a person: case, and runs of '.', '_' and '-', do not tell them apart."""
    return re.sub(r"[._-]+", "-", name.lower()).strip("-")


def _refuse_lookalike(session: Session, name: str, user_id: int, is_admin: bool) -> None:
    """A new name that reads like another user's (``SHAREDX``, ``sharedx_`` for ``sharedx``) is refused:
    predictions by name must not land on a lookalike someone else registered."""
    if is_admin:
        return
    wanted = canonical(name)
    for other, owner in session.execute(select(RegisteredModel.name, RegisteredModel.owner_id)):
        if owner != user_id and canonical(other) == wanted:
            raise PlatformError(
                f"model name {name!r} reads like {other!r}, which belongs to another user; choose another name",
                ErrorCode.PERMISSION_DENIED,
            )


def transfer_name(session: Session, name: str, new_owner_id: int) -> None:
    """An admin hands a model name to another user."""
    if session.get(User, new_owner_id) is None:
        raise NotFoundError(f"no user {new_owner_id}")
    row = session.get(RegisteredModel, name)
    if row is None:
        raise NotFoundError(f"no registered model {name!r}")
    row.owner_id = new_owner_id
    session.flush()


def owners(session: Session) -> dict[str, str]:
    """Model name -> owner's username."""
    rows = session.execute(
        select(RegisteredModel.name, User.username).join(User, User.id == RegisteredModel.owner_id)
    )
    return {name: username for name, username in rows}


def record_version(
    session: Session,
    name: str,
    version: int,
    *,
    owner_id: int | None,
    run_id: str | None,
    adapter_checksum: str,
    artifact_checksums: dict[str, str],
) -> None:
    existing = session.get(ModelVersionRecord, (name, version))
    if existing is not None:
        raise PlatformError(
            f"{name}@{version} already has a checksum record; refusing to overwrite it", ErrorCode.CONFLICT
        )
    session.add(
        ModelVersionRecord(
            name=name,
            version=version,
            owner_id=owner_id,
            run_id=run_id,
            adapter_checksum=adapter_checksum,
            artifact_checksums=dict(artifact_checksums),
        )
    )
    session.flush()


def checksums(session: Session, name: str, version: int) -> VersionChecksums | None:
    row = session.get(ModelVersionRecord, (name, version))
    if row is None:
        return None
    return VersionChecksums(row.adapter_checksum, dict(row.artifact_checksums), row.owner_id)
