"""Reading the RabbitMQ dead-letter queue without a worker: peek, scan in pages, purge.

AMQP has no "peek": a peek takes messages with basic.get (unacked) and hands them all back
at the end with one nack(requeue=True). The DLQ is a classic queue, which puts requeued
messages back at their original positions, so a peek leaves the order as it found it.

A scan reads every letter once while holding at most one page: a consumer whose prefetch is
the page size, so RabbitMQ never lets more be unacknowledged. A letter it keeps cannot be
requeued in place (it would be delivered again at once), so it is published again at the tail
of the queue, confirmed, and only then acked: a crash between the two leaves a second copy,
never none. The pass stops after the number of messages the queue held when it began, so it
never reads its own moved copies, nor letters dead-lettered while it runs (a replayed message
that fails again). A full pass is a rotation: the letters keep their relative order. Leaving a
pass early hands back what it holds in place.

While a peek or a scan runs, the messages it holds are invisible to other readers; a lock keeps
this process's own readers from overlapping, and `dlq` commands are run by one operator at a
time (a second concurrent reader would make a pass read past its start into moved copies).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from typing import Any, cast
from uuid import UUID

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from birthday_scheduler.clock import Clock
from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import DeadLetter
from birthday_scheduler.infra.broker.policy import read_dead_letter, translate_errors

log = structlog.get_logger(__name__)

# A message a scan holds, with what it reads as (None: no id in its body, always kept).
_Held = tuple[AbstractIncomingMessage, DeadLetter | None]


class RabbitDeadLetters:
    def __init__(
        self,
        queue: AbstractQueue,
        publish_channel: AbstractChannel,
        *,
        clock: Clock,
        timeout: float,
        secret: str,
    ) -> None:
        self._queue = queue
        self._publish_channel = publish_channel
        self._clock = clock
        self._timeout = timeout
        self._secret = secret
        self._lock = asyncio.Lock()

    async def peek(self, limit: int) -> list[DeadLetter]:
        found: list[DeadLetter] = []
        async with self._lock:
            held: list[AbstractIncomingMessage] = []
            try:
                with self._errors("read the dead-letter queue"):
                    while len(found) < limit and (message := await self._get()) is not None:
                        held.append(message)
                        if (dead := self._read(message)) is not None:
                            found.append(dead)
            finally:
                await self._hand_back(held)
        return found

    @contextlib.asynccontextmanager
    async def scan(self, page_size: int) -> AsyncIterator[RabbitScan]:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        async with self._lock:
            scan = RabbitScan(self, page_size)
            try:
                await scan.start()
                yield scan
            except BaseException:
                # The original error matters more than a failed hand-back; if the channel is
                # gone the broker has requeued the held messages itself.
                with contextlib.suppress(BrokerError):
                    await scan.stop()
                raise
            await scan.stop()
            log.info("broker.dead_letters_scanned", read=scan.read, peak_held=scan.peak_held)

    async def purge(self) -> int:
        async with self._lock:
            with self._errors("purge the dead-letter queue"):
                purge_ok = await self._queue.purge(timeout=self._timeout)
        count = int(purge_ok.message_count or 0)
        log.warning("broker.dead_letters_purged", count=count)
        return count

    # -- helpers used by RabbitScan --------------------------------------------------------

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return translate_errors(f"RabbitMQ: {action}", self._secret)

    async def _get(self) -> AbstractIncomingMessage | None:
        return await self._queue.get(no_ack=False, fail=False, timeout=self._timeout)

    def _read(self, message: AbstractIncomingMessage) -> DeadLetter | None:
        dead = read_dead_letter(message.body, message.headers or {}, self._clock.now())
        if dead is None:
            # Left in place: it cannot be replayed, and only `dlq purge` should drop it.
            log.warning("broker.dead_letter_unreadable", queue=self._queue.name)
        return dead

    async def _move_to_tail(self, kept: list[_Held]) -> None:
        """Publish copies of `kept` at the queue's tail (confirmed), then ack the originals."""
        if not kept:
            return
        with self._errors("move dead letters to the tail of the queue"):
            async with asyncio.timeout(self._timeout):
                underlay = await self._publish_channel.get_underlay_channel()
                results = await asyncio.gather(
                    *(self._publish_copy(underlay, message, dead) for message, dead in kept),
                    return_exceptions=True,
                )
            failures = [r for r in results if isinstance(r, BaseException)]
            if failures:
                raise BrokerError(
                    f"{len(failures)} of {len(kept)} dead letters were not moved"
                ) from failures[0]
            # Everything this channel still holds up to the last kept message is a kept one
            # (removed letters were acked already): one frame acks them all.
            await kept[-1][0].ack(multiple=True)

    async def _publish_copy(
        self,
        underlay: aiormq.abc.AbstractChannel,
        message: AbstractIncomingMessage,
        dead: DeadLetter | None,
    ) -> None:
        headers: dict[str, Any] = dict(message.headers or {})
        if dead is not None:
            # Our own headers carry the reason and time the broker's x-death table gave, so
            # the copy reads the same whatever the broker does with a client's x-death.
            headers["x-death-reason"] = dead.reason
            headers["x-dead-at"] = dead.dead_at.isoformat()
        result = await cast(aiormq.Channel, underlay).basic_publish(
            message.body,
            routing_key=self._queue.name,
            properties=aiormq.spec.Basic.Properties(
                content_type=message.content_type,
                delivery_mode=2,  # persistent
                message_id=message.message_id,
                headers=headers,
            ),
            mandatory=True,
            wait=False,
        )
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise BrokerError("a moved dead letter was not acknowledged")

    async def _hand_back(self, held: list[AbstractIncomingMessage]) -> None:
        if not held:
            return
        # One nack with multiple=True returns everything this channel still holds up to the
        # last one (removed messages were acked already).
        with self._errors("requeue held dead letters"):
            await held[-1].nack(multiple=True, requeue=True)


class RabbitScan:
    """One pass of `RabbitDeadLetters.scan` (a `DeadLetterScan`).

    A consumer with a prefetch of one page reads the queue: RabbitMQ itself never lets more
    than a page be unacknowledged, and deliveries stream in instead of costing a basic.get
    round trip each. The pass ends after the messages present at its start, counted by one
    basic.get first: a passive declare would be answered ahead of requeues this channel has
    just made (a page handed back), and undercount.
    """

    def __init__(self, owner: RabbitDeadLetters, page_size: int) -> None:
        self._owner = owner
        self._page_size = page_size
        self._remaining = 0
        self._deliveries: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        self._consumer_tag: str | None = None
        self._held: list[_Held] = []
        self.read = 0
        self.peak_held = 0

    async def start(self) -> None:
        owner, queue = self._owner, self._owner._queue
        with owner._errors("start reading the dead-letter queue"):
            first = await owner._get()
            if first is None:
                return
            self._remaining = 1 + int(first.message_count or 0)
            # Back at the head, where the consumer starts (same channel, so in that order).
            await first.nack(requeue=True)
            await queue.channel.set_qos(prefetch_count=self._page_size, timeout=owner._timeout)
            self._consumer_tag = await queue.consume(
                self._on_delivery, no_ack=False, timeout=owner._timeout
            )

    async def _on_delivery(self, message: AbstractIncomingMessage) -> None:
        self._deliveries.put_nowait(message)

    async def next_page(self) -> list[DeadLetter] | None:
        kept, self._held = self._held, []
        await self._owner._move_to_tail(kept)
        while len(self._held) < self._page_size and self._remaining > 0:
            try:
                message = await asyncio.wait_for(self._deliveries.get(), self._owner._timeout)
            except TimeoutError:
                # Fewer than counted: someone else took or purged some meanwhile.
                log.warning("broker.dead_letters_scan_short", unread=self._remaining)
                self._remaining = 0
                break
            self._remaining -= 1
            self.read += 1
            self._held.append((message, self._owner._read(message)))
            # Delivered but not yet taken into a page counts as held too.
            self.peak_held = max(self.peak_held, len(self._held) + self._deliveries.qsize())
        if not self._held:
            return None
        return [dead for _, dead in self._held if dead is not None]

    async def remove(self, message_ids: Collection[UUID]) -> None:
        wanted = set(message_ids)
        kept: list[_Held] = []
        with self._owner._errors("remove dead letters"):
            for message, dead in self._held:
                if dead is not None and dead.message_id in wanted:
                    await message.ack()
                else:
                    kept.append((message, dead))
        self._held = kept

    async def stop(self) -> None:
        """Stop the consumer and hand back, in place, everything still unacknowledged: the
        page held and whatever was delivered after it."""
        self._held = []
        tag, self._consumer_tag = self._consumer_tag, None
        if tag is None:
            return
        owner = self._owner
        with owner._errors("stop reading the dead-letter queue"):
            await owner._queue.cancel(tag, timeout=owner._timeout)
            underlay = await owner._queue.channel.get_underlay_channel()
            # Delivery tag 0 with multiple: every message this channel still holds.
            await underlay.basic_nack(delivery_tag=0, multiple=True, requeue=True)
