"""SQL for the planning table: the next instant each user's message of each kind fires."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import date, datetime, time
from typing import Any, NamedTuple, cast

from sqlalchemy import (
    Integer,
    Select,
    Table,
    bindparam,
    delete,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from birthday_scheduler.infra.sql import upsert
from birthday_scheduler.messages.models import MessageSchedule
from birthday_scheduler.users.models import User

_schedules = cast(Table, MessageSchedule.__table__)
_users = cast(Table, User.__table__)


# Named tuples, not dataclasses: a due wave builds one of each per user, and a tuple is built
# and taken apart into columns (zip) several times faster.
class DueSchedule(NamedTuple):
    user_id: uuid.UUID
    kind: str
    next_fire_at: datetime
    occasion_date: date
    date_of_birth: date
    timezone: str | None
    timezone_offset_minutes: int | None
    anniversary_date: date | None
    send_local_time: time | None


class ScheduleAdvance(NamedTuple):
    user_id: uuid.UUID
    kind: str
    next_fire_at: datetime
    occasion_date: date


async def upsert_schedule(session: AsyncSession, advance: ScheduleAdvance) -> None:
    values = {
        "user_id": advance.user_id,
        "kind": advance.kind,
        "next_fire_at": advance.next_fire_at,
        "occasion_date": advance.occasion_date,
    }
    stmt = upsert(session, _schedules).values(values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id", "kind"],
        set_={"next_fire_at": advance.next_fire_at, "occasion_date": advance.occasion_date},
    )
    await session.execute(stmt)


async def lock_user_schedules(session: AsyncSession, user_id: uuid.UUID) -> None:
    """Wait for (and hold) the user's schedules, which a tick locks while it plans them.
    SQLite has one writer at a time, so there the transaction itself serialises."""
    await session.execute(
        select(_schedules.c.kind).where(_schedules.c.user_id == user_id).with_for_update()
    )


async def delete_schedules(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(delete(_schedules).where(_schedules.c.user_id == user_id))


async def drop_schedules(session: AsyncSession, keys: Sequence[tuple[uuid.UUID, str]]) -> None:
    for user_id, kind in keys:
        await session.execute(
            delete(_schedules).where(_schedules.c.user_id == user_id, _schedules.c.kind == kind)
        )


async def next_messages(
    session: AsyncSession, user_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, list[tuple[str, datetime]]]:
    """Each user's planned (kind, instant) pairs, earliest first."""
    if not user_ids:
        return {}
    rows = await session.execute(
        select(MessageSchedule.user_id, MessageSchedule.kind, MessageSchedule.next_fire_at)
        .where(MessageSchedule.user_id.in_(user_ids))
        .order_by(MessageSchedule.next_fire_at, MessageSchedule.kind)
    )
    planned: dict[uuid.UUID, list[tuple[str, datetime]]] = {}
    for user_id, kind, fire in rows.all():
        planned.setdefault(user_id, []).append((kind, fire))
    return planned


def _claim_due_statement() -> Select[Any]:
    s, u = _schedules.c, _users.c
    return (
        select(
            s.user_id,
            s.kind,
            s.next_fire_at,
            s.occasion_date,
            u.date_of_birth,
            u.timezone,
            u.timezone_offset_minutes,
            u.anniversary_date,
            u.send_local_time,
        )
        .join(_users, u.id == s.user_id)
        .where(s.next_fire_at <= bindparam("now", type_=s.next_fire_at.type))
        .order_by(s.next_fire_at)
        .limit(bindparam("limit", type_=Integer()))
        .with_for_update(of=_schedules, skip_locked=True)
    )


# Built once: these run every tick, and building a statement (and its cache key) each time cost
# more than the query itself. Core columns for the same reason: the ORM adds ~1.5 ms a call.
_CLAIM_DUE = _claim_due_statement()


async def claim_due_schedules(
    session: AsyncSession, now: datetime, limit: int
) -> list[DueSchedule]:
    """Lock up to `limit` schedules due at `now`; other replicas skip the locked ones."""
    rows = await session.execute(_CLAIM_DUE, {"now": now, "limit": limit})
    return list(map(DueSchedule._make, rows.all()))


async def advance_schedules(
    session: AsyncSession,
    advances: Sequence[ScheduleAdvance],
    claimed: Sequence[tuple[datetime, date]],
) -> None:
    """Move each schedule on to its next occurrence, only if it still holds what the tick
    claimed ((next_fire_at, occasion_date), in the same order): an edit that re-planned it in
    between is never overwritten. On PostgreSQL a tick does this inside
    repository.write_tick_plan, in the statement that writes the ledger rows."""
    if not advances:
        return
    c = _schedules.c
    await session.execute(
        update(_schedules)
        .where(c.user_id == bindparam("b_user", type_=c.user_id.type))
        .where(c.kind == bindparam("b_kind", type_=c.kind.type))
        .where(c.next_fire_at == bindparam("b_was_fire", type_=c.next_fire_at.type))
        .where(c.occasion_date == bindparam("b_was_date", type_=c.occasion_date.type))
        .values(
            next_fire_at=bindparam("b_fire", type_=c.next_fire_at.type),
            occasion_date=bindparam("b_date", type_=c.occasion_date.type),
        ),
        [
            {
                "b_user": a.user_id,
                "b_kind": a.kind,
                "b_fire": a.next_fire_at,
                "b_date": a.occasion_date,
                "b_was_fire": was_fire,
                "b_was_date": was_date,
            }
            for a, (was_fire, was_date) in zip(advances, claimed, strict=True)
        ],
    )
