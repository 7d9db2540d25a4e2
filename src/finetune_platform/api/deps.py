"""Request dependencies: the database session, the settings, the caller and their role, list windows, the
idempotency key, and the audit helper."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Query, Request, status
from fastapi.security import OAuth2PasswordBearer
from sqlalchemy.orm import Session

from finetune_platform.api.auth import NOT_AUTHENTICATED
from finetune_platform.db.models import Role
from finetune_platform.db.session import session_scope
from finetune_platform.security import InvalidToken
from finetune_platform.services.audit import record
from finetune_platform.services.schemas.common import MAX_PAGE
from finetune_platform.services.schemas.users import UserPublic
from finetune_platform.services.users import token_caller
from finetune_platform.settings import Settings

bearer = OAuth2PasswordBearer(tokenUrl="/login", auto_error=False)


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def db(request: Request) -> Iterator[Session]:
    """One session per request, committed when the handler returns and before the response is sent (the
    dependency's scope is the handler): a client that saw a logout, password change or demotion succeed
    can never race past it with its old token."""
    with session_scope(request.app.state.settings) as session:
        yield session


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def unauthorized(message: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"})


async def current_user(request: Request, token: Annotated[str | None, Depends(bearer)]) -> UserPublic:
    """The caller of a valid, unrevoked token of an active user; 401 otherwise.

    Runs on the event loop with one primary-key lookup on a connection it returns at once: no thread
    hop and no connection held across an await.
    """
    if not token:
        raise unauthorized(NOT_AUTHENTICATED)
    try:
        user = token_caller(request.app.state.tokens, request.app.state.settings, token)
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None
    request.state.actor_id = user.id
    return user


async def admin_user(request: Request, user: Annotated[UserPublic, Depends(current_user)]) -> UserPublic:
    if user.role != Role.ADMIN.value:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "admin role required")
    return user


EXPERIMENTS_FOR_ADMINS = (
    "admin role required: experiments are for admins on this server (EXPERIMENTS_ADMIN_ONLY)"
)


async def experiments_reader(
    request: Request, user: Annotated[UserPublic, Depends(current_user)]
) -> UserPublic:
    """Everyone signed in reads experiments (the runs of their own jobs; an admin, all runs). This widens the
    Finetune-30-days README's rule (GET /experiments: admin) on purpose; EXPERIMENTS_ADMIN_ONLY=true restores it
    for every /experiments route."""
    if request.app.state.settings.EXPERIMENTS_ADMIN_ONLY and user.role != Role.ADMIN.value:
        raise HTTPException(status.HTTP_403_FORBIDDEN, EXPERIMENTS_FOR_ADMINS)
    return user


CurrentUser = Annotated[UserPublic, Depends(current_user)]
AdminUser = Annotated[UserPublic, Depends(admin_user)]
ExperimentsReader = Annotated[UserPublic, Depends(experiments_reader)]
DbSession = Annotated[Session, Depends(db, scope="function")]
SettingsDep = Annotated[Settings, Depends(settings_of)]

# A list's window. Lists that always paged answer a page; those that answered a bare list (the Finetune-30-days
# README's shape for some) still do, and answer a page (`data`, `count`, `limit`, `offset`) with `paged=true`.
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size (at most 100).")]
PageOffset = Annotated[int, Query(ge=0, le=1_000_000, description="Entries to skip.")]
Paged = Annotated[
    bool,
    Query(description="Answer a page (`data`, `count`, `limit`, `offset`) instead of a bare list."),
]
IdempotencyKey = Annotated[
    str | None,
    Header(max_length=128, description="Repeat a submission safely: the same key returns the same task."),
]


def audit(
    session: Session,
    request: Request,
    action: str,
    *,
    actor: UserPublic | None,
    target: str | None = None,
    outcome: str = "ok",
    **detail: Any,
) -> None:
    record(
        session,
        action,
        actor_id=actor.id if actor else getattr(request.state, "actor_id", None),
        target=target,
        outcome=outcome,
        address=client_address(request),
        detail=detail,
    )


def audit_apart(request: Request, action: str, *, target: str | None, outcome: str, **detail: Any) -> None:
    """Record an entry in its own transaction (the request's will be rolled back: a refusal), once."""
    with session_scope(request.app.state.settings) as session:
        record(
            session,
            action,
            actor_id=getattr(request.state, "actor_id", None),
            target=target,
            outcome=outcome,
            address=client_address(request),
            detail=detail,
        )
    request.state.audited = True
