"""Tokens, the signing secret, and login throttling shared by every API process."""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt

from finetune_platform.services.users import TokenSubject
from finetune_platform.settings import Settings

ALGORITHM = "HS256"


def signing_secret(settings: Settings) -> str:
    """JWT_SECRET, checked by the settings' secret policy; in local mode without one, a random key kept
    (0600) in FINETUNE_HOME."""
    settings.check_secrets()
    if settings.JWT_SECRET is not None:
        return settings.JWT_SECRET.get_secret_value()
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
    token_key: str
    jti: str


class Tokens:
    def __init__(self, settings: Settings) -> None:
        self.secret = signing_secret(settings)
        self.lifetime = timedelta(minutes=settings.JWT_EXPIRE_MINUTES)

    def issue(self, subject: TokenSubject) -> tuple[str, int]:
        now = datetime.now(UTC)
        claims = {
            "sub": str(subject.user_id),
            "iat": now,
            "exp": now + self.lifetime,
            "jti": uuid.uuid4().hex,
            "tv": subject.token_version,
            "tk": subject.token_key,  # binds the token to this account, whatever happens to its id
        }
        return jwt.encode(claims, self.secret, algorithm=ALGORITHM), int(self.lifetime.total_seconds())

    def decode(self, token: str) -> TokenClaims:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self.secret,
                algorithms=[ALGORITHM],  # never "none", never what the token's header asks for
                options={"require": ["exp", "iat", "sub", "jti", "tk"]},
            )
            return TokenClaims(
                int(claims["sub"]), int(claims.get("tv", -1)), str(claims["tk"]), str(claims["jti"])
            )
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise InvalidToken(str(exc)) from None


def throttle_key(*parts: str) -> str:
    """A fixed-size key whatever a client sends (a 1 MB username stores 64 characters)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


class LoginThrottle(ABC):
    """Sliding-window limits on failed logins, shared by every API process.

    Per (account, address): ``max_failures`` per window, then 429 until the oldest failure leaves the
    window, for that address only, so an attacker elsewhere cannot lock the owner out. Per address, over
    any accounts: beyond ``4 × max_failures`` per window the address is slowed to one try per
    ``window / (4 × max_failures)`` seconds, never locked, so people behind one NAT still get in. Entries
    expire with the window; keys are hashes, so the state is bounded by the failure rate, not by what
    clients send.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures, self.window = max_failures, float(window_seconds)
        self.address_limit = max_failures * 4
        self.address_interval = self.window / self.address_limit

    @abstractmethod
    def _times(self, key: str, now: float) -> list[float]:
        """The failure times of ``key`` within the window ending at ``now``, oldest first."""

    @abstractmethod
    def _add(self, keys: list[str], now: float) -> None: ...

    @abstractmethod
    def _clear(self, key: str) -> None: ...

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another try is accepted, or None."""
        now = time.time()
        waits = []
        account = self._times(throttle_key("account", username.lower(), address), now)
        if len(account) >= self.max_failures:
            waits.append(account[len(account) - self.max_failures] + self.window - now)
        by_address = self._times(throttle_key("address", address), now)
        if len(by_address) >= self.address_limit:
            waits.append(by_address[-1] + self.address_interval - now)
        waits = [wait for wait in waits if wait > 0]
        return max(1, math.ceil(max(waits))) if waits else None

    def failed(self, username: str, address: str) -> None:
        self._add(
            [throttle_key("account", username.lower(), address), throttle_key("address", address)],
            time.time(),
        )

    def succeeded(self, username: str, address: str) -> None:
        self._clear(throttle_key("account", username.lower(), address))


class MemoryThrottle(LoginThrottle):
    """One process's counts (tests and single-process tools); at most ``max_keys`` keys, oldest evicted."""

    def __init__(self, max_failures: int, window_seconds: float, max_keys: int = 100_000) -> None:
        super().__init__(max_failures, window_seconds)
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _times(self, key: str, now: float) -> list[float]:
        with self._lock:
            times = self._failures.get(key)
            if times is None:
                return []
            while times and times[0] <= now - self.window:
                times.popleft()
            if not times:
                del self._failures[key]
            return list(times)

    def _add(self, keys: list[str], now: float) -> None:
        with self._lock:
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)

    def _clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class RedisThrottle(LoginThrottle):
    """Counts in Redis sorted sets that expire with the window (REDIS_URL set)."""

    def __init__(self, max_failures: int, window_seconds: float, url: str) -> None:
        import redis

        super().__init__(max_failures, window_seconds)
        self.redis = redis.Redis.from_url(url, socket_timeout=5)

    def _times(self, key: str, now: float) -> list[float]:
        name = f"finetune:login:{key}"
        pipe = self.redis.pipeline()
        pipe.zremrangebyscore(name, "-inf", now - self.window)
        pipe.zrange(name, 0, -1, withscores=True)
        return [score for _, score in pipe.execute()[1]]

    def _add(self, keys: list[str], now: float) -> None:
        pipe = self.redis.pipeline()
        for key in keys:
            name = f"finetune:login:{key}"
            pipe.zadd(name, {uuid.uuid4().hex: now})
            pipe.zremrangebyscore(name, "-inf", now - self.window)
            pipe.expire(name, math.ceil(self.window))
        pipe.execute()

    def _clear(self, key: str) -> None:
        self.redis.delete(f"finetune:login:{key}")


class DatabaseThrottle(LoginThrottle):
    """Counts in the app database's login_failures table (no Redis); rows older than the window are
    deleted as new ones arrive, and at most ``max_rows`` are kept (oldest first out)."""

    def __init__(self, max_failures: int, window_seconds: float, settings: Settings, max_rows: int = 100_000):
        super().__init__(max_failures, window_seconds)
        self.settings, self.max_rows = settings, max_rows

    def _times(self, key: str, now: float) -> list[float]:
        from sqlalchemy import select

        from finetune_platform.db.models import LoginFailure
        from finetune_platform.db.session import read_scope

        with read_scope(self.settings) as session:
            return list(
                session.scalars(
                    select(LoginFailure.at)
                    .where(LoginFailure.key == key, LoginFailure.at > now - self.window)
                    .order_by(LoginFailure.at)
                )
            )

    def _add(self, keys: list[str], now: float) -> None:
        from sqlalchemy import delete, func, select

        from finetune_platform.db.models import LoginFailure
        from finetune_platform.db.session import session_scope

        with session_scope(self.settings) as session:
            session.execute(delete(LoginFailure).where(LoginFailure.at <= now - self.window))
            session.add_all(LoginFailure(key=key, at=now) for key in keys)
            session.flush()
            excess = (session.scalar(select(func.count()).select_from(LoginFailure)) or 0) - self.max_rows
            if excess > 0:
                oldest = select(LoginFailure.id).order_by(LoginFailure.id).limit(excess).scalar_subquery()
                session.execute(delete(LoginFailure).where(LoginFailure.id.in_(oldest)))

    def _clear(self, key: str) -> None:
        from sqlalchemy import delete

        from finetune_platform.db.models import LoginFailure
        from finetune_platform.db.session import session_scope

        with session_scope(self.settings) as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == key))


def login_throttle(settings: Settings) -> LoginThrottle:
    """Redis when configured, the app database otherwise: every API process sees the same counts."""
    if settings.REDIS_URL:
        return RedisThrottle(settings.LOGIN_MAX_FAILURES, settings.LOGIN_WINDOW_SECONDS, settings.REDIS_URL)
    return DatabaseThrottle(settings.LOGIN_MAX_FAILURES, settings.LOGIN_WINDOW_SECONDS, settings)
