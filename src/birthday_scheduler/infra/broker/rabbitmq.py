"""The RabbitMQ adapter: confirmed publishes, a supervised consumer and a DLQ read in pages.

Topology (declared idempotently by start()):

    <main>          durable quorum queue; x-dead-letter-exchange -> <main>.dlx,
                    x-delivery-limit so a message whose handler keeps raising ends in the DLQ
    <main>.dlx      durable direct exchange, bound to the DLQ with routing key <dlq>
    <dlq>           durable classic queue

The DLQ is classic rather than quorum: dead letters are also recorded in the database
ledger (the source of truth), so they need no replication, and only a classic queue puts a
message that is requeued after a peek back at its original position, so `dead_letters()`
can look without reordering. Quorum dead-lettering is at-most-once (RabbitMQ's default);
a dead letter lost in transit is still `dead` in the ledger.

Connections: one for publishing and operations, and one more for consuming once consume() is
called. RabbitMQ blocks a connection that publishes while a memory or disk alarm is on; a
consumer on that same connection could then not ack, the queue could not drain, and the alarm
could not clear.

Channels: one for the topology, one with publisher confirms (which also moves the dead letters
a DLQ scan keeps to the tail), one for DLQ reads (a peek's basic.get and a scan's consumer hold
unacked messages there), one per consumer subscription (on the consumer's connection), and a
short-lived one per passive declare (ping, queue_depth), because a failed one closes its
channel.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, TypeVar, cast
from uuid import UUID

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from yarl import URL

from birthday_scheduler.clock import Clock, SystemClock
from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker import rabbitmq_frames as frames
from birthday_scheduler.infra.broker.base import (
    DEAD_LETTER_QUEUE,
    MAIN_QUEUE,
    DeadLetter,
    DeadLetterScan,
    MessageHandler,
    UnconfirmedPublish,
)
from birthday_scheduler.infra.broker.policy import (
    DELIVERY_LIMIT,
    REQUEUE_BASE_DELAY,
    decode_body,
    describe_error,
    encode_body,
    requeue_delay,
    translate_errors,
    truncate_reason,
)
from birthday_scheduler.infra.broker.rabbitmq_dlq import RabbitDeadLetters

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
# How the two connections show in the management UI and `rabbitmqctl list_connections`.
PUBLISHER_CONNECTION = "birthday-scheduler"
CONSUMER_CONNECTION = "birthday-scheduler consumer"


class RabbitBroker:
    """A `Broker` on RabbitMQ; one consumer per instance, any number of publishers."""

    def __init__(
        self,
        url: str,
        *,
        main_queue: str = MAIN_QUEUE,
        dead_letter_queue: str = DEAD_LETTER_QUEUE,
        publish_batch: int = 500,
        delivery_limit: int = DELIVERY_LIMIT,
        requeue_base_delay: float = REQUEUE_BASE_DELAY,
        watchdog_interval: float = 2.0,
        operation_timeout: float = 10.0,
        reconnect_interval: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        if publish_batch < 1:
            raise ValueError("publish_batch must be >= 1")
        self._url = url
        self._password = URL(url).password or ""
        self._main_name = main_queue
        self._dlq_name = dead_letter_queue
        self._dlx_name = f"{main_queue}.dlx"
        self._publish_batch = publish_batch
        self._delivery_limit = delivery_limit
        self._requeue_base_delay = requeue_base_delay
        self._watchdog_interval = watchdog_interval
        self._timeout = operation_timeout
        self._reconnect_interval = reconnect_interval
        self._clock: Clock = clock or SystemClock()

        self._connection: AbstractRobustConnection | None = None
        self._consumer_connection: AbstractRobustConnection | None = None
        self._ops_channel: AbstractChannel | None = None
        self._publish_channel: AbstractChannel | None = None
        self._dlq_channel: AbstractChannel | None = None
        self._dead: RabbitDeadLetters | None = None

        self._handler: MessageHandler | None = None
        self._prefetch = 0
        self._consumer: _Subscription | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            with self._errors("declare topology"):
                await self._declare_topology(self._require(self._ops_channel))
            return
        with self._errors("connect"):
            connection = await self._connect(PUBLISHER_CONNECTION)
        self._connection = connection
        try:
            with self._errors("declare topology"):
                self._ops_channel = await connection.channel(publisher_confirms=False)
                await self._declare_topology(self._ops_channel)
                self._publish_channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
                self._dlq_channel = await connection.channel(publisher_confirms=False)
                dlq = await self._dlq_channel.declare_queue(
                    self._dlq_name, passive=True, robust=False
                )
                self._dead = RabbitDeadLetters(
                    dlq,
                    self._publish_channel,
                    clock=self._clock,
                    timeout=self._timeout,
                    secret=self._password,
                )
        except BrokerError:
            await self.close()
            raise
        url = URL(self._url)
        log.info(
            "broker.connected", host=url.host, port=url.port, vhost=url.path.lstrip("/") or "/"
        )

    async def close(self) -> None:
        await self.stop_consuming()
        connection, self._connection = self._connection, None
        self._ops_channel = self._publish_channel = self._dlq_channel = None
        self._dead = None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=self._timeout)
            log.info("broker.closed")

    async def _connect(self, name: str) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            self._url,
            timeout=self._timeout,
            reconnect_interval=self._reconnect_interval,
            client_properties={"connection_name": name},
        )

    async def _declare_topology(self, channel: AbstractChannel) -> None:
        dlx = await channel.declare_exchange(
            self._dlx_name, aio_pika.ExchangeType.DIRECT, durable=True
        )
        dlq = await channel.declare_queue(self._dlq_name, durable=True)
        await dlq.bind(dlx, routing_key=self._dlq_name)
        await channel.declare_queue(
            self._main_name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": self._dlx_name,
                "x-dead-letter-routing-key": self._dlq_name,
                "x-delivery-limit": self._delivery_limit,
            },
        )

    # -- publishing ------------------------------------------------------------------------

    async def publish(self, message_ids: Sequence[UUID]) -> None:
        channel = self._require(self._publish_channel)
        for start in range(0, len(message_ids), self._publish_batch):
            batch = message_ids[start : start + self._publish_batch]
            try:
                with self._errors(f"publish to {self._main_name!r}"):
                    # One deadline for the whole batch rather than one timer per message: the
                    # timers were a tenth of the publisher's CPU.
                    async with asyncio.timeout(self._timeout):
                        underlay = await channel.get_underlay_channel()
                        # Confirms are pipelined: the whole batch goes out before the first
                        # confirm is awaited. Awaiting each in turn costs a round trip apiece.
                        results = await self._publish_confirmed(underlay, batch)
            except BrokerError as exc:
                # The batches before this one were confirmed.
                raise UnconfirmedPublish(str(exc), message_ids[start:]) from exc.__cause__
            failed = [
                (message_id, result)
                for message_id, result in zip(batch, results, strict=True)
                if isinstance(result, BaseException)
            ]
            if failed:
                log.error("broker.publish_failed", failed=len(failed), batch=len(batch))
                raise UnconfirmedPublish(
                    f"{len(failed)} of {len(batch)} publishes to {self._main_name!r} "
                    f"were not confirmed: {self._describe(failed[0][1])}",
                    [message_id for message_id, _ in failed]
                    + list(message_ids[start + len(batch) :]),
                ) from failed[0][1]

    async def _publish_confirmed(
        self, underlay: aiormq.abc.AbstractChannel, batch: Sequence[UUID]
    ) -> list[object]:
        """Each id's confirm (an Ack) or the exception that stands for it."""
        if not frames.supported(underlay):
            return await asyncio.gather(
                *(self._publish_one(underlay, self._main_name, mid) for mid in batch),
                return_exceptions=True,
            )
        channel = cast(aiormq.Channel, underlay)
        confirms = await frames.publish_ids(channel, self._main_name, batch)
        # Rejected by aiormq when the channel closes (at once if it already has): the confirms
        # are plain futures (aiormq's own cost a set entry and two callbacks each, in the
        # channel's and the connection's stores), so one sentinel per batch stands for them all.
        closed = channel.create_future()
        try:
            settled = asyncio.gather(*confirms, return_exceptions=True)
            await asyncio.wait((settled, closed), return_when=asyncio.FIRST_COMPLETED)
            if not settled.done():
                reason = (None if closed.cancelled() else closed.exception()) or BrokerError(
                    "the channel closed"
                )
                for confirm in confirms:
                    if not confirm.done():
                        confirm.set_exception(reason)
            results: list[object] = await settled
        finally:
            closed.cancel()
            for confirm in confirms:
                confirm.cancel()  # a deadline left them waiting: a late confirm is ignored
            frames.forget(channel, batch)
        return [
            result
            if isinstance(result, BaseException | aiormq.spec.Basic.Ack)
            else BrokerError(f"publish to {self._main_name!r} was not acknowledged")
            for result in results
        ]

    async def publish_dead(self, message_id: UUID, reason: str, dead_at: datetime) -> None:
        channel = self._require(self._publish_channel)
        headers: dict[str, Any] = {
            "x-death-reason": truncate_reason(reason),
            "x-dead-at": dead_at.isoformat(),
        }
        with self._errors("publish to the dead-letter queue"):
            async with asyncio.timeout(self._timeout):
                underlay = await channel.get_underlay_channel()
                await self._publish_one(underlay, self._dlq_name, message_id, headers)

    async def _publish_one(
        self,
        underlay: aiormq.abc.AbstractChannel,
        routing_key: str,
        message_id: UUID,
        headers: dict[str, Any] | None = None,
    ) -> None:
        # Straight to the aiormq channel with wait=False: aio-pika's wrapper waits for each
        # frame to drain to the socket while holding the channel lock, which serialises a
        # pipelined batch. The batch size bounds what is buffered instead. mandatory=True
        # makes an unroutable message an error (the channel raises on Basic.Return). The
        # caller's deadline bounds the wait for the confirm.
        result = await cast(aiormq.Channel, underlay).basic_publish(
            encode_body(message_id),
            routing_key=routing_key,
            properties=aiormq.spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,  # persistent
                message_id=str(message_id),
                headers=headers,
            ),
            mandatory=True,
            wait=False,
        )
        if not isinstance(result, aiormq.spec.Basic.Ack):
            raise BrokerError(f"publish to {routing_key!r} was not acknowledged")

    # -- consuming -------------------------------------------------------------------------

    async def consume(self, handler: MessageHandler, prefetch: int) -> None:
        if prefetch < 1:
            raise ValueError("prefetch must be >= 1")
        if self._handler is not None:
            raise RuntimeError("this broker is already consuming")
        self._require(self._connection)
        self._handler, self._prefetch = handler, prefetch
        self._stopping.clear()
        try:
            with self._errors("start consuming"):
                self._consumer_connection = await self._connect(CONSUMER_CONNECTION)
                await self._subscribe()
        except BrokerError:
            self._handler = None
            await self._close_consumer_connection()
            raise
        self._watchdog = asyncio.create_task(self._watch(), name="rabbit-consumer-watchdog")
        log.info("broker.consumer_started", queue=self._main_name, prefetch=prefetch)

    async def stop_consuming(self) -> None:
        if self._handler is None:
            return
        self._stopping.set()
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None:
            watchdog.cancel()
            await asyncio.gather(watchdog, return_exceptions=True)
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await consumer.cancel(self._timeout)
        while self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        if consumer is not None:
            await consumer.close(self._timeout)
        await self._close_consumer_connection()
        self._handler = None
        log.info("broker.consumer_stopped", queue=self._main_name)

    async def _close_consumer_connection(self) -> None:
        connection, self._consumer_connection = self._consumer_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=self._timeout)

    def consumer_alive(self) -> bool:
        return (
            self._handler is not None
            and not self._stopping.is_set()
            and self._consumer is not None
            and self._consumer.registered()
        )

    async def _subscribe(self) -> None:
        connection = self._require(self._consumer_connection)
        channel = await asyncio.wait_for(
            connection.channel(publisher_confirms=False), timeout=self._timeout
        )
        try:
            await channel.set_qos(prefetch_count=self._prefetch, timeout=self._timeout)
            queue = await channel.declare_queue(
                self._main_name, passive=True, robust=False, timeout=self._timeout
            )
            underlay = await channel.get_underlay_channel()
            # robust=False: aio-pika must not restore this consumer behind our back; the
            # watchdog owns re-subscription, so there is never a second, unsupervised one.
            tag = await queue.consume(self._on_message, robust=False, timeout=self._timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(channel.close(), timeout=self._timeout)
            raise
        old, self._consumer = self._consumer, _Subscription(channel, queue, underlay, tag)
        if old is not None:
            await old.close(self._timeout)

    async def _watch(self) -> None:
        # aio-pika consumers can vanish after broker trouble (a channel closed by the broker,
        # a reconnect that restores the channel but not the consumer) while the connection
        # looks fine. Re-subscribe whenever ours is gone.
        while not self._stopping.is_set():
            await asyncio.sleep(self._watchdog_interval)
            if self._stopping.is_set() or self.consumer_alive():
                continue
            try:
                await self._subscribe()
            except Exception as exc:
                log.warning("broker.consumer_restart_failed", error=self._describe(exc))
            else:
                log.warning("broker.consumer_restarted", queue=self._main_name)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        # Each message gets its own tracked task so stop_consuming() can wait for it.
        task = asyncio.create_task(self._handle(message))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        handler = self._handler
        try:
            message_id = decode_body(message.body)
        except ValueError:
            # Requeueing a body nobody can read would loop for ever: reject it into the DLX.
            log.warning("broker.message_malformed", queue=self._main_name)
            await self._settle(message.reject(requeue=False), "reject")
            return
        if handler is None or self._stopping.is_set():
            # Arrived between basic.cancel and cancel-ok: hand it straight back.
            await self._settle(message.nack(requeue=True), "nack")
            return
        try:
            await handler(message_id)
        except Exception as exc:
            failed_before = _delivery_count(message)
            log.warning(
                "broker.handler_failed",
                message_id=str(message_id),
                failed_deliveries=failed_before + 1,
                error=type(exc).__name__,
            )
            await self._pause(requeue_delay(failed_before, self._requeue_base_delay))
            await self._settle(message.nack(requeue=True), "nack")
            return
        await self._settle(message.ack(), "ack")

    async def _pause(self, delay: float) -> None:
        if delay > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    async def _settle(self, settle: Awaitable[None], action: str) -> None:
        try:
            await settle
        except Exception as exc:
            # The channel went away; the broker redelivers the message, and the ledger makes
            # a second delivery harmless.
            log.warning("broker.settle_failed", action=action, error=self._describe(exc))

    # -- health ----------------------------------------------------------------------------

    async def ping(self) -> None:
        connection = self._require(self._connection)
        if connection.is_closed:
            raise BrokerError("the RabbitMQ connection is closed")
        await self._declare_ok(self._main_name)

    async def queue_depth(self, queue: str) -> int:
        name = {MAIN_QUEUE: self._main_name, DEAD_LETTER_QUEUE: self._dlq_name}.get(queue, queue)
        declare_ok = await self._declare_ok(name)
        return int(declare_ok.message_count or 0)

    async def _declare_ok(self, queue: str) -> aiormq.spec.Queue.DeclareOk:
        connection = self._require(self._connection)
        with self._errors(f"inspect queue {queue!r}"):

            async def declare() -> aiormq.spec.Queue.DeclareOk:
                # A short-lived channel: a failed passive declare (404) closes its channel, and
                # a shared one would be unusable until aio-pika restored it.
                channel = await connection.channel(publisher_confirms=False)
                try:
                    underlay = await channel.get_underlay_channel()
                    # Passive: only asks; a missing queue is an error, not a new queue.
                    return await underlay.queue_declare(queue, passive=True)
                finally:
                    if not channel.is_closed:
                        await channel.close()

            return await asyncio.wait_for(declare(), timeout=self._timeout)

    # -- dead letters ----------------------------------------------------------------------

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        return await self._require(self._dead).peek(limit)

    def scan_dead_letters(self, page_size: int) -> AbstractAsyncContextManager[DeadLetterScan]:
        return self._require(self._dead).scan(page_size)

    async def purge_dead_letters(self) -> int:
        return await self._require(self._dead).purge()

    # -- helpers ---------------------------------------------------------------------------

    def _require(self, value: _T | None) -> _T:
        if value is None:
            raise BrokerError("the RabbitMQ broker is not started")
        return value

    def _errors(self, action: str) -> contextlib.AbstractContextManager[None]:
        return translate_errors(f"RabbitMQ: {action}", self._password)

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc, self._password)


class _Subscription:
    """One consumer registration: the channel it lives on and the tag the broker knows."""

    def __init__(
        self, channel: AbstractChannel, queue: AbstractQueue, underlay: Any, tag: str
    ) -> None:
        self.channel, self.queue, self.underlay, self.tag = channel, queue, underlay, tag

    def registered(self) -> bool:
        # The aiormq channel drops the tag when the broker cancels the consumer, and a
        # restored channel has a new underlay without it.
        return not self.underlay.is_closed and self.tag in self.underlay.consumers

    async def cancel(self, seconds: float) -> None:
        if not self.registered():
            return
        try:
            await asyncio.wait_for(self.queue.cancel(self.tag), timeout=seconds)
        except Exception as exc:
            log.warning("broker.consumer_cancel_failed", error=type(exc).__name__)

    async def close(self, seconds: float) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.channel.close(), timeout=seconds)


def _delivery_count(message: AbstractIncomingMessage) -> int:
    # Quorum queues count failed deliveries in x-delivery-count (absent on the first one).
    value = (message.headers or {}).get("x-delivery-count")
    return value if isinstance(value, int) else 0
