"""The command line's own account, at the storage level: the admin that a command-line run acts as.

Training records it as the owner of what a command-line run registers without asking the services layer;
``services.users.local_user`` is the same account as the faces see it.
"""

from __future__ import annotations

import secrets

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from finetune_platform.db.models import Role, User
from finetune_platform.security import hash_password

LOCAL_USER = "local"


def username_is(username: str) -> ColumnElement[bool]:
    """The user row condition for a username, in any case ("Alice" is "alice")."""
    return func.lower(User.username) == username.lower()


def local_account(session: Session) -> User:
    """The account the command line acts as, created on first use: an admin that cannot log in (its password
    is random and never shown)."""
    user = session.scalar(select(User).where(username_is(LOCAL_USER)))
    if user is None:
        user = User(
            username=LOCAL_USER,
            password_hash=hash_password(secrets.token_urlsafe(32)),
            role=Role.ADMIN.value,
            is_active=True,
            token_version=0,
            token_key=secrets.token_hex(16),
        )
        session.add(user)
        session.flush()
    return user
