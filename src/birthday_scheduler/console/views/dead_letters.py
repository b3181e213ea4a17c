"""The dead-letter page's data: the DLQ's depth and its first letters with their reasons."""

from __future__ import annotations

from dataclasses import dataclass

from birthday_scheduler.delivery import dlq
from birthday_scheduler.infra.broker.base import DEAD_LETTER_QUEUE, Broker, DeadLetter

SHOWN = 100
PURGE_WORD = "purge"


@dataclass(frozen=True)
class DeadLetters:
    depth: int
    letters: list[DeadLetter]


async def build(broker: Broker) -> DeadLetters:
    depth = await broker.queue_depth(DEAD_LETTER_QUEUE)
    letters = await dlq.peek(broker, SHOWN)
    return DeadLetters(depth=depth, letters=letters)
