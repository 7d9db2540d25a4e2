"""The audit log (admin): who did what to which target, from where, with what outcome."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from finetune_platform.api.deps import AdminUser, DbSession, PageLimit, PageOffset
from finetune_platform.api.schemas import errors
from finetune_platform.services.audit import list_entries
from finetune_platform.services.schemas.audit import AuditEntry
from finetune_platform.services.schemas.common import Page

router = APIRouter(tags=["audit"])


@router.get(
    "/audit/logs",
    response_model=Page[AuditEntry],
    summary="Audit log (admin)",
    description=(
        "Entries newest first, filtered by actor, action, outcome, target and time. Changes made through the API "
        "and the command line, and every refused request, are in one hash chain (`finetune audit verify`)."
    ),
    responses=errors(401, 403, 422, e403="The caller is not an admin."),
)
def list_audit_entries(
    session: DbSession,
    admin: AdminUser,
    actor_id: Annotated[int | None, Query(description="Only this user's entries.")] = None,
    action: Annotated[str | None, Query(max_length=64, description="Only this action.")] = None,
    outcome: Annotated[str | None, Query(max_length=16, description="ok, failed or denied.")] = None,
    target: Annotated[str | None, Query(max_length=255, description="Only this target.")] = None,
    since: Annotated[datetime | None, Query(description="From this time (ISO).")] = None,
    until: Annotated[datetime | None, Query(description="Before this time (ISO).")] = None,
    limit: PageLimit = 50,
    offset: PageOffset = 0,
) -> Page[AuditEntry]:
    return list_entries(
        session,
        actor_id=actor_id,
        action=action,
        outcome=outcome,
        target=target,
        since=since,
        until=until,
        offset=offset,
        limit=limit,
    )
