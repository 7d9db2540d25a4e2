"""Tokens, the signing secret, the current user, and login throttling."""

from __future__ import annotations

import math
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from finetune_platform.errors import ConfigError
from finetune_platform.settings import Settings

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32
_PLACEHOLDERS = ("change", "placeholder", "example", "secret", "default", "your", "xxxx", "todo", "dummy")


def signing_secret(settings: Settings) -> str:
    """JWT_SECRET, checked; in local mode without one, a random key kept (0600) in FINETUNE_HOME."""
    if settings.JWT_SECRET is not None:
        value = settings.JWT_SECRET.get_secret_value()
        if settings.ENVIRONMENT != "local":
            if len(value.encode("utf-8")) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"JWT_SECRET: at least {MIN_SECRET_BYTES} bytes outside local mode "
                    f"(got {len(value.encode('utf-8'))}); generate one with `openssl rand -hex 32`"
                )
            lowered = value.lower()
            if any(word in lowered for word in _PLACEHOLDERS) or len(set(value)) < 8:
                raise ConfigError(
                    "JWT_SECRET: looks like a placeholder; generate one with `openssl rand -hex 32`"
                )
        return value
    if settings.ENVIRONMENT != "local":
        raise ConfigError(
            "JWT_SECRET is required outside local mode; generate one with `openssl rand -hex 32`"
        )
    path = settings.FINETUNE_HOME / "jwt_secret"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "x", encoding="utf-8") as handle:
                path.chmod(0o600)
                handle.write(secrets.token_hex(32))
        except FileExistsError:  # another process wrote it first
            pass
    return path.read_text(encoding="utf-8").strip()


class InvalidToken(Exception):
    pass


@dataclass(frozen=True)
class TokenClaims:
    user_id: int
    token_version: int
    jti: str


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.secret = signing_secret(settings)
        self.lifetime = timedelta(minutes=settings.JWT_EXPIRE_MINUTES)

    def issue(self, user_id: int, token_version: int) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims = {
            "sub": str(user_id),
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "tv": token_version,
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), int(self.lifetime.total_seconds())

    def decode(self, token: str) -> TokenClaims:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],  # never "none", never what the token's header asks for
                options={"require": ["exp", "iat", "sub", "jti"]},
            )
            return TokenClaims(int(claims["sub"]), int(claims.get("tv", -1)), str(claims["jti"]))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None


class LoginThrottle:
    """Sliding-window limits on failed logins, per (account, address) and per address.

    A lock-out lasts at most one window and only for the address that failed: an attacker elsewhere can
    neither lock the owner out of their account for good nor from their own address. In-process state:
    with several API processes each keeps its own counts.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures, self.window = max_failures, window_seconds
        self.address_limit = max_failures * 4
        self._failures: dict[tuple[str, ...], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, ...], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another try is accepted, or None."""
        now = time.monotonic()
        with self._lock:
            waits = []
            for key, limit in (
                (("account", username.lower(), address), self.max_failures),
                (("address", address), self.address_limit),
            ):
                times = self._recent(key, now)
                if len(times) >= limit:
                    waits.append(times[len(times) - limit] + self.window - now)
            return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, username: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (("account", username.lower(), address), ("address", address)):
                self._recent(key, now).append(now)

    def succeeded(self, username: str, address: str) -> None:
        with self._lock:
            self._failures.pop(("account", username.lower(), address), None)
