"""One error hierarchy for the platform. Messages are safe to show to a user or an API client."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType


class ErrorCode(StrEnum):
    INVALID_CONFIG = "invalid_config"
    INVALID_DATASET = "invalid_dataset"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    PERMISSION_DENIED = "permission_denied"
    UNSUPPORTED = "unsupported"
    QUOTA_EXCEEDED = "quota_exceeded"  # a per-account limit (queued jobs): 429
    INTERNAL = "internal"


# The HTTP status of each code, answered by the REST API and the inference server alike: a client's mistake is
# 4xx, never 500, and a permission problem is 403, never 400.
HTTP_STATUS: Mapping[ErrorCode, int] = MappingProxyType(
    {
        ErrorCode.INVALID_CONFIG: 422,
        ErrorCode.INVALID_DATASET: 422,
        ErrorCode.NOT_FOUND: 404,
        ErrorCode.CONFLICT: 409,
        ErrorCode.PERMISSION_DENIED: 403,
        ErrorCode.UNSUPPORTED: 422,
        ErrorCode.QUOTA_EXCEEDED: 429,
        ErrorCode.INTERNAL: 500,
    }
)


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

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]


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
