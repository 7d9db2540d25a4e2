"""The error body every refusal answers with, and the documentation of each route's refusals. Every other body is
a resource's schema (``services.schemas``): the services return them and the routes answer with them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from finetune_platform.services.schemas.datasets import DatasetReport


class Problem(BaseModel):
    field: str = Field(description="Where: body.<field>, query.<name>, path.<name> or header.<name>.")
    message: str = Field(description="What is wrong with it.")


class ErrorOut(BaseModel):
    detail: str = Field(
        description="What went wrong, safe to show: it names objects by id, never server paths."
    )
    code: str | None = Field(
        default=None, description="Machine-readable error code, when the platform raised it."
    )
    problems: list[Problem] | None = Field(default=None, description="Each invalid field (422).")
    report: DatasetReport | None = Field(default=None, description="The dataset validation report (422).")


WHY = {
    401: "Not authenticated, or the token is invalid, expired or revoked.",
    403: "Authenticated, but the role does not allow it.",
    404: "No such object, or it belongs to someone else.",
    409: "Conflicts with the current state (e.g. the task already finished).",
    413: "The body is larger than the limit (MAX_UPLOAD_BYTES for uploads, MAX_JSON_BODY_BYTES otherwise).",
    422: "Invalid request: the fields named in `problems`, or an invalid config or dataset.",
    429: "Too many attempts or jobs: failed logins or password checks (retry after `Retry-After` seconds), or "
    "the account's queued-jobs limit.",
}


def errors(*statuses: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that may refuse with ``statuses``, each with the shared error body; ``why``
    (``e409="..."``) says what a status means on this route."""
    return {
        status: {"model": ErrorOut, "description": why.get(f"e{status}", WHY[status])} for status in statuses
    }


def json_errors(*statuses: int, **why: str) -> dict[int | str, dict[str, Any]]:
    """``errors`` for a route whose success is not JSON (GET /metrics: text): its refusals still answer the JSON
    error body, which the app's other routes put in the document's components."""
    return {
        status: {
            "description": why.get(f"e{status}", WHY[status]),
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
        }
        for status in statuses
    }
