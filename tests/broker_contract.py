"""Behaviour every `Broker` keeps, checked against each implementation by its own tests."""

from __future__ import annotations

import asyncio
import uuid
from uuid import UUID

from birthday_scheduler.infra.broker.base import MAIN_QUEUE, Broker
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
