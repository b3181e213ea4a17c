"""An occasion's life for the user: cancelled by an edit or a delete until an attempt is
made, its year taken once started (purge or not), its history, and the retention purge."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from birthday_scheduler.infra.sql import rowcount, upsert
from birthday_scheduler.messages.ledger.common import MAX_IDS_PER_STATEMENT, S
from birthday_scheduler.messages.ledger.common import ledger_table as _ledger
from birthday_scheduler.messages.models import FINISHED_STATUSES, MessageLog, StartedOccasion

_started_occasions = cast(Table, StartedOccasion.__table__)
# With no attempt made (attempts = 0), these have not started: a re-plan or a delete may still
# cancel them. Once an attempt was made the service may have the message (a time-out after it
# accepted, a worker killed mid-call), so the occasion finishes under its own key.
_UNSTARTED = (S.PENDING, S.QUEUED)


async def cancel_unstarted(
    session: AsyncSession, user_id: uuid.UUID, now: datetime, *, kind: str | None = None
) -> int:
    """Cancel the user's messages (of one kind, or all) on which no attempt was made."""
    c = _ledger.c
    stmt = update(_ledger).where(
        c.user_id == user_id, c.status.in_([s.value for s in _UNSTARTED]), c.attempts == 0
    )
    if kind is not None:
        stmt = stmt.where(c.kind == kind)
    result = await session.execute(
        stmt.values(status=S.CANCELLED.value, lease_until=None, updated_at=now)
    )
    return rowcount(result)


def _started() -> ColumnElement[bool]:
    """An occasion that went out or had an attempt made: its year is taken."""
    return or_(_ledger.c.status == S.SENT.value, _ledger.c.attempts > 0)


async def started_years(session: AsyncSession, user_id: uuid.UUID, kind: str) -> set[int]:
    """Years whose occasion has started (see _UNSTARTED): never planned again, including
    those whose ledger rows the retention purge has deleted since."""
    c, kept = _ledger.c, _started_occasions.c
    rows = await session.execute(
        select(c.occasion_date).where(c.user_id == user_id, c.kind == kind, _started())
    )
    years = {occasion.year for occasion in rows.scalars()}
    purged = await session.execute(
        select(kept.year).where(kept.user_id == user_id, kept.kind == kind)
    )
    return years | set(purged.scalars())


async def history(
    session: AsyncSession,
    user_id: uuid.UUID,
    *,
    kind: str | None,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[MessageLog]:
    """A user's rows, newest scheduled first, keyset-paginated on (scheduled_at, id) descending.

    A user has a few rows a year, all reached through the (user_id, kind, occasion_date) unique
    index, so filtering and sorting them needs no index of its own."""
    stmt = select(MessageLog).where(MessageLog.user_id == user_id)
    if kind is not None:
        stmt = stmt.where(MessageLog.kind == kind)
    if status is not None:
        stmt = stmt.where(MessageLog.status == status)
    if after is not None:
        stmt = stmt.where(tuple_(MessageLog.scheduled_at, MessageLog.id) < tuple_(*after))
    stmt = stmt.order_by(MessageLog.scheduled_at.desc(), MessageLog.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def purge_finished(session: AsyncSession, older_than: datetime, limit: int) -> int:
    """Delete finished rows last touched before `older_than`, at most `limit` per call.

    A started occasion leaves its (user, kind, year) in started_occasions first: the purged
    row was the only record that the year's message went out.
    """
    c = _ledger.c
    victims = (
        await session.execute(
            select(c.id, c.user_id, c.kind, c.occasion_date, _started())
            .where(c.status.in_([s.value for s in FINISHED_STATUSES]), c.updated_at < older_than)
            .limit(limit)
        )
    ).all()
    if not victims:
        return 0
    kept = {(user_id, kind, day.year) for _, user_id, kind, day, started in victims if started}
    if kept:
        stmt = upsert(session, _started_occasions).on_conflict_do_nothing()
        await session.execute(
            stmt, [{"user_id": u, "kind": k, "year": y} for u, k, y in sorted(kept)]
        )
    ids = [row[0] for row in victims]
    for start in range(0, len(ids), MAX_IDS_PER_STATEMENT):
        await session.execute(
            delete(_ledger).where(c.id.in_(ids[start : start + MAX_IDS_PER_STATEMENT]))
        )
    return len(ids)
