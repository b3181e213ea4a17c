"""A user's page: their data, their next message in UTC and in their own time, their history."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from birthday_scheduler.api.context import ApiContext
from birthday_scheduler.console import queries
from birthday_scheduler.messages.models import MessageLog
from birthday_scheduler.users.schemas import UserOut

HISTORY_LIMIT = 50


@dataclass(frozen=True)
class UserView:
    user: UserOut
    zone: str  # the IANA name, or the fixed offset as +HH:MM
    next_utc: datetime | None
    next_local: datetime | None
    history: list[MessageLog]


def zone_of(name: str | None, offset_minutes: int | None) -> tuple[str, timezone | ZoneInfo]:
    if name is not None:
        return name, ZoneInfo(name)
    minutes = offset_minutes or 0
    sign = "-" if minutes < 0 else "+"
    label = f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return label, timezone(timedelta(minutes=minutes))


async def build(context: ApiContext, user_id: uuid.UUID) -> UserView:
    """Raises NotFoundError (from the service) when no live user has this id."""
    async with context.sessions() as session:
        user = await context.users.get(session, user_id)
        history = await queries.latest_messages(session, user_id, HISTORY_LIMIT)
    label, zone = zone_of(user.timezone, user.timezone_offset)
    fire = user.next_message_at
    return UserView(
        user=user,
        zone=label,
        next_utc=fire,
        next_local=fire.astimezone(zone) if fire is not None else None,
        history=history,
    )


async def find(context: ApiContext, query: str) -> uuid.UUID | None:
    """A live user's id from an id or an exact email (case-insensitive)."""
    text = query.strip()
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    if "@" not in text:
        return None
    async with context.sessions() as session:
        return await queries.live_user_id_by_email(session, text)
