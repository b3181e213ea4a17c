"""The interface every queue adapter implements (RabbitMQ and the in-process queue).

The broker only carries message ids; the database ledger is the source of truth, so a
message body never holds personal data and anything the broker loses the ledger finds again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from birthday_scheduler.errors import BrokerError

MAIN_QUEUE = "birthday_messages"
DEAD_LETTER_QUEUE = "birthday_messages_dlq"

# Called once per delivered message. Returning normally acks the message; raising nacks it
# back onto the queue (for transient trouble such as the database being unreachable).
MessageHandler = Callable[[UUID], Awaitable[None]]


class UnconfirmedPublish(BrokerError):
    """A publish of several ids of which only some were confirmed: `unconfirmed` lists the ids
    that may not be in the queue (nacked, returned, or never awaited); every other id of the
    call was confirmed."""

    def __init__(self, message: str, unconfirmed: Sequence[UUID]) -> None:
        super().__init__(message)
        self.unconfirmed = tuple(unconfirmed)


@dataclass(frozen=True)
class DeadLetter:
    message_id: UUID
    reason: str
    dead_at: datetime


class DeadLetterScan(Protocol):
    """One pass over the dead letters the queue held when the pass began, a page at a time.

    A page's letters stay held (unacknowledged, so a crash hands them back) until the next
    page is read; at most one page is held at once, whatever the depth of the queue.
    """

    @property
    def read(self) -> int:
        """Messages read so far in this pass (unreadable ones included)."""

    @property
    def peak_held(self) -> int:
        """The most messages this pass has held at once (never above the page size)."""

    async def next_page(self) -> list[DeadLetter] | None:
        """Move the previous page's letters that were not removed behind the unread ones, then
        read the next page; None once every letter present at the start has been read.

        A page lists its readable letters only: one without an id is always kept.
        """

    async def remove(self, message_ids: Collection[UUID]) -> None:
        """Remove the current page's letters (every copy) whose id is in `message_ids`."""


class Broker(Protocol):
    async def start(self) -> None:
        """Connect and declare the topology (idempotent)."""

    async def close(self) -> None:
        """Stop consuming, wait for handlers in flight, and disconnect."""

    async def publish(self, message_ids: Sequence[UUID]) -> None:
        """Publish ids to the main queue; returns only once every publish is confirmed.

        Raises BrokerError when any publish is not confirmed; an UnconfirmedPublish when the
        others are known to be confirmed.
        """

    async def publish_dead(self, message_id: UUID, reason: str, dead_at: datetime) -> None:
        """Put a copy of a dead message with its reason on the dead-letter queue (confirmed)."""

    async def consume(self, handler: MessageHandler, prefetch: int) -> None:
        """Start delivering main-queue messages to `handler`, at most `prefetch` at once."""

    async def stop_consuming(self) -> None:
        """Take no new messages; wait for the handlers in flight to finish."""

    def consumer_alive(self) -> bool:
        """True while a consumer is registered and receiving (health checks read this)."""

    async def ping(self) -> None:
        """Raise BrokerError unless the broker answers now."""

    async def queue_depth(self, queue: str) -> int:
        """Messages ready in `queue` (MAIN_QUEUE or DEAD_LETTER_QUEUE)."""

    async def dead_letters(self, limit: int) -> list[DeadLetter]:
        """Look at up to `limit` dead letters without removing them."""

    def scan_dead_letters(self, page_size: int) -> AbstractAsyncContextManager[DeadLetterScan]:
        """A pass over the dead letters, `page_size` held at a time (one reader at a time).

        On leaving the context, a page still held goes back where it was, in order; on a
        crash the broker returns it as it returns any unacknowledged message.
        """

    async def purge_dead_letters(self) -> int:
        """Drop every dead letter; returns how many were dropped."""
