"""A user's message history (GET /users/{id}/messages): its ledger rows filtered by kind and
status, newest scheduled first, paged with the same opaque cursors as GET /users."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.errors import FieldProblem, NotFoundError, ValidationProblem
from birthday_scheduler.infra import keyset
from birthday_scheduler.messages.kinds import KINDS
from birthday_scheduler.messages.ledger import occasions
from birthday_scheduler.messages.models import MessageStatus
from birthday_scheduler.users import repository as repo


class MessageOut(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    id: uuid.UUID
    kind: str
    occasion_date: date = Field(description="The occasion's date in the user's zone.")
    status: MessageStatus
    attempts: int = Field(description="Delivery attempts made so far.")
    last_error: str | None = Field(description="Why the last attempt failed, if it did.")
    scheduled_at: datetime = Field(description="UTC instant the message is due.")
    sent_at: datetime | None
    idempotency_key: str
    created_at: datetime
    updated_at: datetime


class MessagePage(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)

    data: list[MessageOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


@dataclass(frozen=True)
class HistoryQuery:
    kind: str | None = None
    status: MessageStatus | None = None
    limit: int = 20
    cursor: str | None = None


async def page(session: AsyncSession, user_id: uuid.UUID, query: HistoryQuery) -> MessagePage:
    """One page of the user's rows; 400 for a kind not registered now, 404 for no live user."""
    problems: list[FieldProblem] = []
    # Kinds are read when asked: a kind registered since start-up is known, none is hard-coded.
    if query.kind is not None and query.kind not in KINDS:
        known = ", ".join(sorted(KINDS))
        problems.append(FieldProblem("kind", f"is not a message kind; one of {known}"))
    after = None
    try:
        after = keyset.decode(query.cursor) if query.cursor else None
    except ValidationProblem as bad_cursor:
        problems += bad_cursor.errors
    if problems:
        raise ValidationProblem(problems)
    if await repo.get_live(session, user_id) is None:
        raise NotFoundError("No live user has this id.")
    rows = await occasions.history(
        session,
        user_id,
        kind=query.kind,
        status=query.status.value if query.status else None,
        after=after,
        limit=query.limit + 1,
    )
    shown = rows[: query.limit]
    return MessagePage(
        data=[MessageOut.model_validate(row, from_attributes=True) for row in shown],
        next_cursor=(
            keyset.encode(shown[-1].scheduled_at, shown[-1].id) if len(rows) > query.limit else None
        ),
    )
