"""The RabbitMQ adapter against the machine's real RabbitMQ, in a throwaway vhost."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from uuid import UUID

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker.base import (
    DEAD_LETTER_QUEUE,
    MAIN_QUEUE,
    DeadLetter,
    DeadLetterScan,
)
from birthday_scheduler.infra.broker.policy import DELIVERY_LIMIT_REASON
from birthday_scheduler.infra.broker.rabbitmq import (
    CONSUMER_CONNECTION,
    PUBLISHER_CONNECTION,
    RabbitBroker,
)
from broker_contract import (
    check_a_scan_holds_one_page_and_finds_a_letter_at_any_depth,
    check_leaving_a_scan_hands_its_page_back_in_place,
    check_stop_consuming_waits_for_handlers_in_flight,
)
from rabbit_vhost import (
    close_all_connections,
    connection_names,
    create_vhost,
    delete_vhost,
    list_queues,
    vhost_url,
)
from support import eventually

pytestmark = pytest.mark.rabbitmq

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("broker-test")
    yield name
    delete_vhost(name)


@pytest.fixture
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"main_{suffix}", f"dlq_{suffix}"


def make_broker(vhost: str, names: tuple[str, str], **overrides: object) -> RabbitBroker:
    options: dict[str, object] = {
        "requeue_base_delay": 0.0,
        "watchdog_interval": 0.1,
        "reconnect_interval": 0.3,
        "operation_timeout": 5.0,
    }
    options.update(overrides)
    return RabbitBroker(
        vhost_url(vhost),
        main_queue=names[0],
        dead_letter_queue=names[1],
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
async def broker(vhost: str, names: tuple[str, str]) -> AsyncIterator[RabbitBroker]:
    adapter = make_broker(vhost, names)
    await adapter.start()
    yield adapter
    await adapter.close()


@pytest.fixture
async def raw_channel(vhost: str) -> AsyncIterator[AbstractChannel]:
    """A plain client channel, to look at and tamper with queues behind the adapter."""
    connection: AbstractRobustConnection = await aio_pika.connect_robust(vhost_url(vhost))
    channel = await connection.channel()
    yield channel
    await connection.close()


def recorder() -> tuple[Counter[UUID], Callable[[UUID], Awaitable[None]]]:
    seen: Counter[UUID] = Counter()

    async def handler(message_id: UUID) -> None:
        seen[message_id] += 1

    return seen, handler


async def test_start_declares_the_topology_idempotently(
    broker: RabbitBroker, vhost: str, names: tuple[str, str]
) -> None:
    main, dlq = names
    again = make_broker(vhost, names)
    await again.start()  # same arguments: no PRECONDITION_FAILED
    await again.close()

    queues = list_queues(vhost)
    main_type, main_args = queues[main]
    assert main_type == "quorum"
    assert f'{{"x-dead-letter-exchange","{main}.dlx"}}' in main_args
    assert f'{{"x-dead-letter-routing-key","{dlq}"}}' in main_args
    assert '{"x-delivery-limit",20}' in main_args
    assert queues[dlq][0] == "classic"


async def test_messages_are_persistent_json_ids(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    message_id = uuid.uuid4()
    await broker.publish([message_id])
    queue = await raw_channel.declare_queue(names[0], passive=True)
    message = await queue.get(no_ack=True, timeout=5)
    assert json.loads(message.body) == {"id": str(message_id)}
    assert message.message_id == str(message_id)
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_two_thousand_confirmed_publishes_are_each_consumed_once(
    broker: RabbitBroker,
) -> None:
    ids = [uuid.uuid4() for _ in range(2000)]
    await broker.publish(ids)
    assert await broker.queue_depth(MAIN_QUEUE) == 2000

    seen, handler = recorder()
    await broker.consume(handler, prefetch=50)

    async def all_seen() -> bool:
        return len(seen) == 2000

    await eventually(all_seen, within=30)
    await broker.stop_consuming()
    assert set(seen) == set(ids)
    assert set(seen.values()) == {1}
    assert await broker.queue_depth(MAIN_QUEUE) == 0


async def test_a_raising_handler_gets_the_message_again(broker: RabbitBroker) -> None:
    attempts: list[UUID] = []

    async def handler(message_id: UUID) -> None:
        attempts.append(message_id)
        if len(attempts) == 1:
            raise RuntimeError("database unreachable")

    message_id = uuid.uuid4()
    await broker.publish([message_id])
    await broker.consume(handler, prefetch=5)

    async def handled_twice() -> bool:
        return len(attempts) == 2

    await eventually(handled_twice)
    await broker.stop_consuming()
    assert attempts == [message_id, message_id]
    assert await broker.queue_depth(MAIN_QUEUE) == 0
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0


async def test_a_poison_message_is_dead_lettered_after_the_delivery_limit(
    vhost: str, names: tuple[str, str]
) -> None:
    broker = make_broker(vhost, names, delivery_limit=2)
    await broker.start()
    calls: Counter[UUID] = Counter()

    async def handler(message_id: UUID) -> None:
        calls[message_id] += 1
        raise ValueError("always fails")

    poison = uuid.uuid4()
    await broker.publish([poison])
    await broker.consume(handler, prefetch=1)

    async def dead_lettered() -> bool:
        return await broker.queue_depth(DEAD_LETTER_QUEUE) == 1

    await eventually(dead_lettered)
    await broker.stop_consuming()
    [dead] = await broker.dead_letters(10)
    await broker.close()
    assert calls == {poison: 3}  # the first delivery plus two redeliveries, as in memory
    assert dead.message_id == poison
    assert dead.reason == DELIVERY_LIMIT_REASON


async def test_a_malformed_body_is_rejected_into_the_dead_letter_queue(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    seen, handler = recorder()
    await raw_channel.default_exchange.publish(
        aio_pika.Message(b"not json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=names[0],
    )
    await broker.consume(handler, prefetch=5)

    async def dead_lettered() -> bool:
        return await broker.queue_depth(DEAD_LETTER_QUEUE) == 1

    await eventually(dead_lettered)
    await broker.stop_consuming()
    assert not seen
    assert await broker.queue_depth(MAIN_QUEUE) == 0
    # It has no id to replay, so listing skips it, but it stays until purged.
    assert await broker.dead_letters(10) == []
    dlq = await raw_channel.declare_queue(names[1], passive=True)
    message = await dlq.get(no_ack=True, timeout=5)
    assert message.body == b"not json"
    deaths = message.headers["x-death"]
    assert isinstance(deaths, list)
    assert isinstance(deaths[0], dict)
    assert deaths[0]["reason"] == "rejected"


async def test_dead_letters_are_peeked_and_purged(broker: RabbitBroker) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for message_id in (a, b, c):
        await broker.publish_dead(message_id, "permanent failure: HTTP 400", T0)
    await broker.publish_dead(uuid.uuid4(), "y" * 2000, T0)

    peeked = await broker.dead_letters(2)
    assert peeked == [
        DeadLetter(a, "permanent failure: HTTP 400", T0),
        DeadLetter(b, "permanent failure: HTTP 400", T0),
    ]
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 4  # peeking removes nothing
    everything = await broker.dead_letters(10)
    assert [dead.message_id for dead in everything[:3]] == [a, b, c]  # order kept
    assert len(everything[3].reason) == 500

    assert await broker.purge_dead_letters() == 4
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0


async def test_a_dead_letter_scan_holds_one_page_and_finds_a_letter_at_any_depth(
    broker: RabbitBroker,
) -> None:
    await check_a_scan_holds_one_page_and_finds_a_letter_at_any_depth(broker)


async def test_leaving_a_dead_letter_scan_hands_its_page_back_in_place(
    broker: RabbitBroker,
) -> None:
    await check_leaving_a_scan_hands_its_page_back_in_place(broker)


async def test_a_scan_keeps_what_it_cannot_read_and_what_the_broker_dead_lettered(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    # A body with no id (only `dlq purge` may drop it), then one the broker dead-lettered
    # itself (its reason and time are in RabbitMQ's x-death table), then one of ours.
    await raw_channel.default_exchange.publish(
        aio_pika.Message(b"not json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=names[1],
    )
    by_broker, ours = uuid.uuid4(), uuid.uuid4()
    await raw_channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps({"id": str(by_broker)}).encode(),
            headers={"x-death": [{"reason": "delivery_limit", "time": T0}]},
        ),
        routing_key=names[1],
    )
    await broker.publish_dead(ours, "attempts spent", T0)
    before = await broker.dead_letters(10)

    async with broker.scan_dead_letters(1) as scan:
        pages = [page async for page in _pages(scan)]
    assert pages == [[], [before[0]], [before[1]]]

    # A full pass moved each to the tail and back into its old order, readable as before.
    assert await broker.dead_letters(10) == before
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 3
    dlq = await raw_channel.declare_queue(names[1], passive=True)
    unreadable = await dlq.get(no_ack=True, timeout=5)
    assert unreadable.body == b"not json"


async def _pages(scan: DeadLetterScan) -> AsyncIterator[list[DeadLetter]]:
    while (page := await scan.next_page()) is not None:
        yield page


async def test_queue_depth_and_ping(broker: RabbitBroker, names: tuple[str, str]) -> None:
    await broker.ping()
    await broker.publish([uuid.uuid4() for _ in range(7)])
    assert await broker.queue_depth(MAIN_QUEUE) == 7
    assert await broker.queue_depth(names[0]) == 7
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 0
    with pytest.raises(BrokerError):
        await broker.queue_depth("no_such_queue")
    await broker.ping()  # the failed passive declare did not break the adapter


async def test_an_unroutable_publish_is_an_error(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    await raw_channel.queue_delete(names[0])
    with pytest.raises(BrokerError, match="not confirmed"):
        await broker.publish([uuid.uuid4(), uuid.uuid4()])


async def test_consumer_alive_is_false_after_close(broker: RabbitBroker) -> None:
    _, handler = recorder()
    assert not broker.consumer_alive()
    await broker.consume(handler, prefetch=1)
    assert broker.consumer_alive()
    await broker.close()
    assert not broker.consumer_alive()
    with pytest.raises(BrokerError):
        await broker.ping()


async def test_watchdog_resubscribes_after_the_consumer_channel_dies(
    broker: RabbitBroker,
) -> None:
    seen, handler = recorder()
    await broker.consume(handler, prefetch=5)
    subscription = broker._consumer
    assert subscription is not None
    # What broker trouble does: the channel under the consumer goes away.
    await subscription.underlay.close()
    assert not broker.consumer_alive()

    async def resubscribed() -> bool:
        return broker.consumer_alive() and broker._consumer is not subscription

    await eventually(resubscribed)
    message_id = uuid.uuid4()
    await broker.publish([message_id])

    async def handled() -> bool:
        return seen[message_id] == 1

    await eventually(handled)


async def test_consumer_recovers_after_the_broker_drops_the_connection(
    broker: RabbitBroker, vhost: str
) -> None:
    seen, handler = recorder()
    await broker.consume(handler, prefetch=5)
    close_all_connections(vhost)

    async def back() -> bool:
        if not broker.consumer_alive():
            return False
        try:
            await broker.publish([probe])
        except BrokerError:
            return False
        return True

    probe = uuid.uuid4()
    await eventually(back, within=20)

    async def handled() -> bool:
        return seen[probe] >= 1

    await eventually(handled)


async def test_consuming_uses_a_connection_of_its_own(broker: RabbitBroker, vhost: str) -> None:
    """A publishing connection blocked by a RabbitMQ resource alarm must not hold up acks."""
    _, handler = recorder()
    assert connection_names(vhost) == [PUBLISHER_CONNECTION]

    await broker.consume(handler, prefetch=1)
    await eventually(
        lambda: connection_names(vhost) == sorted([PUBLISHER_CONNECTION, CONSUMER_CONNECTION])
    )
    await broker.stop_consuming()

    await eventually(lambda: connection_names(vhost) == [PUBLISHER_CONNECTION])


async def test_errors_never_show_the_password(vhost: str) -> None:
    url = vhost_url(vhost).replace("guest:guest", "guest:s3cret-pw")
    broker = RabbitBroker(url, operation_timeout=5)
    with pytest.raises(BrokerError) as caught:
        await broker.start()
    assert "s3cret-pw" not in str(caught.value)


async def test_stop_consuming_waits_for_handlers_in_flight(broker: RabbitBroker) -> None:
    await check_stop_consuming_waits_for_handlers_in_flight(broker)
