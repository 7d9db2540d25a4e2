"""What every resource's schemas share: timestamps that carry their zone, strict request bodies, and pages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

# SQLite hands back naive datetimes (stored as UTC): answers always carry the zone (RFC 3339).
Timestamp = Annotated[
    datetime, AfterValidator(lambda moment: moment if moment.tzinfo else moment.replace(tzinfo=UTC))
]

MAX_PAGE = 100
"""The largest page any list answers."""


class Strict(BaseModel):
    """A request body: unknown fields are refused, so server-owned ones cannot be smuggled in."""

    model_config = ConfigDict(extra="forbid")


class Public(BaseModel):
    """An answer: immutable once a service made it."""

    model_config = ConfigDict(frozen=True)


Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a list: its entries, how many match in all pages, and the window asked for."""

    model_config = ConfigDict(frozen=True)

    data: list[Item] = Field(description="This page's entries, in the list's order.")
    count: int = Field(description="Entries matching the request, in all pages.")
    limit: int | None = Field(default=None, description="The page size asked for; null: every entry.")
    offset: int = Field(default=0, description="Entries skipped before this page.")

    @classmethod
    def of(cls, entries: list[Item], *, limit: int | None = None, offset: int = 0) -> Page[Item]:
        """A page cut from a list held whole (a store that cannot page itself): ``count`` is the list's length."""
        window = entries[offset:] if limit is None else entries[offset : offset + limit]
        return cls(data=window, count=len(entries), limit=limit, offset=offset)
