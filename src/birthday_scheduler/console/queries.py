"""The console's own reads: a live user's id by email, and a user's latest ledger rows.

The users package has no lookup by email (the API does not need one); the unique index on
lower(email) among live users serves it. The history read is kept here, a plain newest-first
list, so the console does not follow the API's paginated history as that one changes.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.messages.models import MessageLog
from birthday_scheduler.users.models import User


async def live_user_id_by_email(session: AsyncSession, email: str) -> uuid.UUID | None:
    found: uuid.UUID | None = await session.scalar(
        select(User.id).where(
            func.lower(User.email) == email.strip().lower(), User.deleted_at.is_(None)
        )
    )
    return found


async def latest_messages(
    session: AsyncSession, user_id: uuid.UUID, limit: int
) -> list[MessageLog]:
    rows = await session.execute(
        select(MessageLog)
        .where(MessageLog.user_id == user_id)
        .order_by(MessageLog.scheduled_at.desc(), MessageLog.id.desc())
        .limit(limit)
    )
    return list(rows.scalars())
