"""Reading the RabbitMQ dead-letter queue without a consumer: peek, take, purge.

AMQP has no "peek": a peek takes messages with basic.get (unacked) and hands them all back
at the end with one nack(requeue=True). The DLQ is a classic queue, which puts requeued
messages back at their original positions, so a peek leaves the order as it found it. While
a peek runs the messages it holds are invisible to other readers; a lock keeps this
process's own readers from overlapping, and `dlq` commands are run by one operator at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from birthday_scheduler.clock import Clock
from birthday_scheduler.infra.broker.base import DeadLetter
from birthday_scheduler.infra.broker.policy import read_dead_letter, translate_errors

log = structlog.get_logger(__name__)


class RabbitDeadLetters:
    def __init__(self, queue: AbstractQueue, *, clock: Clock, timeout: float, secret: str) -> None:
        self._queue = queue
        self._clock = clock
        self._timeout = timeout
        self._secret = secret
        self._lock = asyncio.Lock()

    async def peek(self, limit: int) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        async with self._lock:
            held: list[AbstractIncomingMessage] = []
            try:
                with translate_errors("RabbitMQ: read the dead-letter queue", self._secret):
                    while len(found) < limit and (message := await self._get()) is not None:
                        held.append(message)
                        if (dead := self._read(message)) is not None:
                            found.append(dead)
            finally:
                await self._hand_back(held)
        return found

    async def take(self, message_ids: Sequence[UUID] | None) -> list[DeadLetter]:
        wanted = None if message_ids is None else set(message_ids)
        taken: list[DeadLetter] = []
        async with self._lock:
            kept: list[AbstractIncomingMessage] = []
            try:
                with translate_errors("RabbitMQ: take from the dead-letter queue", self._secret):
                    # The whole queue is scanned: an id dead-lettered twice leaves no copy.
                    while (message := await self._get()) is not None:
                        dead = self._read(message)
                        if dead is not None and (wanted is None or dead.message_id in wanted):
                            await message.ack()
                            taken.append(dead)
                        else:
                            kept.append(message)
            finally:
                await self._hand_back(kept)
        return taken

    async def purge(self) -> int:
        async with self._lock:
            with translate_errors("RabbitMQ: purge the dead-letter queue", self._secret):
                purge_ok = await self._queue.purge(timeout=self._timeout)
        count = int(purge_ok.message_count or 0)
        log.warning("broker.dead_letters_purged", count=count)
        return count

    async def _get(self) -> AbstractIncomingMessage | None:
        return await self._queue.get(no_ack=False, fail=False, timeout=self._timeout)

    def _read(self, message: AbstractIncomingMessage) -> DeadLetter | None:
        dead = read_dead_letter(message.body, message.headers or {}, self._clock.now())
        if dead is None:
            # Left in place: it cannot be replayed, and only `dlq purge` should drop it.
            log.warning("broker.dead_letter_unreadable", queue=self._queue.name)
        return dead

    async def _hand_back(self, held: list[AbstractIncomingMessage]) -> None:
        if not held:
            return
        # One nack with multiple=True returns everything this channel still holds up to the
        # last one (taken messages were acked already).
        with translate_errors("RabbitMQ: requeue peeked dead letters", self._secret):
            await held[-1].nack(multiple=True, requeue=True)
