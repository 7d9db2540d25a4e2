"""Attacks that need `finetune api` as a real server process: spoofed X-Forwarded-For from a local client,
memory growth from unauthenticated logins, and the race between revoking a token and using it."""

from __future__ import annotations

import httpx
import pytest

from tests.api.conftest import PASSWORD, running_api


def api_server(tmp_path, **settings: str):
    return running_api(
        tmp_path, ("alice", "bob"), LOGIN_MAX_FAILURES="3", LOGIN_WINDOW_SECONDS="60", **settings
    )


def audit_addresses(env) -> list[str | None]:
    """The client address of every audit entry the server wrote (read from its database); the entries of the
    fixture's `finetune users create` calls (actor cli:…, address local) are the command line's, not the server's."""
    from finetune_platform.db.session import session_scope
    from finetune_platform.services.audit import list_entries
    from finetune_platform.settings import Settings

    with session_scope(Settings(FINETUNE_HOME=env.root / "home")) as session:
        entries = list_entries(session, limit=100).data
    return [entry.address for entry in entries if not str(entry.detail.get("actor", "")).startswith("cli:")]


def test_forwarded_for_from_a_local_client_is_not_believed(tmp_path):
    """The attack: rotate X-Forwarded-For from 127.0.0.1 to dodge the login throttle, write spoofed
    addresses into the audit log and lock out a victim's address. Without FORWARDED_ALLOW_IPS the header is
    ignored: the throttle counts the real peer and the audit log records it."""
    with api_server(tmp_path) as (base, _, env), httpx.Client(base_url=base, timeout=30) as client:
        answers = [
            client.post(
                "/login",
                data={"username": "alice", "password": "wrong guess"},
                headers={"X-Forwarded-For": f"198.51.100.{number}"},
            ).status_code
            for number in range(5)
        ]
        assert answers == [401, 401, 401, 429, 429]
        victim = client.post(
            "/login",
            data={"username": "bob", "password": PASSWORD},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
        assert victim.status_code == 200  # bob logs in: nobody could lock "his" spoofed address
        addresses = set(audit_addresses(env))
        assert addresses == {"127.0.0.1"}, addresses


def test_forwarded_for_is_believed_from_a_trusted_proxy(tmp_path):
    with api_server(tmp_path, FORWARDED_ALLOW_IPS="127.0.0.1/32") as (base, _, env):
        with httpx.Client(base_url=base, timeout=30) as client:
            for number in range(3):
                response = client.post(
                    "/login",
                    data={"username": "alice", "password": "wrong guess"},
                    headers={"X-Forwarded-For": f"198.51.100.{number}"},
                )
                assert response.status_code == 401
        assert {"198.51.100.0", "198.51.100.1", "198.51.100.2"} <= set(audit_addresses(env))


def test_parallel_password_guesses_are_throttled(tmp_path):
    """The attack: 12 wrong passwords at once all got 401 (every one passed the throttle before any failure
    was recorded), so the limit of 3 per window did not hold."""
    from concurrent.futures import ThreadPoolExecutor

    with api_server(tmp_path) as (base, _, _), httpx.Client(base_url=base, timeout=60) as client:

        def guess(number: int) -> int:
            form = {"username": "alice", "password": f"guess number {number}"}
            return client.post("/login", data=form).status_code

        with ThreadPoolExecutor(12) as pool:
            answers = sorted(pool.map(guess, range(12)))
        assert answers == [401] * 3 + [429] * 9


def test_unauthenticated_logins_with_huge_usernames_do_not_grow_the_server(tmp_path):
    """The attack: 300 logins with new 1 MB usernames grew the API by ~290 MiB, never freed."""
    psutil = pytest.importorskip("psutil")
    with api_server(tmp_path) as (base, server, _), httpx.Client(base_url=base, timeout=60) as client:
        process = psutil.Process(server.pid)
        client.post("/login", data={"username": "warm-up", "password": "whatever1"})
        before = process.memory_info().rss
        statuses = {
            client.post(
                "/login", data={"username": f"{number}-" + "u" * 1_000_000, "password": "whatever1"}
            ).status_code
            for number in range(120)
        }
        grown = process.memory_info().rss - before
        assert grown < 40 * 2**20, f"the API grew by {grown / 2**20:.0f} MiB"
        assert statuses == {413}


def test_revocation_holds_for_the_very_next_request(tmp_path):
    """The attack: right after logout, a password change or a demotion the old token still passed in about
    a third of tries (the change committed after the response was sent)."""
    with api_server(tmp_path) as (base, _, _), httpx.Client(base_url=base, timeout=30) as client:
        passed = 0
        for _ in range(25):
            token = client.post("/login", data={"username": "alice", "password": PASSWORD}).json()[
                "access_token"
            ]
            headers = {"Authorization": f"Bearer {token}"}
            assert client.post("/logout", headers=headers).status_code == 204
            passed += client.get("/users/me", headers=headers).status_code == 200
        assert passed == 0, f"a revoked token passed {passed} of 25 times"


def test_a_deleted_accounts_token_never_authenticates_the_next_account(tmp_path):
    """The attack on SQLite: ids were reused, so a deleted user's token authenticated as the next user."""
    from sqlalchemy import delete, select

    from finetune_platform.db.models import User
    from finetune_platform.db.session import session_scope, upgrade
    from finetune_platform.security import Tokens
    from finetune_platform.services.users import create_user, token_subject, user_for_token
    from finetune_platform.settings import Settings

    settings = Settings(FINETUNE_HOME=tmp_path)
    upgrade(settings)
    with session_scope(settings) as session:
        create_user(session, "keeper", "a long passphrase")
        leaving = create_user(session, "leaving", "a long passphrase")
        token, _ = Tokens(settings).issue(token_subject(session, leaving.id))
    with session_scope(settings) as session:
        session.execute(delete(User).where(User.id == leaving.id))
    with session_scope(settings) as session:
        newcomer = create_user(session, "newcomer", "a long passphrase")
        assert newcomer.id != leaving.id
        assert session.scalar(select(User.token_key).where(User.id == newcomer.id)) is not None
    claims = Tokens(settings).decode(token)
    assert user_for_token(settings, claims.user_id, claims.token_version, claims.token_key) is None
    # even if an id came back (a restored backup, an operator's insert), the token key differs
    assert user_for_token(settings, newcomer.id, claims.token_version, claims.token_key) is None
