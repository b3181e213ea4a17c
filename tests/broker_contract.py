"""Behaviour every `Broker` keeps, checked against each implementation by its own tests."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from uuid import UUID

from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, MAIN_QUEUE, Broker
from support import eventually, holds


async def check_stop_consuming_waits_for_handlers_in_flight(broker: Broker) -> None:
    """stop_consuming() takes no new message and returns once the handlers in hand finish."""
    gate = asyncio.Event()
    started: list[UUID] = []
    finished: list[UUID] = []

    async def handler(message_id: UUID) -> None:
        started.append(message_id)
        await gate.wait()
        finished.append(message_id)

    await broker.publish([uuid.uuid4() for _ in range(5)])
    await broker.consume(handler, prefetch=2)
    await eventually(lambda: len(started) == 2, within=10, interval=0.001)
    assert broker.consumer_alive()

    stopping = asyncio.create_task(broker.stop_consuming())
    await holds(lambda: not stopping.done())
    assert not broker.consumer_alive()

    gate.set()
    await asyncio.wait_for(stopping, timeout=10)
    assert finished == started
    assert len(finished) == 2
    # The two handled messages were acked; the rest wait in the queue for the next consumer.
    assert await broker.queue_depth(MAIN_QUEUE) == 3


# --- dead letters: one pass in pages ---------------------------------------------------------

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


async def publish_dead_letters(broker: Broker, count: int) -> list[UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    for message_id in ids:
        await broker.publish_dead(message_id, "permanent failure: HTTP 400", T0)
    return ids


async def dead_letter_ids(broker: Broker) -> list[UUID]:
    """The DLQ's ids, in queue order, read without removing anything.

    Not sized by queue_depth: RabbitMQ answers a passive declare ahead of requeues it has not
    applied yet (a page just handed back), while basic.get on the same channel waits for them.
    """
    return [dead.message_id for dead in await broker.dead_letters(1000)]


async def check_a_scan_holds_one_page_and_finds_a_letter_at_any_depth(broker: Broker) -> None:
    """A pass reads every letter present at its start exactly once, holding at most one page
    (the broker's own count of ready letters says so at every page), removes what it is told
    to, keeps the rest in order, and never reads a letter that arrived during the pass."""
    ids = await publish_dead_letters(broker, 65)
    target = ids[57]  # on the sixth page of ten
    seen: list[UUID] = []
    arrived: list[UUID] = []
    async with broker.scan_dead_letters(10) as scan:
        while (page := await scan.next_page()) is not None:
            assert 0 < len(page) <= 10
            # The page is held: not ready in the queue, and at most one page is (RabbitMQ may
            # have delivered the next letters into the rest of the window). The queue still
            # has every other letter: kept ones moved behind the unread, arrivals, not the
            # target once removed.
            removed = 1 if seen.count(target) else 0
            total = 65 - removed + len(arrived)
            ready = await broker.queue_depth(DEAD_LETTER_QUEUE)
            assert total - 10 <= ready <= total - len(page), (ready, total, len(page))
            seen.extend(dead.message_id for dead in page)
            if target in seen[-len(page) :]:
                await scan.remove([target])
            # Dead-lettered while the pass runs (a replayed message failing again).
            arrived += await publish_dead_letters(broker, 1)
        assert scan.read == 65
        assert scan.peak_held <= 10
    assert seen == ids  # each once, in order, none of the arrivals
    remaining = await dead_letter_ids(broker)
    assert sorted(remaining) == sorted([i for i in ids if i != target] + arrived)
    # A full pass is a rotation: the letters it kept are in their old order.
    assert [i for i in remaining if i in set(ids)] == [i for i in ids if i != target]


async def check_leaving_a_scan_hands_its_page_back_in_place(broker: Broker) -> None:
    """Leaving early, or on an error, loses nothing: the held page goes back at the head."""
    ids = await publish_dead_letters(broker, 25)

    class Died(Exception):
        pass

    try:
        async with broker.scan_dead_letters(10) as scan:
            await scan.next_page()  # ids[0:10]
            second = await scan.next_page()  # ids[10:20]; the first page moved to the tail
            assert second is not None
            assert [dead.message_id for dead in second] == ids[10:20]
            await scan.remove([ids[12]])
            raise Died
    except Died:
        pass
    remaining = await dead_letter_ids(broker)
    kept_second = [i for i in ids[10:20] if i != ids[12]]
    assert remaining == kept_second + ids[20:25] + ids[0:10]

    # An early, orderly stop does the same.
    async with broker.scan_dead_letters(10) as scan:
        first = await scan.next_page()
        assert first is not None
        await scan.remove([first[0].message_id])
    assert await dead_letter_ids(broker) == remaining[1:]
