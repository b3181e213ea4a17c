"""A batch of id messages written to an aiormq channel as one buffer, confirms pipelined.

aiormq's `basic_publish` costs about 70 µs of CPU per message (a coroutine, a lock, two
timeouts, three pamqp frames marshalled one by one, one socket write each), more than the
rest of the scheduler's work per due row. Every message here differs only in its id, so the
frames are marshalled once per routing key into a template and each message is the template
with its id spliced in (message_id property and body, both 36 bytes): a batch becomes one
write, and each message costs a confirmation future and two dict entries.

The confirmation bookkeeping is aiormq's own (`confirmations` keyed by delivery tag,
`message_id_delivery_tag` for Basic.Return of a mandatory publish), so acks, nacks and returns
resolve these futures exactly as they resolve basic_publish's. They are plain loop futures, not
the channel's (which a closing channel rejects, at a set entry and two callbacks apiece): the
caller watches for the channel closing once per batch. `supported()` says whether the channel
has that shape; otherwise the caller uses basic_publish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from functools import lru_cache
from uuid import UUID

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

from birthday_scheduler.infra.broker.policy import encode_body

_SAMPLE = UUID(int=0)
_SAMPLE_TEXT = str(_SAMPLE).encode()
_ATTRIBUTES = ("confirmations", "message_id_delivery_tag", "write_queue", "delivery_tag", "lock")


def supported(channel: aiormq.abc.AbstractChannel) -> bool:
    """A channel with publisher confirms and the aiormq internals this module relies on."""
    return (
        isinstance(channel, aiormq.Channel)
        and bool(channel.publisher_confirms)
        and all(hasattr(channel, name) for name in _ATTRIBUTES)
    )


@lru_cache(maxsize=64)
def _template(channel_number: int, routing_key: str) -> tuple[bytes, bytes, bytes]:
    """The frames of one message, split around the two places its id goes."""
    body = encode_body(_SAMPLE)
    properties = commands.Basic.Properties(
        content_type="application/json",
        delivery_mode=2,  # persistent
        message_id=str(_SAMPLE),
    )
    frames = b"".join(
        pamqp.frame.marshal(frame, channel_number)
        for frame in (
            commands.Basic.Publish(exchange="", routing_key=routing_key, mandatory=True),
            ContentHeader(0, len(body), properties),
            ContentBody(body),
        )
    )
    head, middle, tail = frames.split(_SAMPLE_TEXT)  # the id's text is the same length always
    return head, middle, tail


async def publish_ids(
    channel: aiormq.Channel, routing_key: str, message_ids: Sequence[UUID]
) -> list[asyncio.Future[object]]:
    """Write one persistent, mandatory message per id; returns their confirmation futures (an
    Ack as result, an exception for a nack or a return; a closed channel leaves them pending).

    The caller must remove the ids from `message_id_delivery_tag` once settled (`forget`)."""
    if channel.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError("the channel is closed")
    head, middle, tail = _template(channel.number, routing_key)
    parts: list[bytes] = []
    futures: list[asyncio.Future[object]] = []
    confirmations = channel.confirmations
    by_message_id = channel.message_id_delivery_tag
    loop = asyncio.get_running_loop()
    # The channel's lock keeps delivery tags in the order their frames reach the socket when
    # basic_publish (a dead letter, a DLQ scan) shares the channel.
    async with channel.lock:
        first = tag = channel.delivery_tag
        for message_id in message_ids:
            text = str(message_id)
            encoded = text.encode()
            tag += 1
            future = loop.create_future()
            confirmations[tag] = future
            by_message_id[text] = tag
            futures.append(future)
            parts += (head, encoded, middle, encoded, tail)
        channel.delivery_tag = tag
        try:
            # Waits only while the connection's frame buffer is full.
            await channel.write_queue.put(ChannelFrame(payload=b"".join(parts), should_close=False))
        except BaseException:
            # Not written: the broker never saw these tags, so the next publish reuses them.
            channel.delivery_tag = first
            for number, future in enumerate(futures, start=first + 1):
                confirmations.pop(number, None)
                future.cancel()
            forget(channel, message_ids)
            raise
    return futures


def forget(channel: aiormq.Channel, message_ids: Sequence[UUID]) -> None:
    """Drop the return lookups of settled publishes (basic_publish does this per message)."""
    by_message_id = channel.message_id_delivery_tag
    for message_id in message_ids:
        by_message_id.pop(str(message_id), None)
