"""Guards every HTTP face puts in front of its routes (pure ASGI middleware, so they run before a framework
reads a byte of the request): body sizes capped per route and anonymous bodies refused unread (``BodyLimit``),
and the security headers browsers act on (``SecurityHeaders``).

A framework reads and parses a request body before it runs the route's authentication: without these, an
anonymous 300 MB JSON body is read, parsed (~0.8 GB) and only then answered 401, while the server stalls."""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Sync or async; returns why the caller is refused (answered 401) or None. Sync ones run on a worker thread.
Authenticate = Callable[[Scope], "str | Awaitable[str | None] | None"]
AUTHENTICATED = "finetune_platform.authenticated"  # scope key: BodyLimit's authenticate passed the request
Route = tuple[str, str]  # (method or "*", exact path, or a prefix ending in "*")
T = TypeVar("T")
logger = logging.getLogger("finetune_platform.http")


class RouteTable(Generic[T]):
    """Values by (method, path) pattern; the most specific pattern wins: an exact path before a prefix, a longer
    prefix before a shorter one, a named method before ``*``. ``("POST", "/datasets*")`` is every POST under
    /datasets; paths are the request's ``scope["path"]`` (a ``root_path`` mount included)."""

    def __init__(self, entries: Mapping[Route, T] | Iterable[tuple[Route, T]] = ()) -> None:
        items = entries.items() if isinstance(entries, Mapping) else entries
        self._exact: dict[Route, T] = {}
        prefixes: list[tuple[str, str, T]] = []
        for (method, path), value in items:
            if path.endswith("*"):
                prefixes.append((method.upper(), path[:-1], value))
            else:
                self._exact[(method.upper(), path)] = value
        self._prefixes = sorted(prefixes, key=lambda entry: (-len(entry[1]), entry[0] == "*"))

    def find(self, method: str, path: str) -> T | None:
        for key in ((method, path), ("*", path)):
            if key in self._exact:
                return self._exact[key]
        for pattern_method, prefix, value in self._prefixes:
            if pattern_method in (method, "*") and path.startswith(prefix):
                return value
        return None


async def _call(function: Callable, *args: object) -> Any:
    """Await an async callable; run a sync one on a worker thread (it may read a database)."""
    if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(type(function).__call__):
        return await function(*args)
    return await run_in_threadpool(function, *args)


class _BodyTooLarge(Exception):
    """Raised from the guarded ``receive`` once the body passes its limit (the app never sees the chunk)."""


async def answer(send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None) -> None:
    """A JSON ``{"detail": ...}`` response that also closes the connection: what the client still sends of
    the body it was refused is not read."""
    body = json.dumps({"detail": detail}).encode("utf-8")
    raw = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
        (b"connection", b"close"),
        *(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in (headers or {}).items()
        ),
    ]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """Caps request bodies before the app reads them and, with ``authenticate``, refuses anonymous bodies unread.

    ``default_limit``: bytes any body may have; ``limits``: other caps by route (see ``RouteTable``), e.g.
    ``{("POST", "/datasets"): settings.MAX_UPLOAD_BYTES}``. A declared ``Content-Length`` over the cap is
    answered 413 at once; a body without one (chunked) is counted as it streams in and answered 413 as soon
    as it passes the cap: the app never holds more than the cap.

    ``authenticate(scope)``, sync or async, runs first for every request that carries a body (a positive
    ``Content-Length`` or a ``Transfer-Encoding``) on a route not in ``public``: a message means 401 with
    ``WWW-Authenticate: Bearer``, before a byte is read; None lets it through and sets
    ``scope[AUTHENTICATED] = True`` so the route's own check may skip a second look-up.

    ``on_refusal(scope, status, detail)``, sync or async, hears of every 400/401/413 this answers (an audit
    log): these never reach the app's exception handlers. Its failure is logged; the refusal stands."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default_limit: int,
        limits: Mapping[Route, int] | None = None,
        authenticate: Authenticate | None = None,
        public: Iterable[Route] = (),
        on_refusal: Callable[[Scope, int, str], Awaitable[None] | None] | None = None,
    ) -> None:
        if default_limit < 1 or any(limit < 1 for limit in (limits or {}).values()):
            raise ValueError("body limits are positive byte counts")
        self.app, self.default_limit = app, default_limit
        self.limits: RouteTable[int] = RouteTable(limits or {})
        self.authenticate = authenticate
        self.public: RouteTable[bool] = RouteTable((route, True) for route in public)
        self.on_refusal = on_refusal

    async def _refusal(self, scope: Scope) -> str | None:
        assert self.authenticate is not None
        return await _call(self.authenticate, scope)

    async def _refuse(
        self, scope: Scope, send: Send, status: int, detail: str, headers: Mapping[str, str] | None = None
    ) -> None:
        await answer(send, status, detail, headers)
        if self.on_refusal is not None:
            try:
                await _call(self.on_refusal, scope, status, detail)
            except Exception:
                logger.exception("on_refusal failed for a %d answer", status)

    def limit_for(self, method: str, path: str) -> int:
        found = self.limits.find(method, path)
        return self.default_limit if found is None else found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        limit = self.limit_for(method, path)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        size: int | None = None
        if declared is not None:
            size = int(declared) if declared.isascii() and declared.strip().isdigit() else -1
            if size < 0:
                await self._refuse(scope, send, 400, "Content-Length is not a byte count")
                return
        if (
            (size or "transfer-encoding" in headers)
            and self.authenticate
            and not self.public.find(method, path)
        ):
            problem = await self._refusal(scope)
            if problem is not None:
                await self._refuse(scope, send, 401, problem, {"WWW-Authenticate": "Bearer"})
                return
            scope[AUTHENTICATED] = True
        refusal = f"request body larger than the limit of {limit} bytes for {method} {path[:200]}"
        if size is not None and size > limit:
            await self._refuse(scope, send, 413, refusal)
            return
        await self._streamed(scope, receive, send, limit, refusal)

    async def _streamed(self, scope: Scope, receive: Receive, send: Send, limit: int, refusal: str) -> None:
        received = 0
        exceeded = started = answered = False

        async def guarded_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, answered
            if exceeded and not started:
                # the app answers a body it could not read (FastAPI: 400 "error parsing the body"): say why
                if not answered:
                    answered = True
                    await self._refuse(scope, send, 413, refusal)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
        if exceeded and not answered and not started:
            await self._refuse(scope, send, 413, refusal)


class SecurityHeaders:
    """Adds the headers browsers act on to every HTTP response that does not set them itself: no MIME
    sniffing, no framing (clickjacking), no referrer, ``Cache-Control: no-store`` on the ``no_store_paths``
    (token responses), and HSTS when ``environment`` is production (served over TLS there)."""

    def __init__(
        self, app: ASGIApp, *, environment: str = "local", no_store_paths: Iterable[str] = ("/login",)
    ) -> None:
        self.app = app
        self.no_store_paths = frozenset(no_store_paths)
        common = {
            b"x-content-type-options": b"nosniff",
            b"x-frame-options": b"DENY",
            b"content-security-policy": b"frame-ancestors 'none'",
            b"referrer-policy": b"no-referrer",
        }
        if environment == "production":
            common[b"strict-transport-security"] = b"max-age=31536000; includeSubDomains"
        self.common = common
        self.no_store = {**common, b"cache-control": b"no-store", b"pragma": b"no-cache"}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.no_store if scope["path"] in self.no_store_paths else self.common

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra.items() if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


MAX_PROBLEMS = 20  # a 422 lists at most this many fields: an answer never grows with what a client sent


def invalid_fields(exc: Any) -> list[dict[str, str]]:
    """The first MAX_PROBLEMS invalid fields of a request (a FastAPI RequestValidationError), each named
    with pydantic's message, without echoing what was sent (FastAPI's default answer repeats every input)."""
    return [
        {"field": ".".join(str(part) for part in error["loc"])[:200], "message": str(error["msg"])[:200]}
        for error in exc.errors()[:MAX_PROBLEMS]
    ]
