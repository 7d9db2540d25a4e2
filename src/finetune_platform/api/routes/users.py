"""Accounts: the caller's own (GET /users/me, its password) and, for admins, everyone's (/users)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Request, Response, status
from fastapi import Path as PathParam

from finetune_platform.api.deps import (
    AdminUser,
    CurrentUser,
    DbSession,
    Paged,
    PageLimit,
    PageOffset,
    audit,
    client_address,
)
from finetune_platform.api.schemas import errors
from finetune_platform.services import users as accounts
from finetune_platform.services.quotas import SETTING
from finetune_platform.services.schemas.common import Page
from finetune_platform.services.schemas.users import PasswordChange, UserCreate, UserPublic, UserUpdate

router = APIRouter(tags=["users"])
UserId = Annotated[int, PathParam(ge=1, le=2_147_483_647, description="User id.")]
ADMIN_ONLY = "The caller is not an admin."


@router.get(
    "/users/me",
    response_model=UserPublic,
    summary="The caller's account",
    description="Who the token belongs to: id, username, role, whether the account is active, and its own limits.",
    responses=errors(401),
)
def get_me(user: CurrentUser) -> UserPublic:
    return user


@router.post(
    "/users/me/password",
    status_code=204,
    summary="Change the caller's password",
    description=(
        "Needs the current password; every token of the caller is revoked (log in again). Wrong current "
        "passwords are throttled like failed logins, so a stolen token cannot be used to guess the password."
    ),
    responses=errors(
        401,
        403,
        413,
        422,
        429,
        e403="The current password is wrong.",
        e422="The new password is too short, too common or contains the username.",
        e429="Too many wrong current passwords; retry after `Retry-After` seconds.",
    ),
)
def change_password(
    request: Request, session: DbSession, user: CurrentUser, body: PasswordChange
) -> Response:
    throttle, account, address = (
        request.app.state.throttle,
        f"password-change:{user.id}",
        client_address(request),
    )
    attempt = throttle.attempt(account, address)
    if attempt.wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many wrong current passwords; try again in {attempt.wait} s",
            headers={"Retry-After": str(attempt.wait)},
        )
    try:
        accounts.change_password(session, user.id, body.current_password, body.new_password)
    except accounts.WrongPassword:
        raise  # counted
    except BaseException:
        throttle.succeeded(account, address, attempt)  # the current password was right
        raise
    throttle.succeeded(account, address, attempt)
    audit(session, request, "user.password", actor=user, target=f"user:{user.id}")
    return Response(status_code=204)


@router.get(
    "/users",
    response_model=list[UserPublic] | Page[UserPublic],
    summary="List accounts (admin)",
    description=(
        "Accounts in id order, one window of them (`limit`, `offset`). A bare list, as before; with "
        "`paged=true` a page: `data`, `count` (accounts in all), `limit`, `offset`."
    ),
    responses=errors(401, 403, 422, e403=ADMIN_ONLY),
)
def list_users(
    session: DbSession, admin: AdminUser, limit: PageLimit = 50, offset: PageOffset = 0, paged: Paged = False
) -> list[UserPublic] | Page[UserPublic]:
    page = accounts.page_users(session, offset=offset, limit=limit)
    return page if paged else page.data


@router.post(
    "/users",
    response_model=UserPublic,
    status_code=201,
    summary="Create an account (admin)",
    description="A new account with a password the platform's policy accepts; the username is unique in any case.",
    responses=errors(
        401,
        403,
        409,
        413,
        422,
        e403=ADMIN_ONLY,
        e409="The username is taken (in any case).",
        e422="An invalid username or role, or a password the policy refuses.",
    ),
)
def create_user(request: Request, session: DbSession, admin: AdminUser, body: UserCreate) -> UserPublic:
    user = accounts.create_user(session, body.username, body.password, body.role)
    audit(session, request, "user.create", actor=admin, target=f"user:{user.id}", role=user.role)
    return user


@router.get(
    "/users/{user_id}",
    response_model=UserPublic,
    summary="One account (admin)",
    description="An account with its role, state and own limits.",
    responses=errors(401, 403, 404, 422, e403=ADMIN_ONLY, e404="No account with this id."),
)
def get_user(user_id: UserId, session: DbSession, admin: AdminUser) -> UserPublic:
    return accounts.get_user_public(session, user_id)


@router.patch(
    "/users/{user_id}",
    response_model=UserPublic,
    summary="Change an account (admin)",
    description=(
        "Only the fields sent change: role, enabled, password (revokes the user's tokens, as disabling does) "
        "and the account's own limits. A limit sent as null returns the account to the platform default "
        "(MAX_QUEUED_JOBS_PER_USER, MAX_RUNNING_JOBS_PER_USER, JOB_MAX_HOURS)."
    ),
    responses=errors(401, 403, 404, 413, 422, e403=ADMIN_ONLY, e404="No account with this id."),
)
def update_user(
    user_id: UserId, request: Request, session: DbSession, admin: AdminUser, body: UserUpdate
) -> UserPublic:
    limits = {name: getattr(body, name) for name in SETTING if name in body.model_fields_set}
    user = accounts.update_user(
        session, user_id, role=body.role, is_active=body.is_active, password=body.password, limits=limits
    )
    changed = sorted(set(body.model_dump(exclude_none=True)) | set(limits))
    audit(session, request, "user.update", actor=admin, target=f"user:{user_id}", fields=changed)
    return user
