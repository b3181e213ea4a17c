"""The RabbitMQ adapter's batched publish (rabbitmq_frames): frames written a batch at a time
must keep delivery tags, confirms, nacks and returns exactly as one basic_publish each."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel

from birthday_scheduler.errors import BrokerError
from birthday_scheduler.infra.broker import rabbitmq_frames as frames
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, MAIN_QUEUE
from birthday_scheduler.infra.broker.policy import decode_body
from birthday_scheduler.infra.broker.rabbitmq import RabbitBroker
from rabbit_vhost import create_vhost, delete_vhost, rabbitmqctl, vhost_url

pytestmark = pytest.mark.rabbitmq

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    name = create_vhost("publish-test")
    yield name
    delete_vhost(name)


@pytest.fixture
def names() -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    return f"main_{suffix}", f"dlq_{suffix}"


@pytest.fixture
async def broker(vhost: str, names: tuple[str, str]) -> AsyncIterator[RabbitBroker]:
    adapter = RabbitBroker(
        vhost_url(vhost),
        main_queue=names[0],
        dead_letter_queue=names[1],
        publish_batch=100,
        operation_timeout=10.0,
    )
    await adapter.start()
    yield adapter
    await adapter.close()


@pytest.fixture
async def raw_channel(vhost: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(vhost_url(vhost))
    channel = await connection.channel()
    yield channel
    await connection.close()


async def _drain(channel: AbstractChannel, queue_name: str) -> list[aio_pika.IncomingMessage]:
    queue = await channel.declare_queue(queue_name, passive=True)
    messages = []
    while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
        messages.append(message)
    return messages


@pytest.mark.parametrize("path", ["frames", "basic_publish"])
async def test_every_id_of_batches_lands_once_with_its_own_properties(
    broker: RabbitBroker,
    raw_channel: AbstractChannel,
    names: tuple[str, str],
    path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both paths (the fallback serves a channel without aiormq's expected internals) put the
    same messages on the queue."""
    if path == "basic_publish":
        monkeypatch.setattr(frames, "supported", lambda _channel: False)
    ids = [uuid.uuid4() for _ in range(1050)]  # ten full batches and a partial one
    await broker.publish(ids)
    messages = await _drain(raw_channel, names[0])
    assert [decode_body(m.body) for m in messages] == ids  # in order, each once
    for message in messages[:3]:
        assert json.loads(message.body) == {"id": message.message_id}
        assert message.content_type == "application/json"
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT


async def test_batches_and_single_publishes_share_the_channel_tags(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    """Dead letters go through basic_publish on the same channel: a tag out of step would leave
    a confirm waiting for ever (a timeout) or resolve the wrong message's."""
    first, second = [uuid.uuid4() for _ in range(250)], [uuid.uuid4() for _ in range(30)]
    await broker.publish_dead(uuid.uuid4(), "cannot be planned", T0)
    await broker.publish(first)
    await broker.publish_dead(uuid.uuid4(), "cannot be planned", T0)
    await broker.publish(second)
    assert await broker.queue_depth(MAIN_QUEUE) == 280
    assert await broker.queue_depth(DEAD_LETTER_QUEUE) == 2
    assert [decode_body(m.body) for m in await _drain(raw_channel, names[0])] == first + second


async def test_a_batch_the_broker_refuses_midway_is_an_error_and_the_channel_goes_on(
    broker: RabbitBroker, vhost: str, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    """A full queue that rejects publishes nacks part of a batch: the publish raises, and what
    follows on the same channel is confirmed normally (its tags are still in step)."""
    policy = f"full-{names[0]}"
    rabbitmqctl(
        "set_policy", "-p", vhost, "--apply-to", "queues", policy, f"^{names[0]}$",
        '{"max-length": 150, "overflow": "reject-publish"}',
    )  # fmt: skip
    try:
        with pytest.raises(BrokerError, match="not confirmed"):
            await broker.publish([uuid.uuid4() for _ in range(400)])
        held = await _drain(raw_channel, names[0])
        assert 0 < len(held) < 400
        dead = [uuid.uuid4() for _ in range(3)]
        for message_id in dead:
            await broker.publish_dead(message_id, "cannot be planned", T0)
    finally:
        rabbitmqctl("clear_policy", "-p", vhost, policy)
    assert [decode_body(m.body) for m in await _drain(raw_channel, names[1])] == dead


async def test_a_batch_to_a_missing_queue_is_returned_not_confirmed(
    broker: RabbitBroker, raw_channel: AbstractChannel, names: tuple[str, str]
) -> None:
    await raw_channel.queue_delete(names[0])
    with pytest.raises(BrokerError, match="100 of 100 publishes"):
        await broker.publish([uuid.uuid4() for _ in range(120)])
