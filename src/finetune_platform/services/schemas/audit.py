"""The audit log as an admin reads it."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from finetune_platform.services.schemas.common import Public, Timestamp


class AuditEntry(Public):
    id: int = Field(description="Entry id (chain order).")
    at: Timestamp = Field(description="When.")
    actor_id: int | None = Field(description="Who (user id), if known.")
    action: str = Field(description="What, e.g. train.submit, login, denied.")
    target: str | None = Field(description="On what, e.g. task:<id>.")
    outcome: str = Field(description="ok, failed or denied.")
    address: str | None = Field(description="Client address.")
    detail: dict[str, Any] = Field(description="More about it.")
