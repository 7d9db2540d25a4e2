"""One error hierarchy for the platform. Messages are safe to show to a user or an API client."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_CONFIG = "invalid_config"
    INVALID_DATASET = "invalid_dataset"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PERMISSION_DENIED = "permission_denied"
    UNSUPPORTED = "unsupported"
    QUOTA_EXCEEDED = "quota_exceeded"  # a per-account limit (queued jobs): 429
    INTERNAL = "internal"


class PlatformError(Exception):
    """Base of every error the platform raises on purpose."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, code: ErrorCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(PlatformError):
    code = ErrorCode.INVALID_CONFIG


class DatasetError(PlatformError):
    code = ErrorCode.INVALID_DATASET


class NotFoundError(PlatformError):
    code = ErrorCode.NOT_FOUND


class DeviceError(PlatformError):
    code = ErrorCode.UNSUPPORTED


class QuotaExceeded(PlatformError):
    """The account is at one of its limits; the message names the limit and how to get below it."""

    code = ErrorCode.QUOTA_EXCEEDED
