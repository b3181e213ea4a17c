"""Read-only counts for the operator console: one statement (one round trip) each.

Hours are counted from a whole UTC hour `start` given by the caller: bucket i holds the rows
whose instant falls in [start + i h, start + (i + 1) h). The bucket is computed in SQL from
epoch seconds, so PostgreSQL and SQLite agree and only the counts cross the wire.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Integer, Table, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from birthday_scheduler.messages.ledger.common import S
from birthday_scheduler.messages.ledger.common import ledger_table as _ledger
from birthday_scheduler.messages.models import MessageSchedule

_schedules = cast(Table, MessageSchedule.__table__)

# The outcomes the console charts. `retried` is a row waiting for its next attempt (status
# `failed`), counted at the hour its last attempt failed (updated_at); the ledger keeps one row
# per message, not one per attempt, so a message that failed and was sent since counts as sent
# only, and one that failed twice in the window counts once.
OUTCOMES = ("sent", "retried", "dead", "skipped")
_OUTCOME_OF_STATUS = {S.SENT.value: "sent", S.FAILED.value: "retried", S.DEAD.value: "dead"}
_OUTCOME_OF_STATUS[S.SKIPPED.value] = "skipped"


def _hour_index(session: AsyncSession, instant: Any, start: datetime) -> ColumnElement[int]:
    """Whole hours from `start` (a whole UTC hour) to `instant`, for instants at or after it."""
    start_epoch = int(start.timestamp())
    if session.get_bind().dialect.name == "postgresql":
        seconds = func.extract("epoch", instant) - start_epoch
        return func.floor(seconds / 3600).cast(Integer)
    # SQLite keeps UTC text (`YYYY-MM-DD HH:MM:SS.ffffff`); strftime('%s') reads it as epoch
    # seconds, but rounds to the millisecond first (10:59:59.9999 would be 11:00), so the
    # fraction is cut off before.
    whole_seconds = func.strftime("%s", func.substr(instant, 1, 19)).cast(Integer)
    return (whole_seconds - start_epoch) // 3600


async def due_per_hour(session: AsyncSession, start: datetime, hours: int) -> list[int]:
    """Messages the planning table has due in each of the `hours` hours from `start`."""
    c = _schedules.c
    bucket = _hour_index(session, c.next_fire_at, start).label("bucket")
    rows = await session.execute(
        select(bucket, func.count())
        .where(c.next_fire_at >= start, c.next_fire_at < start + timedelta(hours=hours))
        .group_by(bucket)
    )
    counts = [0] * hours
    for index, count in rows.all():
        if 0 <= index < hours:
            counts[int(index)] = int(count)
    return counts


async def outcomes_per_hour(
    session: AsyncSession, start: datetime, hours: int
) -> dict[str, list[int]]:
    """Per outcome (OUTCOMES), rows per hour from `start`: sent by sent_at; retried (`failed`),
    dead and skipped by updated_at, the moment the row took that status."""
    c = _ledger.c
    at = case((c.status == S.SENT.value, c.sent_at), else_=c.updated_at)
    bucket = _hour_index(session, at, start).label("bucket")
    end = start + timedelta(hours=hours)
    rows = await session.execute(
        select(bucket, c.status, func.count())
        # updated_at is at or after sent_at, so the first condition keeps the index usable.
        .where(
            c.updated_at >= start,
            c.status.in_(list(_OUTCOME_OF_STATUS)),
            at >= start,
            at < end,
        )
        .group_by(bucket, c.status)
    )
    series = {outcome: [0] * hours for outcome in OUTCOMES}
    for index, status, count in rows.all():
        if 0 <= index < hours:
            series[_OUTCOME_OF_STATUS[status]][int(index)] += int(count)
    return series


async def statuses_scheduled_between(
    session: AsyncSession, start: datetime, end: datetime
) -> Counter[str]:
    """Ledger rows by status whose scheduled instant falls in [start, end)."""
    c = _ledger.c
    rows = await session.execute(
        select(c.status, func.count())
        .where(c.scheduled_at >= start, c.scheduled_at < end)
        .group_by(c.status)
    )
    return Counter({str(status): int(count) for status, count in rows.all()})
