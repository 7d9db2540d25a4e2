"""The audit log: who did what to which target, from where, with what outcome — hash-chained.

Each entry stores the previous entry's hash and its own hash over its fields and that link, so editing
or deleting a past entry breaks the chain at that point (``verify_chain`` says where). On PostgreSQL
the table also refuses UPDATE, DELETE and TRUNCATE. Concurrent writers stay on one chain: appends take
a lock (an advisory lock on PostgreSQL, the write lock on SQLite) before reading the tail, and
``prev_hash`` is unique, so a writer that still extends a stale tail fails and retries on the new one.

The chain alone cannot show everything: deleting the newest entries, or editing an entry and recomputing
every hash after it, leaves a valid chain. Signed checkpoints anchor it outside the database: ``finetune
audit checkpoint`` appends the tail's id, hash and entry count, signed with HMAC-SHA256 under
AUDIT_ANCHOR_KEY (a key the API process never holds), to an append-only file; ``verify_log`` walks the
chain once and checks every checkpoint against it (its signature, that its entry still exists with its
hash, and how many entries lie up to it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import AuditEvent, utcnow
from finetune_platform.errors import ConfigError
from finetune_platform.services.schemas.audit import AuditEntry
from finetune_platform.services.schemas.common import MAX_PAGE, Page
from finetune_platform.settings import Settings, secret_problem

GENESIS = "0" * 64
AUDIT_LOCK = 0x617564697400  # the PostgreSQL advisory lock key of audit appends


def _utc_text(moment: datetime) -> str:
    """One spelling of a timestamp whatever the database hands back (SQLite: naive UTC)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(timespec="microseconds")


def entry_hash(event: AuditEvent) -> str:
    body = {
        "at": _utc_text(event.at),
        "actor_id": event.actor_id,
        "action": event.action,
        "target": event.target,
        "outcome": event.outcome,
        "address": event.address,
        "detail": event.detail,
        "prev_hash": event.prev_hash,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _storable(value: str, length: int) -> str:
    return value.replace("\x00", "\\x00")[:length]


def record(
    session: Session,
    action: str,
    *,
    actor_id: int | None,
    target: str | None = None,
    outcome: str = "ok",
    address: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one entry in the caller's transaction (a savepoint, retried when another writer won the tail).
    Client-given text (targets, addresses) is made storable: NUL characters spelled out, cut to the column."""
    target = None if target is None else _storable(target, 255)
    address = None if address is None else _storable(address, 64)
    dialect = session.get_bind().dialect.name
    for _ in range(20):
        savepoint = session.begin_nested()
        try:
            # Appends take turns (until the transaction ends), so a writer reads the tail it extends.
            if dialect == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK})
            elif dialect == "sqlite":  # the write lock now: SQLite cannot upgrade a read to a write later
                session.execute(text("UPDATE audit_events SET id = id WHERE 0"))
            tail = session.scalar(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1))
            event = AuditEvent(
                at=utcnow(),
                actor_id=actor_id,
                action=action,
                target=target,
                outcome=outcome,
                address=address,
                detail=detail or {},
                prev_hash=tail or GENESIS,
            )
            event.hash = entry_hash(event)
            session.add(event)
            session.flush()
            savepoint.commit()
            return
        except IntegrityError:
            savepoint.rollback()
    raise RuntimeError("audit log: could not append after 20 tries (too many concurrent writers)")


def list_entries(
    session: Session,
    *,
    actor_id: int | None = None,
    action: str | None = None,
    outcome: str | None = None,
    target: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    offset: int = 0,
    limit: int = 50,
) -> Page[AuditEntry]:
    query = select(AuditEvent)
    for column, value in (
        (AuditEvent.actor_id, actor_id),
        (AuditEvent.action, action),
        (AuditEvent.outcome, outcome),
        (AuditEvent.target, target),
    ):
        if value is not None:
            query = query.where(column == value)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    limit = min(limit, MAX_PAGE)
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).offset(offset).limit(limit))
    entries = [
        AuditEntry(
            id=r.id,
            at=r.at,
            actor_id=r.actor_id,
            action=r.action,
            target=r.target,
            outcome=r.outcome,
            address=r.address,
            detail=dict(r.detail),
        )
        for r in rows
    ]
    return Page[AuditEntry](data=entries, count=total, limit=limit, offset=offset)


@dataclass(frozen=True)
class ChainReport:
    entries: int
    ok: bool
    first_bad_id: int | None = None
    problem: str | None = None


def verify_chain(session: Session) -> ChainReport:
    """Walk the log in order; report the first entry that was altered, or that follows a deleted one."""
    previous, count = GENESIS, 0
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.id)).yield_per(1000):
        count += 1
        if event.prev_hash != previous:
            return ChainReport(
                count,
                False,
                event.id,
                f"entry {event.id}: the entry before it was deleted or altered (broken link)",
            )
        if entry_hash(event) != event.hash:
            return ChainReport(
                count, False, event.id, f"entry {event.id}: altered (its content no longer matches its hash)"
            )
        previous = event.hash
    return ChainReport(count, True)


# -- anchoring: signed checkpoints outside the database ----------------------------------------------
ANCHOR_FIELDS = ("id", "hash", "entries", "at")


def anchor_file(settings: Settings) -> Path:
    return settings.AUDIT_ANCHOR_FILE or settings.FINETUNE_HOME / "audit-anchors.jsonl"


def anchor_key(settings: Settings) -> bytes | None:
    """AUDIT_ANCHOR_KEY as bytes (None when unset); outside local mode it must pass the secret policy."""
    if settings.AUDIT_ANCHOR_KEY is None:
        return None
    key = settings.AUDIT_ANCHOR_KEY.get_secret_value()
    if settings.ENVIRONMENT != "local" and (problem := secret_problem(key)):
        raise ConfigError(f"AUDIT_ANCHOR_KEY: {problem}; generate one with `openssl rand -hex 32`")
    return key.encode("utf-8")


@dataclass(frozen=True)
class Checkpoint:
    """The log's state at one moment: its newest entry (id, hash), how many entries it had, and when."""

    id: int
    hash: str
    entries: int
    at: str
    line: int = 0  # its line in the anchor file (0: not written yet)

    def fields(self) -> dict[str, Any]:
        return {"id": self.id, "hash": self.hash, "entries": self.entries, "at": self.at}

    def described(self) -> str:
        return f"the checkpoint of {self.at} (line {self.line})"


def sign(fields: dict[str, Any], key: bytes) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def read_checkpoints(path: Path, key: bytes) -> tuple[list[Checkpoint], list[str]]:
    """The correctly signed checkpoints of the anchor file, and a problem for every other line."""
    if not path.is_file():
        return [], []
    found, problems = [], []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                document = json.loads(line)
                fields = {name: document[name] for name in ANCHOR_FIELDS}
                checkpoint = Checkpoint(**fields, line=number)
                signature = document["hmac"]
                valid = (
                    isinstance(checkpoint.id, int)
                    and isinstance(checkpoint.entries, int)
                    and isinstance(checkpoint.hash, str)
                    and isinstance(checkpoint.at, str)
                    and isinstance(signature, str)
                )
            except (ValueError, KeyError, TypeError):
                valid = False
            if not valid:
                problems.append(f"unreadable checkpoint: line {number} of {path} is not a checkpoint")
            elif not hmac.compare_digest(sign(fields, key).encode(), signature.encode("utf-8")):
                problems.append(
                    f"forged checkpoint: line {number} of {path} (entry {checkpoint.id}) is not signed "
                    "with AUDIT_ANCHOR_KEY"
                )
            else:
                found.append(checkpoint)
    return found, problems


def append_checkpoint(path: Path, checkpoint: Checkpoint, key: bytes) -> None:
    """One signed line appended (O_APPEND: never over an earlier line) and on disk before this returns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    created = not path.exists()
    line = json.dumps({**checkpoint.fields(), "hmac": sign(checkpoint.fields(), key)}) + "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        data = line.encode("utf-8")
        while data:
            data = data[os.write(descriptor, data) :]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    if created:  # the new file's name is durable too
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


@dataclass(frozen=True)
class LogReport:
    """What ``verify_log`` found: entries, the chain's first break, and what the checkpoints say."""

    entries: int
    last_id: int
    last_hash: str | None
    problems: list[str] = field(default_factory=list)
    anchors_checked: bool = False
    checkpoints: int = 0
    newest: Checkpoint | None = None  # the newest checkpoint that still holds

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def anchored(self) -> int:
        return self.newest.entries if self.newest else 0

    @property
    def newer(self) -> int:
        return self.entries - self.anchored


def verify_log(session: Session, checkpoints: Iterable[Checkpoint] | None = None) -> LogReport:
    """Walk the log once, in id order: the first broken link or altered entry, and every checkpoint held
    against the entry it names (still there, same hash, as many entries up to it).

    ``checkpoints`` None: the chain only.
    """
    anchors = None if checkpoints is None else list(checkpoints)
    pending: dict[int, list[Checkpoint]] = {}
    for checkpoint in anchors or ():
        pending.setdefault(checkpoint.id, []).append(checkpoint)
    problems: list[str] = []
    chain_problem: str | None = None
    rewritten: list[tuple[Checkpoint, str]] = []  # checkpoints whose entry changed, with its hash now
    intact: Checkpoint | None = None  # the newest checkpoint held so far
    previous, count, last_id = GENESIS, 0, 0
    query = select(AuditEvent).order_by(AuditEvent.id)
    for event in session.scalars(query).yield_per(1000):
        count += 1
        if chain_problem is None:
            if event.prev_hash != previous:
                chain_problem = f"entry {event.id}: the entry before it was deleted or altered (broken link)"
            elif entry_hash(event) != event.hash:
                chain_problem = f"entry {event.id}: altered (its content no longer matches its hash)"
        previous, last_id = event.hash, event.id
        for checkpoint in pending.pop(event.id, ()):
            if checkpoint.hash != event.hash:
                rewritten.append((checkpoint, event.hash))
            elif checkpoint.entries != count:
                problems.append(
                    f"audit log rewritten: {count} entries up to entry {event.id}, {checkpoint.described()} "
                    f"counted {checkpoint.entries}"
                )
            elif not rewritten:
                intact = checkpoint
    if chain_problem:
        problems.insert(0, f"audit log broken at {chain_problem}")
    if rewritten:
        checkpoint, now = rewritten[0]
        after = f"after entry {intact.id}" if intact else "from the first entry"
        later = (
            f" ({len(rewritten) - 1} later checkpoints no longer match either)" if len(rewritten) > 1 else ""
        )
        problems.append(
            f"audit log rewritten: entry {checkpoint.id} has hash {now}, {checkpoint.described()} anchored "
            f"{checkpoint.hash}: an entry {after} up to entry {checkpoint.id} was altered or deleted and the "
            f"chain recomputed{later}"
        )
    missing = sorted((c for group in pending.values() for c in group), key=lambda c: c.id)
    beyond = [c for c in missing if c.id > last_id]
    for checkpoint in missing:
        if checkpoint.id <= last_id:
            problems.append(
                f"audit log entry {checkpoint.id} deleted: {checkpoint.described()} anchors it "
                f"(hash {checkpoint.hash})"
            )
    if beyond:
        newest = beyond[-1]
        ends = f"ends at entry {last_id}" if count else "is empty"
        problems.append(
            f"audit log truncated: checkpoint at entry {newest.id} (hash {newest.hash}) but the log {ends}"
        )
    return LogReport(
        entries=count,
        last_id=last_id,
        last_hash=previous if count else None,
        problems=problems,
        anchors_checked=anchors is not None,
        checkpoints=len(anchors or ()),
        newest=intact,
    )


def next_checkpoint(session: Session, checkpoints: list[Checkpoint]) -> tuple[LogReport, Checkpoint | None]:
    """Check the whole log against every checkpoint, then the checkpoint of its tail (None when the log is
    empty or not newer than the newest checkpoint). A report with problems: sign nothing. The whole log,
    always: an entry edited below the newest checkpoint without recomputing its hash leaves that checkpoint
    holding, and must still stop the signing."""
    newest = max(checkpoints, key=lambda c: c.id, default=None)
    report = verify_log(session, checkpoints)
    if not report.ok or report.last_hash is None or (newest is not None and report.last_id <= newest.id):
        return report, None
    at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    return report, Checkpoint(report.last_id, report.last_hash, report.entries, at)
