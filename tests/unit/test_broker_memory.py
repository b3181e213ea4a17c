"""The in-process queue keeps the RabbitMQ adapter's delivery semantics."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime
from uuid import UUID

import pytest

from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import (
    DEAD_LETTER_QUEUE,
    MAIN_QUEUE,
    Broker,
    DeadLetter,
)
from birthday_scheduler.infra.broker.memory import MemoryBroker
from birthday_scheduler.infra.broker.policy import DELIVERY_LIMIT_REASON
from broker_contract import (
    check_a_scan_holds_one_page_and_finds_a_letter_at_any_depth,
    check_leaving_a_scan_hands_its_page_back_in_place,
    check_stop_consuming_waits_for_handlers_in_flight,
)
from support import eventually, holds

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return T0

    def monotonic(self) -> float:
        return 0.0


def make_broker(delivery_limit: int = 20) -> MemoryBroker:
    return MemoryBroker(delivery_limit=delivery_limit, requeue_base_delay=0, clock=FixedClock())


def test_implements_the_broker_protocol() -> None:
    broker: Broker = make_broker()
    assert isinstance(broker, MemoryBroker)


async def test_every_published_id_is_delivered_once() -> None:
    broker = make_broker()
    await broker.start()
    ids = [uuid.uuid4() for _ in range(500)]
    seen: Counter[UUID] = Counter()

    async def handler(message_id: UUID) -> None:
        seen[message_id] += 1

    await broker.publish(ids)
    assert await broker.queue_depth(MAIN_QUEUE) == 500
    await broker.consume(handler, prefetch=10)
    await eventually(lambda: sum(seen.values()) == 500, within=5, interval=0.001)
    await broker.close()
    assert set(seen) == set(ids)
    assert set(seen.values()) == {1}
    assert await broker.queue_depth(MAIN_QUEUE) == 0


async def test_a_failing_handler_gets_the_message_again() -> None:
    broker = make_broker()
    await broker.start()
    attempts: list[UUID] = []
    done: list[UUID] = []

    async def handler(message_id: UUID) -> None:
        attempts.append(message_id)
        if len(attempts) < 3:
            raise RuntimeError("database unreachable")
        done.append(message_id)

    message_id = uuid.uuid4()
    await broker.publish([message_id])
    await broker.consume(handler, prefetch=1)
    await eventually(lambda: bool(done), within=5, interval=0.001)
    await broker.close()
    assert attempts == [message_id] * 3
    assert await broker.dead_letters(10) == []


async def test_a_failed_message_goes_to_the_back_of_the_queue() -> None:
    broker = make_broker()
    await broker.start()
    first, second = uuid.uuid4(), uuid.uuid4()
    order: list[UUID] = []

    async def handler(message_id: UUID) -> None:
        order.append(message_id)
        if message_id == first and order.count(first) == 1:
            raise RuntimeError("transient")

    await broker.publish([first, second])
    await broker.consume(handler, prefetch=1)
    await eventually(lambda: len(order) == 3, within=5, interval=0.001)
    await broker.close()
    assert order == [first, second, first]


async def test_a_poison_message_ends_in_the_dead_letter_queue_after_the_limit() -> None:
    broker = make_broker(delivery_limit=2)
    await broker.start()
    calls: Counter[UUID] = Counter()
    poison, healthy = uuid.uuid4(), uuid.uuid4()

    async def handler(message_id: UUID) -> None:
        calls[message_id] += 1
        if message_id == poison:
            raise ValueError("always fails")

    await broker.publish([poison, healthy])
    await broker.consume(handler, prefetch=2)
    await eventually(lambda: calls[poison] == 3, within=5, interval=0.001)
    await broker.close()
    # Like a quorum queue's x-delivery-limit of 2: two redeliveries, then dead-lettered.
    assert calls == {poison: 3, healthy: 1}
    assert await broker.dead_letters(10) == [DeadLetter(poison, DELIVERY_LIMIT_REASON, T0)]
    assert await broker.queue_depth(MAIN_QUEUE) == 0
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 1


async def test_no_more_than_prefetch_handlers_run_at_once() -> None:
    broker = make_broker()
    await broker.start()
    gate = asyncio.Event()
    running = 0
    peak = 0
    finished = 0

    async def handler(message_id: UUID) -> None:
        nonlocal running, peak, finished
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1
        finished += 1

    await broker.publish([uuid.uuid4() for _ in range(10)])
    await broker.consume(handler, prefetch=3)
    await eventually(lambda: running == 3, within=5, interval=0.001)
    await holds(lambda: running == 3)
    assert await broker.queue_depth(MAIN_QUEUE) == 7
    gate.set()
    await eventually(lambda: finished == 10, within=5, interval=0.001)
    await broker.close()
    assert peak == 3


async def test_stop_consuming_waits_for_handlers_in_flight_and_takes_no_more() -> None:
    broker = make_broker()
    await broker.start()
    await check_stop_consuming_waits_for_handlers_in_flight(broker)
    assert await broker.queue_depth(MAIN_QUEUE) == 3


async def test_stop_consuming_cuts_a_requeue_pause_short() -> None:
    broker = MemoryBroker(requeue_base_delay=60, clock=FixedClock())
    await broker.start()
    failed = asyncio.Event()

    async def handler(message_id: UUID) -> None:
        failed.set()
        raise RuntimeError("database unreachable")

    await broker.publish([uuid.uuid4()])
    await broker.consume(handler, prefetch=1)
    await asyncio.wait_for(failed.wait(), timeout=5)
    await asyncio.wait_for(broker.stop_consuming(), timeout=5)
    assert await broker.queue_depth(MAIN_QUEUE) == 1


async def test_dead_letters_can_be_listed_and_purged() -> None:
    broker = make_broker()
    await broker.start()
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for message_id in (a, b, c):
        await broker.publish_dead(message_id, "permanent failure: 400", T0)
    await broker.publish_dead(uuid.uuid4(), "x" * 2000, T0)

    listed = await broker.dead_letters(2)
    assert [dead.message_id for dead in listed] == [a, b]
    assert listed[0].reason == "permanent failure: 400"
    assert listed[0].dead_at == T0
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 4  # peeking removes nothing
    remaining = await broker.dead_letters(10)
    assert [dead.message_id for dead in remaining][:3] == [a, b, c]
    assert len(remaining[3].reason) == 500

    assert await broker.purge_dead_letters() == 4
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0


async def test_a_dead_letter_scan_holds_one_page_and_finds_a_letter_at_any_depth() -> None:
    broker = make_broker()
    await broker.start()
    await check_a_scan_holds_one_page_and_finds_a_letter_at_any_depth(broker)


async def test_leaving_a_dead_letter_scan_hands_its_page_back_in_place() -> None:
    broker = make_broker()
    await broker.start()
    await check_leaving_a_scan_hands_its_page_back_in_place(broker)


async def test_a_closed_broker_refuses_work() -> None:
    broker = make_broker()
    await broker.start()
    await broker.ping()
    await broker.close()
    with pytest.raises(BrokerError):
        await broker.publish([uuid.uuid4()])
    with pytest.raises(BrokerError):
        await broker.ping()
    with pytest.raises(BrokerError):
        await broker.queue_depth("elsewhere")


async def test_consumer_alive_follows_the_consumer() -> None:
    broker = make_broker()
    await broker.start()
    assert not broker.consumer_alive()

    async def handler(message_id: UUID) -> None:
        return None

    await broker.consume(handler, prefetch=1)
    assert broker.consumer_alive()
    with pytest.raises(RuntimeError):
        await broker.consume(handler, prefetch=1)
    await broker.close()
    assert not broker.consumer_alive()
