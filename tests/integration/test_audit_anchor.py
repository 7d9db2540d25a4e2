"""Signed checkpoints anchor the audit log outside the database, on SQLite and on PostgreSQL.

The attacks below leave a valid hash chain — deleting the newest entries, editing an entry and
recomputing every hash after it — or forge a checkpoint. They run as the database owner (on PostgreSQL
with the append-only triggers switched off, which only the owner can do); `finetune audit verify`, given
AUDIT_ANCHOR_KEY, must name what was done.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from finetune_platform.db.models import AuditEvent
from finetune_platform.db.session import engine_for, session_scope, upgrade
from finetune_platform.services.audit import entry_hash, record, verify_chain

KEY = "5f0c2e9a41b7d836e1a9c4f07b2d6e58a3c1f9e04d7b2a6c8e5f1d3b9a0c7e42"


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Audited:
    settings: object
    anchors: Path
    env: dict[str, str | None]

    def run(self, *args: str, key: str | None = KEY) -> Ran:
        """`finetune audit ARGS` with this environment (and the key, unless None)."""
        from typer.testing import CliRunner

        from finetune_platform.cli import app
        from finetune_platform.settings import get_settings

        get_settings.cache_clear()  # the command reads the environment given here
        try:
            result = CliRunner().invoke(app, ["audit", *args], env={**self.env, "AUDIT_ANCHOR_KEY": key})
        finally:
            get_settings.cache_clear()
        return Ran(result.exit_code, result.stdout, result.stderr)

    def write(self, count: int) -> None:
        with session_scope(self.settings) as session:
            for number in range(count):
                record(session, "test.anchor", actor_id=None, target=f"t{number}")

    def tail(self) -> list[tuple[int, str]]:
        """(id, hash) of every entry, oldest first."""
        with session_scope(self.settings) as session:
            return [
                tuple(row)
                for row in session.execute(select(AuditEvent.id, AuditEvent.hash).order_by(AuditEvent.id))
            ]

    def checkpoint(self) -> Ran:
        done = self.run("checkpoint")
        assert done.returncode == 0, done.stderr
        return done

    def as_owner(self) -> Session:
        """A session of the database owner that may rewrite the log (PostgreSQL: its triggers are off)."""
        engine = engine_for(self.settings.database_url)
        session = Session(engine)
        if engine.dialect.name == "postgresql":
            session.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        return session

    def done_as_owner(self, session: Session) -> None:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
        session.commit()
        session.close()

    def chain_alone_is_fooled(self) -> None:
        with session_scope(self.settings) as session:
            assert verify_chain(session).ok
        unanchored = self.run("verify", key=None)
        assert unanchored.returncode == 0, unanchored.stderr
        assert "anchors not checked: AUDIT_ANCHOR_KEY is not set" in unanchored.stdout


@pytest.fixture
def audited(db_settings, tmp_path) -> Audited:
    upgrade(db_settings)
    anchors = tmp_path / "anchors" / "audit-anchors.jsonl"
    env = {
        "FINETUNE_HOME": str(db_settings.FINETUNE_HOME),
        "AUDIT_ANCHOR_FILE": str(anchors),
        "DATABASE_URL": db_settings.DATABASE_URL,
        "ENVIRONMENT": None,
    }
    return Audited(db_settings, anchors, env)


def test_checkpoints_are_signed_lines_that_verify_counts(audited):
    audited.write(5)
    (first_id, first_hash) = audited.tail()[-1]
    written = audited.checkpoint()
    assert written.stdout.strip() == (
        f"checkpoint: entry {first_id} (hash {first_hash}), 5 entries, appended to {audited.anchors}"
    )
    lines = audited.anchors.read_text().splitlines()
    assert len(lines) == 1 and (audited.anchors.stat().st_mode & 0o777) == 0o600
    line = json.loads(lines[0])
    assert set(line) == {"id", "hash", "entries", "at", "hmac"}
    assert (line["id"], line["hash"], line["entries"]) == (first_id, first_hash, 5)
    signed = json.dumps({k: line[k] for k in ("at", "entries", "hash", "id")}, separators=(",", ":"))
    assert line["hmac"] == hmac.new(KEY.encode(), signed.encode(), hashlib.sha256).hexdigest()

    again = audited.checkpoint()  # nothing new: nothing appended
    assert again.stdout.strip() == f"no checkpoint needed: nothing new after entry {first_id}"
    assert len(audited.anchors.read_text().splitlines()) == 1

    audited.write(2)
    verified = audited.run("verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.splitlines() == [
        "audit log intact: 7 entries",
        f"anchored: 5 entries, up to entry {first_id}, by 1 signed checkpoints in {audited.anchors} "
        f"(newest holding: {line['at']}); 2 entries newer than the newest checkpoint",
    ]
    audited.checkpoint()
    verified = audited.run("verify")
    assert verified.returncode == 0 and "; 0 entries newer than the newest checkpoint" in verified.stdout

    unkeyed = audited.run("verify", key=None)
    assert unkeyed.returncode == 0
    assert unkeyed.stdout.splitlines() == [
        "audit log intact: 7 entries",
        "anchors not checked: AUDIT_ANCHOR_KEY is not set (the chain alone shows neither deleted newest "
        "entries nor a recomputed chain)",
    ]
    refused = audited.run("checkpoint", key=None)
    assert refused.returncode == 2 and "error: AUDIT_ANCHOR_KEY is not set" in refused.stderr


def test_deleting_the_newest_entries_is_reported_as_truncation(audited):
    audited.write(6)
    entries = audited.tail()
    audited.checkpoint()
    anchored = audited.anchors.read_bytes()

    owner = audited.as_owner()  # the attack: the newest two entries go
    owner.execute(text("DELETE FROM audit_events WHERE id >= :id"), {"id": entries[4][0]})
    audited.done_as_owner(owner)
    audited.chain_alone_is_fooled()

    verified = audited.run("verify")
    assert verified.returncode == 1
    assert verified.stdout.splitlines()[0] == "audit log NOT intact: 4 entries"
    assert verified.stderr.strip() == (
        f"audit log truncated: checkpoint at entry {entries[5][0]} (hash {entries[5][1]}) but the log ends "
        f"at entry {entries[3][0]}"
    )
    refused = audited.run("checkpoint")  # a tampered log gets no signature
    assert (
        refused.returncode == 1
        and "no checkpoint written: the audit log fails verification" in refused.stderr
    )
    assert audited.anchors.read_bytes() == anchored

    audited.write(3)  # the platform writes on: the gap stays visible
    verified = audited.run("verify")
    assert verified.returncode == 1
    assert verified.stderr.strip() == (
        f"audit log entry {entries[5][0]} deleted: the checkpoint of {json.loads(anchored)['at']} (line 1) "
        f"anchors it (hash {entries[5][1]})"
    )


def test_an_edit_with_the_chain_recomputed_is_reported_naming_the_entries(audited):
    audited.write(3)
    audited.checkpoint()
    audited.write(3)
    audited.checkpoint()
    entries = audited.tail()
    second_at = json.loads(audited.anchors.read_text().splitlines()[1])["at"]

    owner = audited.as_owner()  # the attack: entry 5 says something else, every hash after it recomputed
    events = owner.scalars(select(AuditEvent).where(AuditEvent.id >= entries[4][0]).order_by(AuditEvent.id))
    previous = entries[3][1]
    for number, event in enumerate(events.all()):
        if number == 0:
            event.target = "forged"
        event.prev_hash = previous
        event.hash = previous = entry_hash(event)
        owner.flush()  # one row at a time: prev_hash stays unique
    audited.done_as_owner(owner)
    rewritten = audited.tail()
    assert rewritten[:4] == entries[:4] and rewritten[5][1] != entries[5][1]
    audited.chain_alone_is_fooled()

    verified = audited.run("verify")
    assert verified.returncode == 1
    assert verified.stderr.strip() == (
        f"audit log rewritten: entry {entries[5][0]} has hash {rewritten[5][1]}, the checkpoint of {second_at} "
        f"(line 2) anchored {entries[5][1]}: an entry after entry {entries[2][0]} up to entry "
        f"{entries[5][0]} was altered or deleted and the chain recomputed"
    )
    assert audited.run("checkpoint").returncode == 1


def test_a_forged_checkpoint_is_reported(audited):
    audited.write(4)
    audited.checkpoint()
    entries = audited.tail()
    owner = audited.as_owner()  # the attack: drop the newest entry and vouch for the shorter log
    owner.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": entries[3][0]})
    audited.done_as_owner(owner)
    claim = {"id": entries[2][0], "hash": entries[2][1], "entries": 3, "at": "2030-01-01T00:00:00Z"}
    wrong = hmac.new(b"a guessed key of the attacker", json.dumps(claim).encode(), hashlib.sha256).hexdigest()
    with audited.anchors.open("a") as handle:
        handle.write(json.dumps({**claim, "hmac": wrong}) + "\n")
        handle.write("not a checkpoint\n")

    verified = audited.run("verify")
    assert verified.returncode == 1
    assert verified.stderr.splitlines() == [
        f"audit log truncated: checkpoint at entry {entries[3][0]} (hash {entries[3][1]}) but the log ends at "
        f"entry {entries[2][0]}",
        f"forged checkpoint: line 2 of {audited.anchors} (entry {entries[2][0]}) is not signed with "
        "AUDIT_ANCHOR_KEY",
        f"unreadable checkpoint: line 3 of {audited.anchors} is not a checkpoint",
    ]


def test_the_anchor_key_is_held_to_the_secret_policy(audited):
    from finetune_platform.settings import Settings

    weak = Settings(ENVIRONMENT="production", JWT_SECRET=KEY[::-1], AUDIT_ANCHOR_KEY="change-me-later")
    assert weak.secret_problems() == [
        "AUDIT_ANCHOR_KEY: at least 32 bytes outside local mode (got 15); generate one with `openssl rand -hex 32`"
    ]
    audited.env["ENVIRONMENT"] = "production"
    refused = audited.run("checkpoint", key="change-me-later")
    assert refused.returncode == 2
    assert "error: AUDIT_ANCHOR_KEY: at least 32 bytes outside local mode (got 15)" in refused.stderr
    assert not audited.anchors.exists()


def test_an_empty_log_needs_no_checkpoint(audited):
    assert audited.checkpoint().stdout.strip() == "no checkpoint needed: the log is empty"
    assert not audited.anchors.exists()


def test_a_checkpoint_loop_anchors_new_entries_and_stops_at_tampering(tmp_path):
    """`finetune audit checkpoint --every 1` as a sidecar would run it: a real process, left running."""
    import subprocess
    import time

    from finetune_platform.settings import Settings
    from tests.conftest import finetune_bin

    db_settings = Settings(FINETUNE_HOME=tmp_path / "home")  # the loop is the same on both databases
    upgrade(db_settings)
    anchors = tmp_path / "audit-anchors.jsonl"
    audited = Audited(db_settings, anchors, {})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIT_", "DATABASE_"))}
    env.update(
        FINETUNE_HOME=str(db_settings.FINETUNE_HOME), AUDIT_ANCHOR_FILE=str(anchors), AUDIT_ANCHOR_KEY=KEY
    )

    def lines_once(count: int) -> list[dict]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and loop.poll() is None:
            found = anchors.read_text().splitlines() if anchors.exists() else []
            if len(found) >= count:
                return [json.loads(line) for line in found]
            time.sleep(0.2)
        pytest.fail(f"no checkpoint {count} within 60 s: {loop.poll()} {anchors.exists()}")

    audited.write(2)
    loop = subprocess.Popen(
        [finetune_bin(), "audit", "checkpoint", "--every", "1"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert [line["entries"] for line in lines_once(1)] == [2]
        audited.write(3)
        assert [line["entries"] for line in lines_once(2)] == [2, 5]
        owner = audited.as_owner()  # the newest entry goes: the loop refuses to sign and stops
        owner.execute(text("DELETE FROM audit_events WHERE id = (SELECT max(id) FROM audit_events)"))
        audited.done_as_owner(owner)
        _, stderr = loop.communicate(timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert loop.returncode == 1
    assert "audit log truncated: checkpoint at entry" in stderr
    assert "no checkpoint written: the audit log fails verification" in stderr
    assert len(anchors.read_text().splitlines()) == 2
