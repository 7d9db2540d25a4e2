"""Users: create and look up accounts. Returns ``UserPublic``, never the row (it holds the password hash)."""

from __future__ import annotations

import re
import secrets

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.accounts import local_account, username_is
from finetune_platform.db.models import Role, User
from finetune_platform.db.session import read_engine
from finetune_platform.errors import ConfigError, ErrorCode, NotFoundError, PlatformError
from finetune_platform.security import (
    MAX_PASSWORD_LENGTH,
    InvalidToken,
    Tokens,
    TokenSubject,
    hash_password,
    password_problem,
    verify_password,
)
from finetune_platform.services.quotas import set_account_limits
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.users import UserPublic

USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$")
MAX_USERNAME_LENGTH = 64


class WrongPassword(PlatformError):
    """The current password given to change it is wrong (the route counts these like failed logins)."""


_named = username_is


def create_user(session: Session, username: str, password: str, role: str = Role.USER.value) -> UserPublic:
    if not USERNAME.match(username):
        raise ConfigError(
            f"username {username!r}: 2-64 letters, digits or . _ @ -, starting with a letter or digit"
        )
    _check_password(password, username)
    if role not in {r.value for r in Role}:
        raise ConfigError(f"role {role!r}: expected one of {', '.join(r.value for r in Role)}")
    if session.scalar(select(User.id).where(_named(username))) is not None:
        raise PlatformError(f"user {username!r} already exists", ErrorCode.CONFLICT)
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        is_active=True,
        token_version=0,
        token_key=secrets.token_hex(16),
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:  # created by someone else between the check and the insert
        session.rollback()
        raise PlatformError(f"user {username!r} already exists", ErrorCode.CONFLICT) from None
    return UserPublic.of(user)


def get_user(session: Session, username: str) -> UserPublic:
    user = session.scalar(select(User).where(_named(username)))
    if user is None:
        raise NotFoundError(f"no user {username!r}")
    return UserPublic.of(user)


def list_users(session: Session) -> list[UserPublic]:
    return [UserPublic.of(user) for user in session.scalars(select(User).order_by(User.id))]


def page_users(session: Session, *, offset: int = 0, limit: int = 50) -> Page[UserPublic]:
    """Accounts in id order, one page of them read (and counted) by the database."""
    count = session.scalar(select(func.count()).select_from(User)) or 0
    rows = session.scalars(select(User).order_by(User.id).offset(offset).limit(limit))
    return Page[UserPublic](
        data=[UserPublic.of(user) for user in rows], count=count, limit=limit, offset=offset
    )


def local_user(session: Session) -> UserPublic:
    """The account the command line acts as: an admin that cannot log in (it has no usable password)."""
    return UserPublic.of(local_account(session))


# A real Argon2id hash of a random password: checking against it when the user does not exist takes
# as long as a wrong password, so timing does not tell which usernames exist.
_DUMMY_HASH: str | None = None


def authenticate(session: Session, username: str, password: str) -> UserPublic | None:
    """The active user with this password, or None (same work for an unknown name as for a wrong password).

    Names and passwords longer than any account can have are refused before any lookup or hashing."""
    global _DUMMY_HASH
    if len(username) > MAX_USERNAME_LENGTH or len(password) > MAX_PASSWORD_LENGTH or "\x00" in username:
        return None
    user = session.scalar(select(User).where(_named(username)))
    if user is None:
        _DUMMY_HASH = _DUMMY_HASH or hash_password(secrets.token_urlsafe(16))
        verify_password(_DUMMY_HASH, password)
        return None
    if not verify_password(user.password_hash, password) or not user.is_active:
        return None
    return UserPublic.of(user)


def user_by_id(session: Session, user_id: int) -> tuple[UserPublic, int] | None:
    """The user and their current token version, or None."""
    user = session.get(User, user_id)
    return None if user is None else (UserPublic.of(user), user.token_version)


def token_subject(session: Session, user_id: int) -> TokenSubject:
    """What a new token of the user carries (POST /login issues it)."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    return TokenSubject(user.id, user.token_version, user.token_key)


def get_user_public(session: Session, user_id: int) -> UserPublic:
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    return UserPublic.of(user)


def revoke_tokens(session: Session, user_id: int) -> None:
    """Every token issued to the user so far stops working (logout, password change, disable)."""
    user = session.get(User, user_id)
    if user is not None:
        user.token_version += 1


def update_user(
    session: Session,
    user_id: int,
    *,
    role: str | None = None,
    is_active: bool | None = None,
    password: str | None = None,
    limits: dict[str, int | float | None] | None = None,
) -> UserPublic:
    """Admin changes: role, enabled, password, the account's own limits (``limits``: max_queued_jobs,
    max_running_jobs, max_job_hours; None resets one to the platform default). Disabling or a new password
    revokes the user's tokens."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"no user {user_id}")
    if limits:
        set_account_limits(user, limits)
    if role is not None:
        if role not in {r.value for r in Role}:
            raise ConfigError(f"role {role!r}: expected one of {', '.join(r.value for r in Role)}")
        user.role = role
    if is_active is not None:
        user.is_active = is_active
        if not is_active:
            user.token_version += 1
    if password is not None:
        _check_password(password, user.username)
        user.password_hash = hash_password(password)
        user.token_version += 1
    session.flush()
    return UserPublic.of(user)


def change_password(session: Session, user_id: int, current: str, new: str) -> None:
    user = session.get(User, user_id)
    if user is None or not verify_password(user.password_hash, current):
        raise WrongPassword("current password is wrong", ErrorCode.PERMISSION_DENIED)
    _check_password(new, user.username)
    user.password_hash = hash_password(new)
    user.token_version += 1


def _check_password(password: str, username: str | None) -> None:
    problem = password_problem(password, username)
    if problem:
        raise ConfigError(problem)


def user_for_token(settings, user_id: int, token_version: int, token_key: str) -> UserPublic | None:
    """The active user whose tokens are at ``token_version`` with this token key, or None. One indexed read,
    connection returned at once (the API calls this on every request)."""
    users = User.__table__
    with read_engine(settings.database_url).connect() as connection:
        row = connection.execute(
            select(
                users.c.id,
                users.c.username,
                users.c.role,
                users.c.is_active,
                users.c.created_at,
                users.c.max_queued_jobs,
                users.c.max_running_jobs,
                users.c.max_job_hours,
            ).where(
                users.c.id == user_id,
                users.c.token_version == token_version,
                users.c.token_key == token_key,
                users.c.is_active.is_(True),
            )
        ).first()
    return None if row is None else UserPublic(**row._mapping)


def token_caller(tokens: Tokens, settings, token: str) -> UserPublic:
    """The active user a token was issued to, at their current token version and token key; InvalidToken
    (its message safe to show) otherwise. The one token check of the API's routes, its body guard and
    `finetune serve`: one indexed read on a connection returned at once."""
    try:
        claims = tokens.decode(token)
    except InvalidToken as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    user = user_for_token(settings, claims.user_id, claims.token_version, claims.token_key)
    if user is None:
        raise InvalidToken("invalid token: revoked, or the account is disabled")
    return user
