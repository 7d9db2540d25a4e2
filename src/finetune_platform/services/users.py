"""Users: create and look up accounts. Returns ``UserPublic``, never the row (it holds the password hash)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import Role, User
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.security import hash_password

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
MIN_PASSWORD_LENGTH = 8


@dataclass(frozen=True)
class UserPublic:
    id: int
    username: str
    role: str
    is_active: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(user.id, user.username, user.role, user.is_active, user.created_at)


def create_user(session: Session, username: str, password: str, role: str = Role.USER.value) -> UserPublic:
    if not USERNAME.match(username):
        raise ConfigError(
            f"username {username!r}: 2-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConfigError(f"password: at least {MIN_PASSWORD_LENGTH} characters")
    if role not in {r.value for r in Role}:
        raise ConfigError(f"role {role!r}: expected one of {', '.join(r.value for r in Role)}")
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise PlatformError(f"user {username!r} already exists", ErrorCode.CONFLICT)
    user = User(
        username=username, password_hash=hash_password(password), role=role, is_active=True, token_version=0
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # created by someone else between the check and the insert
        session.rollback()
        raise PlatformError(f"user {username!r} already exists", ErrorCode.CONFLICT) from None
    return UserPublic.of(user)


def get_user(session: Session, username: str) -> UserPublic:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    return UserPublic.of(user)


def list_users(session: Session) -> list[UserPublic]:
    return [UserPublic.of(user) for user in session.scalars(select(User).order_by(User.id))]


LOCAL_USER = "local"


def local_user(session: Session) -> UserPublic:
    """The account the command line acts as: an admin that cannot log in (it has no usable password)."""
    import secrets

    user = session.scalar(select(User).where(User.username == LOCAL_USER))
    if user is None:
        user = User(
            username=LOCAL_USER,
            password_hash=hash_password(secrets.token_urlsafe(32)),
            role=Role.ADMIN.value,
            is_active=True,
            token_version=0,
        )
        session.add(user)
        session.flush()
    return UserPublic.of(user)
