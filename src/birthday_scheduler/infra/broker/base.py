"""The interface every queue adapter implements (RabbitMQ and the in-process queue).

The broker only carries message ids; the database ledger is the source of truth, so a
message body never holds personal data and anything the broker loses the ledger finds again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

MAIN_QUEUE = "birthday_messages"
DEAD_LETTER_QUEUE = "birthday_messages_dlq"

# Called once per delivered message. Returning normally acks the message; raising nacks it
# back onto the queue (for transient trouble such as the database being unreachable).
MessageHandler = Callable[[UUID], Awaitable[None]]


@dataclass(frozen=True)
class DeadLetter:
    message_id: UUID
    reason: str
    dead_at: datetime


class Broker(Protocol):
    async def start(self) -> None:
        """Connect and declare the topology (idempotent)."""

    async def close(self) -> None:
        """Stop consuming, wait for handlers in flight, and disconnect."""

    async def publish(self, message_ids: Sequence[UUID]) -> None:
        """Publish ids to the main queue; returns only once every publish is confirmed.

        Raises BrokerError when any publish is not confirmed.
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

    async def take_dead_letters(self, message_ids: Sequence[UUID] | None) -> list[DeadLetter]:
        """Remove and return the named dead letters (all of them when None)."""

    async def purge_dead_letters(self) -> int:
        """Drop every dead letter; returns how many were dropped."""
