"""The audit log: who did what to which target, from where, with what outcome — hash-chained.

Each entry stores the previous entry's hash and its own hash over its fields and that link, so editing
or deleting a past entry breaks the chain at that point (``verify_chain`` says where). On PostgreSQL
the table also refuses UPDATE, DELETE and TRUNCATE. Concurrent writers stay on one chain: appends take
a lock (an advisory lock on PostgreSQL, the write lock on SQLite) before reading the tail, and
``prev_hash`` is unique, so a writer that still extends a stale tail fails and retries on the new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from finetune_platform.db.models import AuditEvent, utcnow

GENESIS = "0" * 64
AUDIT_LOCK = 0x617564697400  # the PostgreSQL advisory lock key of audit appends
MAX_PAGE = 100


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
    """Append one entry in the caller's transaction (a savepoint, retried when another writer won the tail)."""
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


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: datetime
    actor_id: int | None
    action: str
    target: str | None
    outcome: str
    address: str | None
    detail: dict[str, Any]


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
) -> tuple[list[AuditEntry], int]:
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
    rows = session.scalars(query.order_by(AuditEvent.id.desc()).offset(offset).limit(min(limit, MAX_PAGE)))
    return [
        AuditEntry(r.id, r.at, r.actor_id, r.action, r.target, r.outcome, r.address, dict(r.detail))
        for r in rows
    ], total


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
