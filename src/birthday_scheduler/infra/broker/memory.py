"""The in-process queue used by the embedded mode (`all` without RABBITMQ_URL).

It keeps the RabbitMQ adapter's semantics (at-least-once delivery, requeue on a raising
handler, a delivery limit into the dead-letter queue, bounded concurrency) but nothing
survives the process: the database ledger is the source of truth and re-publishes whatever
was queued when the process stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import structlog

from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import (
    DEAD_LETTER_QUEUE,
    MAIN_QUEUE,
    DeadLetter,
    DeadLetterScan,
    MessageHandler,
)
from birthday_scheduler.infra.broker.policy import (
    DELIVERY_LIMIT,
    DELIVERY_LIMIT_REASON,
    REQUEUE_BASE_DELAY,
    requeue_delay,
    truncate_reason,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class _Envelope:
    message_id: UUID
    failed_deliveries: int = 0


class MemoryBroker:
    """A `Broker` backed by an asyncio.Queue; one consumer per instance."""

    def __init__(
        self,
        *,
        delivery_limit: int = DELIVERY_LIMIT,
        requeue_base_delay: float = REQUEUE_BASE_DELAY,
        clock: Clock | None = None,
    ) -> None:
        if delivery_limit < 0:
            raise ValueError("delivery_limit must be >= 0")
        self._delivery_limit = delivery_limit
        self._requeue_base_delay = requeue_base_delay
        self._clock: Clock = clock or SystemClock()
        self._ready: asyncio.Queue[_Envelope] = asyncio.Queue()
        self._dead: deque[DeadLetter] = deque()
        self._dead_lock = asyncio.Lock()
        self._dispatcher: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._closed = False

    async def start(self) -> None:
        self._closed = False

    async def close(self) -> None:
        await self.stop_consuming()
        self._closed = True

    async def publish(self, message_ids: Sequence[UUID]) -> None:
        self._ensure_open()
        for message_id in message_ids:
            self._ready.put_nowait(_Envelope(message_id))

    async def publish_dead(self, message_id: UUID, reason: str, dead_at: datetime) -> None:
        self._ensure_open()
        self._dead.append(DeadLetter(message_id, truncate_reason(reason), dead_at))

    async def consume(self, handler: MessageHandler, prefetch: int) -> None:
        self._ensure_open()
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if self._dispatcher is not None and not self._dispatcher.done():
            raise RuntimeError("this broker is already consuming")
        self._stopping.clear()
        self._dispatcher = asyncio.create_task(
            self._dispatch(handler, prefetch), name="memory-broker-dispatcher"
        )
        log.info("broker.consumer_started", queue=MAIN_QUEUE, prefetch=prefetch)

    async def stop_consuming(self) -> None:
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is None:
            return
        # Handlers pausing before a requeue give their message back at once.
        self._stopping.set()
        dispatcher.cancel()
        await asyncio.gather(dispatcher, return_exceptions=True)
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        log.info("broker.consumer_stopped", queue=MAIN_QUEUE)

    def consumer_alive(self) -> bool:
        return self._dispatcher is not None and not self._dispatcher.done()

    async def ping(self) -> None:
        self._ensure_open()

    async def queue_depth(self, queue: str) -> int:
        if queue == MAIN_QUEUE:
            return self._ready.qsize()
        if queue == DEAD_LETTER_QUEUE:
            return len(self._dead)
        raise BrokerError(f"unknown queue {queue!r}")

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return list(itertools.islice(self._dead, max(limit, 0)))

    @contextlib.asynccontextmanager
    async def scan_dead_letters(self, page_size: int) -> AsyncIterator[DeadLetterScan]:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        async with self._dead_lock:
            scan = _MemoryScan(self._dead, page_size)
            try:
                yield scan
            finally:
                scan.hand_back()

    async def purge_dead_letters(self) -> int:
        count = len(self._dead)
        self._dead.clear()
        return count

    def _ensure_open(self) -> None:
        if self._closed:
            raise BrokerError("the in-process queue is closed")

    async def _dispatch(self, handler: MessageHandler, prefetch: int) -> None:
        slots = asyncio.Semaphore(prefetch)
        while True:
            await slots.acquire()
            try:
                envelope = await self._ready.get()
            except BaseException:
                slots.release()
                raise
            # No await between taking the message and tracking its task, so cancelling the
            # dispatcher can never drop a message on the floor.
            task = asyncio.create_task(self._deliver(envelope, handler, slots))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _deliver(
        self, envelope: _Envelope, handler: MessageHandler, slots: asyncio.Semaphore
    ) -> None:
        try:
            await handler(envelope.message_id)
        except asyncio.CancelledError:
            self._ready.put_nowait(envelope)
            raise
        except Exception as exc:
            await self._handle_failure(envelope, exc)
        finally:
            slots.release()

    async def _handle_failure(self, envelope: _Envelope, exc: Exception) -> None:
        failed = envelope.failed_deliveries + 1
        log.warning(
            "broker.handler_failed",
            message_id=str(envelope.message_id),
            failed_deliveries=failed,
            error=type(exc).__name__,
        )
        if failed > self._delivery_limit:
            self._dead.append(
                DeadLetter(envelope.message_id, DELIVERY_LIMIT_REASON, self._clock.now())
            )
            log.warning("broker.delivery_limit_exceeded", message_id=str(envelope.message_id))
            return
        delay = requeue_delay(failed - 1, self._requeue_base_delay)
        try:
            if delay > 0 and not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        finally:
            # Also on cancellation: the message goes back rather than vanishing.
            self._ready.put_nowait(_Envelope(envelope.message_id, failed))


class _MemoryScan:
    """A `DeadLetterScan` over the in-process dead letters, with the RabbitMQ pass's semantics:
    kept letters move to the tail, letters added during the pass are not read, and leaving
    the pass puts a held page back at the head, in order."""

    def __init__(self, dead: deque[DeadLetter], page_size: int) -> None:
        self._dead = dead
        self._remaining = len(dead)
        self._page_size = page_size
        self._held: list[DeadLetter] = []
        self.read = 0
        self.peak_held = 0

    async def next_page(self) -> list[DeadLetter] | None:
        self._dead.extend(self._held)
        self._held = []
        while len(self._held) < self._page_size and self._remaining > 0 and self._dead:
            self._held.append(self._dead.popleft())
            self._remaining -= 1
            self.read += 1
        self.peak_held = max(self.peak_held, len(self._held))
        return list(self._held) if self._held else None

    async def remove(self, message_ids: Collection[UUID]) -> None:
        wanted = set(message_ids)
        self._held = [dead for dead in self._held if dead.message_id not in wanted]

    def hand_back(self) -> None:
        self._dead.extendleft(reversed(self._held))
        self._held = []
