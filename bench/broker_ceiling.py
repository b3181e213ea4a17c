"""What RabbitMQ itself allows on this machine, measured with plain aio-pika (no package code).

* `publish_rate`: pipelined publishes with publisher confirms into a durable quorum queue (the
  service's queue type): a batch goes out before its confirms are awaited. The ceiling of the
  scheduler's plan-and-publish.
* `consume_rate`: the same number of messages consumed and acknowledged one by one by
  `consumers` connections with `prefetch` each (the workers' shape): the ceiling of delivery.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, cast

import aio_pika
import aiormq

QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
BATCH = 1000


def _body(message_id: uuid.UUID) -> bytes:
    return json.dumps({"id": str(message_id)}).encode()


async def _publish(channel: aio_pika.abc.AbstractChannel, queue: str, count: int) -> None:
    underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
    for start in range(0, count, BATCH):
        size = min(BATCH, count - start)
        ids = [uuid.uuid4() for _ in range(size)]
        results: list[Any] = await asyncio.gather(
            *(
                underlay.basic_publish(
                    _body(mid),
                    routing_key=queue,
                    properties=aiormq.spec.Basic.Properties(
                        content_type="application/json", delivery_mode=2, message_id=str(mid)
                    ),
                    mandatory=True,
                    wait=False,
                )
                for mid in ids
            )
        )
        if not all(isinstance(result, aiormq.spec.Basic.Ack) for result in results):
            raise RuntimeError("a publish was not confirmed")


async def publish_rate(url: str, count: int) -> float:
    """Seconds to publish `count` confirmed messages into a fresh quorum queue."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue("bench_publish", durable=True, arguments=QUORUM)
        started = time.perf_counter()
        await _publish(channel, queue.name, count)
        elapsed = time.perf_counter() - started
        declared = await channel.declare_queue("bench_publish", passive=True)
        if declared.declaration_result.message_count != count:
            raise RuntimeError(f"expected {count} queued, found {declared.declaration_result}")
        await queue.delete(if_unused=False, if_empty=False)
        return elapsed
    finally:
        await connection.close()


async def consume_rate(url: str, count: int, consumers: int, prefetch: int) -> float:
    """Messages per second acknowledged, first delivery to last ack, `consumers` x `prefetch`."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue("bench_consume", durable=True, arguments=QUORUM)
        await _publish(channel, "bench_consume", count)
    finally:
        await connection.close()

    done = asyncio.Event()
    acked = 0
    first: list[float] = []

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        nonlocal acked
        if not first:
            first.append(time.perf_counter())
        json.loads(message.body)
        await message.ack()
        acked += 1
        if acked >= count:
            done.set()

    connections = [await aio_pika.connect(url) for _ in range(consumers)]
    try:
        for conn in connections:
            channel = await conn.channel()
            await channel.set_qos(prefetch_count=prefetch)
            queue = await channel.declare_queue("bench_consume", durable=True, arguments=QUORUM)
            await queue.consume(on_message)
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - first[0]
    finally:
        for conn in connections:
            await conn.close()
    return count / elapsed
