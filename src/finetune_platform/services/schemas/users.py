"""Accounts: what a client sends to create or change one, and what it sees of one (never the password hash)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from finetune_platform.services.schemas.common import Public, Strict, Timestamp

USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{1,63}$"
RoleName = Literal["admin", "user"]


class Token(BaseModel):
    access_token: str = Field(description="JWT (HS256) to send as `Authorization: Bearer <token>`.")
    token_type: str = Field(default="bearer", description="Always `bearer`.")
    expires_in: int = Field(description="Seconds until the token expires.")


class UserPublic(Public):
    id: int = Field(description="User id.")
    username: str = Field(description="Login name.")
    role: str = Field(description="`admin` or `user`.")
    is_active: bool = Field(description="Disabled users cannot log in; their tokens are refused.")
    created_at: Timestamp = Field(description="When the account was created.")
    max_queued_jobs: int | None = Field(
        default=None, description="The account's own queued-jobs limit; null: MAX_QUEUED_JOBS_PER_USER."
    )
    max_running_jobs: int | None = Field(
        default=None, description="The account's own running-jobs limit; null: MAX_RUNNING_JOBS_PER_USER."
    )
    max_job_hours: float | None = Field(
        default=None, description="The account's own hours-per-job limit; null: JOB_MAX_HOURS."
    )

    @classmethod
    def of(cls, user: Any) -> UserPublic:
        """From a User row (or anything with its columns)."""
        return cls(
            id=user.id,
            username=user.username,
            role=user.role,
            is_active=user.is_active,
            created_at=user.created_at,
            max_queued_jobs=user.max_queued_jobs,
            max_running_jobs=user.max_running_jobs,
            max_job_hours=user.max_job_hours,
        )


class UserCreate(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"username": "alice", "password": "a long passphrase", "role": "user"}]
        }
    )

    username: str = Field(
        min_length=2,
        max_length=64,
        pattern=USERNAME_PATTERN,
        description="Login name: letters, digits, . _ @ -.",
    )
    password: str = Field(
        min_length=10,
        max_length=256,
        description="At least 10 characters, not a common password and not containing the username.",
    )
    role: RoleName = Field(default="user", description="`admin` or `user`.")


class UserUpdate(Strict):
    """Only the fields sent change; a limit sent as null returns to the platform default."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"is_active": False}, {"role": "admin", "max_queued_jobs": 20}]}
    )

    role: RoleName | None = Field(default=None, description="New role: `admin` or `user`.")
    is_active: bool | None = Field(
        default=None, description="false disables the account and revokes its tokens."
    )
    password: str | None = Field(
        default=None,
        min_length=10,
        max_length=256,
        description="New password (revokes the user's tokens): at least 10 characters, not a common one.",
    )
    max_queued_jobs: int | None = Field(
        default=None,
        ge=0,
        le=100_000,
        description="Jobs the account may have queued (0-100,000; 0 stops it submitting); null: the default.",
    )
    max_running_jobs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Jobs of the account that run at once (1-10,000); null: the default.",
    )
    max_job_hours: float | None = Field(
        default=None,
        ge=0.001,
        le=8760,
        allow_inf_nan=False,
        description="Hours one job of the account may run (0.001-8760); null: the default (JOB_MAX_HOURS).",
    )


class PasswordChange(Strict):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"current_password": "a long passphrase", "new_password": "another long passphrase"}]
        }
    )

    current_password: str = Field(max_length=256, description="The password in use now.")
    new_password: str = Field(
        min_length=10,
        max_length=256,
        description="At least 10 characters, not a common password and not containing the username.",
    )
