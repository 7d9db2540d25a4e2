"""The API's login throttling, shared by every API process (tokens: ``security``; the token check:
``services.users.token_caller``)."""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from dataclasses import dataclass

import redis
from sqlalchemy import delete, func, select, text

from finetune_platform.db.models import LoginFailure
from finetune_platform.db.session import read_scope, session_scope
from finetune_platform.settings import Settings

logger = logging.getLogger("finetune_platform.api")

NOT_AUTHENTICATED = "not authenticated: send Authorization: Bearer <token> (POST /login gives one)"


def throttle_key(*parts: str) -> str:
    """A fixed-size key whatever a client sends (a 1 MB username stores 64 characters)."""
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Attempt:
    """A login attempt as counted: ``wait`` (seconds, or None when it may go ahead) and the entries it
    added, which a refused or successful attempt takes back."""

    wait: int | None
    entries: tuple[str, str]  # (account key entry, address key entry)


class LoginThrottle(ABC):
    """Sliding-window limits on failed logins, shared by every API process.

    Per (account, address): ``max_failures`` per window, then 429 until the oldest failure leaves the
    window, for that address only, so an attacker elsewhere cannot lock the owner out. Per address, over
    any accounts: beyond ``4 × max_failures`` per window the address is slowed to one try per
    ``window / (4 × max_failures)`` seconds, never locked, so people behind one NAT still get in. Entries
    expire with the window; keys are hashes, so the state is bounded by the failure rate, not by what
    clients send.

    An attempt is counted before the password is checked (``attempt``), and decided on a count that
    includes it: parallel guesses cannot all pass a check that ran before any of them was recorded.
    """

    def __init__(self, max_failures: int, window_seconds: float) -> None:
        self.max_failures, self.window = max_failures, float(window_seconds)
        self.address_limit = max_failures * 4
        self.address_interval = self.window / self.address_limit

    @abstractmethod
    def _entries(self, key: str, now: float) -> list[tuple[float, str]]:
        """(time, entry id) of ``key`` within the window ending at ``now``, oldest first."""

    @abstractmethod
    def _add(self, keys: list[str], now: float) -> list[str]:
        """Record one entry under each key; their ids, in order."""

    @abstractmethod
    def _record(self, keys: list[str], now: float) -> tuple[list[str], list[list[tuple[float, str]]]]:
        """Record one entry under each key and read each key's entries in one atomic step: the ids, and
        the entries of every key as they stood just after (own included, later attempts' not)."""

    @abstractmethod
    def _remove(self, key: str, entry: str) -> None: ...

    @abstractmethod
    def _clear(self, key: str) -> None: ...

    @staticmethod
    def _keys(username: str, address: str) -> list[str]:
        return [throttle_key("account", username.lower(), address), throttle_key("address", address)]

    def _decide(
        self, account: list[tuple[float, str]], by_address: list[tuple[float, str]], now: float
    ) -> int | None:
        waits = []
        if len(account) >= self.max_failures:
            waits.append(account[len(account) - self.max_failures][0] + self.window - now)
        if len(by_address) >= self.address_limit:
            waits.append(by_address[-1][0] + self.address_interval - now)
        waits = [wait for wait in waits if wait > 0]
        return max(1, math.ceil(max(waits))) if waits else None

    def retry_after(self, username: str, address: str) -> int | None:
        """Seconds to wait before another try is accepted, or None."""
        now = time.time()
        account_key, address_key = self._keys(username, address)
        return self._decide(self._entries(account_key, now), self._entries(address_key, now), now)

    def attempt(self, username: str, address: str) -> Attempt:
        """Count a try and read the counts in one atomic step, then decide on the failures recorded before
        it: of parallel tries, exactly the first ``max_failures`` go ahead. A refused try is taken back;
        an accepted one stays as a failure unless ``succeeded`` takes it back."""
        now = time.time()
        keys = self._keys(username, address)
        entries, (account, by_address) = self._record(keys, now)
        own = set(entries)
        wait = self._decide(
            [item for item in account if item[1] not in own],
            [item for item in by_address if item[1] not in own],
            now,
        )
        if wait is not None:
            for key, entry in zip(keys, entries, strict=True):
                self._remove(key, entry)
        return Attempt(wait, (entries[0], entries[1]))

    def failed(self, username: str, address: str) -> None:
        self._add(self._keys(username, address), time.time())

    def succeeded(self, username: str, address: str, attempt: Attempt | None = None) -> None:
        """The account's failures from this address are forgotten, and the successful try does not count
        against the address."""
        account_key, address_key = self._keys(username, address)
        self._clear(account_key)
        if attempt is not None:
            self._remove(address_key, attempt.entries[1])


class MemoryThrottle(LoginThrottle):
    """One process's counts (tests and single-process tools); at most ``max_keys`` keys, oldest evicted."""

    def __init__(self, max_failures: int, window_seconds: float, max_keys: int = 100_000) -> None:
        super().__init__(max_failures, window_seconds)
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[tuple[float, str]]] = OrderedDict()
        self._lock = threading.RLock()

    def _entries(self, key: str, now: float) -> list[tuple[float, str]]:
        with self._lock:
            entries = self._failures.get(key)
            if entries is None:
                return []
            while entries and entries[0][0] <= now - self.window:
                entries.popleft()
            if not entries:
                del self._failures[key]
            return list(entries)

    def _add(self, keys: list[str], now: float) -> list[str]:
        ids = [uuid.uuid4().hex for _ in keys]
        with self._lock:
            for key, entry in zip(keys, ids, strict=True):
                self._failures.setdefault(key, deque()).append((now, entry))
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_keys:
                self._failures.popitem(last=False)
        return ids

    def _record(self, keys: list[str], now: float) -> tuple[list[str], list[list[tuple[float, str]]]]:
        with self._lock:
            ids = self._add(keys, now)
            return ids, [self._entries(key, now) for key in keys]

    def _remove(self, key: str, entry: str) -> None:
        with self._lock:
            entries = self._failures.get(key)
            if entries is not None:
                self._failures[key] = deque(item for item in entries if item[1] != entry)

    def _clear(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


class RedisThrottle(LoginThrottle):
    """Counts in Redis sorted sets that expire with the window (REDIS_URL set). While Redis does not
    answer, the app database keeps the counts (``fallback``): a broker outage never opens the door, nor
    turns every login into an error."""

    def __init__(self, max_failures: int, window_seconds: float, url: str, fallback: LoginThrottle) -> None:
        super().__init__(max_failures, window_seconds)
        self.redis, self.fallback = (
            redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2),
            fallback,
        )
        self._errors = redis.RedisError

    def _degraded(self, exc: Exception) -> LoginThrottle:
        logger.warning("login throttle: Redis did not answer (%s); counting in the database", exc)
        return self.fallback

    def _entries(self, key: str, now: float) -> list[tuple[float, str]]:
        name = f"finetune:login:{key}"
        try:
            pipe = self.redis.pipeline()
            pipe.zremrangebyscore(name, "-inf", now - self.window)
            pipe.zrange(name, 0, -1, withscores=True)
            return [(score, member.decode()) for member, score in pipe.execute()[1]]
        except self._errors as exc:
            return self._degraded(exc)._entries(key, now)

    def _add(self, keys: list[str], now: float) -> list[str]:
        return self._record(keys, now)[0]

    def _record(self, keys: list[str], now: float) -> tuple[list[str], list[list[tuple[float, str]]]]:
        ids = [uuid.uuid4().hex for _ in keys]
        try:
            pipe = self.redis.pipeline(transaction=True)  # MULTI/EXEC: no other attempt runs in between
            for key, entry in zip(keys, ids, strict=True):
                name = f"finetune:login:{key}"
                pipe.zadd(name, {entry: now})
                pipe.zremrangebyscore(name, "-inf", now - self.window)
                pipe.expire(name, math.ceil(self.window))
                pipe.zrange(name, 0, -1, withscores=True)
            replies = pipe.execute()
        except self._errors as exc:
            return self._degraded(exc)._record(keys, now)
        read = [replies[index] for index in range(3, len(replies), 4)]
        return ids, [sorted((score, member.decode()) for member, score in entries) for entries in read]

    def _remove(self, key: str, entry: str) -> None:
        try:
            self.redis.zrem(f"finetune:login:{key}", entry)
        except self._errors as exc:
            self._degraded(exc)._remove(key, entry)

    def _clear(self, key: str) -> None:
        try:
            self.redis.delete(f"finetune:login:{key}")
        except self._errors as exc:
            self._degraded(exc)._clear(key)


class DatabaseThrottle(LoginThrottle):
    """Counts in the app database's login_failures table (no Redis); rows older than the window are
    deleted as new ones arrive, and at most ``max_rows`` are kept (oldest first out). Each new entry is
    committed before the count that decides on it."""

    def __init__(self, max_failures: int, window_seconds: float, settings: Settings, max_rows: int = 100_000):
        super().__init__(max_failures, window_seconds)
        self.settings, self.max_rows = settings, max_rows

    def _entries(self, key: str, now: float) -> list[tuple[float, str]]:
        with read_scope(self.settings) as session:
            rows = session.execute(
                select(LoginFailure.at, LoginFailure.id)
                .where(LoginFailure.key == key, LoginFailure.at > now - self.window)
                .order_by(LoginFailure.at, LoginFailure.id)
            )
            return [(at, str(entry)) for at, entry in rows]

    def _add(self, keys: list[str], now: float) -> list[str]:
        with session_scope(self.settings) as session:
            return self._insert(session, keys, now)

    def _insert(self, session, keys: list[str], now: float) -> list[str]:
        session.execute(delete(LoginFailure).where(LoginFailure.at <= now - self.window))
        rows = [LoginFailure(key=key, at=now) for key in keys]
        session.add_all(rows)
        session.flush()
        excess = (session.scalar(select(func.count()).select_from(LoginFailure)) or 0) - self.max_rows
        if excess > 0:
            oldest = select(LoginFailure.id).order_by(LoginFailure.id).limit(excess).scalar_subquery()
            session.execute(delete(LoginFailure).where(LoginFailure.id.in_(oldest)))
        return [str(row.id) for row in rows]

    def _record(self, keys: list[str], now: float) -> tuple[list[str], list[list[tuple[float, str]]]]:
        with session_scope(self.settings) as session:
            if session.get_bind().dialect.name == "postgresql":
                # Self-conflicting: one attempt at a time records and reads (plain reads are not blocked).
                # SQLite already serialises writers from the first write to the commit.
                session.execute(text("LOCK TABLE login_failures IN SHARE ROW EXCLUSIVE MODE"))
            ids = self._insert(session, keys, now)
            read = []
            for key in keys:
                rows = session.execute(
                    select(LoginFailure.at, LoginFailure.id)
                    .where(LoginFailure.key == key, LoginFailure.at > now - self.window)
                    .order_by(LoginFailure.at, LoginFailure.id)
                )
                read.append([(at, str(entry)) for at, entry in rows])
            return ids, read

    def _remove(self, key: str, entry: str) -> None:
        with session_scope(self.settings) as session:
            session.execute(
                delete(LoginFailure).where(LoginFailure.key == key, LoginFailure.id == int(entry))
            )

    def _clear(self, key: str) -> None:
        with session_scope(self.settings) as session:
            session.execute(delete(LoginFailure).where(LoginFailure.key == key))


def login_throttle(settings: Settings) -> LoginThrottle:
    """Redis when configured, the app database otherwise: every API process sees the same counts."""
    database = DatabaseThrottle(settings.LOGIN_MAX_FAILURES, settings.LOGIN_WINDOW_SECONDS, settings)
    if settings.REDIS_URL:
        return RedisThrottle(
            settings.LOGIN_MAX_FAILURES, settings.LOGIN_WINDOW_SECONDS, settings.REDIS_URL, fallback=database
        )
    return database
