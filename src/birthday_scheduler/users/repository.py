"""SQL for users. Soft deletes: a deleted user keeps its message history."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.errors import ConflictError, FieldProblem
from birthday_scheduler.infra.sql import is_unique_violation, rowcount
from birthday_scheduler.users.models import User

EMAIL_INDEX = "ux_users_email_live"


def _email_conflict(exc: IntegrityError) -> ConflictError:
    if is_unique_violation(exc, EMAIL_INDEX):
        return ConflictError(
            "A live user already has this email address.",
            [FieldProblem("email", "already in use (compared case-insensitively)")],
        )
    raise exc


async def insert_user(session: AsyncSession, values: dict[str, Any]) -> None:
    try:
        async with session.begin_nested():
            await session.execute(insert(User).values(values))
    except IntegrityError as exc:
        raise _email_conflict(exc) from None


async def get_live(session: AsyncSession, user_id: uuid.UUID, *, lock: bool = False) -> User | None:
    stmt = select(User).where(User.id == user_id, User.deleted_at.is_(None))
    if lock:
        # FOR NO KEY UPDATE: a tick inserting this user's ledger rows takes FOR KEY SHARE (the
        # foreign key) while it holds the schedules a re-plan waits for; FOR UPDATE would
        # deadlock with it.
        stmt = stmt.with_for_update(key_share=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def update_user(session: AsyncSession, user_id: uuid.UUID, values: dict[str, Any]) -> None:
    try:
        async with session.begin_nested():
            await session.execute(update(User).where(User.id == user_id).values(values))
    except IntegrityError as exc:
        raise _email_conflict(exc) from None


async def soft_delete(session: AsyncSession, user_id: uuid.UUID, now: datetime) -> bool:
    result = await session.execute(
        update(User)
        .where(User.id == user_id, User.deleted_at.is_(None))
        .values(deleted_at=now, updated_at=now)
    )
    return bool(rowcount(result))


async def page(
    session: AsyncSession, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[User]:
    """Live users in creation order, keyset-paginated on (created_at, id)."""
    stmt = select(User).where(User.deleted_at.is_(None))
    if after is not None:
        stmt = stmt.where(tuple_(User.created_at, User.id) > tuple_(*after))
    stmt = stmt.order_by(User.created_at, User.id).limit(limit)
    return list((await session.execute(stmt)).scalars())
