"""The edge guards as ASGI sees them: a FastAPI app behind ``BodyLimit`` and ``SecurityHeaders``, driven with
the exact messages a server sends (declared and chunked bodies), counting what the app was allowed to read."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi import FastAPI, Request

from finetune_platform.http_guard import AUTHENTICATED, BodyLimit, RouteTable, SecurityHeaders

CHUNK = 64 * 1024


def body_app() -> tuple[FastAPI, list[int]]:
    """An app whose routes read their whole body; ``seen`` gets the size each one read."""
    app = FastAPI()
    seen: list[int] = []

    @app.post("/predict")
    async def predict(request: Request) -> dict:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body), "authenticated": bool(request.scope.get(AUTHENTICATED))}

    @app.post("/datasets")
    async def upload(request: Request) -> dict:
        seen.append(len(await request.body()))
        return {"bytes": seen[-1]}

    @app.post("/login")
    async def login(request: Request) -> dict:
        seen.append(len(await request.body()))
        return {"access_token": "t"}

    @app.get("/models")
    async def models() -> dict:
        return {"loaded": []}

    return app, seen


def call(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> dict:
    """One request through ``app``; returns status, headers, JSON body and how many chunks it pulled."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"", "server": ("test", 80),
        "client": ("127.0.0.1", 1), "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }  # fmt: skip
    pulled = 0
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {
        "status": start["status"],
        "headers": {k.decode(): v.decode() for k, v in start["headers"]},
        "json": json.loads(body) if body else None,
        "pulled": pulled,
        "starts": sum(1 for m in sent if m["type"] == "http.response.start"),
    }


def guarded(**options):
    app, seen = body_app()
    return BodyLimit(app, default_limit=1024 * 1024, **options), seen


def test_a_declared_length_over_the_limit_is_refused_before_a_byte_is_read():
    guard, seen = guarded()
    answer = call(guard, "POST", "/predict", {"content-length": str(300 * 1024 * 1024)}, [b"x" * CHUNK] * 4)
    assert (answer["status"], answer["json"]) == (
        413, {"detail": "request body larger than the limit of 1048576 bytes for POST /predict"}
    )  # fmt: skip
    assert (answer["pulled"], seen, answer["headers"]["connection"]) == (0, [], "close")


def test_a_chunked_body_is_cut_off_once_it_passes_the_limit():
    """No Content-Length (Transfer-Encoding: chunked): counted as it streams in; FastAPI would answer its own
    400 for a body it could not read, the caller gets the 413 instead; the app never held more than the cap."""
    guard, seen = guarded()
    chunks = [b"x" * CHUNK] * 160  # 10 MiB
    answer = call(guard, "POST", "/predict", {"transfer-encoding": "chunked"}, chunks)
    assert (answer["status"], answer["json"]["detail"], answer["starts"]) == (
        413, "request body larger than the limit of 1048576 bytes for POST /predict", 1
    )  # fmt: skip
    assert answer["pulled"] == 1024 * 1024 // CHUNK + 1  # the chunk that passed the cap never reached the app
    assert seen == []


def test_a_body_within_its_limit_reaches_the_app_whole():
    guard, seen = guarded(limits={("POST", "/datasets"): 8 * 1024 * 1024})
    answer = call(guard, "POST", "/datasets", {"transfer-encoding": "chunked"}, [b"x" * CHUNK] * 64)
    assert (answer["status"], answer["json"], seen) == (200, {"bytes": 64 * CHUNK}, [64 * CHUNK])
    refused = call(guard, "POST", "/predict", {"content-length": str(2 * 1024 * 1024)}, [b"x" * CHUNK])
    assert refused["status"] == 413  # the other routes keep the default


@pytest.mark.parametrize("asynchronous", [True, False])
def test_an_anonymous_body_is_refused_unread_and_a_known_caller_passes(asynchronous):
    def check(scope) -> str | None:
        given = dict(scope["headers"]).get(b"x-api-key")
        return None if given == b"right" else "send an X-API-Key"

    async def check_async(scope) -> str | None:
        return check(scope)

    refusals: list[tuple[str, int, str]] = []

    def record(scope, status: int, detail: str) -> None:
        refusals.append((scope["path"], status, detail))

    async def record_async(scope, status: int, detail: str) -> None:
        record(scope, status, detail)

    guard, seen = guarded(
        authenticate=check_async if asynchronous else check,
        public=[("POST", "/login")],
        on_refusal=record_async if asynchronous else record,
    )
    anonymous = call(guard, "POST", "/predict", {"content-length": str(300 * 1024 * 1024)}, [b"x" * CHUNK])
    assert (anonymous["status"], anonymous["json"], anonymous["pulled"]) == (
        401, {"detail": "send an X-API-Key"}, 0
    )  # fmt: skip
    assert anonymous["headers"]["www-authenticate"] == "Bearer"
    chunked = call(guard, "POST", "/predict", {"transfer-encoding": "chunked"}, [b"x" * CHUNK])
    assert (chunked["status"], chunked["pulled"]) == (401, 0)
    known = call(guard, "POST", "/predict", {"content-length": "5", "x-api-key": "right"}, [b"hello"])
    assert (known["status"], known["json"]) == (200, {"bytes": 5, "authenticated": True})
    # a public route (the login form) and a request without a body are the routes' own business
    assert call(guard, "POST", "/login", {"content-length": "5"}, [b"hello"])["status"] == 200
    assert call(guard, "GET", "/models", {}, [])["status"] == 200
    assert seen == [5, 5]
    assert (
        refusals == [("/predict", 401, "send an X-API-Key")] * 2
    )  # for an audit log: the app never saw them


def test_a_content_length_that_is_not_a_number_is_refused():
    guard, seen = guarded()
    answer = call(guard, "POST", "/predict", {"content-length": "-5"}, [b"hello"])
    assert (answer["status"], answer["json"]["detail"], seen) == (
        400,
        "Content-Length is not a byte count",
        [],
    )


def test_route_patterns_pick_the_most_specific():
    table = RouteTable(
        {
            ("*", "/datasets*"): 1,
            ("POST", "/datasets*"): 2,
            ("POST", "/datasets/uploads*"): 3,
            ("POST", "/datasets"): 4,
        }
    )
    assert table.find("POST", "/datasets") == 4
    assert table.find("POST", "/datasets/uploads/7") == 3
    assert table.find("POST", "/datasets/7") == 2
    assert table.find("PUT", "/datasets/7") == 1
    assert table.find("POST", "/jobs") is None
    with pytest.raises(ValueError, match="positive byte counts"):
        BodyLimit(FastAPI(), default_limit=0)


@pytest.mark.parametrize("environment", ["local", "production"])
def test_security_headers_on_every_response(environment):
    app, _ = body_app()

    @app.get("/framed")
    async def framed():
        from fastapi.responses import JSONResponse

        return JSONResponse({}, headers={"Content-Security-Policy": "default-src 'self'"})

    guard = SecurityHeaders(app, environment=environment)
    plain = call(guard, "GET", "/models", {}, [])["headers"]
    expected = {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "content-security-policy": "frame-ancestors 'none'",
        "referrer-policy": "no-referrer",
    }
    if environment == "production":
        expected["strict-transport-security"] = "max-age=31536000; includeSubDomains"
    assert {name: plain.get(name) for name in [*expected, "strict-transport-security"]} == {
        "strict-transport-security": None, **expected
    }  # fmt: skip
    assert "cache-control" not in plain
    token = call(guard, "POST", "/login", {"content-length": "0"}, [b""])["headers"]
    assert (token["cache-control"], token["x-frame-options"]) == ("no-store", "DENY")
    # a route that sets its own policy keeps it
    assert call(guard, "GET", "/framed", {}, [])["headers"]["content-security-policy"] == "default-src 'self'"
