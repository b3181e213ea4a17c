"""Dead-letter inspection and replay.

A replay reads the DLQ as a stream of pages (`Broker.scan_dead_letters`), so it finds an id at
any depth while holding one page at a time. For each page, in this order:

1. the ledger rows of the chosen letters are reset (`dead` -> `pending`) and committed; from
   then on the scheduler's sweep publishes them even if this process dies, so
2. their DLQ copies are no longer needed and are removed, and only then
3. the rows are published again and marked `queued`.

Dying before 1 commits loses nothing: the broker hands back the held page. Dying between 1
and 2 leaves copies whose rows are no longer dead; a later replay reports them `notDead` and
removes them. Removing the copies after the publish instead could race a worker that already
failed the replayed message again and put a fresh copy there: the scan would take that one,
leaving a `dead` row with no copy in the DLQ. A scan never reads letters that arrived after it
began, which also keeps it away from such fresh copies.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from birthday_scheduler.clock import Clock
from birthday_scheduler.infra.broker.base import Broker, DeadLetter, DeadLetterScan
from birthday_scheduler.infra.db import unit_of_work
from birthday_scheduler.messages.ledger import publishing

log = structlog.get_logger(__name__)

# Dead letters held (unacknowledged) at once by a replay: its memory bound, and the size of one
# ledger transaction.
PAGE_SIZE = 500


@dataclass(frozen=True)
class ReplayReport:
    replayed: list[uuid.UUID]
    not_dead: list[uuid.UUID]  # the row is no longer dead (already replayed or sent)
    missing: list[uuid.UUID]  # asked for, but not in the DLQ


async def replay(
    sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    ids: Sequence[uuid.UUID],
    clock: Clock,
    lease: timedelta,
    *,
    page_size: int = PAGE_SIZE,
) -> ReplayReport:
    """Replay the dead letters of `ids`, wherever they are in the DLQ.

    The pass stops once every id has been found; memory is one page plus the ids asked for.
    """
    wanted = dict.fromkeys(ids)
    replayed: dict[uuid.UUID, bool] = {}  # found so far -> whether this run reset its row
    async with broker.scan_dead_letters(page_size) as scan:
        while len(replayed) < len(wanted) and (page := await scan.next_page()) is not None:
            chosen = _ids_in(page, lambda i: i in wanted)
            # A second copy of an id found earlier in this pass is stale: removed, not reset.
            fresh = [i for i in chosen if i not in replayed]
            reset = await _replay_page(sessions, broker, scan, fresh, chosen, clock, lease)
            replayed.update((i, i in reset) for i in fresh)
    report = ReplayReport(
        replayed=[i for i in wanted if replayed.get(i)],
        not_dead=[i for i in wanted if replayed.get(i) is False],
        missing=[i for i in wanted if i not in replayed],
    )
    # Counts only, and no "replayed" key: the command's stdout carries its report lines too.
    log.info(
        "dlq.replay_done",
        rows_reset=len(report.replayed),
        rows_not_dead=len(report.not_dead),
        ids_missing=len(report.missing),
        letters_read=scan.read,
    )
    return report


async def replay_all(
    sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    clock: Clock,
    lease: timedelta,
    on_page: Callable[[ReplayReport], None],
    *,
    page_size: int = PAGE_SIZE,
) -> int:
    """Replay every dead letter present when it starts, page by page; returns how many rows
    were replayed. Each page's report goes to `on_page`, so memory stays one page.

    An id with two copies in the DLQ whose replay fails again before the scan reaches its
    second copy is replayed a second time (its row is dead again): an extra attempt, never a
    lost letter. Remembering every id replayed would cost memory in the depth of the queue.
    """
    total = 0
    async with broker.scan_dead_letters(page_size) as scan:
        while (page := await scan.next_page()) is not None:
            chosen = _ids_in(page, lambda _: True)
            if not chosen:
                continue
            reset = await _replay_page(sessions, broker, scan, chosen, chosen, clock, lease)
            total += len(reset)
            on_page(
                ReplayReport(
                    replayed=[i for i in chosen if i in reset],
                    not_dead=[i for i in chosen if i not in reset],
                    missing=[],
                )
            )
    log.info("dlq.replay_all_done", rows_reset=total, letters_read=scan.read)
    return total


async def peek(broker: Broker, limit: int) -> list[DeadLetter]:
    return await broker.dead_letters(limit)


def _ids_in(page: Sequence[DeadLetter], keep: Callable[[uuid.UUID], bool]) -> list[uuid.UUID]:
    return list(dict.fromkeys(d.message_id for d in page if keep(d.message_id)))


async def _replay_page(
    sessions: async_sessionmaker[AsyncSession],
    broker: Broker,
    scan: DeadLetterScan,
    fresh: Sequence[uuid.UUID],
    remove: Sequence[uuid.UUID],
    clock: Clock,
    lease: timedelta,
) -> set[uuid.UUID]:
    """Reset the `fresh` rows, remove the `remove` copies, publish what was reset (in the
    order the module docstring gives); returns the ids reset."""
    reset: list[uuid.UUID] = []
    # One instant per page: mark_queued moves only rows still stamped with the reset's `now`.
    now = clock.now()
    if fresh:
        async with unit_of_work(sessions) as session:
            for message_id in fresh:
                if await publishing.reset_for_replay(session, message_id, now, lease):
                    reset.append(message_id)
    if remove:
        await scan.remove(remove)
    if reset:
        await broker.publish(reset)
        async with unit_of_work(sessions) as session:
            await publishing.mark_queued(session, reset, now, lease)
    return set(reset)
