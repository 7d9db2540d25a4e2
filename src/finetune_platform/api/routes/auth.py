"""Sign in and out: POST /login (OAuth2 password form, public) and POST /logout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from finetune_platform.api.deps import (
    CurrentUser,
    DbSession,
    audit,
    audit_apart,
    client_address,
    unauthorized,
)
from finetune_platform.api.schemas import errors
from finetune_platform.services.schemas.users import Token
from finetune_platform.services.users import authenticate, revoke_tokens, token_subject

router = APIRouter(tags=["auth"])
BAD_LOGIN = "incorrect username or password"


@router.post(
    "/login",
    response_model=Token,
    summary="Log in (OAuth2 password form)",
    description=(
        "A bearer token for a username (any case) and password, sent as an `application/x-www-form-urlencoded` "
        "form. Failed logins are throttled per account and address (429 with `Retry-After`) and slowed per "
        "address; every failure is audited. Public."
    ),
    responses=errors(
        401,
        413,
        422,
        429,
        e401="Wrong username or password, or a disabled account (one answer for all).",
        e413="A form larger than 4 KiB.",
        e429="Too many failed logins for this account from this address; retry after `Retry-After` seconds.",
    ),
    openapi_extra={
        "requestBody": {
            "content": {
                "application/x-www-form-urlencoded": {
                    "example": {"username": "alice", "password": "a long passphrase"}
                }
            }
        }
    },
)
def login(
    request: Request, session: DbSession, form: Annotated[OAuth2PasswordRequestForm, Depends()]
) -> Token:
    address = client_address(request)
    throttle = request.app.state.throttle
    attempt = throttle.attempt(form.username, address)  # counted before the password is checked
    if attempt.wait is not None:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many failed logins; try again in {attempt.wait} s",
            headers={"Retry-After": str(attempt.wait)},
        )
    user = authenticate(session, form.username, form.password)
    if user is None:  # the attempt stays counted as a failure
        # Its own transaction: the request's is rolled back with the 401.
        audit_apart(request, "login", target=f"username:{form.username[:64]}", outcome="failed")
        raise unauthorized(BAD_LOGIN)
    throttle.succeeded(form.username, address, attempt)
    token, lifetime = request.app.state.tokens.issue(token_subject(session, user.id))
    audit(session, request, "login", actor=user, target=f"user:{user.id}")
    return Token(access_token=token, expires_in=lifetime)


@router.post(
    "/logout",
    status_code=204,
    summary="Revoke every token of the caller",
    description="Every token issued to the caller so far stops working, on every device; log in again for a new one.",
    responses=errors(401),
)
def logout(request: Request, session: DbSession, user: CurrentUser) -> Response:
    revoke_tokens(session, user.id)
    audit(session, request, "logout", actor=user, target=f"user:{user.id}")
    return Response(status_code=204)
