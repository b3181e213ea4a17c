"""Dead-letter inspection and replay.

The ledger row is reset and committed first; from then on the scheduler's sweep publishes it
even if this process dies, so the DLQ copy is no longer needed and is removed *before* the
message is published again. Removed after the publish, it could race a worker that already
failed the replayed message again and put a fresh copy there: the scan would take that one
too, leaving a `dead` row with no copy in the DLQ.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.infra.broker.base import Broker, DeadLetter
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages import repository as repo

PEEK_LIMIT = 10_000


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[uuid.UUID]
    not_dead: list[uuid.UUID]  # the row is no longer dead (already replayed or sent)
    missing: list[uuid.UUID]  # asked for, but not in the DLQ


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    ids: Sequence[uuid.UUID] | None,
    now: datetime,
    lease: timedelta,
) -> ReplayReport:
    letters = await broker.dead_letters(PEEK_LIMIT)
    present = {letter.message_id for letter in letters}
    wanted = list(dict.fromkeys(ids)) if ids is not None else list(dict.fromkeys(present))
    missing = [i for i in wanted if i not in present]
    chosen = [i for i in wanted if i in present]
    reset: list[uuid.UUID] = []
    async with unit_of_work(sessions) as session:
        for message_id in chosen:
            if await repo.reset_for_replay(session, message_id, now, lease):
                reset.append(message_id)
    if chosen:
        await broker.take_dead_letters(chosen)
    if reset:
        await broker.publish(reset)
        async with unit_of_work(sessions) as session:
            await repo.mark_queued(session, reset, now, lease)
    return ReplayReport(
        replayed=reset, not_dead=[i for i in chosen if i not in reset], missing=missing
    )


async def peek(broker: Broker, limit: int) -> list[DeadLetter]:
    return await broker.dead_letters(limit)
