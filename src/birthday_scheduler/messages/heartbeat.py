"""Scheduler heartbeats in the database, so any process's /health/detailed can report them."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.infra.sql import upsert
from birthday_scheduler.messages.models import SchedulerHeartbeat

_table = cast(Table, SchedulerHeartbeat.__table__)


async def beat(session: AsyncSession, replica: str, now: datetime) -> None:
    stmt = upsert(session, _table).values(replica=replica, last_tick_at=now)
    stmt = stmt.on_conflict_do_update(index_elements=["replica"], set_={"last_tick_at": now})
    await session.execute(stmt)


async def latest(sessions: async_sessionmaker[AsyncSession]) -> datetime | None:
    async with sessions() as session:
        value: datetime | None = await session.scalar(
            select(func.max(SchedulerHeartbeat.last_tick_at))
        )
    return value
