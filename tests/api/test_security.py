"""Authentication and the abuse cases: forged and stale tokens, guessing passwords, big uploads, paths."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from fastapi.testclient import TestClient

from finetune_platform.errors import ConfigError
from tests.api.conftest import PASSWORD, SAMPLE, login


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def signed(api, **claims) -> str:
    return jwt.encode(claims, api.app.state.tokens.secret, algorithm="HS256")


def token_key(api, who: str) -> str:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import token_subject

    with session_scope(api.settings) as session:
        return token_subject(session, api.ids[who]).token_key


def claims_for(api, who: str, **changes) -> dict:
    now = datetime.now(UTC)
    base = {
        "sub": str(api.ids[who]),
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": "j1",
        "tv": 0,
        "tk": token_key(api, who),
    }
    base.update(changes)
    return {key: value for key, value in base.items() if value is not None}


def status_with(api, token: str) -> tuple[int, str]:
    response = TestClient(api.app).get("/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code, response.json().get("detail", "")


def current_version(api, who: str) -> int:
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.users import user_by_id

    with session_scope(api.settings) as session:
        return user_by_id(session, api.ids[who])[1]


def test_forged_and_stale_tokens_are_refused(api):
    version = current_version(api, "alice")
    good = signed(api, **claims_for(api, "alice", tv=version))
    assert status_with(api, good)[0] == 200
    header, payload, signature = good.split(".")
    forged_payload = b64(
        {**json.loads(base64.urlsafe_b64decode(payload + "==")), "sub": str(api.ids["root"])}
    )
    expired = claims_for(api, "alice", tv=version, exp=datetime.now(UTC) - timedelta(seconds=5))
    cases = {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}.",
        "wrong signature": jwt.encode(claims_for(api, "alice", tv=version), "x" * 40, algorithm="HS256"),
        "tampered payload": f"{header}.{forged_payload}.{signature}",
        "expired": signed(api, **expired),
        "no exp": signed(api, **claims_for(api, "alice", tv=version, exp=None)),
        "no jti": signed(api, **claims_for(api, "alice", tv=version, jti=None)),
        "no sub": signed(api, **claims_for(api, "alice", tv=version, sub=None)),
        "no token key": signed(api, **claims_for(api, "alice", tv=version, tk=None)),
        "another account's token key": signed(
            api, **claims_for(api, "alice", tv=version, tk=token_key(api, "bob"))
        ),
        "unknown user": signed(api, **claims_for(api, "alice", tv=version, sub="999999")),
        "not a token": "garbage",
        "HS512": jwt.encode(
            claims_for(api, "alice", tv=version), api.app.state.tokens.secret, algorithm="HS512"
        ),
    }
    for name, token in cases.items():
        code, detail = status_with(api, token)
        assert code == 401, name
        assert detail.startswith("invalid token"), (name, detail)
    assert status_with(api, cases["expired"])[1] == "invalid token: Signature has expired"


def test_logout_password_change_and_disabling_revoke_tokens(api):
    alice = api.as_("alice")
    other_session = api.as_("alice")
    assert alice.post("/logout").status_code == 204
    for client in (alice, other_session):  # every outstanding token of the user
        assert client.get("/users/me").status_code == 401
    bob = api.as_("bob")
    changed = bob.post(
        "/users/me/password", json={"current_password": PASSWORD, "new_password": "another one"}
    )
    assert changed.status_code == 204
    assert bob.get("/users/me").status_code == 401
    wrong = api.as_("bob").post(
        "/users/me/password", json={"current_password": "nope", "new_password": "a new passphrase"}
    )
    assert (wrong.status_code, wrong.json()["detail"]) == (403, "current password is wrong")
    root = api.as_("root")
    assert root.patch(f"/users/{api.ids['bob']}", json={"password": PASSWORD}).status_code == 200
    bob = api.as_("bob")
    assert root.patch(f"/users/{api.ids['bob']}", json={"is_active": False}).status_code == 200
    assert bob.get("/users/me").status_code == 401
    assert login(TestClient(api.app, client=("10.0.0.9", 1)), "bob").status_code == 401  # disabled: no login
    assert root.patch(f"/users/{api.ids['bob']}", json={"is_active": True}).status_code == 200
    assert login(TestClient(api.app, client=("10.0.0.9", 1)), "bob").status_code == 200


def test_login_failures_look_alike_and_are_throttled_but_never_lock_for_good(api):
    attacker = TestClient(api.app, client=("203.0.113.7", 1))
    unknown, wrong = login(attacker, "nobody", "whatever1"), login(attacker, "alice", "wrong password")
    assert unknown.status_code == wrong.status_code == 401
    assert unknown.json() == wrong.json() == {"detail": "incorrect username or password"}
    for _ in range(2):  # LOGIN_MAX_FAILURES = 3 per account and address
        assert login(attacker, "alice", "wrong password").status_code == 401
    throttled = login(attacker, "alice", PASSWORD)  # even the right password waits
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 2
    owner = TestClient(api.app, client=("198.51.100.1", 1))
    assert login(owner, "alice").status_code == 200  # the owner, elsewhere, is not locked out
    time.sleep(int(throttled.headers["retry-after"]) + 0.2)
    assert login(attacker, "alice").status_code == 200  # and the attacker's wait ends: no permanent lockout


@pytest.fixture(params=["memory", "sqlite", "postgresql", "redis"])
def throttle_of(request, tmp_path):
    """A factory of login throttles on one shared backend: two calls are two API processes."""
    from finetune_platform.api import auth
    from finetune_platform.db.session import upgrade

    if request.param == "memory":
        shared = auth.MemoryThrottle(3, 60, max_keys=50)
        return lambda: shared
    if request.param in ("sqlite", "postgresql"):
        from tests.conftest import database_settings

        context = database_settings(request.param, tmp_path)
        settings = context.__enter__()
        request.addfinalizer(lambda: context.__exit__(None, None, None))
        upgrade(settings)
        return lambda: auth.DatabaseThrottle(3, 60, settings, max_rows=200)
    from tests.integration.queue_harness import require_redis

    # its own database: flushing database 0 would drop other tests' queued messages (tests run in parallel)
    url = require_redis("redis://127.0.0.1:6379/12")
    import redis

    redis.Redis.from_url(url).flushdb()
    return lambda: auth.RedisThrottle(3, 60, url, fallback=auth.MemoryThrottle(3, 60))


def test_one_address_guessing_many_accounts_is_slowed_not_locked(throttle_of):
    throttle, other_process = throttle_of(), throttle_of()
    for number in range(11):  # per address: 4 × max_failures failures, over any accounts
        throttle.failed(f"user{number}", "203.0.113.7")
    assert other_process.retry_after("bob", "203.0.113.7") is None
    throttle.failed("user11", "203.0.113.7")
    # Slowed to one try per window / 12 = 5 s, seen by every process; not locked for the window.
    assert 4 <= other_process.retry_after("bob", "203.0.113.7") <= 5
    assert other_process.retry_after("bob", "198.51.100.1") is None
    for _ in range(3):
        other_process.failed("carol", "198.51.100.1")
    assert 59 <= throttle.retry_after("CAROL", "198.51.100.1") <= 60  # the account, in any case
    throttle.succeeded("carol", "198.51.100.1")
    assert other_process.retry_after("carol", "198.51.100.1") is None


def test_parallel_guesses_cannot_all_pass_the_check(throttle_of):
    """The attack: many guesses at once all passed a check that ran before any of them was recorded. Each
    attempt is counted first and decided on a count that includes it: at most max_failures go ahead."""
    from concurrent.futures import ThreadPoolExecutor

    throttle = throttle_of()
    for burst in range(5):  # exactly the first 3 of each burst, not fewer (over-refusal) nor more
        address = f"203.0.113.{50 + burst}"
        with ThreadPoolExecutor(12) as pool:
            attempts = list(
                pool.map(lambda _, address=address: throttle.attempt("alice", address), range(12))
            )
        assert sum(attempt.wait is None for attempt in attempts) == 3  # LOGIN_MAX_FAILURES here
        assert throttle.retry_after("alice", address) is not None
    succeeded = throttle_of().attempt("bob", "203.0.113.61")
    throttle.succeeded("bob", "203.0.113.61", succeeded)  # a good login does not count against the address
    assert throttle.retry_after("bob", "203.0.113.61") is None


def test_a_redis_outage_falls_back_to_the_database(settings):
    """With Redis gone the throttle keeps counting in the database: logins neither fail with 500 nor go
    unthrottled."""
    from finetune_platform.api import auth
    from finetune_platform.db.session import upgrade
    from tests.conftest import free_port

    upgrade(settings)
    fallback = auth.DatabaseThrottle(3, 60, settings)
    gone = auth.RedisThrottle(3, 60, f"redis://127.0.0.1:{free_port()}/0", fallback=fallback)
    passed = [gone.attempt("erin", "198.51.100.60").wait is None for _ in range(5)]
    assert passed == [True, True, True, False, False]
    assert fallback.retry_after("erin", "198.51.100.60") is not None


def test_login_throttle_state_is_bounded_whatever_clients_send(settings):
    """The attack: logins with ever new, huge usernames. Keys are fixed-size hashes, entries leave with the
    window, and each backend keeps at most its cap (oldest evicted)."""
    from sqlalchemy import func, select

    from finetune_platform.api import auth
    from finetune_platform.db.models import LoginFailure
    from finetune_platform.db.session import session_scope, upgrade

    memory = auth.MemoryThrottle(3, 60, max_keys=50)
    for number in range(300):
        memory.failed(f"{number}-" + "x" * 100_000, "203.0.113.7")
    assert len(memory._failures) == 50
    assert all(len(key) == 64 for key in memory._failures)
    upgrade(settings)
    database = auth.DatabaseThrottle(3, 60, settings, max_rows=100)
    for number in range(120):
        database.failed(f"{number}-" + "x" * 100_000, f"203.0.113.{number % 7}")
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 100
        assert session.scalar(select(func.max(func.length(LoginFailure.key)))) == 64
    expiring = auth.DatabaseThrottle(3, 0.2, settings, max_rows=100)
    time.sleep(0.3)
    expiring.failed("late", "198.51.100.1")  # a new failure clears everything older than its window
    with session_scope(settings) as session:
        assert session.scalar(select(func.count()).select_from(LoginFailure)) == 2


def test_uploads_over_the_limit_are_refused_before_the_body_is_read(api):
    alice = api.as_("alice")
    incoming = api.settings.uploads_dir / ".incoming"
    declared = alice.post("/datasets?name=big.csv", content=b"x" * 10, headers={"Content-Length": str(10**9)})
    assert declared.status_code == 413
    # the guard in front of the API answers from the header (the route's own check stays as a second line)
    assert (
        declared.json()["detail"]
        == f"request body larger than the limit of {64 * 1024} bytes for POST /datasets"
    )

    def chunks():  # no Content-Length: counted while streaming, stopped at the limit
        for _ in range(100):
            yield b"text,label\n" * 1000

    streamed = alice.post("/datasets?name=big.csv", content=chunks())
    assert streamed.status_code == 413
    assert not incoming.exists() or not list(incoming.iterdir())  # nothing half-written is kept


def test_upload_names_never_become_paths_and_bad_data_is_reported(api):
    alice = api.as_("alice")
    response = alice.post("/datasets?name=../../../etc/cron.d/evil.csv", content=SAMPLE)
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "evil.csv"
    stored = list((api.settings.uploads_dir / str(api.ids["alice"])).glob(f"{body['id']}.*"))
    assert [path.name for path in stored] == [f"{body['id']}.csv"]
    bad = alice.post("/datasets?name=bad.csv", content=b"text,label\nfine,1\n,0\nok,\nfine too,0\n")
    assert bad.status_code == 201 and bad.json()["valid"] is False
    messages = [issue["message"] for issue in bad.json()["report"]["files"][0]["issues"]]
    assert any("row 2" in message or "rows 2" in message for message in messages), messages
    refused = alice.post("/train", json={"config": {}, "dataset_id": bad.json()["id"]})
    assert refused.status_code == 422 and "report" in refused.json()
    assert alice.post("/datasets?name=data.exe", content=b"x").status_code == 422


def test_idempotency_key_makes_one_task(api):
    alice = api.as_("alice")
    body = {"config": {"experiment": "once"}, "dataset_id": api.ids["dataset"]}
    first = alice.post("/train", json=body, headers={"Idempotency-Key": "nightly-1"})
    again = alice.post("/train", json=body, headers={"Idempotency-Key": "nightly-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]


@pytest.mark.parametrize(
    ("environment", "secret", "message"),
    [
        ("production", None, "JWT_SECRET is required outside local mode"),
        ("production", "short", "JWT_SECRET: at least 32 bytes outside local mode (got 5)"),
        ("staging", "change-me-change-me-change-me-change-me", "JWT_SECRET: looks like a placeholder"),
        ("production", "a" * 40, "JWT_SECRET: looks like a placeholder"),
    ],
)
def test_the_service_refuses_to_start_without_a_real_secret(tmp_path, environment, secret, message):
    from finetune_platform.api.app import create_app
    from finetune_platform.settings import Settings

    settings = Settings(FINETUNE_HOME=tmp_path, ENVIRONMENT=environment, JWT_SECRET=secret)
    with pytest.raises(ConfigError, match=re.escape(message)):
        create_app(settings)


def test_local_mode_keeps_a_private_random_secret(tmp_path):
    from finetune_platform.security import signing_secret
    from finetune_platform.settings import Settings

    secret = signing_secret(Settings(FINETUNE_HOME=tmp_path))
    assert len(secret) == 64 and signing_secret(Settings(FINETUNE_HOME=tmp_path)) == secret
    assert oct(os.stat(tmp_path / "jwt_secret").st_mode & 0o777) == "0o600"
    strong = "9f8e7d6c5b4a39281706f5e4d3c2b1a0f1e2d3c4b5a69788a7b6c5d4e3f2a1b0"
    assert (
        signing_secret(Settings(FINETUNE_HOME=tmp_path, ENVIRONMENT="production", JWT_SECRET=strong))
        == strong
    )


@pytest.mark.parametrize(
    ("command", "variables", "message"),
    [
        (
            ["serve"],
            {"JWT_SECRET": "twelve-bytes"},
            "JWT_SECRET: at least 32 bytes outside local mode (got 12)",
        ),
        (
            ["serve"],
            {"SERVE_API_KEYS": '["changeme"]'},
            "SERVE_API_KEYS[0]: at least 32 bytes outside local mode",
        ),
        (
            ["serve"],
            {"SERVE_API_KEYS": '["changeme-changeme-changeme-changeme-changeme"]'},
            "SERVE_API_KEYS[0]: looks like a placeholder",
        ),
        (
            ["worker"],
            {"METRICS_TOKEN": "0123456789abcdef0123456789abcdef"},
            "METRICS_TOKEN: looks like a placeholder",
        ),
        (["api"], {"JWT_SECRET": "abcdefghijklmnopqrstuvwxyz012345"}, "JWT_SECRET: looks like a placeholder"),
    ],
)
def test_every_process_refuses_to_start_with_a_weak_secret(tmp_path, command, variables, message):
    """The attack: `finetune serve` in production started with a 12-byte JWT_SECRET and took the API key
    `changeme`; the API took guessable 32-byte secrets. One policy, applied by every process at start."""
    import subprocess

    from tests.conftest import finetune_bin

    env = {
        **{k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "SERVE_API_KEYS", "METRICS_TOKEN")},
        "ENVIRONMENT": "production",
        "FINETUNE_HOME": str(tmp_path),
        **variables,
    }
    started = subprocess.run(
        [finetune_bin(), *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert started.returncode == 2, started.stdout + started.stderr
    assert message in started.stderr
